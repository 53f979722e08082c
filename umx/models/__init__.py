"""The model layer: below `train/`, `separate` and `evaluate`, above the data formats.

The separation-model protocol (`protocol.py`), the registry that resolves an architecture's name
(`registry.py`), the model directory's shared format and the bounded readers for weights from
elsewhere (`directory.py`, `weights.py`), and the architectures umx ships: open-unmix
(`openunmix/`). docs/architecture.md, "The model seam"."""
