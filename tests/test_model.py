"""Our OpenUnmix is open-unmix 1.3.0's: same parameters, same outputs, loadable both ways."""

import numpy as np
import pytest
import torch

import openunmix_compat
from umx.models.openunmix.network import OpenUnmix, Spectrogram, bandwidth_to_max_bin

openunmix_compat.register()
openunmix = pytest.importorskip("openunmix")
from openunmix import model as ou_model  # noqa: E402
from openunmix import transforms as ou_transforms  # noqa: E402
from openunmix import utils as ou_utils  # noqa: E402


def _ours(**kw):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    args = dict(nb_bins=1025, nb_channels=2, hidden_size=32, max_bin=bandwidth_to_max_bin(44100, 2048, 16000),
                input_mean=rng.random(1025), input_scale=rng.random(1025) + 0.5)
    args.update(kw)
    return OpenUnmix(**args), args


@pytest.mark.parametrize("kw", [{}, {"unidirectional": True}, {"nb_channels": 1}, {"max_bin": None}])
def test_state_dict_loads_strict_and_outputs_match(kw):
    ours, args = _ours(**kw)
    theirs = ou_model.OpenUnmix(**args)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in theirs.state_dict().items()]
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.rand(2, args["nb_channels"], 1025, 30)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_spectrogram_matches_openunmix_encoder():
    stft, _ = ou_transforms.make_filterbanks(n_fft=2048, n_hop=512, sample_rate=44100.0)
    x = torch.randn(2, 2, 44100)
    for mono in (False, True):
        theirs = torch.nn.Sequential(stft, ou_model.ComplexNorm(mono=mono))(x)
        torch.testing.assert_close(Spectrogram(2048, 512, mono=mono)(x), theirs, rtol=1e-5, atol=1e-5)


def test_bandwidth_to_max_bin_matches():
    for rate, nfft, bw in [(44100, 4096, 16000), (16000, 1024, 16000), (44100, 2048, 8000)]:
        assert bandwidth_to_max_bin(rate, nfft, bw) == ou_utils.bandwidth_to_max_bin(rate, nfft, bw)
