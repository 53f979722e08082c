"""umx-prep: dataset folder → shard set (decode once, check, resample, int16, stats)."""

from .pipeline import prepare

__all__ = ["prepare"]
