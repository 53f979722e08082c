"""umx-separate / Separator: open-unmix's separation, file handling, errors."""

import json

import numpy as np
import pytest
import torch

import openunmix_compat
from umx import audio
from umx.filtering import wiener
from umx.models.openunmix.network import OpenUnmix, bandwidth_to_max_bin
from umx.models.openunmix.separator import OverlapAdd, Separator
from umx.separate import main as separate_main
from umx.train import TrainConfig, train

openunmix_compat.register()
openunmix = pytest.importorskip("openunmix")
from openunmix import filtering as ou_filtering  # noqa: E402
from openunmix import model as ou_model  # noqa: E402
from openunmix import predict as ou_predict  # noqa: E402
from openunmix import utils as ou_utils  # noqa: E402

SMALL = dict(hidden_size=16, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True)
WIN = 50  # Wiener window in frames: a 4 s track has ~345, so filtering runs in several windows


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(shard_set, tmp_path_factory):
    """Our trainer's model directory with two targets (vocals, drums), 2 epochs each."""
    out = tmp_path_factory.mktemp("sep") / "model"
    for target in ("vocals", "drums"):
        train(TrainConfig(shards=str(shard_set), output=str(out), target=target, epochs=2, **SMALL))
    return out


@pytest.fixture(scope="module")
def mixture(dataset, tmp_path_factory):
    """A synthetic valid-track mixture (sum of its stems) as a float WAV, and its audio."""
    track = dataset / "valid" / "track_000"
    mix = sum(audio.read(track / f"{s}.wav")[0] for s in ("vocals", "bass", "drums", "other"))
    path = tmp_path_factory.mktemp("mix") / "song.wav"
    audio.write(path, mix, 44100, subtype="FLOAT")
    return path, mix


def _read_outputs(folder, names):
    out = {}
    for name in names:
        data, rate = audio.read(folder / f"{name}.wav")
        out[name] = (data, rate)
    return out


def _openunmix(model_dir, targets, mix, niter, residual, win):
    sep = ou_utils.load_separator(str(model_dir), targets=targets, niter=niter, residual=residual,
                                  wiener_win_len=win, device="cpu")
    sep.freeze()
    with torch.no_grad():
        est = ou_predict.separate(torch.from_numpy(mix), rate=44100, separator=sep)
    return {k: v[0].numpy() for k, v in est.items()}


@pytest.mark.parametrize("niter,residual", [(0, False), (0, True), (1, False), (1, True)])
def test_cli_matches_openunmix(model_dir, mixture, tmp_path, niter, residual, capsys):
    path, mix = mixture
    args = [str(model_dir), str(path), "--outdir", str(tmp_path), "--niter", str(niter),
            "--wiener-win-len", str(WIN), "--no-cuda"] + (["--residual"] if residual else [])
    assert separate_main(args) == 0
    assert f"{path} -> {tmp_path / 'song'}/" in capsys.readouterr().out
    names = ["drums", "vocals"] + (["residual"] if residual else [])  # every .pth in the dir, sorted
    assert sorted(p.name for p in (tmp_path / "song").iterdir()) == sorted(f"{n}.wav" for n in names)
    ours = _read_outputs(tmp_path / "song", names)
    theirs = _openunmix(model_dir, ["drums", "vocals"], mix, niter, residual, WIN)
    assert set(theirs) == set(names)
    for name in names:
        data, rate = ours[name]
        assert rate == 44100 and data.shape == mix.shape
        np.testing.assert_allclose(data, theirs[name], atol=1e-4, rtol=0, err_msg=name)
    assert np.abs(theirs["vocals"]).max() > 1e-3  # not trivially silent


def test_mono_file_matches_openunmix(model_dir, mixture, tmp_path):
    _, mix = mixture
    mono = mix.mean(0, keepdims=True)
    audio.write(tmp_path / "mono.wav", mono, 44100, subtype="FLOAT")
    assert separate_main([str(model_dir), str(tmp_path / "mono.wav"), "--outdir", str(tmp_path / "o"),
                          "--targets", "vocals", "drums", "--wiener-win-len", str(WIN)]) == 0
    theirs = _openunmix(model_dir, ["vocals", "drums"], mono, 1, False, WIN)  # open-unmix duplicates mono
    for name, (data, rate) in _read_outputs(tmp_path / "o" / "mono", ["vocals", "drums"]).items():
        assert data.shape == (2, mono.shape[1]) and rate == 44100
        np.testing.assert_allclose(data, theirs[name], atol=1e-4, rtol=0)


def _openunmix_model_dir(folder, targets, seed=0):
    """A model directory as open-unmix's train.py writes it: OpenUnmix + save_checkpoint + its json."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    max_bin = int(ou_utils.bandwidth_to_max_bin(44100.0, 2048, 16000))
    for target in targets:
        model = ou_model.OpenUnmix(nb_bins=1025, nb_channels=2, hidden_size=16, max_bin=max_bin,
                                   input_mean=rng.random(1025) * 0.1, input_scale=rng.random(1025) + 0.5)
        with torch.no_grad():  # an untrained model passes nearly everything: make the targets differ
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        ou_utils.save_checkpoint({"epoch": 3, "state_dict": model.state_dict(), "best_loss": 0.5,
                                  "optimizer": {}, "scheduler": {}}, is_best=True, path=str(folder), target=target)
        args = {"target": target, "root": "data", "output": str(folder), "model": None, "checkpoint": None,
                "dataset": "trackfolder_fix", "epochs": 2, "batch_size": 16, "lr": 0.001, "patience": 140,
                "lr_decay_patience": 80, "lr_decay_gamma": 0.3, "weight_decay": 1e-05, "seed": 42,
                "seq_dur": 6.0, "unidirectional": False, "nfft": 2048, "nhop": 512, "hidden_size": 16,
                "bandwidth": 16000, "nb_channels": 2, "nb_workers": 0, "debug": False, "quiet": False,
                "no_cuda": False, "audio_backend": "soundfile", "target_file": f"{target}.wav",
                "interferer_files": ["bass.wav"], "random_track_mix": False, "source_augmentations": []}
        params = {"epochs_trained": 2, "args": args, "best_loss": 0.5, "best_epoch": 2,
                  "train_loss_history": [1.0, 0.7], "valid_loss_history": [0.9, 0.5],
                  "train_time_history": [1.0, 1.0], "num_bad_epochs": 0, "commit": None}
        (folder / f"{target}.json").write_text(json.dumps(params, indent=4, sort_keys=True))
    (folder / "separator.json").write_text(json.dumps(
        {"nfft": 2048, "nhop": 512, "sample_rate": 44100.0, "nb_channels": 2}, indent=4, sort_keys=True))
    return folder


@pytest.mark.parametrize("niter,residual", [(0, True), (1, False), (2, True)])
def test_loads_model_dir_written_by_openunmix(tmp_path, mixture, niter, residual):
    folder = _openunmix_model_dir(tmp_path / "ou", ["bass", "vocals"])
    _, mix = mixture
    ours = Separator.from_dir(folder, niter=niter, residual=residual, wiener_win_len=WIN)
    assert ours.target_names == ["bass", "vocals"] + (["residual"] if residual else [])
    assert ours.sample_rate == 44100 and not ours.training
    with torch.no_grad():
        a = ours(torch.from_numpy(mix)[None])
    theirs = _openunmix(folder, ["bass", "vocals"], mix, niter, residual, WIN)
    b = np.stack([theirs[n] for n in ours.target_names])
    np.testing.assert_allclose(a[0].numpy(), b, atol=1e-4, rtol=0)
    assert np.abs(b[0] - b[1]).max() > 1e-2  # the two targets really differ


def test_multichannel_and_resampled_inputs(model_dir, mixture, tmp_path):
    _, mix = mixture
    noise = np.random.default_rng(0).standard_normal((2, mix.shape[1])).astype(np.float32) * 0.1
    audio.write(tmp_path / "stereo.wav", mix, 44100, subtype="FLOAT")
    audio.write(tmp_path / "quad.wav", np.concatenate([mix, noise]), 44100, subtype="FLOAT")
    low = audio.resample(mix, 44100, 22050)
    audio.write(tmp_path / "low.flac", low, 22050)
    audio.write(tmp_path / "high.wav", audio.resample(mix, 44100, 48000), 48000, subtype="FLOAT")
    files = [str(tmp_path / f) for f in ("stereo.wav", "quad.wav", "low.flac", "high.wav")]
    out = tmp_path / "out"
    assert separate_main([str(model_dir), *files, "--outdir", str(out), "--targets", "vocals", "--niter", "0",
                          "--residual", "--residual-name", "accompaniment", "--quiet"]) == 0
    names = ["vocals", "accompaniment"]
    stereo = _read_outputs(out / "stereo", names)
    quad = _read_outputs(out / "quad", names)
    for name in names:  # > 2 channels: the first two are separated
        np.testing.assert_array_equal(quad[name][0], stereo[name][0])
    expected_len = {"low": audio.resample(audio.read(tmp_path / "low.flac")[0], 22050, 44100).shape[1],
                    "high": audio.resample(mix, 44100, 48000).shape[1] * 44100 // 48000}
    for stem, n in expected_len.items():
        for data, rate in _read_outputs(out / stem, names).values():
            assert rate == 44100 and data.shape[0] == 2  # the model's rate, as open-unmix writes
            assert abs(data.shape[1] - n) <= 1, (stem, data.shape, n)
            assert abs(data.shape[1] - mix.shape[1]) <= 2
    # the file is resampled to the model's rate with soxr, then separated
    high, rate = audio.read(tmp_path / "high.wav")
    sep = Separator.from_dir(model_dir, ["vocals"], niter=0, residual="accompaniment")
    with torch.no_grad():
        expected = sep(torch.from_numpy(audio.resample(high, rate, 44100))[None])[0].numpy()
    got = _read_outputs(out / "high", names)
    for k, name in enumerate(names):
        np.testing.assert_allclose(got[name][0], expected[k], atol=1e-5, rtol=0)


def test_other_formats(model_dir, mixture, tmp_path):
    path, mix = mixture
    assert separate_main([str(model_dir), str(path), "--outdir", str(tmp_path), "--targets", "vocals",
                          "--niter", "0", "--ext", "flac"]) == 0
    info = audio.info(tmp_path / "song" / "vocals.flac")
    assert (info.sample_rate, info.channels, info.frames) == (44100, 2, mix.shape[1])


def test_clear_errors(model_dir, mixture, tmp_path, capsys):
    path, _ = mixture
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    out = ["--outdir", str(tmp_path / "o")]
    cases = [
        ([str(model_dir), str(tmp_path / "missing.wav")] + out, "missing.wav: file not found"),
        ([str(model_dir), str(path), str(bad)] + out, "bad.wav: not a readable audio file"),
        ([str(tmp_path / "nowhere"), str(path)] + out, "nowhere: model directory not found"),
        ([str(model_dir), str(path), "--targets", "piano"] + out, "piano.json: not found"),
        ([str(model_dir), str(path), "--targets", "vocals"] + out, "needs two sources"),
        ([str(model_dir), str(path), "--ext", ".xyz"] + out, "--ext .xyz: unknown audio format"),
        ([str(model_dir), str(path), str(path)] + out, "same name"),
    ]
    for args, message in cases:
        assert separate_main(args) == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # nothing was written by a failed run
    empty = tmp_path / "empty"
    empty.mkdir()
    assert separate_main([str(empty), str(path)] + out) == 2
    assert "no <target>.pth" in capsys.readouterr().err
    (empty / "vocals.pth").write_bytes(b"")
    assert separate_main([str(empty), str(path), "--niter", "0"] + out) == 2
    assert "separator.json: not found" in capsys.readouterr().err
    (empty / "separator.json").write_text((model_dir / "separator.json").read_text())
    (empty / "vocals.json").write_text((model_dir / "vocals.json").read_text())
    assert separate_main([str(empty), str(path), "--niter", "0"] + out) == 2
    err = capsys.readouterr().err
    assert "vocals.pth: cannot be loaded" in err and err.count("\n") == 1, err
    (empty / "vocals.pth").write_bytes((model_dir / "drums.pth").read_bytes())
    res = json.loads((model_dir / "vocals.json").read_text())
    res["args"]["hidden_size"] = 32  # the json says another size than the weights have
    (empty / "vocals.json").write_text(json.dumps(res))
    assert separate_main([str(empty), str(path), "--niter", "0"] + out) == 2
    err = capsys.readouterr().err
    assert "vocals.pth: cannot be loaded with the sizes in vocals.json" in err and err.count("\n") == 1, err
    (empty / "vocals.json").write_text((model_dir / "vocals.json").read_text())
    (empty / "vocals.pth").write_bytes((model_dir / "vocals.pth").read_bytes())
    (empty / "separator.json").write_text(json.dumps({"nb_channels": 2, "nfft": 4096, "nhop": 1024,
                                                      "sample_rate": 44100}))
    assert separate_main([str(empty), str(path), "--niter", "0"] + out) == 2
    assert "the model and separator.json disagree" in capsys.readouterr().err


def test_separator_api(model_dir, mixture):
    _, mix = mixture
    sep = Separator.from_dir(model_dir, ["vocals"], niter=0, residual=True, wiener_win_len=WIN)
    x = torch.from_numpy(mix[:, :44100])
    batch = torch.stack([x, 0.5 * x.flip(-1)])
    with torch.no_grad():
        both = sep(batch)
        one = sep(batch[1:])
        silence = sep(torch.zeros(1, 2, 8000))
    assert both.shape == (2, 2, 2, 44100)
    torch.testing.assert_close(both[1:], one, atol=1e-6, rtol=0)
    # niter 0 + residual: the estimates add up to the mixture (the STFT is linear)
    torch.testing.assert_close(both.sum(1), batch, atol=1e-5, rtol=0)
    assert torch.isfinite(silence).all() and silence.abs().max() == 0  # digital silence stays silent
    assert list(sep.to_dict(both)) == ["vocals", "residual"]
    with pytest.raises(Exception, match="too short"):
        sep(torch.zeros(1, 2, 1000))


@pytest.mark.parametrize("hop", [256, 300])
def test_overlap_add_is_istft(hop):
    """Block by block, any strides, hop dividing the window or not: torch.istft's signal."""
    torch.manual_seed(0)
    window = torch.hann_window(1024)
    spec = torch.randn(61, 513, 2, 3, dtype=torch.complex64).permute(3, 2, 1, 0)  # frames-first memory
    ref = torch.istft(spec.reshape(6, 513, 61), 1024, hop, window=window, center=True, length=15000)
    ola = OverlapAdd(1024, hop, window, 61, (3, 2), block=7)
    for pos in range(0, 61, 20):  # windows of 20 frames, blocks of 7 inside
        ola.add(spec[..., pos:pos + 20], pos)
    torch.testing.assert_close(ola.finish(15000), ref.reshape(3, 2, -1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("spec_channels", [2, 1])
def test_wiener_matches_openunmix(spec_channels):
    torch.manual_seed(1)
    for sources, iterations, residual, softmask in [(1, 0, True, False), (2, 1, False, False), (2, 2, True, False),
                                                     (3, 1, True, False), (2, 0, False, True), (2, 1, True, True)]:
        mix = torch.randn(40, 65, 2, dtype=torch.complex64) * 20
        spec = torch.rand(40, 65, spec_channels, sources) * 10
        spec[:, :3] = 0  # silent bins
        ours = wiener(spec, mix, iterations, softmask=softmask, residual=residual)
        theirs = ou_filtering.wiener(spec, torch.view_as_real(mix.clone()), iterations, softmask=softmask,
                                     residual=residual)
        theirs = torch.complex(theirs[..., 0, :], theirs[..., 1, :])
        scale = theirs.abs().max()
        torch.testing.assert_close(ours / scale, theirs / scale, atol=1e-5, rtol=0)


def test_mono_model_separates_stereo(tmp_path):
    torch.manual_seed(0)
    model = OpenUnmix(nb_bins=1025, nb_channels=1, hidden_size=16,
                      max_bin=bandwidth_to_max_bin(44100, 2048, 16000)).eval()
    theirs = ou_model.Separator({"vocals": model}, niter=1, residual=True, n_fft=2048, n_hop=512, nb_channels=1,
                                wiener_win_len=40)
    ours = Separator({"vocals": model}, niter=1, residual=True, n_fft=2048, n_hop=512, nb_channels=1,
                     wiener_win_len=40)
    x = torch.randn(1, 2, 30000) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
