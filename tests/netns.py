"""Two "hosts" on this machine for multi-node tests: Linux network namespaces joined by a veth pair.

    with two_hosts() as hosts:
        proc = hosts.popen(0, ["python", "-c", "..."], env=...)   # runs inside host 0's namespace

Each namespace has only `lo` and its end of the veth pair, with an address in 10.213.<n>.0/24
(no default route, no bridge to the machine's own network: nothing leaves the machine). The
filesystem is shared. On exit every process started in the namespaces is killed (its whole process
group, then whatever `ip netns pids` still lists), and the namespaces (with their links) are
deleted, also when the block raises. `Unavailable` (raised before the block runs) says why the
namespaces cannot be made: not root, no `ip`, or `ip netns add` failed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

_count = itertools.count()
STEP_TIMEOUT = 20  # seconds for each `ip` command


class Unavailable(Exception):
    """Network namespaces cannot be made here (the reason is the message)."""


def _ip() -> str:
    return shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "")


@dataclass
class Hosts:
    """Two namespaces: `names[i]`, the veth interface `ifnames[i]` in it with address `addrs[i]`."""

    ip: str
    names: tuple[str, str]
    ifnames: tuple[str, str] = ("umx0", "umx1")
    addrs: tuple[str, str] = ("", "")
    procs: list[subprocess.Popen] = field(default_factory=list)

    def command(self, host: int, cmd: list[str]) -> list[str]:
        """`cmd` as a command line that runs inside host `host`'s namespace."""
        return [self.ip, "netns", "exec", self.names[host], *cmd]

    def popen(self, host: int, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Start `cmd` in host `host`'s namespace, in a process group of its own (killed on exit)."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(host, cmd), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, host: int, cmd: list[str], timeout: float = STEP_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
        """Run `cmd` in host `host`'s namespace to its end (at most `timeout` seconds)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(host, cmd), timeout=timeout, **kwargs)

    def pids(self, host: int) -> list[int]:
        """The processes that live in host `host`'s namespace now."""
        r = subprocess.run([self.ip, "netns", "pids", self.names[host]], capture_output=True, text=True,
                           timeout=STEP_TIMEOUT)
        return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []

    def kill_all(self, timeout: float = 10) -> None:
        """Kill every process started here (whole process groups) and every process left in the namespaces."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for host in (0, 1):
            for pid in self.pids(host):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.time() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.time()))
        while time.time() < deadline and any(self.pids(h) for h in (0, 1)):
            time.sleep(0.05)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT)


def _must(cmd: list[str]) -> None:
    r = _run(cmd)
    if r.returncode != 0:
        raise Unavailable(f"`{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")


@contextlib.contextmanager
def two_hosts():
    """Two network namespaces joined by a veth pair (see the module's docstring); yields `Hosts`."""
    ip = _ip()
    if not ip:
        raise Unavailable("no `ip` command (iproute2 is not installed)")
    if os.geteuid() != 0:
        raise Unavailable("network namespaces need root")
    n = next(_count)
    subnet = f"10.213.{(os.getpid() * 7 + n) % 250 + 1}"
    tag = f"umx-test-{os.getpid()}-{n}"
    hosts = Hosts(ip, (f"{tag}-a", f"{tag}-b"), addrs=(f"{subnet}.1", f"{subnet}.2"))
    made: list[str] = []
    try:
        try:
            for name in hosts.names:
                _must([ip, "netns", "add", name])
                made.append(name)
            a, b = hosts.ifnames
            # the pair is made inside the namespaces: its names never exist in the machine's own namespace
            _must([ip, "link", "add", a, "netns", hosts.names[0], "type", "veth", "peer", "name", b,
                   "netns", hosts.names[1]])
            for i in (0, 1):
                ns = [ip, "-n", hosts.names[i]]
                _must([*ns, "link", "set", "lo", "up"])
                _must([*ns, "addr", "add", f"{hosts.addrs[i]}/24", "dev", hosts.ifnames[i]])
                _must([*ns, "link", "set", hosts.ifnames[i], "up"])
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"cannot set up network namespaces: {e}") from e
        _wait_reachable(hosts)
        yield hosts
    finally:
        try:
            hosts.kill_all()
        finally:
            for name in made:  # deleting a namespace deletes its end of the pair, and so the pair
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    _run([ip, "netns", "del", name])


def _wait_reachable(hosts: Hosts, timeout: float = 10) -> None:
    """Wait until host 0's address answers from host 1 (the links come up asynchronously): a
    connection to a closed port there is refused (a reset came back) rather than timing out."""
    probe = ("import socket, sys\n"
             "try:\n"
             "    socket.create_connection((sys.argv[1], 9), 1).close()\n"
             "except ConnectionRefusedError:\n"
             "    pass\n")
    deadline = time.time() + timeout
    while True:
        r = hosts.run(1, [sys.executable, "-c", probe, hosts.addrs[0]], timeout=timeout)
        if r.returncode == 0:
            return
        if time.time() > deadline:
            raise RuntimeError(f"{hosts.addrs[0]} is not reachable from namespace {hosts.names[1]} within "
                               f"{timeout} s: {r.stderr.strip()[-500:]}")
        time.sleep(0.1)
