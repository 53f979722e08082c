"""The model layer: below `train/`, `separate` and `evaluate`, above the data formats.

Today it holds the model directory's format (`directory.py`); the separation-model protocol and its
architectures (open-unmix first) are to move here (docs/architecture.md, "The model layer")."""
