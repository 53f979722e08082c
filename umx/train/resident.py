"""The train split held in device memory: loader workers send crop positions, not audio.

A streamed batch of the umxhq recipe is 68 MB of int16 (16 × 4 sources × 2
channels × 6 s): a worker copies its crops out of the shards, the pin-memory
thread copies it again, and it crosses to the GPU. With the captured 22 ms step
that asks ~730 samples/s of the workers; on the H200 VM two streaming workers gave
~790 alone and 86 % of the step rate end to end. A split that fits in device memory
(MUSDB18-HQ's train split is ~17 GB of int16 sources) is uploaded once; the
workers then run the very same seeded draws over the manifest's track list and
send each crop's position in the device copy, and the crop is gathered on the
device. Batches are bit-identical to the streamed ones. Aligned tracks share one
position for every slot (`ResidentTracks`); unaligned source files (sourcefolder)
have one tensor per source and a position per slot (`ResidentSources`).
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings

import torch

from ..errors import UmxError
from ..shards.manifest import Manifest
from ..shards.reader import ShardReader, SkippedShard
from .crops import source_files
from .slots import Slots

MODES = ("auto", "on", "off")
AUTO_FRACTION = 0.5  # auto: only when the split takes at most this share of the free device memory


def split_bytes(manifest: Manifest, slots: Slots, split: str = "train") -> int:
    """Device bytes of the split: usable tracks as `[slots, channels, frames]` int16, or for
    unaligned source files every file of a slot's source."""
    if manifest.sampling.records == "source_files":
        frames = sum(f for e in manifest.shards(split) for f, names in zip(e.track_frames, e.track_sources)
                     for n in names if n in slots.order)
        return 2 * manifest.channels * frames
    frames = sum(f for e in manifest.shards(split) for f, names in zip(e.track_frames, e.track_sources)
                 if slots.usable(names))
    return 2 * slots.count * manifest.channels * frames


def fits(manifest: Manifest, slots: Slots, device: torch.device, fraction: float = AUTO_FRACTION) -> bool:
    """Does the split fit in `fraction` of the device's free memory (CUDA only)?"""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return split_bytes(manifest, slots) <= fraction * free


@contextlib.contextmanager
def _reading_views():
    """Quiet torch's warning about read-only arrays: the shard views are only read here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield


def _upload(destination: torch.Tensor, array) -> None:
    """Copy a host int16 array into a slice of the device copy (through pinned memory on a GPU:
    an asynchronous DMA; `_uploaded` waits for all of them)."""
    host = torch.from_numpy(array)
    if destination.device.type == "cuda":
        host = host.pin_memory()
    destination.copy_(host, non_blocking=True)


def _uploaded(device: torch.device, t0: float, quiet: bool, what: str, nbytes: int) -> float:
    """Wait for the uploads; say what is resident. Returns the seconds the upload took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if not quiet:
        print(f"device cache: {what}, {nbytes / 2**30:.2f} GiB on {device} ({seconds:.1f} s); loader workers "
              "send crop positions only", file=sys.stderr)
    return seconds


class ResidentTracks:
    """Every usable track of a split, its slots concatenated along time on one device tensor
    `[slots, channels, total frames]` (silent slots are zeros); `starts` maps track id → column."""

    def __init__(self, manifest: Manifest, slots: Slots, reader: ShardReader, device: torch.device,
                 split: str = "train", quiet: bool = False):
        t0 = time.perf_counter()
        self.slots, self.device = slots, device
        nbytes = split_bytes(manifest, slots, split)
        total = nbytes // (2 * slots.count * manifest.channels)
        try:
            self.audio = torch.zeros(slots.count, manifest.channels, total, dtype=torch.int16, device=device)
        except torch.OutOfMemoryError:
            raise UmxError(f"--device-cache: the '{split}' split needs {nbytes / 2**30:.1f} GiB on {device}, "
                           "more than is free; use --device-cache off") from None
        self.starts: dict[str, int] = {}
        column = 0
        with _reading_views():
            for entry in manifest.shards(split):
                try:
                    for record in reader.guarded(entry, views=True):
                        stacked = slots.stack(record)
                        if stacked is None:
                            continue
                        _upload(self.audio[:, :, column:column + record.frames], stacked)
                        self.starts[record.id] = column
                        column += record.frames
                except SkippedShard:
                    continue  # its tracks are not resident: the stream skips that shard too
        self.seconds = _uploaded(device, t0, quiet, f"{len(self.starts)} '{split}' tracks", nbytes)

    @property
    def nbytes(self) -> int:
        return self.audio.numel() * 2

    @property
    def positions(self) -> dict[str, int]:
        """What loader workers need to send crop positions (crops.ResidentCrops): track id → column."""
        return self.starts

    def gather(self, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
        """int16 `[batch, slots, channels, seq_len]` crops starting at the given columns."""
        idx = starts.to(self.device, non_blocking=True)[:, None] + torch.arange(seq_len, device=self.device)
        return self.audio[:, :, idx].permute(2, 0, 1, 3)


class ResidentSources:
    """Every file of every source of an unaligned split (sourcefolder), one device tensor
    `[channels, frames]` per source with its files end to end; `files` maps a source to its
    (file id, frames, column) in the order the stream draws from (crops.source_files)."""

    def __init__(self, manifest: Manifest, slots: Slots, reader: ShardReader, device: torch.device,
                 seq_len: int, split: str = "train", quiet: bool = False):
        t0 = time.perf_counter()
        self.device = device
        self.audio: dict[str, torch.Tensor] = {}
        self.files: dict[str, list[tuple[str, int, int]]] = {}
        for source, files in source_files(manifest, split, slots.order, seq_len, reader).items():
            total = sum(pcm.shape[-1] for _, pcm in files)
            try:
                self.audio[source] = torch.empty(manifest.channels, total, dtype=torch.int16, device=device)
            except torch.OutOfMemoryError:
                raise UmxError(f"--device-cache: the '{split}' source files do not fit on {device}; "
                               "use --device-cache off") from None
            self.files[source], column = [], 0
            with _reading_views():
                for file_id, pcm in files:
                    _upload(self.audio[source][:, column:column + pcm.shape[-1]], pcm)
                    self.files[source].append((file_id, pcm.shape[-1], column))
                    column += pcm.shape[-1]
        self.order = list(slots.order)
        self.seconds = _uploaded(device, t0, quiet, f"{sum(len(f) for f in self.files.values())} '{split}' "
                                 "source files", self.nbytes)

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * 2 for a in self.audio.values())

    @property
    def positions(self) -> dict[str, list[tuple[str, int, int]]]:
        """What loader workers need (crops.ResidentFiles): source → (file id, frames, column)."""
        return self.files

    def gather(self, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
        """int16 `[batch, slots, channels, seq_len]`: slot j's crop starts at column `starts[:, j]` of its source."""
        starts = starts.to(self.device, non_blocking=True)
        span = torch.arange(seq_len, device=self.device)
        crops = [self.audio[s][:, starts[:, j, None] + span] for j, s in enumerate(self.order)]  # [C, B, T] each
        return torch.stack(crops).permute(2, 0, 1, 3)

