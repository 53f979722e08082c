"""The remote-shard cache under damage, concurrency and hostile names: a cached copy changed since
it was verified is never used, processes sharing one small cache never delete what another is
reading, and a manifest's shard name cannot pick where the cache writes."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import mmap
import multiprocessing as mp
import os
import random
import threading
import time
from pathlib import Path

import pytest

from umx.errors import ShardError
from umx.names import UnsafeNameError
from umx.shards import cache as cache_mod
from umx.shards import storage
from umx.shards.cache import ShardCache, download_verified, verify_once

BLOB = 64 * 1024


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """(base URL, folder served, {name: sha256}) of 12 random blobs served on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    rng = random.Random(3)
    sums = {}
    for i in range(12):
        data = rng.randbytes(BLOB)
        (folder / f"train-{i:06d}.tar").write_bytes(data)
        sums[f"train-{i:06d}.tar"] = hashlib.sha256(data).hexdigest()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder, sums
    finally:
        server.shutdown()
        server.server_close()


def _flip(path: Path, keep_mtime: bool = False) -> None:
    """Damage a file in place: same inode, same size, one byte changed (optionally mtime put back)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(BLOB // 2)
        byte = f.read(1)
        f.seek(BLOB // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_ino == st.st_ino


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- 1. a cached copy is re-checked --------------------------------------------------------------------------

@pytest.mark.parametrize("new_run", [False, True])
def test_corrupted_cached_shard_is_downloaded_again(served, tmp_path, new_run):
    base, folder, sums = served
    name = "train-000000.tar"
    url = f"{base}/{name}"
    cache = ShardCache(tmp_path / "cache", 2**30)
    path = cache.fetch(url, sums[name], BLOB)
    assert _sha(path) == sums[name] and cache.stats.misses == 1
    assert cache.fetch(url, sums[name], BLOB) == path and cache.stats.hits == 1  # a plain hit
    _flip(Path(path), keep_mtime=True)  # same size, same inode, even the same mtime
    if new_run:  # another process: nothing remembered but the files
        getattr(cache_mod, "_verified", set()).clear()
        cache = ShardCache(tmp_path / "cache", 2**30)
    got = cache.fetch(url, sums[name], BLOB)
    assert _sha(got) == sums[name]  # never the damaged bytes
    assert cache.stats.misses == (1 if new_run else 2) and cache.stats.bytes_fetched >= BLOB  # fetched again


def test_corrupted_cached_shard_with_a_damaged_source_is_a_clear_error(served, tmp_path):
    base, folder, sums = served
    name = "train-000001.tar"
    url = f"{base}/{name}"
    cache = ShardCache(tmp_path / "cache", 2**30)
    path = Path(cache.fetch(url, sums[name], BLOB))
    _flip(path)
    _flip(folder / name)  # the bucket's copy is damaged too
    with pytest.raises(ShardError, match=f"{url}: checksum mismatch"):
        cache.fetch(url, sums[name], BLOB)


def test_a_verified_shard_is_hashed_at_most_once_per_process(served, tmp_path, monkeypatch):
    base, _, sums = served
    name = "train-000002.tar"
    url = f"{base}/{name}"
    cache = ShardCache(tmp_path / "cache", 2**30)
    path = Path(cache.fetch(url, sums[name], BLOB))
    calls = []
    real = storage.sha256_of
    monkeypatch.setattr(storage, "sha256_of", lambda u: (calls.append(u), real(u))[1])
    for _ in range(3):
        cache.fetch(url, sums[name], BLOB)
    assert calls == []  # verified on download: no hashing on hits
    cache_mod._verified.clear()  # a new process: the sidecar says it is good, still no hashing
    cache.fetch(url, sums[name], BLOB)
    assert calls == []
    sidecar = path.with_name(f".{path.name}.verified")
    assert json.loads(sidecar.read_text())["sha256"] == sums[name]
    sidecar.unlink()  # an older cache (no sidecar): hashed once, then remembered
    cache_mod._verified.clear()
    for _ in range(3):
        cache.fetch(url, sums[name], BLOB)
    assert calls == [str(path)] and sidecar.is_file() and cache.stats.misses == 1


def test_zarr_object_download_is_rechecked_and_stays_in_the_cache(served, tmp_path):
    base, folder, sums = served
    name = "train-000003.tar"
    cache = ShardCache(tmp_path / "cache", 2**30)
    dest = cache.folder / "abc-store.zarr" / "train" / "vocals" / "c" / "0" / "0"
    download_verified(f"{base}/{name}", dest, sums[name], cache.stats, cache.folder)
    download_verified(f"{base}/{name}", dest, sums[name], cache.stats, cache.folder)
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)
    _flip(dest)
    download_verified(f"{base}/{name}", dest, sums[name], cache.stats, cache.folder)
    assert _sha(dest) == sums[name] and cache.stats.misses == 2
    for bad in (cache.folder / "abc-store.zarr" / ".." / ".." / "escaped", tmp_path / "elsewhere" / "0"):
        with pytest.raises(UnsafeNameError):
            download_verified(f"{base}/{name}", bad, sums[name], cache.stats, cache.folder)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "elsewhere").exists()


def test_verify_once_notices_a_replaced_file_with_the_same_size_and_mtime(tmp_path):
    path = tmp_path / "train-000000.tar"
    good = os.urandom(BLOB)
    path.write_bytes(good)
    sha = hashlib.sha256(good).hexdigest()
    verify_once(path, sha, BLOB, str(path))
    st = path.stat()
    other = tmp_path / ".new"
    other.write_bytes(os.urandom(BLOB))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # another inode, same path, size and mtime
    getattr(cache_mod, "_verified", set()).clear()
    with pytest.raises(ShardError, match="checksum mismatch"):
        verify_once(path, sha, BLOB, str(path))


# ---- 2. processes sharing one small cache -----------------------------------------------------------------------

def _hammer(folder: str, base: str, sums: dict, max_bytes: int, seconds: float, seed: int, results) -> None:
    """Fetch and read random shards for `seconds`: every read must be complete and verified."""
    rng = random.Random(seed)
    cache = ShardCache(folder, max_bytes)
    reads, failures, held = 0, [], []
    deadline = time.time() + seconds
    while time.time() < deadline:
        name = rng.choice(sorted(sums))
        try:
            path = cache.fetch(f"{base}/{name}", sums[name], BLOB)
            time.sleep(rng.random() * 0.002)  # another process may evict meanwhile
            with open(path, "rb") as f:
                if rng.random() < 0.3:  # keep some mapped, like the reader's _Mapped
                    held.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
                    data = bytes(held[-1])
                    del held[:-8]
                else:
                    data = f.read()
            if hashlib.sha256(data).hexdigest() != sums[name]:
                failures.append(f"{name}: wrong content ({len(data)} bytes)")
            reads += 1
        except Exception as e:
            failures.append(f"{name}: {type(e).__name__}: {e}")
    for m in held:  # every map still holds verified bytes, evicted or not
        if hashlib.sha256(bytes(m)).hexdigest() not in sums.values():
            failures.append("a mapped shard changed")
    results.put((reads, failures[:5], len(failures), cache.stats.as_dict()))


def test_processes_sharing_a_small_cache_never_fail(served, tmp_path):
    base, _, sums = served
    folder = tmp_path / "cache"
    max_bytes = 3 * BLOB  # a quarter of the set
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(folder), base, sums, max_bytes, 3.0, seed, results))
             for seed in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    failures = [f for _, fs, _, _ in got for f in fs]
    assert sum(n for _, _, n, _ in got) == 0, failures
    assert all(reads > 20 for reads, *_ in got), [reads for reads, *_ in got]
    assert sum(s["misses"] for *_, s in got) > len(sums)  # the set did not fit: shards were evicted and fetched again
    ShardCache(folder, max_bytes).evict()  # nobody holds anything now: back under the limit
    shards = [p for p in folder.iterdir() if not p.name.startswith(".")]
    assert sum(p.stat().st_size for p in shards) <= max_bytes
    leftovers = {p.name for p in folder.iterdir() if p.name.startswith(".")} - {".lock"}
    kept = {f".{p.name}.{s}" for p in shards for s in ("lock", "verified", "fetching")}
    assert leftovers <= kept, leftovers - kept  # no temp files or orphaned locks behind


def test_a_pinned_shard_is_never_evicted(served, tmp_path):
    """One process fetched a shard (it will open it next): another's eviction leaves it alone."""
    base, _, sums = served
    names = sorted(sums)[:3]
    mine = ShardCache(tmp_path / "cache", 2**30)
    first = mine.fetch(f"{base}/{names[0]}", sums[names[0]], BLOB)
    ctx = mp.get_context("fork")

    def other():
        cache_mod.release()  # (a forked child drops its parent's pins in any case)
        small = ShardCache(tmp_path / "cache", BLOB)
        for n in names[1:]:
            small.fetch(f"{base}/{n}", sums[n], BLOB)
        small.evict()

    p = ctx.Process(target=other)
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert Path(first).is_file() and _sha(first) == sums[names[0]]  # pinned by this process: kept
    cache_mod.release()
    ShardCache(tmp_path / "cache", BLOB).evict()
    assert not Path(first).exists()  # released: now it goes


# ---- 3. hostile names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("last", ["..", "../", "a\0b", "x" * 300, "evil\u202etxt.tar", "a\nb.tar", " lead.tar"])
def test_hostile_shard_name_is_refused(tmp_path, last):
    cache = ShardCache(tmp_path / "cache", 2**30)
    url = f"http://127.0.0.1:9/set/{last}"
    with pytest.raises(UnsafeNameError):
        cache.key(url)
    with pytest.raises(UnsafeNameError):
        cache.fetch(url, "0" * 64, 10)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_ordinary_shard_names_still_work(tmp_path):
    cache = ShardCache(tmp_path / "cache", 2**30)
    a = cache.key("s3://bucket/sets/a/train-000001.tar")
    b = cache.key("s3://bucket/sets/b/train-000001.tar")
    assert a.parent == b.parent == cache.folder and a != b and a.name.endswith("-train-000001.tar")


# ---- end to end: two loader workers, a cache smaller than the shard set ---------------------------------------

def test_train_with_two_workers_and_a_cache_smaller_than_the_set(shard_set, tmp_path):
    from umx.train import TrainConfig, train

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(shard_set)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    tars = sorted(shard_set.glob("*.tar"))
    limit = min(p.stat().st_size for p in tars) // 2  # smaller than any shard: every fetch evicts all it may
    try:
        out = tmp_path / "m"
        train(TrainConfig(shards=url, output=str(out), epochs=2, cache_dir=str(tmp_path / "cache"),
                          cache_size=limit / 2**30, nb_workers=2, hidden_size=16, nfft=512, nhop=256, seq_dur=0.5,
                          batch_size=4, debug=True, quiet=True))
    finally:
        server.shutdown()
        server.server_close()
    res = json.loads((out / "vocals.json").read_text())
    first = res["loader_history"][0]
    assert res["epochs_trained"] == 2 and first["misses"] >= len([p for p in tars if p.name.startswith("train")])
    cache_mod.release()  # (this process still holds the validation shards it read last)
    ShardCache(tmp_path / "cache", int(limit)).evict()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tar"]  # over the limit only while held
