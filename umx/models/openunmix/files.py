"""Open-Unmix's model directory: `<target>.json` + `<target>.pth` per target (a bridged model's
`xumx.pth`), read as `openunmix.utils.load_target_models` reads them, and nothing in them trusted.

The sizes a `<target>.json` declares are checked (`NetworkSizes`), then the weights file against
them (its bytes, then its tensors' shapes) before a network is built (docs/security.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...errors import UmxError
from ...names import safe_name
from ...shards.storage import write_json
from ..directory import BRIDGED_WEIGHTS, SEPARATOR_JSON, read_json
from ..weights import MAX_ELEMENT_BYTES, PICKLE_SLACK, Range, check_stored, read_weights
from .network import OpenUnmix, check_bridge

NFFT = Range(64, 2**16)  # STFT window length
NHOP = Range(64, 2**16)  # STFT hop: memory and LSTM steps grow with frames per second
MAX_OVERLAP = 16  # nfft / nhop at most: the spectrogram's size is the audio's times about nfft / (2 nhop)
NB_CHANNELS = Range(1, 2)
HIDDEN_SIZE = Range(1, 2**14)  # the weights must hold it as well (`NetworkSizes.check_state`)


def check_stft(nfft: int, nhop: int, where: str) -> None:
    """One clear line for an STFT whose frames leave gaps or overlap so much that separating a
    short file would take gigabytes (`nhop 1` costs ~5 GB on 4 s)."""
    if nhop > nfft:
        raise UmxError(f"{where}: nhop {nhop} is larger than nfft {nfft}: frames would leave gaps")
    if nhop * MAX_OVERLAP < nfft:
        raise UmxError(f"{where}: nhop {nhop} is below nfft / {MAX_OVERLAP} ({-(-nfft // MAX_OVERLAP)}): more "
                       f"than {MAX_OVERLAP} overlapping frames multiply the memory a separation takes")


@dataclass(frozen=True)
class NetworkSizes:
    """The sizes a `<target>.json` declares for its network (`args`), in range. The weights are
    checked against them before anything is built: a JSON cannot make umx allocate what the
    weights file does not hold."""

    source: Path  # the <target>.json
    nfft: int
    nb_channels: int
    hidden_size: int
    unidirectional: bool

    @classmethod
    def read(cls, json_path: Path) -> "NetworkSizes":
        args = read_json(json_path, "a model's settings").get("args")
        if not isinstance(args, dict):
            raise UmxError(f"{json_path}: args must be an object holding the model's sizes, got {args!r:.80}")
        unidirectional = args.get("unidirectional", False)
        if not isinstance(unidirectional, bool):
            raise UmxError(f"{json_path}: args.unidirectional must be true or false, got {unidirectional!r:.80}")
        sizes = cls(json_path, NFFT.check(args.get("nfft"), f"{json_path}: args.nfft"),
                    NB_CHANNELS.check(args.get("nb_channels"), f"{json_path}: args.nb_channels"),
                    HIDDEN_SIZE.check(args.get("hidden_size"), f"{json_path}: args.hidden_size"), unidirectional)
        if not unidirectional and sizes.hidden_size % 2:
            raise UmxError(f"{json_path}: args.hidden_size {sizes.hidden_size} is odd: a bidirectional network "
                           "splits it between its two directions")
        return sizes

    @property
    def nb_bins(self) -> int:
        return self.nfft // 2 + 1

    def network(self, max_bin: int | None) -> OpenUnmix:
        return OpenUnmix(nb_bins=self.nb_bins, nb_channels=self.nb_channels, hidden_size=self.hidden_size,
                         unidirectional=self.unidirectional, max_bin=max_bin)

    def shapes(self, max_bin: int | None) -> dict[str, torch.Size]:
        """The state dict's shapes, from the network built on the meta device: no memory, and the
        architecture stays defined once (OpenUnmix)."""
        with torch.device("meta"):
            return {k: v.shape for k, v in self.network(max_bin).state_dict().items()}

    def max_bytes(self) -> int:
        """The most a weights file of this network may hold: every tensor at full bandwidth in
        MAX_ELEMENT_BYTES elements, plus PICKLE_SLACK."""
        return sum(math.prod(s) for s in self.shapes(None).values()) * MAX_ELEMENT_BYTES + PICKLE_SLACK

    def check_state(self, state: object, path: Path) -> int:
        """The bandwidth (input bins) of `state` if it is this network's state dict, tensor for
        tensor; else one clear line naming the weights file."""
        where = f"{path}: cannot be loaded with the sizes in {self.source.name}"
        if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
            raise UmxError(f"{where} (not an Open-Unmix state dict: a mapping of names to tensors)")
        mean = state.get("input_mean")
        if mean is None or mean.ndim != 1 or not 1 <= mean.shape[0] <= self.nb_bins:
            raise UmxError(f"{where} (its input_mean is missing or not of 1 to {self.nb_bins} bins, "
                           f"for nfft {self.nfft})")
        expected = self.shapes(mean.shape[0])
        for key in expected.keys() - state.keys():
            raise UmxError(f"{where} (it has no {key})")
        for key in state.keys() - expected.keys():
            raise UmxError(f"{where} (unexpected {key})")
        for key, shape in expected.items():
            if state[key].shape != shape:
                raise UmxError(f"{where} ({key} is {list(state[key].shape)}, those sizes give {list(shape)})")
        return mean.shape[0]


def _build(sizes: NetworkSizes, state: dict, max_bin: int, path: Path, device: str | torch.device) -> OpenUnmix:
    """The network of a checked state dict (`NetworkSizes.check_state`, `check_stored`), on `device`."""
    model = sizes.network(max_bin)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # the shapes fit: only a dtype torch cannot copy is left
        lines = str(e).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise UmxError(f"{path}: cannot be loaded with the sizes in {sizes.source.name} ({detail})") from None
    return model.to(device)


def _folder_and_sizes(model_dir: str | Path, target: str) -> tuple[Path, NetworkSizes]:
    folder = Path(model_dir).expanduser()
    safe_name(target, "target", str(folder))
    json_path = folder / f"{target}.json"
    if not json_path.is_file():
        raise UmxError(f"{json_path}: not found (is {folder} a model directory with a '{target}' model?)")
    return folder, NetworkSizes.read(json_path)


def load_target(model_dir: str | Path, target: str, device: str | torch.device = "cpu") -> OpenUnmix:
    """Load `<target>.pth` + `<target>.json` from a model directory (ours or open-unmix's): umx-separate,
    umx-eval and umx-train --model all load through here.

    Mirrors `openunmix.utils.load_target_models`: sizes come from the json's `args`, the bandwidth
    from the stored input_mean; `unidirectional` is read too (open-unmix forgets it). The sizes are
    checked against the file's size and then the weights' shapes before the network is built.
    """
    folder, sizes = _folder_and_sizes(model_dir, target)
    path = folder / f"{target}.pth"
    if not path.is_file():
        raise UmxError(f"{path}: not found (is {folder} a model directory with a '{target}' model?)")
    state = read_weights(path, sizes.max_bytes(), sizes.source.name)
    max_bin = sizes.check_state(state, path)
    check_stored([state], path)
    return _build(sizes, state, max_bin, path, device)


def load_bridged(model_dir: str | Path, targets: list[str], device: str | torch.device = "cpu"
                 ) -> dict[str, OpenUnmix]:
    """Every network of a bridged (X-UMX) model: sizes from each `<target>.json`, weights from its one
    file (`xumx.pth`: target → state dict), checked as `load_target` checks them."""
    sizes = {t: _folder_and_sizes(model_dir, t)[1] for t in targets}
    path = Path(model_dir).expanduser() / BRIDGED_WEIGHTS
    if not path.is_file():
        raise UmxError(f"{path}: not found (separator.json names a bridged model)")
    check_bridge({f"{t}.json": s.hidden_size for t, s in sizes.items()}, str(path))
    declared = ", ".join(s.source.name for s in sizes.values())
    states = read_weights(path, sum(s.max_bytes() for s in sizes.values()), declared)
    missing = [t for t in targets if not isinstance(states, dict) or not isinstance(states.get(t), dict)]
    if missing:
        raise UmxError(f"{path}: has no weights for {', '.join(missing)}")
    max_bins = {t: sizes[t].check_state(states[t], path) for t in targets}
    check_stored([states[t] for t in targets], path)
    return {t: _build(sizes[t], states[t], max_bins[t], path, device) for t in targets}


def write_separator_json(folder: Path, nfft: int, nhop: int, sample_rate: int, nb_channels: int,
                         bridged_targets: list[str] | None = None) -> None:
    """open-unmix's `separator.json`; for a bridged model also its targets (openunmix ignores the key)."""
    conf = {"nb_channels": nb_channels, "nfft": nfft, "nhop": nhop, "sample_rate": sample_rate}
    if bridged_targets:
        conf.update(bridged_targets=list(bridged_targets), weights=BRIDGED_WEIGHTS)
    write_json(folder / SEPARATOR_JSON, conf)
