"""The trust boundary, round 2: option values and unlucky but legitimate data end in one line, not a
traceback or a silent loss. Every number an option takes has a range (one table: train/config.py);
source and target names cannot overwrite the model directory's own files; --ema decays keep labels of
their own; a validation set that can give no cSDR is refused for --select-by sdr; tracks too short
for one STFT window are skipped by prep and refused by training."""

from __future__ import annotations

import json
import math
import re
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import FIX_OPTS
from umx import synth
from umx.bench import bench
from umx.bench_cli import main as bench_main
from umx.errors import UmxError
from umx.layouts import RESERVED_TARGETS, SHARED_FILES, TARGET_SUFFIXES, scan
from umx.prep import prepare
from umx.prep.cli import main as prep_main
from umx.shards import manifest as mf
from umx.train import TrainConfig, train
from umx.train import config as config_mod
from umx.train.cli import main as train_main
from umx.train.options import field_type
from umx.train.scoring import check_selectable, has_csdr
from umx.train.slots import make_slots
from umx.train.validation import load_validation
from one_line import one_line  # noqa: E402

TINY_ARGS = ["--hidden-size", "8", "--seq-dur", "0.5", "--batch-size", "3", "--nfft", "1024", "--nhop", "512",
             "--epochs", "1", "--quiet", "--debug"]
TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, epochs=1, quiet=True, debug=True)
FIX_ARGS = ["--target-file", "vocals.wav", "--interferer-files", "bass.wav", "drums.wav", "other.wav"]
BIG = "1" * 5001  # Python's int() refuses strings of over 4300 digits with a bare ValueError

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _one_line(capsys, *phrases: str, short: bool = True) -> str:
    return one_line(capsys, *phrases, short=short)


# --- 1. every number an option takes has a sane range ----------------------------------------------

def _numeric_fields():
    hints = typing.get_type_hints(TrainConfig)
    numbers = (int, float, int | None, float | None, list[float] | None, int | str)
    return [(f, opt) for f, opt in config_mod.options() if hints[f.name] in numbers and opt.choices is None]


def test_every_numeric_option_has_both_bounds():
    fields = _numeric_fields()
    assert {"seed", "seq_dur", "weight_decay", "data_timeout", "dist_timeout", "ema", "save_every"} <= \
        {f.name for f, _ in fields}
    for f, opt in fields:
        assert opt.low is not None and opt.high is not None, f.name
        assert math.isfinite(opt.low) and math.isfinite(opt.high) and opt.low < opt.high, f.name
        if opt.kind is None:  # the generated click type carries the very range
            t = field_type(f.name)
            assert (t.min, t.max, t.min_open, t.max_open) == (opt.low, opt.high, opt.low_open, opt.high_open), f.name


@pytest.mark.parametrize("option, value, phrase", [
    ("--seed", "-1", "0<=x<=4294967295"), ("--seed", "18446744073709551616", "0<=x<=4294967295"),
    ("--seq-dur", "1e308", "--seq-dur"), ("--weight-decay", "1e308", "--weight-decay"),
    ("--data-timeout", "1e300", "--data-timeout"), ("--dist-timeout", "1e15", "--dist-timeout"),
    ("--lr", "1e308", "--lr"), ("--mix-coef", "1e308", "--mix-coef"), ("--bandwidth", "1e12", "--bandwidth"),
    ("--cache-size", "1e308", "--cache-size"), ("--nhop", "4", "--nhop"), ("--ema", "nan", "--ema"),
    ("--seed", BIG, "5001 characters"), ("--epochs", BIG, "5001 characters"),
    ("--samples-per-track", BIG, "5001 characters"), ("--save-every", BIG, "5001 characters"),
    ("--save-every", "1e308s", "--save-every"), ("--ema", BIG, "--ema"),
    ("--storage-options", '{"endpoint_url": ' + BIG + "}", "a whole number of 5001 digits"),
])
def test_absurd_option_values_are_one_line(shard_set, tmp_path, capsys, option, value, phrase):
    assert train_main(["--shards", str(shard_set), "--output", str(tmp_path / "m"), *TINY_ARGS, option, value]) == 2
    _one_line(capsys, option, phrase)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("kw, phrase", [
    (dict(seed=-1), "--seed must be >= 0 and <= 4294967295"), (dict(seed=2**64), "--seed"),
    (dict(seq_dur=1e308), "--seq-dur"), (dict(weight_decay=1e308), "--weight-decay"),
    (dict(data_timeout=1e300), "--data-timeout"), (dict(dist_timeout=1e15), "--dist-timeout"),
    (dict(epochs=10**5000), "a whole number of about 5001 digits"), (dict(save_every=10**5000), "--save-every"),
    (dict(save_every=BIG), "5001 characters"), (dict(storage_options='{"a": ' + BIG + "}"), "--storage-options"),
    (dict(storage_options="[1]"), "must be a JSON object"), (dict(ema=[0.5, math.nan]), "--ema"),
])
def test_library_refuses_the_same_values(kw, phrase):
    """TrainConfig.check holds the table's ranges for library callers, in one short line."""
    with pytest.raises(UmxError, match=phrase) as e:
        TrainConfig(**{**TINY, **kw}).check()
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_bench_refuses_what_train_refuses(shard_set, capsys):
    assert bench_main(["--shards", str(shard_set), *TINY_ARGS, "--save-every", "abc"]) == 2
    _one_line(capsys, "--save-every", "'abc'")
    for option in ("--steps", "--warmup", "--loader-batches"):  # its own numbers have ranges too
        assert bench_main(["--shards", str(shard_set), *TINY_ARGS, option, BIG]) == 2
        _one_line(capsys, option, "5001 characters")
        assert bench_main(["--shards", str(shard_set), *TINY_ARGS, option, "10000000"]) == 2
        _one_line(capsys, option, "is not in the range")
    with pytest.raises(UmxError, match="--save-every must be a number of steps"):
        bench(TrainConfig(shards=str(shard_set), save_every="abc", **TINY))  # before any work


@pytest.mark.parametrize("extra, phrase", [
    (["--workers", "100000"], "--workers must be a whole number from 1 to 1024"),
    (["--workers", BIG], "5001 characters"), (["--sample-rate", BIG], "5001 characters"),
    (["--shard-size", "1e308"], "--shard-size must be a positive number of MiB up to 65536"),
    (["--max-length-diff", "1e308"], "--max-length-diff must be a number of seconds from 0 to 3600"),
    (["--samples-per-track", BIG], "5001 characters"), (["--samples-per-track", "1e9"], "--samples-per-track"),
    (["--storage-options", '{"a": ' + BIG + "}"], "--storage-options: not valid JSON"),
])
def test_prep_option_values_are_one_line(tmp_path, capsys, monkeypatch, extra, phrase):
    def scan_(*args, **kwargs):
        raise AssertionError("work started before the options were checked")
    monkeypatch.setattr("umx.prep.pipeline.scan", scan_)
    assert prep_main(["trackfolder_fix", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet", *FIX_ARGS,
                      *extra]) == 2
    _one_line(capsys, phrase)
    assert not (tmp_path / "o").exists()


# --- 2. names whose files would overwrite the model directory's own ---------------------------------

def test_reserved_names_are_the_shared_files_stems():
    assert RESERVED_TARGETS >= {"separator", "xumx", "targets"}
    for name in RESERVED_TARGETS:  # each one's own files include a shared one
        assert any(name + x in SHARED_FILES for x in TARGET_SUFFIXES), name
    assert "vocals" not in RESERVED_TARGETS and "accompaniment" not in RESERVED_TARGETS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """trackfolder_fix, 2 train + 1 valid tracks of 0.8 … 1.2 s at 8 kHz (each longer than 4096 samples)."""
    return synth.write_layout("trackfolder_fix", tmp_path_factory.mktemp("tiny") / "d", n_train=2, n_valid=1,
                              duration=1.0, seed=3, sample_rate=8000)


@pytest.mark.parametrize("rename, options", [
    ("separator.wav", ["--target-file", "separator.wav", "--interferer-files", "bass.wav", "drums.wav", "other.wav"]),
    ("XUMX.wav", ["--target-file", "vocals.wav", "--interferer-files", "bass.wav", "drums.wav", "XUMX.wav"]),
])
def test_prep_refuses_sources_named_like_model_files(tiny, tmp_path, capsys, rename, options):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    victim = "vocals.wav" if rename.startswith("separator") else "other.wav"
    for track in root.glob("*/*"):
        (track / victim).rename(track / rename)
    assert prep_main(["trackfolder_fix", str(root), "--out", str(tmp_path / "o"), "--quiet", *options]) == 2
    _one_line(capsys, "cannot be a source or target name", "separator.json" if "sep" in rename else "xumx.pth")
    assert not (tmp_path / "o").exists()


def test_every_layout_is_checked(tiny, tmp_path):
    """trackfolder_var names its sources after each track's files: one stray `targets.wav` is refused."""
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    stray = next(root.glob("train/*")) / "targets.wav"
    shutil.copy(stray.with_name("bass.wav"), stray)
    with pytest.raises(UmxError, match=f"^{re.escape(str(stray))}: 'targets' cannot be a source or target name: "
                                       ".*targets_loss.png"):
        scan("trackfolder_var", root, target_file="vocals.wav")


def test_train_refuses_targets_named_like_model_files(shard_set, tmp_path, capsys):
    for args in (["--target", "separator"], ["--targets", "vocals", "Xumx"]):
        assert train_main(["--shards", str(shard_set), "--output", str(tmp_path / "m"), *TINY_ARGS, *args]) == 2
        _one_line(capsys, args[0], "cannot be a source or target name")
    # a shard set (from anywhere) whose own target is such a name: refused before any file is written
    hostile = tmp_path / "set"
    shutil.copytree(shard_set, hostile)
    text = (hostile / "manifest.json").read_text()
    (hostile / "manifest.json").write_text(text.replace('"vocals"', '"separator"'))
    assert mf.load(str(hostile)).target == "separator"
    assert train_main(["--shards", str(hostile), "--output", str(tmp_path / "m"), *TINY_ARGS]) == 2
    _one_line(capsys, f"{hostile}: target: 'separator' cannot be a source or target name", "separator.json")
    assert not (tmp_path / "m").exists()


# --- 3. --ema decays: one label each --------------------------------------------------------------

def test_ema_decays_of_one_label_are_refused(shard_set, tmp_path, capsys):
    assert train_main(["--shards", str(shard_set), "--output", str(tmp_path / "m"), *TINY_ARGS,
                       "--ema", "0.9999991", "0.9999992"]) == 2
    _one_line(capsys, "--ema 0.9999991 and 0.9999992 are both recorded as 'ema0.999999'")
    assert not (tmp_path / "m").exists()
    TrainConfig(ema=[0.999, 0.9999, 0.99999]).check()  # distinct labels: fine


# --- 4. --select-by sdr on a validation set that can give no cSDR ------------------------------------

@pytest.fixture(scope="module")
def silent_valid(tmp_path_factory) -> Path:
    """A shard set whose validation tracks' vocals are all silent."""
    base = tmp_path_factory.mktemp("silent")
    root = synth.write_layout("trackfolder_fix", base / "d", n_train=2, n_valid=2, duration=1.5, seed=4)
    for f in root.glob("valid/*/vocals.wav"):
        x, rate = sf.read(f)
        sf.write(f, np.zeros_like(x), rate)
    prepare("trackfolder_fix", root, base / "set", workers=1, progress=False, **FIX_OPTS)
    return base / "set"


def _check(shards: Path, targets: list[str]) -> None:
    m = mf.load(str(shards))
    slots = make_slots(m, targets)
    check_selectable(load_validation(m, targets), slots, list(m.sources), m.sample_rate)


def test_select_by_sdr_refuses_a_validation_set_without_csdr(silent_valid, shard_set):
    """Before: the run never selected an epoch, said "model written" and wrote no vocals.pth."""
    with pytest.raises(UmxError, match=r"^--select-by sdr: .*the target 'vocals' is silent in all 2 of them.*"
                                       r"use --select-by loss$"):
        _check(silent_valid, ["vocals"])
    with pytest.raises(UmxError, match="'vocals' is silent"):  # an interferer target cannot help: frames go whole
        _check(silent_valid, ["vocals", "bass"])
    _check(silent_valid, ["bass"])  # the other targets have their cSDR
    _check(shard_set, ["vocals"])


def test_train_select_by_sdr_on_silent_vocals_is_one_line_before_training(silent_valid, tmp_path, capsys):
    from umx.train.cli import main as train_main

    out = tmp_path / "m"
    code = train_main(["--shards", str(silent_valid), "--output", str(out), "--eval-every", "1", "--select-by", "sdr",
                       "--epochs", "1", "--hidden-size", "8", "--seq-dur", "0.5", "--nfft", "1024", "--nhop", "512",
                       "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "use --select-by loss" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (out / "vocals.pth").exists()


def test_has_csdr_is_museval_framing():
    rate = 100
    refs = torch.ones(2, 2, 3 * rate)
    assert has_csdr(refs, rate)
    refs[1, :, :2 * rate] = 0  # silent in two of three frames: the third still counts
    assert has_csdr(refs, rate)
    refs[1, :, 2 * rate:] = 0  # silent throughout: museval refuses it, no frame counts
    assert not has_csdr(refs, rate)
    refs = torch.ones(2, 2, 3 * rate)
    refs[0, :, :rate], refs[1, :, rate:] = 0, 0  # each silent somewhere in every frame
    assert not has_csdr(refs, rate)


# --- 5. tracks too short for one STFT window -------------------------------------------------------

def _shorten(root: Path, split: str, frames: int) -> Path:
    track = sorted(root.glob(f"{split}/*"))[0]
    for f in track.glob("*.wav"):
        x, rate = sf.read(f)
        sf.write(f, x[:frames], rate)
    return track


def test_prep_skips_tracks_shorter_than_one_window(tiny, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    short = _shorten(root, "train", 300)
    m = prepare("trackfolder_fix", root, tmp_path / "out", sample_rate=8000, progress=False, **FIX_OPTS)
    assert m["splits"]["train"]["tracks"] == 1 and m["splits"]["valid"]["tracks"] == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    entry = next(e for e in report["files"] if e["class"] == "short")
    assert entry["status"] == "skipped" and entry["track"] == short.name and entry["action"] == "track skipped"
    assert "300 samples at 8000 Hz: shorter than one STFT window (4096 samples)" in entry["problem"]
    assert report["summary"]["classes"].get("short") == 1
    args = ["trackfolder_fix", str(root), "--out", str(tmp_path / "strict"), "--quiet", "--sample-rate", "8000",
            "--strict", *FIX_ARGS]
    assert prep_main(args) == 2
    assert "shorter than one STFT window" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_prep_refuses_a_split_of_short_tracks_only(tiny, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    _shorten(root, "valid", 4095)  # one sample short of the window
    with pytest.raises(UmxError, match="no usable track in the 'valid' split:\n.*4095 samples"):
        prepare("trackfolder_fix", root, tmp_path / "out", sample_rate=8000, progress=False, **FIX_OPTS)


@pytest.fixture(scope="module")
def short_set(tmp_path_factory) -> Path:
    """A shard set as an older prep wrote it: one validation track and one training track of 300 samples."""
    base = tmp_path_factory.mktemp("short")
    root = synth.write_layout("trackfolder_fix", base / "d", n_train=3, n_valid=2, duration=1.5, seed=6)
    _shorten(root, "valid", 300)
    _shorten(root, "train", 300)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("umx.prep.pipeline.MIN_FRAMES", 0)
        prepare("trackfolder_fix", root, base / "set", workers=1, progress=False, **FIX_OPTS)
    return base / "set"


def test_train_refuses_tracks_shorter_than_its_window(short_set, tmp_path, capsys):
    """Before: a traceback from the STFT after the first epoch."""
    out = tmp_path / "m"
    assert train_main(["--shards", str(short_set), "--output", str(out), *TINY_ARGS]) == 2
    _one_line(capsys, "valid track 'track_000' is 300 samples long, shorter than the 1024 samples --arch openunmix takes")
    # whole training tracks (--seq-dur 0) are held to the window too (crops leave shorter tracks out)
    assert train_main(["--shards", str(short_set), "--output", str(out), *TINY_ARGS, "--seq-dur", "0"]) == 2
    _one_line(capsys, "train track 'track_000' is 300 samples long")
    assert not out.exists()


def test_a_window_long_track_is_enough(short_set, tmp_path):
    """The bound is the window itself: --nfft 256 fits the 300-sample tracks, and the run trains."""
    out = tmp_path / "m"
    train(TrainConfig(shards=str(short_set), output=str(out), **{**TINY, "nfft": 256, "nhop": 128, "seq_dur": 0.01,
                                                                  "batch_size": 2, "samples_per_track": 2}))
    assert (out / "vocals.pth").is_file()
