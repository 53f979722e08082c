"""umx-train: streaming loader (CPU workers) → device augmentation → OpenUnmix."""
