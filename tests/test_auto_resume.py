"""`--resume auto|never` and `--save-every` by time: a restarted command continues its own run, never another."""

import json
import time

import pytest

from conftest import interrupted
from umx.errors import UmxError
from umx.train import TrainConfig, build_trainer, train
from umx.train import trainer as trainer_mod

TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, quiet=True, debug=True,
            samples_per_track=3, random_track_mix=True, source_augmentations=["gain", "channelswap"])


def _history(out):
    r = json.loads((out / "vocals.json").read_text())
    return {k: r[k] for k in ("train_loss_history", "valid_loss_history", "lr_history", "best_epoch")}


def test_the_same_command_continues_its_run(shard_set, tmp_path, monkeypatch, one_torch_thread):
    common = dict(TINY, epochs=2, save_every=2)
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path / "whole"), **common))
    with interrupted(monkeypatch, (2, 3)):
        train(TrainConfig(shards=str(shard_set), output=str(tmp_path / "cut"), resume="auto", **common))
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path / "cut"), resume="auto", **common))  # same command
    assert _history(tmp_path / "cut") == _history(tmp_path / "whole")


def test_torchrun_restart_resumes_by_itself(shard_set, tmp_path, monkeypatch):
    out = tmp_path / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=1, **TINY))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    t = build_trainer(TrainConfig(shards=str(shard_set), output=str(out), epochs=2, **TINY))
    assert t.cfg.checkpoint == str(out) and t.state.progress.epoch == 2
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a plain run: open-unmix's fresh start
    assert build_trainer(TrainConfig(shards=str(shard_set), output=str(out), epochs=2, **TINY)).state.progress.epoch == 1


def test_another_run_is_never_continued(shard_set, tmp_path):
    out = tmp_path / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=1, **TINY))
    with pytest.raises(UmxError, match=r"holds another run \(--lr 0\.001 → 0\.01"):
        build_trainer(TrainConfig(shards=str(shard_set), output=str(out), epochs=2, resume="auto",
                                  **{**TINY, "lr": 0.01}))
    # options that do not change the run (more epochs, quieter, another save interval) resume
    t = build_trainer(TrainConfig(shards=str(shard_set), output=str(out), epochs=5, resume="auto", save_every="10m",
                                  **TINY))
    assert t.state.progress.epoch == 2
    # an empty output folder: a fresh run
    assert build_trainer(TrainConfig(shards=str(shard_set), output=str(tmp_path / "new"), resume="auto",
                                     **TINY)).state.progress.epoch == 1


def test_save_every_by_time(shard_set, tmp_path, monkeypatch):
    """--save-every 1s writes mid-epoch checkpoints once a second has passed (clock faked)."""
    clock = {"t": 1000.0}
    monkeypatch.setattr(trainer_mod.time, "time", lambda: clock["t"])
    saves = []
    monkeypatch.setattr(trainer_mod.Trainer, "_save_checkpoint", lambda self: saves.append(self.state.progress.step))
    step = trainer_mod.Trainer.train_step

    def tick(self, *a, **k):
        clock["t"] += 0.6  # each step takes 0.6 s
        return step(self, *a, **k)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", tick)
    t = build_trainer(TrainConfig(shards=str(shard_set), output=str(tmp_path), epochs=1, save_every="1s", **TINY))
    t.train_epoch(1)
    assert saves and saves == list(range(2, 2 * len(saves) + 1, 2))  # every second step: 1.2 s ≥ 1 s


@pytest.mark.parametrize("value", ["10x", "-3", "0m", "abc"])
def test_bad_save_every(shard_set, tmp_path, value):
    with pytest.raises(UmxError, match="--save-every must be a number of steps"):
        build_trainer(TrainConfig(shards=str(shard_set), output=str(tmp_path), save_every=value, **TINY))


def test_cli_parses_intervals_and_resume():
    from umx.train.cli import cli

    def params(*argv):
        return cli.make_context("umx-train", ["--shards", "s", *argv]).params

    assert params("--save-every", "10m")["save_every"] == "10m" and params("--save-every", "500")["save_every"] == 500
    assert params("--resume", "auto")["resume"] == "auto" and params()["resume"] is None
    assert TrainConfig(save_every="90s").save_interval() == (0, 90.0)
    assert TrainConfig(save_every="2h").save_interval() == (0, 7200.0)


def test_a_hung_loader_worker_stops_the_run(shard_set, tmp_path, monkeypatch):
    """--data-timeout: a worker that never delivers ends the run with one line, not a hang."""
    from umx.train.streams import TrainStream

    def hang(self):
        time.sleep(60)
        yield from ()

    monkeypatch.setattr(TrainStream, "__iter__", hang)
    start = time.time()
    with pytest.raises(UmxError, match="no batch from the loader workers for 2 s"):
        train(TrainConfig(shards=str(shard_set), output=str(tmp_path), epochs=1, nb_workers=1, data_timeout=2,
                          **TINY))
    assert time.time() - start < 30


def test_checkpoints_are_written_in_the_background_and_errors_surface(tmp_path):
    """The writer snapshots the state at save time (later in-place updates do not leak into the file)
    and a failed write is raised by the next save or wait, with the file's name."""
    from umx.train.outputs import CheckpointWriter, TargetParts
    from umx.train.state import RunState, TargetState
    import torch

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    state = RunState(targets={"a": TargetState()})
    writer = CheckpointWriter()
    writer.save(tmp_path, {"a": TargetParts(model, opt, sched)}, state)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on while the file is written
    writer.wait()
    saved = torch.load(tmp_path / "a.chkpnt", weights_only=True)["state_dict"]["weight"]
    assert torch.equal(saved, before)
    writer.save(tmp_path / "missing" / "dir", {"a": TargetParts(model, opt, sched)}, state)
    with pytest.raises(OSError, match="missing"):
        writer.wait()


def _decide(rank, world, port, out, counts, queue):
    import os

    import torch
    import torch.distributed as dist

    from umx.train import build, distributed

    os.environ["TORCHELASTIC_RESTART_COUNT"] = str(counts[rank])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(shards="unused", output=str(out[rank]), targets=["vocals"])
        try:
            cfg, automatic = build.resume_mode(cfg, distributed.Context(rank, world), torch.device("cpu"))
            queue.put((rank, automatic))
        except UmxError as e:
            queue.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def _decisions(tmp_path, counts, outputs):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_decide, args=(r, 2, port, outputs, counts, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    return got


def test_every_rank_takes_rank_0s_resume_decision(tmp_path):
    """torchrun's agents may count restarts differently (one restarts on a membership change with
    count 0): a run resumes where any rank was restarted, and on every rank alike."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "vocals.chkpnt").write_bytes(b"")  # presence is what the decision reads
    assert _decisions(tmp_path, [0, 1], [out, out]) == {0: True, 1: True}
    assert _decisions(tmp_path, [0, 0], [out, out]) == {0: False, 1: False}  # a fresh command: never
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    got = _decisions(tmp_path, [1, 1], [out, elsewhere])  # rank 1 does not see rank 0's --output
    assert got[0] is True and "--output must be a folder every node sees" in got[1]
