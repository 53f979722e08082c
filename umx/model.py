"""OpenUnmix and its spectrogram front end.

Architecture, parameter names and shapes are those of the `openunmix` 1.3.0
package, so a `<target>.pth` written here loads there with `strict=True` (and
back). The front end is `torch.stft` (no torchaudio): magnitude of a
non-centred Hann-window STFT, as open-unmix trains.
"""

from __future__ import annotations

import math
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import compat
from .models import defaults
from .errors import UmxError
from .names import safe_name
from .models.directory import BRIDGED_WEIGHTS, read_json


def bandwidth_to_max_bin(sample_rate: float, n_fft: int, bandwidth: float) -> int:
    """Number of STFT bins at or below `bandwidth` Hz (open-unmix's definition)."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1, endpoint=True)
    return int(np.max(np.where(freqs <= bandwidth)[0]) + 1)


class STFT(nn.Module):
    """Complex STFT of `[batch, channels, time]` → `[batch, channels, bins, frames]`.

    center=False as in open-unmix training: the loss only sees full frames.
    """

    def __init__(self, n_fft: int = defaults.NFFT, n_hop: int = defaults.NHOP, center: bool = False):
        super().__init__()
        self.n_fft, self.n_hop, self.center = n_fft, n_hop, center
        self.window = nn.Parameter(torch.hann_window(n_fft), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        spec = torch.stft(
            x.reshape(-1, shape[-1]), n_fft=self.n_fft, hop_length=self.n_hop, window=self.window,
            center=self.center, normalized=False, onesided=True, pad_mode="reflect", return_complex=True,
        )
        return spec.reshape(shape[:-1] + spec.shape[-2:])


class Spectrogram(nn.Module):
    """Magnitude spectrogram, optionally downmixed to mono in the magnitude domain.

    This is open-unmix's `encoder` (TorchSTFT + ComplexNorm): the model's input
    and the space in which the training loss is computed.
    """

    def __init__(self, n_fft: int = defaults.NFFT, n_hop: int = defaults.NHOP, mono: bool = False):
        super().__init__()
        self.stft = STFT(n_fft, n_hop)
        self.mono = mono

    def forward(self, x: Tensor) -> Tensor:
        mag = self.stft(x).abs()
        return mag.mean(1, keepdim=True) if self.mono else mag


class OpenUnmix(nn.Module):
    """Spectrogram-mask model: dense bottleneck → 3-layer (Bi)LSTM with skip → dense.

    Input and output: magnitude spectrograms `[batch, channels, bins, frames]`.
    `input_mean`/`input_scale` are the dataset statistics (mean and std per
    bin); they are stored as -mean and 1/std, exactly as open-unmix does.
    """

    def __init__(
        self,
        nb_bins: int = 4096,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        input_mean: Optional[np.ndarray] = None,
        input_scale: Optional[np.ndarray] = None,
        max_bin: Optional[int] = None,
    ):
        super().__init__()
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin if max_bin else nb_bins
        self.hidden_size = hidden_size

        self.fc1 = nn.Linear(self.nb_bins * nb_channels, hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        lstm_hidden = hidden_size if unidirectional else hidden_size // 2
        self.lstm = nn.LSTM(
            input_size=hidden_size, hidden_size=lstm_hidden, num_layers=nb_layers,
            bidirectional=not unidirectional, batch_first=False, dropout=0.4 if nb_layers > 1 else 0,
        )
        self.fc2 = nn.Linear(hidden_size * 2, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size)
        self.fc3 = nn.Linear(hidden_size, self.nb_output_bins * nb_channels, bias=False)
        self.bn3 = nn.BatchNorm1d(self.nb_output_bins * nb_channels)

        mean = torch.zeros(self.nb_bins) if input_mean is None else \
            torch.from_numpy(-np.asarray(input_mean)[: self.nb_bins]).float()
        scale = torch.ones(self.nb_bins) if input_scale is None else \
            torch.from_numpy(1.0 / np.asarray(input_scale)[: self.nb_bins]).float()
        self.input_mean = nn.Parameter(mean)
        self.input_scale = nn.Parameter(scale)
        self.output_scale = nn.Parameter(torch.ones(self.nb_output_bins))
        self.output_mean = nn.Parameter(torch.ones(self.nb_output_bins))
        self.graph_safe_dropout = False  # set by the CUDA-graph training step (umx.train.step)

    def recurrent(self, x: Tensor) -> Tensor:
        if self.training and self.graph_safe_dropout:
            return lstm_layer_by_layer(self.lstm, x)
        return self.lstm(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        mix, encoded = self.encode(x)
        return self.decode(torch.cat([encoded, self.recurrent(encoded)], -1), mix)  # skip connection around the LSTM

    # the three stages, apart, for X-UMX's bridges between several targets' networks (`Joint`)
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`[batch, channels, bins, frames]` → (the input frames first, its encoding `[frames, batch, hidden]`)."""
        x = x.permute(3, 0, 1, 2)  # frames first for the LSTM
        nb_frames, nb_samples, nb_channels, _ = x.shape
        mix = x.detach().clone()
        x = (x[..., : self.nb_bins] + self.input_mean) * self.input_scale
        x = self.fc1(x.reshape(-1, nb_channels * self.nb_bins))
        return mix, torch.tanh(self.bn1(x).reshape(nb_frames, nb_samples, self.hidden_size))

    def decode(self, x: Tensor, mix: Tensor) -> Tensor:
        """The LSTM's output with its skip connection `[frames, batch, 2 hidden]` → the target's magnitudes."""
        nb_frames, nb_samples, nb_channels, _ = mix.shape
        x = F.relu(self.bn2(self.fc2(x.reshape(-1, x.shape[-1]))))
        x = self.bn3(self.fc3(x))
        x = x.reshape(nb_frames, nb_samples, nb_channels, self.nb_output_bins)
        x = x * self.output_scale + self.output_mean
        return (F.relu(x) * mix).permute(1, 2, 3, 0)


class Joint(nn.Module):
    """Several targets' OpenUnmix networks on one mixture spectrogram: a tuple of estimates.

    Plain, each network runs on its own, so every one stays an OpenUnmix (its state dict
    loads into `openunmix` strictly). With `bridge`, X-UMX's averaging bridges couple them
    (Sawata et al., "All for One and One for All", ICASSP 2021): every LSTM reads the mean
    of the targets' encodings, and every decoder the mean of the targets' LSTM outputs with
    their skip connections. The parameters are still each network's, but the result is no
    plain OpenUnmix any more: such a model only separates with all its targets together.

    `seed`: reseed torch's generator before each network, so that each draws the dropout
    masks a run of that target alone would (None inside a captured CUDA graph).
    """

    def __init__(self, models: "dict[str, OpenUnmix]", bridge: bool = False):
        super().__init__()
        if bridge:
            check_bridge({t: m.hidden_size for t, m in models.items()}, "the bridged networks")
        self.models = nn.ModuleDict(models)
        self.bridge = bridge

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def subset(self, names: list[str]) -> "Joint":
        """The same networks (shared, not copied) for some targets only."""
        return Joint({n: self.models[n] for n in names}, self.bridge)

    def forward(self, x: Tensor, seed: int | None = None) -> tuple[Tensor, ...]:
        return estimate(list(self.models.values()), x, self.bridge, seed)


def estimate(models: "list[OpenUnmix]", x: Tensor, bridge: bool = False, seed: int | None = None) -> tuple[Tensor, ...]:
    """Every network's magnitude estimate of the spectrogram `x` (see `Joint`)."""
    if not bridge:
        out = []
        for model in models:
            if seed is not None:
                torch.manual_seed(seed)
            out.append(model(x))
        return tuple(out)
    if seed is not None:
        torch.manual_seed(seed)
    encoded = [m.encode(x) for m in models]
    cross = sum(e for _, e in encoded) / len(models)  # first bridge
    joined = sum(torch.cat([e, m.recurrent(cross)], -1) for m, (_, e) in zip(models, encoded)) / len(models)
    return tuple(m.decode(joined, mix) for m, (mix, _) in zip(models, encoded))  # second bridge


def lstm_layer_by_layer(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """`lstm(x)[0]` (zero initial state) one layer at a time, with `F.dropout` between layers.

    On CPU this is nn.LSTM's own computation, dropout draws included. On CUDA the
    dropout comes from the philox generator, which a captured CUDA graph reseeds
    at every replay; cuDNN's multi-layer dropout keeps a state set up on the host,
    which a graph would freeze into the same mask every step.
    """
    dirs = 2 if lstm.bidirectional else 1
    all_weights = compat.lstm_weights(lstm)
    per_layer = len(all_weights) // lstm.num_layers
    batch = x.shape[0] if lstm.batch_first else x.shape[1]
    zeros = x.new_zeros(dirs, batch, lstm.hidden_size)
    for layer in range(lstm.num_layers):
        weights = all_weights[layer * per_layer:(layer + 1) * per_layer]
        with warnings.catch_warnings():  # cuDNN copies one layer's weights per call: that is intended here
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            x = compat.lstm_layer(x, (zeros, zeros), weights, lstm.bias, lstm.bidirectional, lstm.batch_first,
                                  lstm.training)
        if layer < lstm.num_layers - 1 and lstm.dropout and lstm.training:
            x = F.dropout(x, lstm.dropout, training=True)
    return x


def check_bridge(hidden_sizes: Mapping[str, int], where: str) -> None:
    """X-UMX's bridges average the networks' encodings and LSTM outputs (`estimate`), so every
    bridged network needs the same hidden size; else one clear line instead of a shape error."""
    if len(set(hidden_sizes.values())) > 1:
        listed = ", ".join(f"{t} {h}" for t, h in hidden_sizes.items())
        raise UmxError(f"{where}: a bridged (X-UMX) model averages its networks' hidden states, so their hidden "
                       f"sizes must agree (got {listed})")


# --- model directories: passed around, so nothing in them is trusted (docs/security.md) ----------

@dataclass(frozen=True)
class Range:
    """The sane whole numbers for one size: each size's one definition (umx-train's options
    should take the same, so that what it trains always loads)."""

    low: int
    high: int

    def check(self, value: object, what: str) -> int:
        """`value` as an int, if it is a whole number in range (a whole float too: open-unmix may
        write 44100.0), else UmxError `what must be …` (`what`: the file and key, or the option)."""
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or number != int(number) \
                or not self.low <= number <= self.high:
            raise UmxError(f"{what} must be a whole number in [{self.low}, {self.high}], got {value!r}")
        return int(number)


NFFT = Range(64, 2**16)  # STFT window length
NHOP = Range(64, 2**16)  # STFT hop: memory and LSTM steps grow with frames per second
MAX_OVERLAP = 16  # nfft / nhop at most: the spectrogram's size is the audio's times about nfft / (2 nhop)
NB_CHANNELS = Range(1, 2)
HIDDEN_SIZE = Range(1, 2**14)  # the weights must hold it as well (`NetworkSizes.check_state`)
MAX_ELEMENT_BYTES = 8  # a weights file may store its tensors as float64 at most
PICKLE_SLACK = 2**20  # a weights file's bytes besides its tensors: the pickled state dict, torch's records


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


def check_stored(states: list[dict[str, Tensor]], path: Path) -> None:
    """Refuse tensors whose elements are not all in the file: views (zero strides, storages shared
    between tensors or networks) would let a small file pass for a network of any size."""
    tensors = [t for state in states for t in state.values()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    if sum(t.numel() * t.element_size() for t in tensors) > sum(storages.values()):
        raise UmxError(f"{path}: cannot be loaded: its tensors are views claiming more elements than the file "
                       "stores")


def check_archive(path: Path, max_bytes: int, declared_in: str) -> bool:
    """Refuse a weights file that would take more than `max_bytes` (what `declared_in` declares) once
    read, before torch reads it; True for torch's zip format. torch.save stores members
    uncompressed, so a compressed member is refused (1.6 MB can inflate to gigabytes), and the
    members' sizes must add up to `max_bytes` at most. torch's legacy format is read as it lies."""
    where = f"{path}: cannot be loaded with the sizes in {declared_in}"
    size = path.stat().st_size
    if size > max_bytes:
        raise UmxError(f"{where}: the file has {size} bytes, more than the {max_bytes} they allow")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # how torch.load tells its zip format from the legacy one
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise UmxError(f"{path}: cannot be loaded: not a readable zip archive ({e})") from None
    total = 0
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED or m.compress_size != m.file_size:
            raise UmxError(f"{path}: cannot be loaded: its member {m.filename!r} is compressed (torch.save stores "
                           "every member as it is; a compressed one may inflate to far more than the file)")
        total += m.file_size
        if total > max_bytes:
            raise UmxError(f"{where}: its members hold more than the {max_bytes} bytes they allow")
    return True


def read_weights(path: Path, max_bytes: int, declared_in: str) -> object:
    """The plain data of a weights file (`check_archive` first): tensors memory-mapped, not read,
    so their shapes are checked before anything of their size is allocated; never a pickle that
    runs code (weights_only). Anything else is one clear line naming the file."""
    zipped = check_archive(path, max_bytes, declared_in)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UmxError(f"{path}: cannot be loaded: refused, this model holds more than plain tensors and numbers "
                       f"(umx loads model files with weights_only=True and never runs their pickled code; {first})"
                       ) from None
    except Exception as e:  # a truncated or foreign file: torch raises anything
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise UmxError(f"{path}: cannot be loaded: not a readable model file ({detail})") from None


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
