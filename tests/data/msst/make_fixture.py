"""Writes tests/data/msst/<arch>.json with MSST's own model code (not part of umx):

    git clone https://github.com/ZFTurbo/Music-Source-Separation-Training /tmp/msst   # ccc011a
    python tests/data/msst/make_fixture.py /tmp/msst

For a tiny BS-RoFormer and Mel-Band RoFormer (TINY below, MSST's defaults otherwise), and MSST's HTDemucs of
its MUSDB18 config at a tiny width (HTDEMUCS_TINY), it records, as
text: the names and shapes of MSST's state dict, and MSST's output, on a seeded input, of the network
whose every tensor is `fixture_tensor(name, shape)`. tests/test_roformer.py builds that checkpoint from
the names alone, loads it into the bs-roformer package's network and must give MSST's output."""

import json
import sys
import zlib

import torch

TINY = dict(dim=16, depth=1, stereo=True, num_stems=2, time_transformer_depth=1, freq_transformer_depth=1,
            dim_head=8, heads=2, attn_dropout=0.0, ff_dropout=0.0, flash_attn=False, stft_n_fft=512,
            stft_hop_length=256, stft_win_length=512, mask_estimator_depth=2, linear_transformer_depth=0)
BANDS = (8,) * 32 + (1,)
SAMPLES = 256 * 24
KEPT = 97  # every KEPT-th output sample is recorded


def fixture_tensor(name: str, shape) -> torch.Tensor:
    """A tensor depending on its name only (seeded by its CRC), near a network's initial values."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    base = 1.0 if name.endswith("gamma") else 0.0
    return base + 0.1 * torch.randn(tuple(shape), generator=g)


def fixture_input() -> torch.Tensor:
    return torch.randn(1, 2, SAMPLES, generator=torch.Generator().manual_seed(0))


# MSST's config_musdb18_htdemucs.yaml at a tiny width (its other values as they are)
HTDEMUCS_TINY = dict(channels=8, growth=1, t_layers=1, t_heads=2, bottom_channels=0)
HTDEMUCS_SAMPLES = 44100  # one model window (segment 1 s)


def htdemucs_input() -> torch.Tensor:
    return torch.randn(1, 2, HTDEMUCS_SAMPLES, generator=torch.Generator().manual_seed(1)) * 0.1


def msst_htdemucs(msst: str):
    """MSST's own HTDemucs (models/demucs4ht.py, its get_model) of its MUSDB18 config at HTDEMUCS_TINY.
    (MSST's module imports openunmix, whose utils import torchaudio: a stand-in module for that import.)"""
    import types

    from omegaconf import OmegaConf

    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    from models.demucs4ht import get_model  # noqa: E402  (MSST's vendored copy)

    cfg = OmegaConf.load(f"{msst}/configs/config_musdb18_htdemucs.yaml")
    cfg.htdemucs.update(HTDEMUCS_TINY)
    cfg.training.segment = 1
    return get_model(cfg)


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    from models.bs_roformer import BSRoformer, MelBandRoformer  # noqa: E402  (MSST's vendored copy)

    model = msst_htdemucs(sys.argv[1]).eval()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: fixture_tensor(k, s) for k, s in shapes.items()})
    with torch.no_grad():
        y = model(htdemucs_input())
    json.dump({"keys": shapes, "output_shape": list(y.shape), "every": KEPT, "output": y.flatten()[::KEPT].tolist()},
              open("htdemucs.json", "w"))
    print("htdemucs", len(shapes), "keys", tuple(y.shape))

    for name, cls, extra in (("bs_roformer", BSRoformer, dict(freqs_per_bands=BANDS)),
                             ("mel_band_roformer", MelBandRoformer, dict(num_bands=8, sample_rate=44100))):
        model = cls(**TINY, **extra).eval()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict({k: fixture_tensor(k, s) for k, s in shapes.items()})
        with torch.no_grad():
            y = model(fixture_input())
        json.dump({"keys": shapes, "output_shape": list(y.shape), "every": KEPT,
                   "output": y.flatten()[::KEPT].tolist()}, open(f"{name}.json", "w"))
        print(name, len(shapes), "keys", tuple(y.shape))
