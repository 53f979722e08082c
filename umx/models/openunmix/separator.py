"""Open-Unmix's whole-track separation: the `Separator` module and its model directory's targets.

`Separator` is open-unmix 1.3.0's: centred STFT of the mixture → each target
model on the magnitude spectrogram of the whole track → multichannel Wiener
filtering with EM (`umx.filtering`) on windows of `wiener_win_len` frames →
inverse STFT. The inverse STFT is an overlap-add that runs window by window,
so besides the model outputs only one window of complex estimates is alive
at a time (open-unmix holds every target's complex STFT of the whole track).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ... import audio as audio_io
from ...errors import UmxError
from ...filtering import wiener
from ...names import safe_name
from .. import defaults
from ..directory import SEPARATOR_JSON, read_json
from ..protocol import NITER, WIENER_WIN_LEN
from ..weights import Range
from .files import NB_CHANNELS, NFFT, NHOP, check_stft, load_bridged, load_target
from .network import STFT, OpenUnmix, check_bridge, estimate

SAMPLE_RATE = Range(audio_io.MIN_RATE, audio_io.MAX_RATE)
SEPARATOR_SIZES = {"nb_channels": NB_CHANNELS, "nfft": NFFT, "nhop": NHOP, "sample_rate": SAMPLE_RATE}


def available_targets(model_dir: str | Path) -> list[str]:
    """Targets of a model directory: every `<target>.pth`, sorted by name (a bridged model's: those
    its `separator.json` names, in training order)."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise UmxError(f"{folder}: model directory not found")
    bridged = bridged_targets(folder)
    if bridged:
        return bridged
    targets = sorted(p.stem for p in folder.glob("*.pth"))
    if not targets:
        raise UmxError(f"{folder}: no <target>.pth model in this directory")
    return targets


def read_separator_json(model_dir: str | Path) -> dict:
    """`separator.json`: nb_channels, nfft, nhop, sample_rate (open-unmix's may store a float rate)."""
    path = Path(model_dir).expanduser() / SEPARATOR_JSON
    conf = read_json(path, f"is {path.parent} a model directory written by umx-train or open-unmix?")
    missing = [k for k in ("nb_channels", "nfft", "nhop", "sample_rate") if not isinstance(conf, dict) or k not in conf]
    if missing:
        raise UmxError(f"{path}: missing {', '.join(missing)}")
    # a model directory is passed around: nothing is trusted
    values = {key: size.check(conf[key], f"{path}: {key}") for key, size in SEPARATOR_SIZES.items()}
    check_stft(values["nfft"], values["nhop"], str(path))
    return values


def bridged_targets(model_dir: str | Path) -> list[str] | None:
    """The targets of a bridged (X-UMX) model directory, from `separator.json`; None for plain models."""
    path = Path(model_dir).expanduser() / SEPARATOR_JSON
    if not path.is_file():
        return None
    names = read_json(path, "a model directory's separator settings").get("bridged_targets")
    if names is None:
        return None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise UmxError(f"{path}: bridged_targets must list two different target names at least")
    for name in names:
        safe_name(name, "bridged target", str(path))
    return names


class OverlapAdd:
    """Inverse of a centred Hann STFT, fed a block of frames at a time.

    The same computation as `torch.istft(center=True, length=...)` (irfft, window, overlap-add,
    divide by the summed squared window, drop the centring pad), but the complex input never
    needs to exist as a whole: memory is the output signal plus one block of `block` frames.
    Every one of the `n_frames` frames is expected to be added once (the envelope counts them all).
    """

    def __init__(self, n_fft: int, n_hop: int, window: Tensor, n_frames: int, lead: tuple[int, ...],
                 block: int = 512):
        self.n_fft, self.n_hop, self.window, self.block = n_fft, n_hop, window, block
        total = n_fft + n_hop * (n_frames - 1)
        self.buffer = torch.zeros(lead + (total,), dtype=window.dtype, device=window.device)
        squares = (window**2)[None, None].expand(1, n_frames, n_fft)
        self.envelope = self._fold(squares)[0]

    def _fold(self, frames: Tensor) -> Tensor:
        """Overlap-add `[M, n, n_fft]` frames → `[M, n_fft + hop (n - 1)]`. Where the hop divides the
        window (every STFT here), as n_fft / hop shifted additions of contiguous rows: several
        times faster than `fold`'s general col2im, the same sums."""
        m, n, _ = frames.shape
        if self.n_fft % self.n_hop:
            out = torch.nn.functional.fold(frames.transpose(1, 2), output_size=(1, self.n_fft + self.n_hop * (n - 1)),
                                           kernel_size=(1, self.n_fft), stride=(1, self.n_hop))
            return out.reshape(m, -1)
        k = self.n_fft // self.n_hop
        parts = frames.reshape(m, n, k, self.n_hop)
        out = frames.new_zeros(m, n + k - 1, self.n_hop)
        for j in range(k):
            out[:, j:j + n] += parts[:, :, j]
        return out.reshape(m, -1)

    def add(self, spec: Tensor, first_frame: int) -> None:
        """Add frames `first_frame, first_frame + 1, …` given as `[*lead, bins, n]` complex (any strides)."""
        lead = spec.shape[:-2]
        by_frame = spec.transpose(-1, -2)  # [*lead, n, bins]: each frame's bins in a row for the FFT
        for pos in range(0, by_frame.shape[-2], self.block):
            chunk = by_frame[..., pos:pos + self.block, :]
            n = chunk.shape[-2]
            frames = torch.fft.irfft(chunk, n=self.n_fft, dim=-1).mul_(self.window)
            ola = self._fold(frames.reshape(-1, n, self.n_fft))
            start = (first_frame + pos) * self.n_hop
            self.buffer[..., start:start + ola.shape[-1]] += ola.reshape(lead + ola.shape[-1:])

    def finish(self, length: int) -> Tensor:
        """The signal of `length` samples (zero-padded where the frames end earlier, as istft does)."""
        ok = self.envelope > 1e-11
        out = self.buffer.div_(torch.where(ok, self.envelope, 1.0))  # in place: no second copy
        start = self.n_fft // 2
        out = out[..., start:start + length]
        if out.shape[-1] < length:
            out = torch.nn.functional.pad(out, (0, length - out.shape[-1]))
        return out


class Separator(nn.Module):
    """Several target models + Wiener/EM post-processing, as open-unmix's `model.Separator`.

    Args:
        target_models: target name → OpenUnmix (magnitude spectrogram in and out; its sizes are
            checked against the separator's).
        niter: EM iterations refining the initial estimates (0: mixture phase only).
            EM needs two sources at least: several targets, or `residual`.
        softmask: initial estimates from ratio masks instead of magnitudes + mixture phase.
        residual: add a source for the mixture minus the targets; a string names it
            (default name 'residual').
        wiener_win_len: frames filtered together (time-varying spatial model; bounds
            memory); None or 0: the whole track at once.
        bridge: the target models are one X-UMX network (model.Joint): estimated together.
    """

    def __init__(
        self,
        target_models: "Mapping[str, OpenUnmix]",
        niter: int = 0,
        softmask: bool = False,
        residual: bool | str = False,
        sample_rate: float = float(defaults.SAMPLE_RATE),
        n_fft: int = defaults.NFFT,
        n_hop: int = defaults.NHOP,
        nb_channels: int = 2,
        wiener_win_len: Optional[int] = defaults.WIENER_WIN_LEN,
        bridge: bool = False,
    ):
        super().__init__()
        self.bridge = bridge
        if not target_models:
            raise UmxError("a Separator needs at least one target model")
        NITER.check(niter, "niter")
        WIENER_WIN_LEN.check(wiener_win_len or 0, "wiener_win_len")
        if bridge:
            check_bridge({n: m.hidden_size for n, m in target_models.items()}, "the bridged target models")
        nb_sources = len(target_models) + bool(residual)
        if niter > 0 and nb_sources < 2:
            raise UmxError(f"EM post-processing (niter={niter}) needs two sources at least: give several "
                           f"targets, add a residual (--residual) or use --niter 0")
        self.niter, self.softmask = niter, softmask
        self.residual = bool(residual)
        self.residual_name = residual if isinstance(residual, str) and residual else "residual"
        self.wiener_win_len = wiener_win_len if wiener_win_len and wiener_win_len > 0 else None
        self.sample_rate = int(round(float(sample_rate)))
        self.n_fft, self.n_hop, self.nb_channels = n_fft, n_hop, nb_channels
        self.stft = STFT(n_fft, n_hop, center=True)
        self.target_models = nn.ModuleDict(dict(target_models))
        for name, model in self.target_models.items():
            bins = model.nb_output_bins  # every target model is an OpenUnmix
            if bins != n_fft // 2 + 1:
                raise UmxError(f"target '{name}' has {bins} frequency bins but the separator's nfft {n_fft} "
                               f"gives {n_fft // 2 + 1}: the model and separator.json disagree")
            fc1, used_bins = model.fc1, model.nb_bins
            if fc1.in_features != used_bins * nb_channels:
                raise UmxError(f"target '{name}' takes {fc1.in_features // used_bins} channel(s) but the "
                               f"separator has nb_channels {nb_channels}: the model and separator.json disagree")
        if self.residual and self.residual_name in self.target_models:
            raise UmxError(f"the residual cannot be named '{self.residual_name}': that is a target")

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        targets: Optional[Sequence[str]] = None,
        niter: int = defaults.NITER,
        residual: bool | str = False,
        wiener_win_len: Optional[int] = defaults.WIENER_WIN_LEN,
        device: str | torch.device = "cpu",
        softmask: bool = False,
    ) -> "Separator":
        """Load `<target>.pth`/`.json` + `separator.json` from a model directory (umx's or open-unmix's).

        `targets=None` loads every `<target>.pth` in the directory (sorted).
        The separator is frozen (eval mode, no gradients) and on `device`.
        """
        bridged = bridged_targets(model_dir)
        targets = list(targets) if targets else available_targets(model_dir)
        if len(set(targets)) != len(targets):
            raise UmxError(f"targets are repeated: {targets}")
        if bridged and sorted(targets) != sorted(bridged):
            raise UmxError(f"{Path(model_dir).expanduser()}: a bridged (X-UMX) model separates all its targets "
                           f"together ({', '.join(bridged)}), not {', '.join(targets)}")
        conf = read_separator_json(model_dir)
        models = load_bridged(model_dir, bridged, device) if bridged else \
            {t: load_target(model_dir, t, device) for t in targets}
        separator = cls(models, niter=niter, softmask=softmask, residual=residual, sample_rate=conf["sample_rate"],
                        n_fft=conf["nfft"], n_hop=conf["nhop"], nb_channels=conf["nb_channels"],
                        wiener_win_len=wiener_win_len, bridge=bool(bridged))
        separator.freeze()
        return separator.to(device)

    def freeze(self) -> "Separator":
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    @property
    def target_names(self) -> list[str]:
        """Names of the output sources, in the order of `forward`'s targets axis."""
        return list(self.target_models) + ([self.residual_name] if self.residual else [])

    def forward(self, audio: Tensor) -> Tensor:
        """`[batch, channels, time]` mixture → `[batch, targets(+residual), channels, time]` estimates."""
        if audio.ndim != 3:
            raise ValueError(f"audio must be [batch, channels, time], got shape {tuple(audio.shape)}")
        length = audio.shape[-1]
        if length <= self.n_fft // 2:
            raise UmxError(f"audio of {length} samples is too short for nfft {self.n_fft} "
                           f"(needs more than {self.n_fft // 2})")
        mix_stft = self.stft(audio)  # [B, C, F, N] complex
        mix_magnitude = mix_stft.abs()
        return self.from_estimates(mix_stft, self.magnitudes(mix_stft, mix_magnitude), length, mix_magnitude)

    def magnitudes(self, mix_stft: Tensor, mix_magnitude: Tensor | None = None) -> Iterator[Tensor]:
        """Each target network's magnitude estimate `[B, C', F, N]` of the mixture's STFT (whose
        magnitude may be given), one at a time (so that one target's output is alive at a time
        where the networks run apart); each network sees the whole track, as open-unmix runs it."""
        mag = mix_stft.abs() if mix_magnitude is None else mix_magnitude
        if self.nb_channels == 1:
            mag = mag.mean(1, keepdim=True)
        if self.bridge:  # the networks run together
            yield from estimate(list(self.target_models.values()), mag, bridge=True)
        else:
            for model in self.target_models.values():
                yield model(mag)

    def from_estimates(self, mix_stft: Tensor, magnitudes: Iterable[Tensor], length: int,
                       mix_magnitude: Tensor | None = None) -> Tensor:
        """The separated signals `[B, targets(+residual), C, length]` of a mixture's (centred) STFT
        `[B, C, F, N]` (and its magnitude, if at hand), given each target's magnitude estimate
        `[B, C', F, N]` in `target_models`' order: Wiener filtering, window by window, then the
        inverse STFT."""
        batch, nb_channels, _, nb_frames = mix_stft.shape
        spectrograms = None  # [B, J, C', N, F]: planes of [frames, bins], as the filter works through them
        for j, est in enumerate(magnitudes):
            if spectrograms is None:
                spectrograms = est.new_empty((batch, len(self.target_models), est.shape[1], nb_frames, est.shape[2]))
            spectrograms[:, j] = est.transpose(-1, -2)
            del est
        win = self.wiener_win_len or nb_frames
        nb_out = len(self.target_names)
        window = self.stft.window.to(spectrograms.dtype)
        estimates = torch.empty((batch, nb_out, nb_channels, length), dtype=window.dtype, device=mix_stft.device)
        for b in range(batch):
            mix_b = mix_stft[b].transpose(-1, -2).contiguous()  # [C, N, F]
            size_b = None if mix_magnitude is None else mix_magnitude[b].transpose(-1, -2).contiguous()
            ola = OverlapAdd(self.n_fft, self.n_hop, window, nb_frames, (nb_out, nb_channels))
            for pos in range(0, nb_frames, win):
                frames = slice(pos, pos + win)  # the filter takes [frames, bins, channels(, sources)]
                y = wiener(spectrograms[b, :, :, frames].permute(2, 3, 1, 0), mix_b[:, frames].permute(1, 2, 0),
                           self.niter, softmask=self.softmask, residual=self.residual,
                           mix_magnitude=None if size_b is None else size_b[:, frames].permute(1, 2, 0))
                ola.add(y.permute(3, 2, 1, 0), pos)  # [J, C, F, n]
            estimates[b] = ola.finish(length)
        return estimates

    def to_dict(self, estimates: Tensor) -> dict[str, Tensor]:
        """`forward`'s output as target name → `[batch, channels, time]`."""
        return {name: estimates[:, k] for k, name in enumerate(self.target_names)}
