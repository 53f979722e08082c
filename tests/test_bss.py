"""umx.bss: the fast BSSv4 gives museval's numbers (museval itself runs on short excerpts).

Excerpts are "1-s" frames at 8 kHz (win = hop = 8000) so museval stays fast; its cost is
dominated by its (nsrc * nchan * 512)^2 solves (~10 s for 4 stereo sources, however short),
so only one case has 4 stereo sources.
"""

import functools
import warnings
import zlib

import museval
import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from umx import bss

RATE = 8000  # samples per "second" of these excerpts: win = hop = RATE

MEDIAN_TOL = 0.01  # dB, per source, nanmedian over frames (museval's EvalStore aggregation)
FRAME_TOL = 0.05  # dB, every frame

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: see conftest


def _sources(rng, nsrc, n, nchan):
    """Coloured (AR(1)) noise: full band, so G is well conditioned, but not white."""
    x = rng.standard_normal((nsrc, n, nchan))
    return lfilter([1.0], [1.0, -rng.uniform(0.3, 0.9)], x, axis=1)


def _estimates(rng, refs, leak=0.2, noise=0.3):
    """references through a short random filter + leakage of the others + noise."""
    fir = np.r_[1.0, 0.4 * rng.standard_normal(8)]
    est = lfilter(fir, [1.0], refs, axis=1)
    est = est + leak * (refs.sum(0, keepdims=True) - refs) + noise * rng.standard_normal(refs.shape)
    return est


def _case(name):
    """(references, estimates, win, hop) of a named case; everything seeded."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    n = int(3.5 * RATE)  # 3 frames; the trailing half frame is dropped by museval
    if name == "stereo2_silent_ref":  # reference 0 silent over frame 1 (and a bit of frame 2)
        r = _sources(rng, 2, n, 2)
        r[0, RATE:int(2.3 * RATE)] = 0
        return r, _estimates(rng, r), RATE, RATE
    if name == "mono2_near_silent":  # a target 80 dB below the other, estimates leak into it
        r = _sources(rng, 2, n, 1)
        r[1] *= 1e-4
        return r, _estimates(rng, r, leak=0.01, noise=1e-3), RATE, RATE
    if name == "mono4_silent_est":  # estimate 2 silent over frame 0: frame 0 NaN for everyone
        r = _sources(rng, 4, n, 1)
        e = _estimates(rng, r)
        e[2, :RATE] = 0
        return r, e, RATE, RATE
    if name == "stereo4_antiphase_short_est":
        # strong leakage and filtering; reference 1 has left == -right over frame 2: its
        # channel sum is zero, which museval counts as silent; the estimates are 0.4 s
        # short (padded with zeros)
        r = _sources(rng, 4, n, 2)
        r[1, 2 * RATE:3 * RATE, 1] = -r[1, 2 * RATE:3 * RATE, 0]
        e = _estimates(rng, r, leak=0.3, noise=0.1)[:, : n - int(0.4 * RATE)]
        return r, e, RATE, RATE
    if name == "mono2_overlap":  # hop < win (2-s frames, 0.5 s hop), float32 inputs
        r = _sources(rng, 2, n, 1).astype(np.float32)
        return r, _estimates(rng, r).astype(np.float32), 2 * RATE, RATE // 2
    if name == "mono2_whole":  # win > n: one frame of the whole excerpt
        r = _sources(rng, 2, n, 1)
        return r, _estimates(rng, r), 10 * RATE, 10 * RATE
    raise KeyError(name)


CASES = ["stereo2_silent_ref", "mono2_near_silent", "mono4_silent_est", "stereo4_antiphase_short_est",
         "mono2_overlap", "mono2_whole"]
NAN_FRAMES = {"stereo2_silent_ref": [1], "mono4_silent_est": [0], "stereo4_antiphase_short_est": [2]}


@functools.lru_cache(maxsize=None)
def _museval(name):
    r, e, win, hop = _case(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack(museval.evaluate(r, e, win=win, hop=hop, mode="v4"))


def _check(ours, ref):
    """NaN exactly where museval's; every frame within FRAME_TOL; medians within MEDIAN_TOL."""
    assert ours.shape == ref.shape
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    fin = ~np.isnan(ref)
    assert np.array_equal(ours[fin] == np.inf, ref[fin] == np.inf)
    fin &= np.isfinite(ref)
    assert np.abs(ours[fin] - ref[fin]).max() <= FRAME_TOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med_o, med_r = np.nanmedian(ours, axis=2), np.nanmedian(ref, axis=2)
    assert np.array_equal(np.isnan(med_o), np.isnan(med_r))
    assert np.array_equal(np.isinf(med_o), np.isinf(med_r))
    ok = np.isfinite(med_r)
    assert np.abs(med_o[ok] - med_r[ok]).max() <= MEDIAN_TOL


@pytest.mark.parametrize("name", CASES)
def test_matches_museval(name):
    r, e, win, hop = _case(name)
    ref = _museval(name)
    ours = np.stack(bss.evaluate(r, e, win=win, hop=hop))
    assert ours.dtype == np.float64
    _check(ours, ref)
    # the case exercises what it is named for
    nan_frames = np.flatnonzero(np.isnan(ref[0]).all(0))
    assert nan_frames.tolist() == NAN_FRAMES.get(name, [])
    assert np.isfinite(ref).any()
    if name == "mono2_whole":
        assert ref.shape[-1] == 1
    if name == "mono2_overlap":
        assert ref.shape[-1] == 4  # floor((3.5 - 2 + 0.5) / 0.5)


@pytest.mark.parametrize("name", CASES)
def test_sdr_alone_is_museval_sdr(name):
    """`bss.sdr` (no filters: what --eval-every scores) is museval's SDR: NaN frames alike, ~1e-12 dB."""
    r, e, win, hop = _case(name)
    ref = _museval(name)[0]
    ours = bss.sdr(r, e, win=win, hop=hop)
    assert ours.shape == ref.shape and np.array_equal(np.isnan(ours), np.isnan(ref))
    fin = np.isfinite(ref)
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    assert np.abs(ours[fin] - ref[fin]).max() < 1e-9
    np.testing.assert_allclose(ours, bss.evaluate(r, e, win=win, hop=hop)[0], rtol=0, atol=1e-9)


def test_frames_follow_museval_framing():
    for win, hop, n in [(8000, 8000, 28000), (16000, 4000, 28000), (8000, 8000, 24000), (30000, 30000, 28000),
                        (3000.0, 1500.5, 10001)]:
        framer = museval.metrics.Framing(win, hop, n)
        want = [(s.start, s.stop) for s in framer]
        assert bss._frames(win, hop, n) == want


def test_single_source_is_museval():
    """nsrc = 1: no interference, SIR = +inf in museval (Pa == Pj exactly)."""
    r, e, win, hop = _case("stereo2_silent_ref")
    r, e = r[:1, : 2 * RATE], e[:1, : 2 * RATE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.stack(museval.evaluate(r, e, win=win, hop=hop))
    ours = np.stack(bss.evaluate(r, e, win=win, hop=hop))
    assert ref[2, 0, 0] == np.inf and np.isnan(ref[:, 0, 1]).all()
    _check(ours, ref)


def test_mono_2d_torch_and_devices():
    """[nsrc, n] mono, torch inputs (float32 too), explicit CPU devices: the same numbers."""
    r, e, win, hop = _case("mono2_near_silent")
    ref = _museval("mono2_near_silent")
    base = np.stack(bss.evaluate(r[..., 0], e[..., 0], win=win, hop=hop))
    _check(base, ref)
    for device in ("cpu", torch.device("cpu")):
        out = np.stack(bss.evaluate(torch.from_numpy(r), torch.from_numpy(e), win=win, hop=hop, device=device))
        np.testing.assert_allclose(out, base, rtol=0, atol=1e-9)
    r32, e32 = r.astype(np.float32), e.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref32 = np.stack(museval.evaluate(r32, e32, win=win, hop=hop))
    _check(np.stack(bss.evaluate(torch.from_numpy(r32), torch.from_numpy(e32), win=win, hop=hop)), ref32)


def test_float32_compute_is_close():
    """dtype=float32 is approximate (a quick look), but not wrong."""
    r, e, win, hop = _case("stereo2_silent_ref")
    ref = _museval("stereo2_silent_ref")
    out = np.stack(bss.evaluate(r, e, win=win, hop=hop, dtype=torch.float32))
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    fin = np.isfinite(ref)
    assert np.abs(out[fin] - ref[fin]).max() < 0.1
    with pytest.raises(ValueError):
        bss.evaluate(r, e, dtype=torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_museval():
    r, e, win, hop = _case("stereo2_silent_ref")
    _check(np.stack(bss.evaluate(torch.from_numpy(r).cuda(), e, win=win, hop=hop, device="cuda")),
           _museval("stereo2_silent_ref"))


def test_invalid_inputs_raise_like_museval():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((2, 2000, 1))
    silent = r.copy()
    silent[1] = 0
    for refs, ests, kw in [(silent, r, {}), (r, silent, {}), (r, r[:, :1500], {"padding": False})]:
        with pytest.raises(ValueError):
            museval.evaluate(refs, ests, win=500, hop=500, **kw)
        with pytest.raises(ValueError):
            bss.evaluate(refs, ests, win=500, hop=500, **kw)


def test_usdr_is_the_mdx_formula():
    rng = np.random.default_rng(1)
    r = rng.standard_normal((4, 5000, 2))
    e = r + rng.uniform(0.01, 1.0, (4, 1, 1)) * rng.standard_normal(r.shape)
    r[3] = 0  # a silent reference: finite, <= 0 dB, not NaN
    want = 10 * np.log10((1e-7 + (r**2).sum((1, 2))) / (1e-7 + ((r - e) ** 2).sum((1, 2))))
    got = bss.usdr(r, e)
    assert got.shape == (4,) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert np.isfinite(got).all() and got[3] < 0
    np.testing.assert_allclose(bss.usdr(torch.from_numpy(r).float(), torch.from_numpy(e).float()), want, atol=1e-4)
    assert bss.usdr(r, r)[0] == pytest.approx(10 * np.log10(((r[0] ** 2).sum() + 1e-7) / 1e-7))
    mono = bss.usdr(r[..., 0], e[..., 0])
    np.testing.assert_allclose(mono, 10 * np.log10((1e-7 + (r[..., 0] ** 2).sum(1))
                                                   / (1e-7 + ((r - e)[..., 0] ** 2).sum(1))), atol=1e-10)
    with pytest.raises(ValueError):
        bss.usdr(r, e[:, :10])
    long_r = rng.standard_normal((2, 3 * bss.USDR_CHUNK + 123, 2)).astype(np.float32)  # several chunks
    long_e = long_r + 0.1 * rng.standard_normal(long_r.shape).astype(np.float32)
    r64, e64 = long_r.astype(np.float64), long_e.astype(np.float64)
    want = 10 * np.log10((1e-7 + (r64**2).sum((1, 2))) / (1e-7 + ((r64 - e64) ** 2).sum((1, 2))))
    channels_first = np.ascontiguousarray(long_r.transpose(0, 2, 1)).transpose(0, 2, 1)  # a strided view
    np.testing.assert_allclose(bss.usdr(channels_first, long_e), want, rtol=0, atol=1e-10)
