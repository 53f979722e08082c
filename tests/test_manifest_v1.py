"""Manifests written by earlier umx (v1, committed in tests/data/manifest-v1) still load, and mean
what they meant: the implicit complement target, the layout defaults, zarr entries as track groups."""

from pathlib import Path

import pytest

from umx.shards import manifest as mf

V1 = Path(__file__).parent / "data" / "manifest-v1"


@pytest.mark.parametrize("name", ["wds", "zarr", "musdb", "sf"])
def test_v1_manifests_load(name):
    m = mf.load(V1 / f"{name}.json")
    assert m.version == 1 and m.splits() and all(m.shards(s) for s in m.splits())


def test_v1_meanings():
    wds, zarr, musdb, sf = (mf.load(V1 / f"{n}.json") for n in ("wds", "zarr", "musdb", "sf"))
    assert musdb.sampling.complement == mf.Complement("accompaniment", "vocals")  # implicit in v1
    assert sf.sampling.complement is None and sf.sampling.records == "source_files"
    assert musdb.sampling.defaults.samples_per_track == 64 and musdb.sampling.defaults.random_mix
    assert musdb.sampling.defaults.source_augmentations == ("gain", "channelswap")
    assert sf.sampling.defaults.nb_train_samples == 1000 and sf.sampling.defaults.nb_valid_samples == 100
    assert isinstance(wds.shards("train")[0], mf.ShardEntry) and wds.statistics(4096, 1024) is not None
    group = zarr.shards("train")[0]
    assert isinstance(group, mf.TrackGroup) and group.name == "train-000000" and group.split == "train"
    assert zarr.storage.format == "zarr" and zarr.storage.objects
    assert wds.split("train").tracks == 2 and wds.split("train").max_sources == 4


def test_newer_version_is_refused(tmp_path):
    import json

    raw = json.loads((V1 / "musdb.json").read_text())
    raw["version"] = mf.VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(mf.ManifestError, match="newer than this umx reads"):
        mf.load(tmp_path)
