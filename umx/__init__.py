"""umx: Open-Unmix training, data first.

prep (dataset folder → shard set) · shards (storage formats) · train (streaming
loader, device augmentation, trainer) · model (OpenUnmix, open-unmix compatible).
"""

__version__ = "0.1.0"
