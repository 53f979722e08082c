"""Multi-node training for real (issue #20): two "hosts" as network namespaces on this machine
(tests/netns.py), one torchrun per host with the c10d rendezvous on host 0, gloo over the veth pair.

Skipped where network namespaces cannot be made (not root, no iproute2); CI runs as root and
installs iproute2 (.ci/run).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

import netns

SMALL = ["--hidden-size", "8", "--seq-dur", "1", "--nfft", "2048", "--nhop", "512", "--batch-size", "2", "--quiet"]
# 5 tracks × 8 samples = 40 samples an epoch: 10 steps per rank at world size 2, a checkpoint every 2
RUN = ["--epochs", "2", "--samples-per-track", "8", "--seed", "5", "--source-augmentations", "gain", "channelswap",
       "--random-track-mix", "--save-every", "2", "--trace", *SMALL]
RUN_TIMEOUT = 120  # seconds for one whole training run (they take ~10 s)


# --- launching -------------------------------------------------------------
def _env(tmp_path: Path, ifname: str | None = None) -> dict:
    env = dict(os.environ, UMX_CACHE=os.environ.get("UMX_CACHE", str(tmp_path / "cache")), OMP_NUM_THREADS="1",
               LOGLEVEL="INFO")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RESTART_COUNT", "GLOO_SOCKET_IFNAME"):
        env.pop(k, None)
    if ifname:
        env["GLOO_SOCKET_IFNAME"] = ifname  # gloo would pick the address the hostname resolves to
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(shards: Path, out: Path, extra=()) -> list[str]:
    return ["-m", "umx.train", "--shards", str(shards), "--output", str(out), *RUN, *extra]


class Nodes:
    """One torchrun per host (`--nnodes 2 --nproc-per-node 1`), logs in `logs[i]`."""

    def __init__(self, hosts: netns.Hosts, tmp_path: Path, train_args: list[str], max_restarts: int = 0):
        port, run_id = _free_port(), f"umx{os.getpid()}x{time.monotonic_ns()}"
        self.hosts, self.procs, self.logs = hosts, [], [tmp_path / f"node{i}.log" for i in (0, 1)]
        for i in (0, 1):
            # the store's host says so (torchrun finds it by hostname, and the namespaces share one)
            conf = f"is_host={int(i == 0)},join_timeout=60,read_timeout=60"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{hosts.addrs[0]}:{port}", "--rdzv-id", run_id,
                   "--rdzv-conf", conf, "--local-addr", hosts.addrs[i], "--max-restarts", str(max_restarts),
                   "--monitor-interval", "0.1", *train_args]
            env = _env(tmp_path, hosts.ifnames[i])
            if max_restarts:
                # torch 2.13: restarted gloo workers that share the agent's rendezvous store read the
                # last attempt's addresses from it ("Gloo connectFullMesh failed ... Connection
                # refused"; pytorch/pytorch#135712): a store of their own per attempt
                env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
            with open(self.logs[i], "w") as log:
                self.procs.append(hosts.popen(i, cmd, env=env, stdout=log, stderr=subprocess.STDOUT))

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(f"--- node {i} ---\n{self.log(i)[-3000:]}" for i in (0, 1))

    def wait(self, timeout: float = RUN_TIMEOUT) -> list[int]:
        deadline = time.time() + timeout
        try:
            return [p.wait(max(0.1, deadline - time.time())) for p in self.procs]
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun did not end within {timeout} s\n{self.tails()}")

    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _workers(torchrun: subprocess.Popen) -> list[int]:
    """The training processes a torchrun started (its children running umx.train)."""
    out = []
    for pid in _children(torchrun.pid):
        with contextlib.suppress(OSError):
            if b"umx.train" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def _position(out: Path) -> tuple[int, int] | None:
    """(epoch, step) of the checkpoint in `out` (None: none yet, or being replaced right now)."""
    try:
        p = torch.load(out / "vocals.chkpnt", weights_only=True)["umx"]["position"]
    except Exception:
        return None
    return p["epoch"], p["step"]


def _wait_for_checkpoint(out: Path, at: tuple[int, int], alive, timeout: float = 90) -> tuple[int, int]:
    """Wait until `out` holds a mid-epoch checkpoint at or after `at` (while `alive()`)."""
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        pos = _position(out)
        if pos and pos >= at and pos[1] > 0:
            return pos
        time.sleep(0.02)
    pytest.fail(f"no mid-epoch checkpoint at or after {at} in {out} (last: {_position(out)})")


# --- what a run gives ------------------------------------------------------
def _history(out: Path) -> dict:
    return json.loads((out / "vocals.json").read_text())


def _assert_same_run(out: Path, ref: Path) -> None:
    a, b = _history(ref), _history(out)
    assert b["epochs_trained"] == a["epochs_trained"] == 2
    for key in ("train_loss_history", "valid_loss_history"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    wa = torch.load(ref / "vocals.pth", weights_only=True)
    wb = torch.load(out / "vocals.pth", weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7)


def _trace(path: Path) -> list[dict]:
    """A trace file's lines (a line cut short by a kill is left out)."""
    lines = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def _final_digests(out: Path) -> list[str]:
    """Each rank's last final-weights digest (rank order)."""
    return [[x["final_weights_sha256"] for x in _trace(out / f"trace-rank{r}.jsonl")
             if "final_weights_sha256" in x][-1] for r in (0, 1)]


def _samples(lines: list[dict], epoch: int, before: int | None = None) -> Counter:
    """The multiset of (epoch, global batch, position, track, offset) of `epoch`'s steps (`before`:
    only the steps before that one)."""
    out: Counter = Counter()
    for x in lines:
        if x.get("epoch") != epoch or (before is not None and x["step"] >= before):
            continue
        out.update((epoch, x["batch"], i, t, o) for i, (t, o) in enumerate(zip(x["tracks"], x["offsets"])))
    return out


# --- fixtures --------------------------------------------------------------
@pytest.fixture
def hosts():
    cm = netns.two_hosts()
    try:
        h = cm.__enter__()
    except netns.Unavailable as e:
        pytest.skip(f"no network namespaces: {e}")
    try:
        yield h
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def reference(shard_set, tmp_path_factory) -> Path:
    """The uninterrupted run on one host with two ranks (world size 2, as two hosts × 1)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *_train_args(shard_set, out)]
    r = subprocess.run(cmd, env=_env(tmp), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# --- the tests -------------------------------------------------------------
def test_two_hosts_train_as_one_host_with_two_ranks(hosts, shard_set, reference, tmp_path):
    out = tmp_path / "out"
    nodes = Nodes(hosts, tmp_path, _train_args(shard_set, out))
    assert nodes.wait() == [0, 0], nodes.tails()
    _assert_same_run(out, reference)
    d0, d1 = _final_digests(out)
    assert d0 == d1 == _final_digests(reference)[0]  # both hosts end with the same weights
    assert _history(out)["args"]["world_size"] == 2


def test_a_killed_node_is_restarted_and_the_run_resumes(hosts, shard_set, reference, tmp_path):
    """Host 1's training process is SIGKILLed mid-epoch: torchrun (--max-restarts 1) restarts the
    group on both hosts and the run continues from its last checkpoint by itself, as if never stopped.

    No --resume is given: torchrun counts restarts per host (host 0's agent, seeing host 1 rejoin
    before its own worker has died of the lost peer, restarts its group as a membership change with
    TORCHELASTIC_RESTART_COUNT=0), so umx-train resumes where any rank was restarted, and every rank
    takes rank 0's decision (build.resume_mode)."""
    out = tmp_path / "out"
    nodes = Nodes(hosts, tmp_path, _train_args(shard_set, out), max_restarts=1)
    _wait_for_checkpoint(out, (2, 4), nodes.running)
    victims = _workers(nodes.procs[1])
    assert victims, nodes.tails()
    for pid in victims:  # host 1's training process dies mid-epoch
        os.kill(pid, signal.SIGKILL)
    assert nodes.wait() == [0, 0], nodes.tails()
    log = nodes.log(1)
    assert "will restart worker group" in log and "restart_count=1" in log, nodes.tails()  # torchrun restarted
    _assert_same_run(out, reference)
    d0, d1 = _final_digests(out)
    assert d0 == d1 == _final_digests(reference)[0]


def test_two_hosts_checkpoint_continues_on_one(hosts, shard_set, reference, tmp_path):
    """Checkpointed mid-epoch on 2 hosts × 1 rank, both lost; continued on 1 host × 1 rank (elastic):
    the epoch's samples — (global batch, position, track, offset), the batch seeding every draw — are
    exactly the uninterrupted 2-rank run's, none lost, none repeated."""
    out = tmp_path / "out"
    nodes = Nodes(hosts, tmp_path, _train_args(shard_set, out))
    _wait_for_checkpoint(out, (1, 4), nodes.running)
    hosts.kill_all()  # both hosts die (torchrun and its training process alike)
    epoch, step = _position(out)
    assert (epoch, step) >= (1, 4) and step > 0
    for r in (0, 1):
        with contextlib.suppress(FileNotFoundError):
            (out / f"trace-rank{r}.jsonl").rename(out / f"interrupted-rank{r}.jsonl")

    # the rest of the run on one host with one rank
    r = subprocess.run([sys.executable, *_train_args(shard_set, out, ["--checkpoint", str(out)])],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _history(out)["epochs_trained"] == 2
    after = _trace(out / "trace-rank0.jsonl")
    before = [line for r in (0, 1) for line in _trace(out / f"interrupted-rank{r}.jsonl")]
    ref_lines = [line for r in (0, 1) for line in _trace(reference / f"trace-rank{r}.jsonl")]
    resized = _samples(before, epoch, before=step) + _samples(after, epoch)
    assert sum(_samples(before, epoch, before=step).values()) == 2 * step * 2  # 2 ranks × steps × batch 2
    assert resized == _samples(ref_lines, epoch)


def test_a_hung_rank_ends_the_run_within_dist_timeout(shard_set, tmp_path):
    """A rank that stops answering (SIGSTOP: alive, sockets open) does not hang the other: its
    collective gives up after --dist-timeout, and torchrun (--max-restarts 0) ends the run, nonzero."""
    out, timeout = tmp_path / "out", 10
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "0", "--monitor-interval", "0.1",
           *_train_args(shard_set, out, ["--dist-timeout", str(timeout), "--epochs", "5"])]
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    workers = []
    try:
        _wait_for_checkpoint(out, (1, 2), lambda: proc.poll() is None)
        workers = _workers(proc)
        assert len(workers) == 2, log.read_text()[-3000:]
        os.kill(workers[1], signal.SIGSTOP)
        stopped = time.time()
        # the survivor gives up by itself within --dist-timeout (and a few seconds to report it)
        while time.time() - stopped < timeout + 30 and Path(f"/proc/{workers[0]}").exists() \
                and not _zombie(workers[0]):
            time.sleep(0.1)
        took = time.time() - stopped
        assert took < timeout + 30, log.read_text()[-3000:]
        # gloo's words for the collective that gave up, depending on where it waited
        assert re.search(r"Timed out waiting|Application timeout caused pair closure", log.read_text(errors="replace"))
        # torchrun then stops the hung rank (SIGTERM, and SIGKILL after its fixed 30 s grace): spare the wait
        os.kill(workers[1], signal.SIGKILL)
        assert proc.wait(60) != 0
        for pid in workers:  # no training process outlives torchrun
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"rank process {pid} still runs"
    finally:
        for pid in [*workers, proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    return True
