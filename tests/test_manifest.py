import copy
import json

import pytest

from umx.errors import ManifestError
from umx.shards import manifest as mf


def test_roundtrip(shard_set):
    m = mf.load(shard_set)
    assert m.layout == "trackfolder_fix" and m.sample_rate == 44100 and m.channels == 2
    assert m.sources == ["vocals", "bass", "drums", "other"] and m.target == "vocals"
    assert set(m.splits()) == {"train", "valid"}
    train = m.shards("train")
    assert len(train) >= 2, "small shard size should give several shards"
    assert sum(len(s.track_ids) for s in train) == 5
    assert all(len(s.sha256) == 64 and s.bytes > 0 for s in train)
    assert m.statistics(4096, 1024) is not None and m.statistics(2048, 512) is None
    # the manifest path itself is accepted too
    assert mf.load(shard_set / "manifest.json").raw == m.raw


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("sample_rate"), "sample_rate"),
    (lambda r: r.update(version=99), "version"),
    (lambda r: r.update(channels="two"), "channels"),
    (lambda r: r.update(target="piano"), "target"),
    (lambda r: r.update(format="other"), "format"),
    (lambda r: r["splits"]["train"]["shards"][0].pop("sha256"), "splits.train.shards[0].sha256"),
    (lambda r: r["splits"]["train"]["shards"][0].update(name="../x.tar"), "splits.train.shards[0].name"),
    (lambda r: r["splits"]["valid"]["shards"][0]["track_frames"].append(1), "splits.valid.shards[0].track_frames"),
])
def test_validation_errors_name_the_field(shard_set, mutate, field):
    raw = json.loads((shard_set / "manifest.json").read_text())
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ManifestError) as e:
        mf.validate(bad, "m.json")
    assert e.value.field == field
    assert f"'{field}'" in str(e.value)


def test_missing_and_malformed_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no manifest here"):
        mf.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        mf.load(tmp_path)
