"""OpenUnmix, its spectrogram front end, and X-UMX's joined networks (`Joint`).

Architecture, parameter names and shapes are those of the `openunmix` 1.3.0
package, so a `<target>.pth` written here loads there with `strict=True` (and
back). The front end is `torch.stft` (no torchaudio): magnitude of a
non-centred Hann-window STFT, as open-unmix trains.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import compat
from ...errors import UmxError
from .. import defaults


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
