"""The zarr store format: the same data as the WebDataset shards, read through the same loader."""

import json

import numpy as np
import pytest

from conftest import FIX_OPTS
from umx.errors import ShardError
from umx.prep import prepare
from umx.shards import manifest as mf
from umx.shards.reader import ShardReader
from umx.train import TrainConfig, train

TINY = dict(hidden_size=8, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True)


@pytest.fixture(scope="module")
def both(dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("formats")
    prepare("trackfolder_fix", dataset, base / "wds", shard_bytes=7 * 2**20, progress=False, **FIX_OPTS)
    prepare("trackfolder_fix", dataset, base / "zarr", shard_bytes=7 * 2**20, progress=False, format="zarr",
            **FIX_OPTS)
    return base / "wds", base / "zarr"


def _all(folder):
    m = mf.load(folder)
    reader = ShardReader(m)
    return m, {(s, r.id): r for s in m.splits() for e in m.shards(s) for r in reader.records(e)}


def _same_but_storage(a, b) -> None:
    """Two manifests of one data set in two formats: all but the storage is the same."""
    keys = ("layout", "sample_rate", "channels", "sources", "target", "sampling", "statistics_table")
    assert [getattr(a, k) for k in keys] == [getattr(b, k) for k in keys]
    tracks = lambda m: {s: [(e.name.removesuffix(".tar"), e.track_ids, e.track_frames, e.track_sources)  # noqa: E731
                            for e in m.shards(s)] for s in m.splits()}
    assert tracks(a) == tracks(b)
    assert b.version == 2 and not any(hasattr(e, "sha256") for s in b.splits() for e in b.shards(s))


def test_same_pcm_and_manifest(both):
    (mw, rw), (mz, rz) = _all(both[0]), _all(both[1])
    assert rw.keys() == rz.keys() and len(rw) == 7
    for key, a in rw.items():
        b = rz[key]
        assert a.meta == b.meta and list(a.sources) == list(b.sources)
        for name in a.sources:
            np.testing.assert_array_equal(a.sources[name], b.sources[name])
    _same_but_storage(mw, mz)
    assert mz.storage.format == "zarr" and not list(both[1].glob("*.tar"))
    assert all(len(h) == 64 for h in mz.storage.objects.values())


def test_training_from_either_gives_the_same_losses(both, tmp_path):
    for name, folder in zip(("wds", "zarr"), both):
        train(TrainConfig(shards=str(folder), output=str(tmp_path / name), epochs=2, samples_per_track=2, **TINY))
    a = json.loads((tmp_path / "wds" / "vocals.json").read_text())
    b = json.loads((tmp_path / "zarr" / "vocals.json").read_text())
    for key in ("train_loss_history", "valid_loss_history"):
        assert b[key] == pytest.approx(a[key], rel=1e-6)


def test_missing_or_damaged_object_is_an_error_not_zeros(both, tmp_path):
    import shutil

    folder = tmp_path / "z"
    shutil.copytree(both[1], folder)
    victim = folder / "store.zarr" / "train" / "drums" / "c" / "0" / "0"
    blob = bytearray(victim.read_bytes())
    blob[100] ^= 1
    victim.write_bytes(bytes(blob))
    with pytest.raises(ShardError, match=r"array 'train/drums' object 0 is damaged"):
        _all(folder)
    victim.unlink()
    with pytest.raises(ShardError, match=r"array 'train/drums' object 0 is missing \(zarr would read zeros\)"):
        _all(folder)


# --- random-access crops -------------------------------------------------------------------

def _stream(folder, pool_size, seq=30000, workers=0, epoch=1, plan="pool"):
    from torch.utils.data import DataLoader

    from umx.train.streams import TrainStream

    m = mf.load(folder)
    stream = TrainStream(m, m.target, seq, 3, samples_per_track=3, pool_size=pool_size, seed=5, plan=plan)
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)
    return [(b.track_ids, b.audio.clone()) for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_global_plan_draws_the_same_batches_from_zarr_and_webdataset(both, workers):
    """In the global plan a sample is a function of (seed, epoch, index) alone: both backends
    yield the same batches bit for bit, whatever the pool size and the workers."""
    a = _stream(both[0], pool_size=1, workers=workers, plan="global")
    b = _stream(both[1], pool_size=7, workers=2 - workers, plan="global")
    assert len(a) == len(b) > 2
    for (ids_a, audio_a), (ids_b, audio_b) in zip(a, b):
        assert ids_a == ids_b and np.array_equal(audio_a.numpy(), audio_b.numpy())


@pytest.mark.parametrize("workers", [0, 2])
def test_zarr_crops_are_drawn_uniformly_over_every_track(both, workers):
    """Pool plan: zarr reads crop by crop, so it needs no pool: with a pool of 1 it draws exactly what the
    WebDataset stream draws with a pool holding every track (uniform over tracks and offsets),
    bit for bit, also from forked workers that open the store themselves."""
    wds, zarr = both
    a, b = _stream(wds, pool_size=100, workers=workers), _stream(zarr, pool_size=1, workers=workers)
    assert len(a) == len(b) > 2
    for (ids_a, audio_a), (ids_b, audio_b) in zip(a, b):
        assert ids_a == ids_b
        assert np.array_equal(audio_a.numpy(), audio_b.numpy())
    # …and unlike the WebDataset stream with a pool of 1, it does not take the tracks one after another
    blocky = _stream(wds, pool_size=1, workers=workers)
    assert [ids for ids, _ in blocky] != [ids for ids, _ in b]


def test_zarr_crop_reads_only_its_chunks_and_match_the_tracks(both):
    from umx.shards import zarr_store

    reader = ShardReader(mf.load(both[1]))
    crops = reader.zarr.crops("train")
    touched = []
    read_object = crops._object
    crops._object = lambda name, k: touched.append((name, k)) or read_object(name, k)
    chunk = zarr_store.CHUNK_FRAMES
    for entry in mf.load(both[0]).shards("train"):
        for record in ShardReader(mf.load(both[0])).records(entry):
            column = crops.column(record.id)
            for name, pcm in record.sources.items():
                for offset in (0, 777, record.frames - 20000):
                    out = np.empty((pcm.shape[0], 20000), np.int16)
                    crops.read(name, column + offset, out)
                    np.testing.assert_array_equal(out, pcm[:, offset:offset + 20000])
    assert touched and all(k == 0 for _, k in touched)  # one object per array holds this small set
    for start, length, chunks in [(5, 100, 1), (chunk - 50, 100, 2), (chunk - 1, chunk + 2, 3)]:
        before = crops.chunks_read
        crops.read("vocals", start, np.empty((2, length), np.int16))
        assert crops.chunks_read - before == chunks  # only the chunks the crop covers


def test_zarr_missing_or_damaged_chunk_during_training_names_array_and_chunk(both, tmp_path):
    import shutil

    from umx.shards import zarr_store

    folder = tmp_path / "z"
    shutil.copytree(both[1], folder)
    obj = folder / "store.zarr" / "train" / "bass" / "c" / "0" / "0"
    crops = ShardReader(mf.load(folder)).zarr.crops("train")
    data, index = crops._object("bass", 0)
    blob = bytearray(obj.read_bytes())
    n = zarr_store.SHARD_CHUNKS
    idx = np.frombuffer(bytes(blob[-(16 * n + 4):-4]), "<u8").reshape(n, 2).copy()
    idx[0] = zarr_store.MISSING  # the sharding index says: chunk 0 absent (zarr would give zeros)
    blob[-(16 * n + 4):-4] = idx.tobytes()
    obj.write_bytes(bytes(blob))
    fresh = ShardReader(mf.load(folder)).zarr
    fresh._checked.add("train/bass/c/0/0")  # past the object checksum: the chunk check itself
    with pytest.raises(ShardError, match=r"array 'train/bass' chunk 0 is missing \(zarr would read zeros\)"):
        fresh.crops("train").read("bass", 10, np.empty((2, 100), np.int16))
    with pytest.raises(ShardError, match=r"array 'train/bass' object 0 is damaged"):
        train(TrainConfig(shards=str(folder), output=str(tmp_path / "m"), epochs=1, **TINY))


def test_train_accepts_the_store_path(both):
    """`umx-train --shards …/store.zarr` finds the manifest beside the store."""
    m = mf.load(str(both[1] / "store.zarr"))
    assert m.storage.format == "zarr" and m.location.rstrip("/").endswith("zarr")


@pytest.mark.parametrize("layout,opts", [
    ("musdb", {}), ("aligned", {"input_file": "mix*.wav", "output_file": "vocals.wav"}),
    ("sourcefolder", {"target_dir": "vocals", "interferer_dirs": ["bass", "drums"]}),
    ("trackfolder_var", {"target_file": "vocals.wav"})])
def test_every_layout_as_zarr_is_the_same_pcm(layout, opts, tmp_path):
    from umx import synth

    data = synth.write_layout(layout, tmp_path / "data", n_train=3, n_valid=1, duration=2.0, seed=11)
    prepare(layout, data, tmp_path / "wds", progress=False, **opts)
    prepare(layout, data, tmp_path / "zarr", progress=False, format="zarr", **opts)
    (mw, rw), (mz, rz) = _all(tmp_path / "wds"), _all(tmp_path / "zarr")
    assert rw.keys() == rz.keys() and rw
    for key, a in rw.items():
        b = rz[key]
        assert a.meta == b.meta and sorted(a.sources) == sorted(b.sources)
        for name in a.sources:
            np.testing.assert_array_equal(a.sources[name], b.sources[name])
        assert (a.mixture is None) == (b.mixture is None)
        if a.mixture is not None:
            np.testing.assert_array_equal(a.mixture, b.mixture)
    _same_but_storage(mw, mz)
    if layout != "sourcefolder":  # source files are whole files, not crops of tracks
        streamed, random_access = _stream(tmp_path / "wds", pool_size=100), _stream(tmp_path / "zarr", pool_size=1)
        assert [i for i, _ in streamed] == [i for i, _ in random_access] and streamed
        for (_, a), (_, b) in zip(streamed, random_access):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_damaged_zarr_object_stops_training_or_is_skipped(dataset, tmp_path, monkeypatch):
    """A damaged object stops training naming it; with --skip-bad-shards the tracks whose crops need
    it are skipped (counted in the history) and training goes on with the rest."""
    from umx.shards import zarr_store

    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))  # nothing verified yet
    monkeypatch.setattr(zarr_store, "CHUNK_FRAMES", 16384)  # many small objects: one per chunk
    monkeypatch.setattr(zarr_store, "SHARD_CHUNKS", 1)
    folder = tmp_path / "z"
    prepare("trackfolder_fix", dataset, folder, progress=False, format="zarr", shard_bytes=2**20, **FIX_OPTS)
    monkeypatch.undo()
    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))
    victim = folder / "store.zarr" / "train" / "other" / "c" / "0" / "3"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 3] ^= 0x55
    victim.write_bytes(bytes(blob))
    with pytest.raises(ShardError, match=r"array 'train/other' object 3 is damaged"):
        train(TrainConfig(shards=str(folder), output=str(tmp_path / "a"), epochs=1, debug=True, **TINY))
    train(TrainConfig(shards=str(folder), output=str(tmp_path / "b"), epochs=1, debug=True, skip_bad_shards=True,
                      **TINY))
    res = json.loads((tmp_path / "b" / "vocals.json").read_text())
    assert res["loader_history"][0]["skipped_shards"] >= 1 and res["epochs_trained"] == 1


def test_silent_chunks_are_stored_and_read_as_silence(tmp_path, monkeypatch):
    """zarr does not store all-zero chunks by default; umx stores them, so that a chunk absent from a
    store always means damage (digital silence is common in real stems: vocals before they start)."""
    from umx.shards import zarr_store
    from umx.shards.records import TrackRecord

    monkeypatch.setattr(zarr_store, "CHUNK_FRAMES", 1024)
    monkeypatch.setattr(zarr_store, "SHARD_CHUNKS", 4)
    vocals = np.zeros((2, 10000), np.int16)
    vocals[:, 6000:] = 7  # silent for the first five chunks
    record = TrackRecord("t", {"id": "t"}, {"vocals": vocals, "bass": np.ones((2, 10000), np.int16)})
    objects = zarr_store.write_store(tmp_path / "store.zarr", {"train": (10000, [record])})
    assert "train/vocals/c/0/0" in objects  # chunks 0-3, all zeros, are an object of their own
    reader = zarr_store.ZarrReader(str(tmp_path), objects)
    out = np.full((2, 7000), -1, np.int16)
    reader.crops("train").read("vocals", 0, out)
    np.testing.assert_array_equal(out, vocals[:, :7000])
