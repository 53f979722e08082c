"""The zarr store format: the same data as the WebDataset shards, read through the same loader."""

import json

import numpy as np
import pytest

from conftest import FIX_OPTS
from umx.errors import ShardError
from umx.prep import prepare
from umx.shards import manifest as mf
from umx.shards.reader import ShardReader
from umx.train.trainer import TrainConfig, train

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


def test_same_pcm_and_manifest(both):
    (mw, rw), (mz, rz) = _all(both[0]), _all(both[1])
    assert rw.keys() == rz.keys() and len(rw) == 7
    for key, a in rw.items():
        b = rz[key]
        assert a.meta == b.meta and list(a.sources) == list(b.sources)
        for name in a.sources:
            np.testing.assert_array_equal(a.sources[name], b.sources[name])
    strip = lambda raw: {k: v for k, v in raw.items() if k not in ("storage", "prep")}  # noqa: E731
    assert strip(mw.raw) == strip(mz.raw)
    assert mz.raw["storage"]["format"] == "zarr" and not list(both[1].glob("*.tar"))
    assert all(len(h) == 64 for h in mz.raw["storage"]["objects"].values())


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
