"""Prep to and train from buckets and HTTP servers: a real S3 API (moto's server, on
127.0.0.1 only, started and stopped here) and Python's http.server."""

import functools
import http.server
import json
import os
import threading

import pytest

from conftest import FIX_OPTS, moto_bucket, start_moto
from umx.errors import ShardError, UmxError
from umx.prep import prepare
from umx.shards import manifest as mf
from umx.shards import storage
from umx.train import TrainConfig, train

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "umx-test"
TINY = dict(hidden_size=8, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one bucket; credentials and endpoint from the AWS environment variables."""
    with moto_bucket(BUCKET) as client:
        yield client


@pytest.fixture(scope="module")
def s3_set(s3, dataset):
    url = f"s3://{BUCKET}/sets/fix"
    prepare("trackfolder_fix", dataset, url, shard_bytes=7 * 2**20, progress=False, **FIX_OPTS)
    return url


def _keys(client, prefix):
    return {o["Key"]: o for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def test_prep_to_s3_writes_shards_and_manifest(s3, s3_set):
    keys = _keys(s3, "sets/fix/")
    m = mf.load(s3_set)
    names = {e.name for s in m.splits() for e in m.shards(s)}
    assert set(keys) == {f"sets/fix/{n}" for n in names | {"manifest.json", "report.json"}}


def test_train_from_s3_and_second_epoch_from_the_cache(s3, s3_set, tmp_path):
    out = tmp_path / "m"
    # --debug: no statistics pass, so the first epoch is what downloads the training shards
    train(TrainConfig(shards=s3_set, output=str(out), epochs=2, cache_dir=str(tmp_path / "cache"), debug=True,
                      **TINY))
    loader = json.loads((out / "vocals.json").read_text())["loader_history"]
    assert loader[0]["misses"] > 0 and loader[0]["bytes_fetched"] > 0
    assert loader[1]["bytes_fetched"] == 0 and loader[1]["misses"] == 0 and loader[1]["hits"] > 0


def test_interrupted_upload_resumes_without_resending(s3, dataset, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/sets/interrupted"
    real, sent = storage.upload, []

    def flaky(local, dest):
        if len(sent) == 2:
            raise storage.StorageError(f"{dest}: connection lost (simulated)")
        sent.append(dest)
        real(local, dest)

    monkeypatch.setattr(storage, "upload", flaky)
    with pytest.raises(UmxError, match="connection lost"):
        prepare("trackfolder_fix", dataset, url, shard_bytes=7 * 2**20, progress=False, **FIX_OPTS)
    assert not _keys(s3, "sets/interrupted/manifest.json")  # never visible as complete
    first = list(sent)
    sent.clear()
    monkeypatch.setattr(storage, "upload", lambda local, dest: (sent.append(dest), real(local, dest)))
    prepare("trackfolder_fix", dataset, url, shard_bytes=7 * 2**20, progress=False, **FIX_OPTS)
    assert not set(first) & set(sent)  # finished shards were not uploaded again
    assert mf.load(url).splits() == ["train", "valid"]


def test_corrupted_object_is_detected(s3, s3_set, tmp_path):
    m = mf.load(s3_set)
    entry = m.shards("train")[0]
    key = f"sets/fix/{entry.name}"
    good = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(bad))
    try:
        with pytest.raises(ShardError, match=f"{entry.name}: checksum mismatch"):
            train(TrainConfig(shards=s3_set, output=str(tmp_path / "a"), epochs=1,
                              cache_dir=str(tmp_path / "c1"), **TINY))
        train(TrainConfig(shards=s3_set, output=str(tmp_path / "b"), epochs=1, skip_bad_shards=True,
                          cache_dir=str(tmp_path / "c2"), **TINY))
        loader = json.loads((tmp_path / "b" / "vocals.json").read_text())["loader_history"]
        assert loader[0]["skipped_shards"] == 1
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=good)


def test_wrong_credentials_and_missing_bucket_are_clear(s3, s3_set):
    proc, url, key = start_moto(auth=True)  # a store that checks keys
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                              aws_secret_access_key=key["SecretAccessKey"])
        client.create_bucket(Bucket="locked")
        client.put_object(Bucket="locked", Key="set/manifest.json", Body=b"{}")
        storage.configure({"endpoint_url": url, "key": "AKIAWRONGWRONGWRONG0", "secret": "wrong"})
        with pytest.raises(UmxError, match=r"s3://locked/set/manifest.json: access denied — check the credentials"):
            mf.load("s3://locked/set")
    finally:
        storage.configure({"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
        proc.terminate()
        proc.wait(10)
    with pytest.raises(UmxError, match=r"s3://no-such-bucket-umx/x/manifest.json: (no such bucket|not found)"):
        mf.load("s3://no-such-bucket-umx/x")


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def test_train_over_http_and_warm_cache_reads_nothing(shard_set, tmp_path):
    handler = functools.partial(_CountingHandler, directory=str(shard_set))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        out, cache = tmp_path / "m", str(tmp_path / "cache")
        train(TrainConfig(shards=url, output=str(out), epochs=1, cache_dir=cache, **TINY))
        tars = [p for p in _CountingHandler.requests if p.endswith(".tar")]
        assert set(tars) == {f"/{p.name}" for p in shard_set.glob("*.tar")}  # (fsspec may also GET for the size)
        train(TrainConfig(shards=url, output=str(out), epochs=2, checkpoint=str(out), cache_dir=cache, **TINY))
        assert [p for p in _CountingHandler.requests if p.endswith(".tar")] == tars  # no shard read again
        loader = json.loads((out / "vocals.json").read_text())["loader_history"]
        assert loader[1]["bytes_fetched"] == 0 and loader[1]["hits"] > 0
    finally:
        server.shutdown()


def test_zarr_store_to_s3_and_back(s3, dataset, tmp_path):
    url = f"s3://{BUCKET}/sets/zarr"
    prepare("trackfolder_fix", dataset, url, shard_bytes=7 * 2**20, progress=False, format="zarr", **FIX_OPTS)
    keys = _keys(s3, "sets/zarr/")
    assert "sets/zarr/manifest.json" in keys and any(k.startswith("sets/zarr/store.zarr/train/") for k in keys)
    out = tmp_path / "m"
    train(TrainConfig(shards=url, output=str(out), epochs=2, cache_dir=str(tmp_path / "cache"), debug=True, **TINY))
    loader = json.loads((out / "vocals.json").read_text())["loader_history"]
    assert loader[0]["bytes_fetched"] > 0  # objects mirrored into the cache, verified on download
    assert loader[1]["bytes_fetched"] == 0 and loader[1]["misses"] == 0  # the second epoch reads the bucket no more
