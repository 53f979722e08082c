"""Bounded fuzzing: the manifest and shard readers fail only with the project's own clear errors."""

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umx.errors import ManifestError, ShardError
from umx.shards import manifest as mf
from umx.shards.webdataset import read_shard

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def raw_manifest(shard_set):
    return json.loads((shard_set / "manifest.json").read_text())


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, prefix + (i,))


@FUZZ
@given(data=st.data())
def test_mutated_manifests_give_manifest_errors_only(raw_manifest, data):
    paths = [p for p in _paths(raw_manifest) if p]
    bad = copy.deepcopy(raw_manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = bad
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()):
                parent[path[-1]] = data.draw(json_values)
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        m = mf.parse(mf.validate(bad, "fuzz.json"), "/nowhere")
        for split in m.splits():  # a manifest that validates must be usable
            m.shards(split)
            m.statistics(4096, 1024)
    except ManifestError as e:
        assert "fuzz.json" in str(e) and e.field


@FUZZ
@given(doc=json_values)
def test_arbitrary_json_gives_manifest_errors_only(doc):
    try:
        mf.validate(doc, "fuzz.json")
    except ManifestError:
        pass


@pytest.fixture(scope="module")
def small_shard(shard_set):
    m = mf.load(shard_set)
    entry = min(m.shards("valid") + m.shards("train"), key=lambda e: e.bytes)
    return (shard_set / entry.name).read_bytes()


@FUZZ
@given(data=st.data())
def test_damaged_shards_give_shard_errors_only(small_shard, tmp_path_factory, data):
    blob = bytearray(small_shard)
    how = data.draw(st.sampled_from(["flip", "truncate", "zero", "garbage"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, min(len(blob) - 1, 4096)))  # headers, meta.json, npy headers
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif how == "zero":
        start = data.draw(st.integers(0, 4096))
        blob[start:start + 512] = bytes(len(blob[start:start + 512]))
    else:
        blob = bytearray(data.draw(st.binary(max_size=2048)))
    path = tmp_path_factory.mktemp("fuzz") / "x.tar"
    path.write_bytes(bytes(blob))
    try:
        for record in read_shard(str(path)):
            assert record.sources
    except ShardError as e:
        assert "x.tar" in str(e)
