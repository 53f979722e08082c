"""Every command line of the spec, run as `umx-train …` on synthetic data of its layout."""

import json

import pytest

from umx import synth
from umx.prep import cache
from umx.train.cli import main as train_main

TINY = ["--epochs", "1", "--hidden-size", "8", "--seq-dur", "1", "--nfft", "2048", "--nhop", "512",
        "--batch-size", "8", "--quiet"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))


def _run(tmp_path, args, capsys):
    out = tmp_path / "model"
    code = train_main(args + TINY + ["--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out, captured


def test_musdb_example(tmp_path, capsys):
    root = synth.write_layout("musdb", tmp_path / "musdb18", n_train=2, n_valid=1, duration=3.0)
    out, _ = _run(tmp_path, ["--root", str(root), "--target", "vocals", "--samples-per-track", "2"], capsys)
    args = json.loads((out / "vocals.json").read_text())["args"]
    assert args["dataset"] == "musdb" and args["source_augmentations"] == ["gain", "channelswap"]
    # a second run reuses the prepared shard set, and under --quiet says nothing at all
    _, captured = _run(tmp_path, ["--root", str(root), "--target", "vocals", "--samples-per-track", "2"], capsys)
    assert captured.err == ""
    prepared = list((tmp_path / "cache" / "prepared").iterdir())
    assert len(prepared) == 1
    # without --quiet the same command line names the set it reuses (and prepares nothing)
    assert cache.resolve_shards(None, None, str(root), {"samples_per_track": 2}) == str(prepared[0])
    assert capsys.readouterr().err == f"using prepared shard set {prepared[0]}\n"


def test_aligned_example(tmp_path, capsys):
    root = synth.write_layout("aligned", tmp_path / "dataset", n_train=2, n_valid=1, duration=3.0)
    out, _ = _run(tmp_path, ["--dataset", "aligned", "--root", str(root), "--input_file", "mixture.wav",
                             "--output_file", "vocals.wav"], capsys)
    assert (out / "vocals.pth").is_file()


def test_sourcefolder_example(tmp_path, capsys, monkeypatch):
    """The spec's command prepares its folder and trains with its options (the 1000 samples' epoch is
    not run here: sourcefolder training is in the golden record)."""
    root = synth.write_layout("sourcefolder", tmp_path / "data", n_train=2, n_valid=1, duration=3.0, ext=".ogg")
    for split in ("train", "valid"):
        (root / split / "bass").rename(root / split / "car_noise")
        (root / split / "drums").rename(root / split / "wind_noise")
    from umx.train import build

    seen = {}
    monkeypatch.setattr(build, "train", lambda cfg: seen.update(trainer=build.build_trainer(cfg)))
    _run(tmp_path, ["--dataset", "sourcefolder", "--root", str(root), "--target-dir", "vocals",
                    "--interferer-dirs", "car_noise", "wind_noise", "--ext", ".ogg", "--nb-train-samples", "1000", "--debug"],
         capsys)
    trainer = seen["trainer"]
    assert trainer.cfg.nb_train_samples == 1000 and trainer.stream.samples_per_epoch() == 1000
    assert trainer.manifest.layout == "sourcefolder" and list(trainer.manifest.sources)[1:] == ["car_noise", "wind_noise"]


def test_trackfolder_fix_example(tmp_path, capsys):
    root = synth.write_layout("trackfolder_fix", tmp_path / "data", n_train=2, n_valid=1, duration=3.0, ext=".flac")
    out, _ = _run(tmp_path, ["--root", str(root), "--dataset", "trackfolder_fix", "--target-file", "vocals.flac",
                             "--interferer-files", "bass.flac", "drums.flac", "other.flac"], capsys)
    assert (out / "vocals.pth").is_file()


def test_trackfolder_var_example(tmp_path, capsys):
    root = synth.write_layout("trackfolder_var", tmp_path / "data", n_train=2, n_valid=1, duration=3.0,
                              target_ext=".flac")
    out, _ = _run(tmp_path, ["--root", str(root), "--dataset", "trackfolder_var", "--target-file", "vocals.flac",
                             "--ext", ".wav", "--audio-backend", "sox"], capsys)
    assert (out / "vocals.pth").is_file()


def test_without_root_uses_embedded_synthetic_data(tmp_path, capsys):
    out = tmp_path / "model"
    assert train_main(["--target", "vocals", "--samples-per-track", "1", "--output", str(out)]
                      + [a for a in TINY if a != "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "embedded synthetic musdb data set" in err and "cannot download" in err
    assert (out / "vocals.pth").is_file()


def test_wrong_combinations_name_the_option(tmp_path, shard_set, capsys):
    root = synth.write_layout("musdb", tmp_path / "m", n_train=1, n_valid=1, duration=2.0)
    assert train_main(["--root", str(root), "--interferer-files", "bass.wav"] + TINY) == 2
    assert "--interferer-files: not an option of the musdb layout" in capsys.readouterr().err
    assert train_main(["--shards", str(shard_set), "--target", "piano"] + TINY) == 2
    err = capsys.readouterr().err
    assert "target 'piano' is not a source" in err and "vocals, bass, drums, other" in err
    assert train_main(["--shards", str(shard_set), "--root", str(root)] + TINY) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert train_main(["--shards", str(shard_set), "--target-file", "vocals.wav"] + TINY) == 2
    assert "--target-file: dataset options need --root" in capsys.readouterr().err
