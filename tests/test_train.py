import json
from types import SimpleNamespace

import pytest
import torch

import openunmix_compat
from umx.models.openunmix.network import Spectrogram
from umx.models.openunmix.files import load_target
from umx.train.cli import cli as train_cli, main as train_main
from umx.train import TrainConfig, train

SMALL = dict(hidden_size=16, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True)


def _cfg(shard_set, out, **kw):
    return TrainConfig(shards=str(shard_set), output=str(out), **{**SMALL, **kw})


@pytest.fixture(scope="module")
def trained(shard_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    train(_cfg(shard_set, out, epochs=4, source_augmentations=["gain", "channelswap"], random_track_mix=True))
    return out


def test_outputs_are_open_unmix_files(trained):
    assert sorted(p.name for p in trained.iterdir()) == ["separator.json", "vocals.chkpnt", "vocals.json",
                                                        "vocals.pth", "vocals_loss.png"]
    assert (trained / "vocals_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn after every epoch
    sep = json.loads((trained / "separator.json").read_text())
    assert sep == {"nb_channels": 2, "nfft": 2048, "nhop": 512, "sample_rate": 44100}
    res = json.loads((trained / "vocals.json").read_text())
    for key in ("epochs_trained", "args", "best_loss", "best_epoch", "train_loss_history",
                "valid_loss_history", "train_time_history", "num_bad_epochs"):
        assert key in res
    assert res["epochs_trained"] == 4 and len(res["train_loss_history"]) == 4 == len(res["train_time_history"])
    assert res["best_loss"] == min(res["valid_loss_history"])
    assert res["valid_loss_history"][res["best_epoch"] - 1] == res["best_loss"]
    assert res["args"]["nfft"] == 2048 and res["args"]["hidden_size"] == 16 and res["args"]["target"] == "vocals"
    ckpt = torch.load(trained / "vocals.chkpnt", weights_only=False)
    assert {"epoch", "state_dict", "best_loss", "optimizer", "scheduler"} <= set(ckpt)
    assert ckpt["epoch"] == 5


def test_training_learns(shard_set, tmp_path):
    train(_cfg(shard_set, tmp_path, epochs=8, samples_per_track=4, lr=0.01))
    res = json.loads((tmp_path / "vocals.json").read_text())
    train_loss, valid_loss = res["train_loss_history"], res["valid_loss_history"]
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert min(valid_loss[1:]) < valid_loss[0]


def test_openunmix_package_loads_our_model_dir(trained):
    openunmix_compat.register()
    ou_utils = pytest.importorskip("openunmix.utils")
    theirs = ou_utils.load_target_models("vocals", model_str_or_path=str(trained))["vocals"]
    ours = load_target(str(trained), "vocals")
    theirs.load_state_dict(torch.load(trained / "vocals.pth", weights_only=True), strict=True)
    ours.eval(), theirs.eval()
    spec = Spectrogram(2048, 512)(torch.randn(1, 2, 44100))
    with torch.no_grad():
        torch.testing.assert_close(ours(spec), theirs(spec))
    separator = ou_utils.load_separator(str(trained), targets=["vocals"], niter=0)
    assert separator.sample_rate == 44100


def test_input_scaler_initialised_from_manifest(shard_set, tmp_path):
    from umx.shards import manifest as mf
    from umx.train import build_trainer

    t = build_trainer(_cfg(shard_set, tmp_path / "o", nfft=4096, nhop=1024, bandwidth=16000))
    stats = mf.load(shard_set).statistics(4096, 1024)
    model = t.model.units[t.cfg.target]
    n = model.nb_bins
    torch.testing.assert_close(model.input_mean, -torch.tensor(stats["mean"][:n], dtype=torch.float32))
    torch.testing.assert_close(model.input_scale, 1 / torch.tensor(stats["std"][:n], dtype=torch.float32))


def test_statistics_for_other_stft_are_computed_once_and_cached(shard_set, tmp_path, monkeypatch):
    from umx.prep import stats as stats_mod
    from umx.shards import manifest as mf
    from umx.train.build import input_statistics

    m = mf.load(shard_set)
    calls = []
    real = stats_mod.from_shard_set
    monkeypatch.setattr(stats_mod, "from_shard_set", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("UMX_CACHE", str(tmp_path))
    a = input_statistics(m, 1024, 256, quiet=True)
    b = input_statistics(m, 1024, 256, quiet=True)
    assert a == b and len(calls) == 1 and len(a["mean"]) == 513
    assert input_statistics(m, 4096, 1024, quiet=True) == m.statistics(4096, 1024)


def test_resume_continues_the_same_history(shard_set, tmp_path):
    opts = dict(source_augmentations=["gain", "channelswap"], random_track_mix=True, seed=3)
    full = tmp_path / "full"
    train(_cfg(shard_set, full, epochs=4, **opts))
    part = tmp_path / "part"
    train(_cfg(shard_set, part, epochs=2, **opts))
    train(_cfg(shard_set, part, epochs=4, checkpoint=str(part), **opts))
    a = json.loads((full / "vocals.json").read_text())
    b = json.loads((part / "vocals.json").read_text())
    assert b["epochs_trained"] == 4
    for key in ("train_loss_history", "valid_loss_history"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert (a["best_epoch"], a["num_bad_epochs"]) == (b["best_epoch"], b["num_bad_epochs"])


def test_fine_tune_starts_from_model(shard_set, trained, tmp_path):
    out = tmp_path / "ft"
    train(_cfg(shard_set, out, epochs=1, model=str(trained)))
    before = torch.load(trained / "vocals.pth", weights_only=True)
    after = torch.load(out / "vocals.pth", weights_only=True)
    # the scaler is trainable in open-unmix: it starts from the model's values and moves a little
    torch.testing.assert_close(before["input_mean"], after["input_mean"], atol=0.05, rtol=0)
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])  # and it trained


def test_cli_defaults_match_the_spec():
    a = SimpleNamespace(**train_cli.make_context("umx-train", ["--shards", "s"]).params)
    expected = dict(target=None, output="open-unmix", checkpoint=None, model=None, no_cuda=False, epochs=1000,
                    batch_size=16, patience=140, seq_dur=6.0, unidirectional=False, hidden_size=512, nfft=4096,
                    nhop=1024, lr=0.001, lr_decay_patience=80, lr_decay_gamma=0.3, weight_decay=0.00001,
                    bandwidth=16000, nb_channels=2, nb_workers=0, quiet=False, seed=42)
    assert {k: getattr(a, k) for k in expected} == expected
    b = SimpleNamespace(**train_cli.make_context("umx-train", [
        "--shards", "s", "--no_cuda", "--batch_size", "3", "--source-augmentations", "gain", "channelswap",
        "--random-track-mix"]).params)
    assert b.no_cuda and b.batch_size == 3 and b.source_augmentations == ["gain", "channelswap"]
    assert b.random_track_mix is True


def test_target_defaults_to_the_shard_sets(shard_set, tmp_path):
    from umx.shards import manifest as mf

    cfg = _cfg(shard_set, tmp_path).resolved(mf.load(shard_set))
    assert cfg.target == "vocals"
    assert (cfg.samples_per_track, cfg.source_augmentations, cfg.random_track_mix) == (1, [], False)


def test_cli_trains_and_reports_errors(shard_set, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--shards", str(shard_set), "--output", str(out), "--epochs", "1", "--hidden-size", "8",
            "--seq-dur", "1", "--nfft", "2048", "--nhop", "512", "--quiet", "--no_cuda"]
    assert train_main(args) == 0
    assert f"model written to {out}" in capsys.readouterr().out
    assert train_main(args[:-2] + ["--target", "piano"]) == 2
    err = capsys.readouterr().err
    assert "target 'piano' is not a source" in err and "Traceback" not in err
    assert train_main(["--shards", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no manifest here" in capsys.readouterr().err
    assert train_main(["--shards", str(shard_set), "--checkpoint", str(tmp_path / "none"), "--quiet",
                       "--seq-dur", "1", "--output", str(tmp_path / "x")]) == 2
    assert "vocals.chkpnt: not found" in capsys.readouterr().err
