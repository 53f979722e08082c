from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from umx.errors import UmxError
from umx.shards import manifest as mf
from umx.shards.webdataset import read_shard
from umx.train.streams import TrainStream
from umx.train.validation import load_validation
from umx.train.plan import assign

SEQ = 44100  # 1 s crops


def _tracks(shard_set):
    m = mf.load(shard_set)
    return {r.id: r for e in m.shards("train") for r in read_shard(m.shard_url(e))}


def _epoch(stream, workers):
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


@pytest.mark.parametrize("sizes, consumers", [([5] * 7, 3), ([2, 2, 1], 4), ([5], 2), ([3, 1, 4, 1], 4),
                                               ([1, 1], 2)])
def test_assignment_has_no_duplicates_and_misses_nothing(sizes, consumers):
    seen = Counter()
    per_consumer = Counter()
    for c in range(consumers):
        for shard, select in assign(sizes, c, consumers):
            for r in range(sizes[shard]):
                if select is None or select(r):
                    seen[(shard, r)] += 1
                    per_consumer[c] += 1
    assert set(seen) == {(s, r) for s, n in enumerate(sizes) for r in range(n)}
    assert set(seen.values()) == {1}
    if len(sizes) < consumers and sum(sizes) >= consumers:
        assert len(per_consumer) == consumers  # record-level split: everyone gets data


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_every_track_once_per_epoch_across_workers(shard_set, workers):
    m = mf.load(shard_set)
    n_shards = len(m.shards("train"))
    stream = TrainStream(m, "vocals", SEQ, batch_size=2, seed=1)
    batches = _epoch(stream, workers)
    ids = [t for b in batches for t in b.track_ids]
    assert sorted(ids) == sorted(_tracks(shard_set)), f"{n_shards} shards, {workers} workers"
    assert len(batches) == stream.batches_per_epoch(workers)


def test_samples_per_track_and_crop_content(shard_set):
    m = mf.load(shard_set)
    stream = TrainStream(m, "drums", SEQ, batch_size=4, samples_per_track=3, pool_size=2, seed=5)
    tracks = _tracks(shard_set)
    batches = _epoch(stream, 0)
    ids = Counter(t for b in batches for t in b.track_ids)
    assert ids == {t: 3 for t in tracks}
    order = ["drums", "vocals", "bass", "other"]
    for b in batches:
        assert b.audio.dtype == torch.int16 and b.audio.shape[1:] == (4, 2, SEQ)
        for crop, tid in zip(b.audio.numpy(), b.track_ids):
            full = np.stack([tracks[tid].sources[s] for s in order])
            # the crop is one window of the track, the same offset for every source
            target = full[0, 0]
            offsets = [o for o in range(full.shape[-1] - SEQ + 1)
                       if target[o] == crop[0, 0, 0] and np.array_equal(target[o:o + SEQ], crop[0, 0])]
            assert offsets, "crop not found in its track"
            np.testing.assert_array_equal(full[..., offsets[0]:offsets[0] + SEQ], crop)


def test_deterministic_per_seed_and_epoch(shard_set):
    m = mf.load(shard_set)

    def run(seed, epoch, workers=0):
        s = TrainStream(m, "vocals", SEQ, batch_size=3, seed=seed)
        s.set_epoch(epoch)
        return [(b.track_ids, b.audio) for b in _epoch(s, workers)]

    a, b = run(1, 2), run(1, 2)
    assert all(x[0] == y[0] and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    c = run(1, 3)
    assert any(x[0] != y[0] or not torch.equal(x[1], y[1]) for x, y in zip(a, c))
    w1, w2 = run(1, 2, 2), run(1, 2, 2)
    assert all(x[0] == y[0] and torch.equal(x[1], y[1]) for x, y in zip(w1, w2))


def test_short_tracks_excluded_and_clear_error(shard_set):
    m = mf.load(shard_set)
    frames = [f for e in m.shards("train") for f in e.track_frames]
    cut = sorted(frames)[1] + 1  # the two shortest tracks are too short
    stream = TrainStream(m, "vocals", cut, batch_size=8)
    assert stream.samples_per_epoch() == len(frames) - 2
    assert sum(len(b.track_ids) for b in _epoch(stream, 0)) == len(frames) - 2
    with pytest.raises(UmxError, match="no 'train' track is at least"):
        TrainStream(m, "vocals", max(frames) + 1, batch_size=8)
    with pytest.raises(UmxError, match="target 'piano' is not a source"):
        TrainStream(m, "piano", SEQ, batch_size=8)


def test_full_track_mode_and_valid_split(shard_set):
    m = mf.load(shard_set)
    stream = TrainStream(m, "vocals", None, batch_size=1)
    tracks = _tracks(shard_set)
    for b in _epoch(stream, 0):
        assert b.audio.shape[-1] == tracks[b.track_ids[0]].frames
    valid = load_validation(m, "bass", "valid")
    assert len(valid) == 2 and valid[0].sources.shape[:2] == (4, 2) and valid[0].mixture is None


@pytest.mark.parametrize("plan", ["global", "pool"])
@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_start_replays_the_rest_of_the_epoch(shard_set, workers, plan):
    m = mf.load(shard_set)
    stream = TrainStream(m, "vocals", SEQ, batch_size=2, samples_per_track=3, seed=4, plan=plan)
    stream.set_epoch(2)
    full = _epoch(stream, workers)
    for start in (1, 3, len(full) - 1):
        stream.set_epoch(2, start_step=start)
        rest = _epoch(stream, workers)
        assert [b.track_ids for b in rest] == [b.track_ids for b in full[start:]]
        assert all(torch.equal(a.audio, b.audio) for a, b in zip(rest, full[start:]))


def test_every_rank_gets_the_same_steps_and_fail_fast(shard_set):
    m = mf.load(shard_set)
    per_rank = []
    for rank in range(3):
        s = TrainStream(m, "vocals", SEQ, batch_size=2, samples_per_track=2, rank=rank, world_size=3)
        s.check(0)
        per_rank.append(len(_epoch(s, 0)))
    assert len(set(per_rank)) == 1 and per_rank[0] == s.batches_per_epoch(0)
    with pytest.raises(UmxError, match="rank 0 worker 5 would get no track"):  # the pool plan splits shards
        TrainStream(m, "vocals", SEQ, batch_size=2, samples_per_track=2, plan="pool").check(8)
    TrainStream(m, "vocals", SEQ, batch_size=2, samples_per_track=2).check(8)  # global: any worker reads any track


def test_local_shards_stay_mapped_across_epochs_and_rewrites_are_seen(shard_set, tmp_path):
    """A loader reads the same shards every epoch: with views, a shard is mapped and decoded once
    per process (no page faults again, no header parsing again); a rewritten shard is read anew."""
    import shutil

    m = mf.load(shard_set)
    url = m.shard_url(m.shards("train")[0])
    first = list(read_shard(url, views=True))
    again = list(read_shard(url, views=True))
    assert [r.id for r in first] == [r.id for r in again] and all(a is b for a, b in zip(first, again))
    assert not first[0].sources["vocals"].flags.writeable  # read-only views: safe to share
    copies = list(read_shard(url))  # without views: fresh writable copies, as before
    assert copies[0] is not first[0] and copies[0].sources["vocals"].flags.writeable

    other = tmp_path / "shard.tar"
    shutil.copy(url, other)
    before = list(read_shard(str(other), views=True))
    shutil.copy(m.shard_url(m.shards("train")[1]), other)  # rewritten in place: another file now
    after = list(read_shard(str(other), views=True))
    assert [r.id for r in after] != [r.id for r in before]


# --- the global plan: elastic resume ----------------------------------------------------------------

def _identities(batches):
    """(global batch, position, track, offset) of every sample: what a sample is, its draws included
    (the device draws of a batch are seeded by its global index)."""
    return Counter((b.index, i, t, o) for b in batches for i, (t, o) in enumerate(zip(b.track_ids, b.offsets)))


def _run(m, epoch, world, workers, consumed=0, seed=3, spt=5):
    out = []
    for rank in range(world):
        s = TrainStream(m, "vocals", SEQ, batch_size=2, samples_per_track=spt, seed=seed, rank=rank, world_size=world)
        s.set_epoch(epoch, consumed=consumed)
        out.append(_epoch(s, workers))
    return out


@pytest.mark.parametrize("before, after", [((2, 1), (1, 1)), ((1, 2), (3, 1)), ((3, 2), (2, 0)), ((1, 0), (2, 3))])
def test_a_resized_epoch_takes_exactly_the_samples_not_yet_consumed(shard_set, before, after):
    """Checkpointed after some steps on W ranks × K workers, continued on W' × K': the rest of the
    epoch is exactly the samples the uninterrupted run had not consumed, each once; every rank of
    the new topology takes the same number of steps."""
    m = mf.load(shard_set)
    (w, k), (w2, k2) = before, after
    n_tracks = sum(len(e.track_ids) for e in m.shards("train"))
    whole = [b for rank in _run(m, 2, 1, 0) for b in rank]
    assert len(whole) == -(-n_tracks * 5 // 2) and sorted(b.index for b in whole) == list(range(len(whole)))
    per_track = Counter(t for b in whole for t in b.track_ids)
    assert set(per_track.values()) == {5}  # open-unmix's balanced sampling: every track spt times
    for steps in (1, 3):
        first = _run(m, 2, w, k)
        taken = [b for rank in first for b in rank[:steps]]
        rest = _run(m, 2, w2, k2, consumed=steps * w)
        assert len({len(r) for r in rest}) == 1  # equal steps on every rank: no hang
        resumed = taken + [b for rank in rest for b in rank]
        got, want = _identities(resumed), _identities(whole)
        assert not want - got  # none lost
        # none repeated, but for the last step's batches beyond the epoch's end: they repeat its first
        # ones (at most W' − 1 batches, as DistributedSampler pads)
        extra = got - want
        assert sum(extra.values()) <= (w2 - 1) * 2 and all(key[0] < w2 for key in extra)


def test_a_batch_is_the_same_on_any_topology(shard_set):
    """Batch j's crops do not depend on who reads it: the same audio on 1 rank and on 3 ranks × 2 workers."""
    m = mf.load(shard_set)
    one = {b.index: b for b in _run(m, 1, 1, 0)[0]}
    for rank in _run(m, 1, 3, 2):
        for b in rank:
            assert b.track_ids == one[b.index].track_ids and torch.equal(b.audio, one[b.index].audio)


def test_worker_batches_cover_the_rest_once():
    from umx.train import plan

    for batches, consumed, world, workers in [(10, 0, 1, 1), (10, 3, 2, 3), (7, 6, 4, 2), (5, 0, 3, 1)]:
        taken = [j for r in range(world) for k in range(workers)
                 for j in plan.worker_batches(batches, consumed, world, r, k, workers)]
        steps = plan.steps_left(batches, consumed, world)
        assert len(taken) == steps * world
        assert set(range(consumed, batches)) <= set(taken)
        assert len(taken) - (batches - consumed) < world and set(taken) - set(range(consumed, batches)) <= set(range(world))


@pytest.mark.parametrize("workers", [0, 2])
def test_global_plan_replaces_the_tracks_of_a_bad_shard_alike_everywhere(shard_set, tmp_path, workers):
    """--skip-bad-shards in the global plan: the epoch keeps all its samples; those of the bad shard's
    tracks come from the next good track of the table, the same in every worker (and rank)."""
    import shutil

    from umx.shards.reader import ShardReader

    damaged = tmp_path / "set"
    shutil.copytree(shard_set, damaged)
    m = mf.load(damaged)
    victim = m.shards("train")[0]
    path = damaged / victim.name
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    path.write_bytes(bytes(blob))

    def epoch(n_workers):
        s = TrainStream(m, "vocals", SEQ, batch_size=2, samples_per_track=2, seed=1,
                        reader=ShardReader(m, cache_dir=str(tmp_path / f"cache{n_workers}"), skip_bad=True))
        return _epoch(s, n_workers)

    got = epoch(workers)
    ids = [t for b in got for t in b.track_ids]
    assert len(ids) == 2 * sum(len(e.track_ids) for e in m.shards("train"))  # no sample lost
    assert not set(ids) & set(victim.track_ids)
    assert {u for b in got for u in b.io["bad_shards"]} == {m.shard_url(victim)}  # reported with the batches
    other = epoch(2 - workers)
    assert [b.track_ids for b in got] == [b.track_ids for b in other]
    assert all(torch.equal(a.audio, b.audio) for a, b in zip(got, other))
