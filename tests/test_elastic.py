"""Elastic resume: a run checkpointed mid-epoch continues on other ranks × workers with exactly the
samples it had not yet consumed (the global sampling plan); the pool plan starts the epoch over."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import interrupted
from umx.train import TrainConfig, train

TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, quiet=True, debug=True, epochs=2,
            samples_per_track=3, random_track_mix=True, source_augmentations=["gain", "channelswap", "flipsign"],
            save_every=2, trace=True)


def _results(out):
    return json.loads((out / "vocals.json").read_text())


def _samples(out, ranks, epoch):
    """(global batch, position, track, offset) of every sample of `epoch` in the traces: what a sample
    is, its augmentation draws included (seeded by the global batch)."""
    seen = Counter()
    for rank in ranks:
        for line in (out / f"trace-rank{rank}.jsonl").read_text().splitlines():
            x = json.loads(line)
            if x.get("epoch") == epoch:
                seen.update((x["batch"], i, t, o) for i, (t, o) in enumerate(zip(x["tracks"], x["offsets"])))
    return seen


def test_other_workers_continue_the_very_same_run(shard_set, tmp_path, monkeypatch, one_torch_thread):
    """One rank, 2 loader workers, stopped mid-epoch; continued with none: the global plan gives the
    batches the uninterrupted run took, in its order, so the history and weights are its own."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else the trainer leaves the workers their cores
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(TrainConfig(shards=str(shard_set), output=str(whole), nb_workers=2, **TINY))
    with interrupted(monkeypatch, (2, 3)):
        train(TrainConfig(shards=str(shard_set), output=str(cut), nb_workers=2, **TINY))
    n0 = len(_lines(cut / "trace-rank0.jsonl"))  # the checkpoint is after step 2 (--save-every 2)
    train(TrainConfig(shards=str(shard_set), output=str(cut), nb_workers=0, resume="auto", **TINY))
    a, b = _results(whole), _results(cut)
    for key in ("train_loss_history", "valid_loss_history"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    wa, wb = torch.load(whole / "vocals.pth", weights_only=True), torch.load(cut / "vocals.pth", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    lines = _lines(cut / "trace-rank0.jsonl")
    kept = [x for x in lines[:n0] if x.get("epoch") == 2 and x["step"] < 2] + \
        [x for x in lines[n0:] if x.get("epoch") == 2]
    assert [(x["batch"], x["tracks"], x["offsets"]) for x in kept] == \
        [(x["batch"], x["tracks"], x["offsets"]) for x in _lines(whole / "trace-rank0.jsonl") if x.get("epoch") == 2]


def test_the_pool_plan_starts_a_resized_epoch_over(shard_set, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pool"
    opts = dict(TINY, sampling="pool", trace=False)
    with interrupted(monkeypatch, (1, 3)):
        train(TrainConfig(shards=str(shard_set), output=str(out), nb_workers=2, **opts))
    capsys.readouterr()
    train(TrainConfig(shards=str(shard_set), output=str(out), nb_workers=0, resume="auto", **opts))
    assert "starts over on 1 × 0" in capsys.readouterr().err
    assert _results(out)["epochs_trained"] == 2


def _env(tmp_path):
    import os

    env = dict(os.environ, UMX_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _cmd(nproc, shard_set, out, killed_at=None, **options):
    """torchrun of umx-train (killed_at (epoch, step): every rank SIGKILLs itself there, tests/killed_at.py)."""
    args = ["--shards", str(shard_set), "--output", str(out)]
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [flag, *map(str, v)] if isinstance(v, list) else [flag, str(v)]
    run = ["-m", "umx.train"] if killed_at is None else [str(Path(__file__).parent / "killed_at.py"),
                                                         *map(str, killed_at)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            *run, *args]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_two_ranks_checkpointed_mid_epoch_continue_on_one(shard_set, tmp_path):
    """2 ranks SIGKILLed after a mid-epoch checkpoint, continued on 1 rank: the epoch's samples are
    exactly the uninterrupted 2-rank run's (track, offset, global batch: its draws), each once."""
    opts = dict(TINY, epochs=1, hidden_size=32, seq_dur=1.0, samples_per_track=12, save_every=1)
    # 5 tracks × 12 = 60 samples = 20 global batches: 10 steps on 2 ranks, 20 on 1 (no padding either way)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = subprocess.run(_cmd(2, shard_set, whole, **opts), env=_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    want = _samples(whole, [0, 1], 1)
    assert sum(want.values()) == 60

    r = subprocess.run(_cmd(2, shard_set, cut, killed_at=(1, 5), **opts), env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0  # both ranks were killed at their step 5 of epoch 1
    position = torch.load(cut / "vocals.chkpnt", weights_only=True)["umx"]["position"]  # the newest checkpoint
    assert position["epoch"] == 1 and position["step"] == 5
    taken = position["step"]
    assert position["world"] == 2 and position["consumed"] == 2 * taken
    # the killed run's trace was never flushed: what it consumed is what the uninterrupted run's ranks
    # took in their first `taken` steps (the same global batches: nothing depends on the topology there)
    before = [x for rank in (0, 1) for x in _lines(whole / f"trace-rank{rank}.jsonl")
              if x.get("epoch") == 1 and x["step"] < taken]
    n0 = len(_lines(cut / "trace-rank0.jsonl"))

    r = subprocess.run(_cmd(1, shard_set, cut, resume="auto", **opts), env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    after = [x for x in _lines(cut / "trace-rank0.jsonl")[n0:] if x.get("epoch") == 1]
    assert len(after) == 20 - 2 * taken  # one rank takes the other's share too
    got = Counter((x["batch"], i, t, o) for x in before + after
                  for i, (t, o) in enumerate(zip(x["tracks"], x["offsets"])))
    assert got == want
    res = _results(cut)
    assert res["epochs_trained"] == 1 and all(map(lambda v: v == v, res["train_loss_history"]))


def test_auto_sampling_is_global_wherever_every_track_can_be_read_at_any_time():
    from types import SimpleNamespace

    from umx.train.streams import choose_plan

    def manifest(url, fmt="webdataset", records="tracks", size=10):
        entry = SimpleNamespace(bytes=size)
        return SimpleNamespace(storage=SimpleNamespace(format=fmt), sampling=SimpleNamespace(records=records),
                               shards=lambda split: [entry, entry], shard_url=lambda e: url)

    assert choose_plan("auto", manifest("/data/s/train-0.tar"), "train", 1, None) == "global"  # local
    assert choose_plan("auto", manifest("s3://b/s/train-0.tar"), "train", 20, None) == "global"  # the cache holds it
    assert choose_plan("auto", manifest("s3://b/s/train-0.tar"), "train", 19, None) == "pool"  # read in order
    assert choose_plan("auto", manifest("s3://b/s/train-0.tar"), "train", 19, object()) == "global"  # on the device
    assert choose_plan("auto", manifest("s3://b/s", fmt="zarr"), "train", 1, None) == "global"  # chunks: random access
    assert choose_plan("pool", manifest("/data/s/train-0.tar"), "train", 1, None) == "pool"


@pytest.mark.parametrize("field, value", [("consumed", -3), ("world", "2"), ("step", 1.5), ("workers", True)])
def test_a_checkpoint_position_is_checked_like_any_input(field, value):
    from umx.train.state import Progress

    with pytest.raises(ValueError, match=f"position.{field} must be an integer >= 0"):
        Progress.from_dict({"epoch": 1, "step": 2, field: value})


def test_timed_checkpoints_under_torchrun_are_taken_by_every_rank_at_once(shard_set, tmp_path):
    """--save-every by time under torchrun: rank 0's clock decides, every SYNC_EVERY (8) steps, so both
    ranks save at the same step (a save gathers every rank's losses: a rank that disagreed would hang
    the other until --dist-timeout)."""
    # 5 tracks × 8 = 40 samples in batches of 2: 10 steps per rank; the timed check comes at step 8
    opts = dict(TINY, epochs=1, samples_per_track=8, batch_size=2, save_every="0.01s", dist_timeout=60)
    out = tmp_path / "timed"
    r = subprocess.run(_cmd(2, shard_set, out, killed_at=(1, 9), **opts), env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0  # killed at step 9, after the timed checkpoint of step 8
    position = torch.load(out / "vocals.chkpnt", weights_only=True)["umx"]["position"]
    assert (position["epoch"], position["step"], position["world"], position["consumed"]) == (1, 8, 2, 16)
    assert len(position["losses"]) == 16  # both ranks' step losses
