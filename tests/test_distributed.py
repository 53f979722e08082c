"""torchrun/DDP on CPU (gloo), equal steps per rank, and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

SMALL = ["--hidden-size", "8", "--seq-dur", "1", "--nfft", "2048", "--nhop", "512", "--batch-size", "2", "--quiet"]


def _env(tmp_path):
    env = dict(os.environ, UMX_CACHE=os.environ.get("UMX_CACHE", str(tmp_path / "cache")), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(tmp_path, nproc, args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "umx.train", *args]
    return subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def _trace(folder, rank):
    lines = [json.loads(x) for x in (folder / f"trace-rank{rank}.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "step" in x]
    final = [x["final_weights_sha256"] for x in lines if "final_weights_sha256" in x]
    return steps, final[0]


@pytest.mark.parametrize("sampling", ["global", "pool"])
def test_two_ranks_disjoint_data_equal_steps_one_output(shard_set, tmp_path, sampling):
    from collections import Counter

    out = tmp_path / "ddp"
    r = _torchrun(tmp_path, 2, ["--shards", str(shard_set), "--output", str(out), "--epochs", "2", "--trace",
                                "--samples-per-track", "2", "--sampling", sampling, *SMALL])
    assert r.returncode == 0, r.stderr[-3000:]
    s0, w0 = _trace(out, 0)
    s1, w1 = _trace(out, 1)
    assert len(s0) == len(s1) > 0  # the same number of steps on both ranks
    for epoch in (1, 2):
        b0 = [x["batch"] for x in s0 if x["epoch"] == epoch]
        b1 = [x["batch"] for x in s1 if x["epoch"] == epoch]
        # each global batch is one rank's, but for the last step's padding (a batch from the epoch's start
        # again where the batches do not divide by the ranks, as DistributedSampler pads)
        assert set(b0) | set(b1) == set(range(max(b0 + b1) + 1)) and len(set(b0) & set(b1)) <= 1
        if sampling == "pool":
            t0 = {t for x in s0 if x["epoch"] == epoch for t in x["tracks"]}
            t1 = {t for x in s1 if x["epoch"] == epoch for t in x["tracks"]}
            assert t0 and t1 and not t0 & t1  # each rank reads its own shards' tracks
        else:  # every track twice per epoch (--samples-per-track 2), whichever rank drew it
            steps = [x for x in s0 + s1 if x["epoch"] == epoch]
            padding = [x for x in s1 if x["epoch"] == epoch and x["batch"] in b0]
            seen = Counter(t for x in steps for t in x["tracks"]) - Counter(t for x in padding for t in x["tracks"])
            assert set(seen.values()) == {2}
    assert w0 == w1  # DDP keeps the replicas identical
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("trace"))
    assert names == ["separator.json", "vocals.chkpnt", "vocals.json", "vocals.pth", "vocals_loss.png"]
    res = json.loads((out / "vocals.json").read_text())
    assert res["epochs_trained"] == 2 and res["args"]["world_size"] == 2


def test_uneven_shards_do_not_hang(dataset, tmp_path):
    from conftest import FIX_OPTS
    from umx.prep import prepare
    from umx.shards import manifest as mf

    shards = tmp_path / "three"
    prepare("trackfolder_fix", dataset, shards, shard_bytes=7 * 2**20, progress=False, **FIX_OPTS)
    assert len(mf.load(shards).shards("train")) == 3
    out = tmp_path / "uneven"
    r = _torchrun(tmp_path, 2, ["--shards", str(shards), "--output", str(out), "--epochs", "1", "--nb-workers", "2",
                                "--trace", *SMALL], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_trace(out, 0)[0]) == len(_trace(out, 1)[0])


def _train_cmd(shard_set, out, extra=()):
    return [sys.executable, "-m", "umx.train", "--shards", str(shard_set), "--output", str(out), "--epochs", "3",
            "--samples-per-track", "4", "--source-augmentations", "gain", "channelswap", "--random-track-mix",
            "--seed", "5", *SMALL, *extra]


@pytest.mark.parametrize("kill_epoch, kill_step", [(1, 1), (2, 3)])
def test_sigkill_mid_epoch_then_resume_gives_the_same_history(shard_set, tmp_path, kill_epoch, kill_step):
    env = _env(tmp_path)
    full = tmp_path / "full"
    subprocess.run(_train_cmd(shard_set, full), env=env, check=True, timeout=300)

    part = tmp_path / "part"
    proc = subprocess.Popen(_train_cmd(shard_set, part, ["--save-every", "1"]), env=env)
    ckpt = part / "vocals.chkpnt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                pos = torch.load(ckpt, weights_only=False)["umx"]["position"]
            except Exception:  # being replaced right now
                pos = None
            if pos and (pos["epoch"], pos["step"]) >= (kill_epoch, kill_step):
                proc.send_signal(signal.SIGKILL)
                killed_at = pos
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    subprocess.run(_train_cmd(shard_set, part, ["--save-every", "1", "--checkpoint", str(part)]), env=env,
                   check=True, timeout=300)
    a = json.loads((full / "vocals.json").read_text())
    b = json.loads((part / "vocals.json").read_text())
    assert b["epochs_trained"] == 3
    for key in ("train_loss_history", "valid_loss_history"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    wa = torch.load(full / "vocals.pth", weights_only=True)
    wb = torch.load(part / "vocals.pth", weights_only=True)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_eval_every_scores_every_ranks_tracks(shard_set, tmp_path):
    """--eval-every under 2 ranks: each rank separates its own validation tracks (one each here),
    and the recorded cSDR is umx-eval's over all of them, not rank 0's alone."""
    from umx.evaluate import evaluate

    out = tmp_path / "ddp-eval"
    r = _torchrun(tmp_path, 2, ["--shards", str(shard_set), "--output", str(out), "--epochs", "1",
                                "--samples-per-track", "2", "--eval-every", "1", "--eval-separation", "exact", *SMALL])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "vocals.json").read_text())
    ours = evaluate(out, str(shard_set), "valid", workers=1, progress=False, metrics=("bssv4", "usdr"))
    assert len(ours["tracks"]) == 2
    assert res["valid_sdr_history"][0] == pytest.approx(ours["scores"]["vocals"]["SDR"], abs=1e-3)
    assert res["valid_usdr_history"][0] == pytest.approx(ours["usdr"]["scores"]["vocals"], abs=1e-3)
    alone = [t["usdr"]["vocals"] for t in ours["tracks"]]
    assert alone[0] != pytest.approx(alone[1], abs=1e-3)  # the tracks differ: one rank's would not do
