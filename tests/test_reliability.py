"""Bad input never becomes bad training data; an interrupted prep loses nothing."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import soundfile as sf

from conftest import FIX_OPTS
from umx import audio, synth
from umx.errors import UmxError
from umx.prep import prepare
from umx.shards import manifest as mf
from umx.shards.webdataset import read_shard

SR = 44100


def _entries(out):
    return json.loads((out / "report.json").read_text())


def _by_track(report):
    tracks = {}
    for e in report["files"]:
        tracks.setdefault(e["track"], []).append(e)
    return tracks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """trackfolder_fix with one track per problem class, plus good tracks."""
    root = synth.write_layout("trackfolder_fix", tmp_path_factory.mktemp("bad") / "data", n_train=14, n_valid=2,
                              duration=2.0, seed=9)
    t = {i: root / "train" / f"track_{i:03d}" for i in range(14)}
    (t[0] / "drums.wav").write_bytes(b"RIFF....WAVEfmt garbage")  # unreadable
    raw = (t[1] / "bass.wav").read_bytes()
    (t[1] / "bass.wav").write_bytes(raw[: len(raw) // 2])  # truncated
    (t[2] / "other.wav").write_text("this is a text file, not audio")  # non-audio
    x, _ = audio.read(t[3] / "vocals.wav")
    audio.write(t[3] / "vocals.wav", audio.resample(x, SR, 22050), 22050)  # other rate
    x, _ = audio.read(t[4] / "bass.wav")
    audio.write(t[4] / "bass.wav", x[:1], SR)  # mono
    x, _ = audio.read(t[5] / "drums.wav")
    audio.write(t[5] / "drums.wav", np.concatenate([x, x[:1]]), SR)  # three channels
    x, _ = audio.read(t[6] / "other.wav")
    audio.write(t[6] / "other.wav", x[:, : x.shape[1] - 2000], SR)  # slightly shorter
    x, _ = audio.read(t[7] / "other.wav")
    audio.write(t[7] / "other.wav", x[:, : x.shape[1] // 3], SR)  # much shorter
    x, _ = audio.read(t[8] / "bass.wav")
    x[0, 100] = np.nan
    sf.write(str(t[8] / "bass.wav"), x.T, SR, subtype="FLOAT")  # NaN
    x, _ = audio.read(t[9] / "drums.wav")
    audio.write(t[9] / "drums.wav", np.clip(x * 50, -1, 1), SR)  # clipping
    audio.write(t[10] / "other.wav", np.zeros_like(audio.read(t[10] / "other.wav")[0]), SR)  # silent source
    (t[11] / "vocals.wav").unlink()  # missing target
    shutil.copytree(t[12], root / "train" / "track 012")  # duplicate id: 'track 012' -> track_012
    shutil.copytree(t[12], root / "train" / "..\x01evil")  # unsafe name
    return root


@pytest.fixture(scope="module")
def corpus_out(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-out") / "s"
    prepare("trackfolder_fix", corpus, out, progress=False, **FIX_OPTS)
    return out


def test_every_class_gets_its_outcome(corpus, corpus_out):
    tracks = _by_track(_entries(corpus_out))

    def has(track, cls, status, text=""):
        got = [e for e in tracks[track] if e["class"] == cls and e["status"] == status and text in e["problem"]]
        assert got, (track, cls, status, tracks.get(track))

    has("track_000", "unreadable", "skipped", "not a readable audio file")
    has("track_001", "truncated", "skipped", "truncated")
    has("track_002", "unreadable", "skipped")
    has("track_003", "sample_rate", "repaired", "22050")
    has("track_004", "channels", "repaired", "1 channel")
    has("track_005", "channels", "repaired", "3 channel")
    has("track_006", "length", "repaired")
    has("track_007", "length", "skipped")
    has("track_008", "nan", "skipped")
    has("track_009", "clipping", "reported")
    has("track_010", "silent", "reported", "'other' is all silent")
    has("track_011", "missing", "skipped", "vocals.wav")
    dup = [e for e in _entries(corpus_out)["files"] if e["class"] == "duplicate_id"]
    assert len(dup) == 1 and "stored as id 'track_012_1'" in dup[0]["action"]
    unsafe = [e for e in _entries(corpus_out)["files"] if e["class"] == "unsafe_name"]
    assert len(unsafe) == 1 and "evil" in unsafe[0]["action"]
    summary = _entries(corpus_out)["summary"]
    assert summary["tracks"]["train"]["skipped"] == 6
    assert summary["classes"]["channels"] == 2


def test_kept_tracks_are_right_and_good_tracks_unaffected(corpus, corpus_out):
    m = mf.load(corpus_out)
    records = {r.meta["name"]: r for e in m.shards("train") for r in read_shard(m.shard_url(e))}
    assert sorted(records) == sorted(["track_003", "track_004", "track_005", "track_006", "track_009", "track_010",
                                      "track_012", "track 012", "..\x01evil", "track_013"])
    for name in ("track_012", "track_013"):  # untouched tracks: bit-exact
        for src in ("vocals", "bass", "drums", "other"):
            pcm, _ = audio.read(corpus / "train" / name / f"{src}.wav", "int16")
            np.testing.assert_array_equal(records[name].sources[src], pcm)
    ids = [r.id for r in records.values()]
    assert len(set(ids)) == len(ids) and all("/" not in i and ".." not in i and i.isprintable() for i in ids)
    assert records["track_004"].sources["bass"].shape[0] == 2
    assert records["track_005"].sources["drums"].shape[0] == 2
    assert len({a.shape[1] for a in records["track_006"].sources.values()}) == 1


def test_strict_and_silent_targets(corpus, dataset, tmp_path):
    with pytest.raises(UmxError, match="--strict"):
        prepare("trackfolder_fix", corpus, tmp_path / "strict", strict=True, progress=False, **FIX_OPTS)
    root = tmp_path / "d"
    shutil.copytree(dataset, root)
    target = root / "train" / "track_001" / "vocals.wav"
    audio.write(target, np.zeros_like(audio.read(target)[0]), SR)
    m = prepare("trackfolder_fix", root, tmp_path / "keep", progress=False, **FIX_OPTS)
    assert m["splits"]["train"]["tracks"] == 5
    m = prepare("trackfolder_fix", root, tmp_path / "skip", progress=False, skip_silent_targets=True, **FIX_OPTS)
    assert m["splits"]["train"]["tracks"] == 4


def test_rerun_is_a_no_op_and_changes_are_refused(dataset, tmp_path):
    out = tmp_path / "s"
    a = prepare("trackfolder_fix", dataset, out, progress=False, **FIX_OPTS)
    before = (out / "manifest.json").stat().st_mtime_ns
    assert prepare("trackfolder_fix", dataset, out, progress=False, **FIX_OPTS) == a
    assert (out / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(UmxError, match="other input or options"):
        prepare("trackfolder_fix", dataset, out, progress=False, sample_rate=22050, **FIX_OPTS)


def _prep_cmd(root, out):
    return [sys.executable, "-m", "umx.prep.cli", "trackfolder_fix", str(root), "--out", str(out), "--workers", "1",
            "--shard-size", "1", "--quiet", "--target-file", "vocals.wav", "--interferer-files", "bass.wav",
            "drums.wav", "other.wav"]


def _tree(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_sigkill_during_prep_then_rerun_is_byte_identical(tmp_path):
    root = synth.write_layout("trackfolder_fix", tmp_path / "data", n_train=10, n_valid=2, duration=2.0, seed=2)
    ref = tmp_path / "ref"
    subprocess.run(_prep_cmd(root, ref), check=True, timeout=300)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for n_done in (1, 4, 8):  # kill after this many shards are finished
        out = tmp_path / f"k{n_done}"
        proc = subprocess.Popen(_prep_cmd(root, out), env=env)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list((out / ".staging").glob("*.done.json"))) >= n_done if (out / ".staging").exists() else False:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait()
        assert (out / ".staging").exists() and not (out / "manifest.json").exists(), "killed too late"
        subprocess.run(_prep_cmd(root, out), check=True, timeout=300, env=env)
        assert _tree(out) == _tree(ref), n_done
        assert not (out / ".staging").exists()


def test_staging_of_other_input_is_refused(dataset, tmp_path):
    out = tmp_path / "s"
    (out / ".staging").mkdir(parents=True)
    (out / ".staging" / "prep.json").write_text(json.dumps({"fingerprint": "something else"}))
    with pytest.raises(UmxError, match="interrupted prep of other input"):
        prepare("trackfolder_fix", dataset, out, progress=False, **FIX_OPTS)
    prepare("trackfolder_fix", dataset, out, progress=False, overwrite=True, **FIX_OPTS)
    assert (out / "manifest.json").is_file()


TINY = dict(hidden_size=8, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True, epochs=1)


def test_damaged_local_shard_stops_training_or_is_skipped(shard_set, tmp_path, monkeypatch):
    from umx.errors import ShardError
    from umx.train import TrainConfig, train

    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))  # nothing verified yet
    damaged = tmp_path / "set"
    shutil.copytree(shard_set, damaged)
    victim = sorted(damaged.glob("train-*.tar"))[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    victim.write_bytes(bytes(blob))
    with pytest.raises(ShardError, match=f"{victim.name}: checksum mismatch"):
        train(TrainConfig(shards=str(damaged), output=str(tmp_path / "a"), **TINY))
    train(TrainConfig(shards=str(damaged), output=str(tmp_path / "b"), skip_bad_shards=True, **TINY))
    res = json.loads((tmp_path / "b" / "vocals.json").read_text())
    assert res["loader_history"][0]["skipped_shards"] == 1
    (damaged / sorted(p.name for p in damaged.glob("valid-*.tar"))[0]).unlink()
    with pytest.raises(ShardError, match="shard is missing"):
        train(TrainConfig(shards=str(damaged), output=str(tmp_path / "c"), **TINY))


def test_nan_loss_stops_with_epoch_and_step(shard_set, tmp_path, monkeypatch):
    from umx.train import TrainConfig, Trainer, build_trainer

    monkeypatch.setattr(Trainer, "train_step", lambda self, pcm, epoch, step, *rest: torch.tensor([float("nan") if step == 1 else 1.0] * 2))
    with pytest.raises(UmxError, match="loss became nan at epoch 1, step 2"):
        build_trainer(TrainConfig(shards=str(shard_set), output=str(tmp_path), **TINY)).fit()


def test_nan_loss_after_a_resume_names_the_epochs_step(shard_set, tmp_path, monkeypatch):
    """After a mid-epoch resume the message still counts the epoch's steps, not those since the resume."""
    from conftest import interrupted
    from umx.train import TrainConfig, Trainer, train

    cfg = dict(shards=str(shard_set), output=str(tmp_path), save_every=2, samples_per_track=3, **TINY)
    with interrupted(monkeypatch, (1, 3)):
        train(TrainConfig(**cfg))
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, pcm, epoch, i, *rest:
                        torch.tensor([float("nan")] * 2) if i == 3 else step(self, pcm, epoch, i, *rest))
    with pytest.raises(UmxError, match="loss became nan at epoch 1, step 4"):
        train(TrainConfig(**cfg, resume="auto"))
