"""Measuring pitch in the augmentation tests: a row's strongest frequency, and intervals in cents."""

import torch


def peak_hz(x: torch.Tensor, rate: int) -> torch.Tensor:
    """The strongest frequency of each row of `x` `[..., time]`: Hann window, 4x zero-padded FFT,
    parabolic interpolation of the log magnitude (bias far below a cent at these lengths)."""
    n = x.shape[-1]
    spec = torch.fft.rfft(x.double() * torch.hann_window(n, dtype=torch.float64), n=4 * n).abs().log()
    k = spec.argmax(-1, keepdim=True)
    a, b, c = spec.gather(-1, k - 1), spec.gather(-1, k), spec.gather(-1, k + 1)
    return ((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / (4 * n))[..., 0]


def cents(got, want):
    return 1200 * torch.log2(got / want)
