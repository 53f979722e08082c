"""Writes the MSST fixtures of tests/test_roformer.py with MSST's own model code (not part of umx).

    git clone https://github.com/ZFTurbo/Music-Source-Separation-Training /tmp/msst   # ccc011a
    python tests/data/msst/make_fixture.py /tmp/msst

For a tiny BS-RoFormer and Mel-Band RoFormer (the sizes of TINY below, MSST's defaults otherwise)
it saves, with MSST's classes: a checkpoint as MSST's train.py saves it ({"model_state_dict": …,
"optimizer_state_dict": …, …}), a fixed stereo input, and MSST's output on it. umx loads the
checkpoint into the `bs-roformer` package's classes and must give the same output."""

import sys

import torch

sys.path.insert(0, sys.argv[1])
from models.bs_roformer import BSRoformer, MelBandRoformer  # noqa: E402  (MSST's vendored copy)

TINY = dict(dim=16, depth=1, stereo=True, num_stems=2, time_transformer_depth=1, freq_transformer_depth=1,
            dim_head=8, heads=2, attn_dropout=0.0, ff_dropout=0.0, flash_attn=False, stft_n_fft=512,
            stft_hop_length=256, stft_win_length=512, mask_estimator_depth=2, linear_transformer_depth=0)
BANDS = (8,) * 32 + (1,)

for name, cls, extra in (("bs_roformer", BSRoformer, dict(freqs_per_bands=BANDS)),
                         ("mel_band_roformer", MelBandRoformer, dict(num_bands=8, sample_rate=44100))):
    torch.manual_seed(0)
    model = cls(**TINY, **extra).eval()
    with torch.no_grad():  # away from init values (ones, zeros), so a misplaced tensor shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    x = torch.randn(1, 2, 256 * 24)
    with torch.no_grad():
        y = model(x)
    torch.save({"epoch": 3, "optimizer_name": "adam", "optimizer_state_dict": optimizer.state_dict(),
                "best_metric": 1.5, "model_state_dict": model.state_dict()}, f"{name}.ckpt")
    torch.save({"input": x, "output": y}, f"{name}.io.pt")
    print(name, len(model.state_dict()), "keys", tuple(y.shape))
