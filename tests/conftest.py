"""Shared fixtures: a small synthetic dataset and its shard set, made once per session."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from umx import synth  # noqa: E402
from umx.prep import prepare  # noqa: E402

FIX_OPTS = {"target_file": "vocals.wav", "interferer_files": ["bass.wav", "drums.wav", "other.wav"]}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a minute; run with -m slow")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["UMX_CACHE"] = str(tmp_path_factory.mktemp("umx-cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Single-threaded torch for a module: on 2 shared cores, spinning OpenMP teams make it up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """trackfolder_fix: 5 train tracks, 2 valid tracks of ~4 s."""
    return synth.write_layout("trackfolder_fix", tmp_path_factory.mktemp("data") / "fix",
                              n_train=5, n_valid=2, duration=4.0, seed=7)


@pytest.fixture(scope="session")
def shard_set(dataset, tmp_path_factory) -> Path:
    """The dataset as a shard set with small shards (several per split)."""
    out = tmp_path_factory.mktemp("shards") / "set"
    prepare("trackfolder_fix", dataset, out, workers=2, shard_bytes=3 * 2**20, progress=False, **FIX_OPTS)
    return out


def start_moto(auth: bool = False):
    """A moto S3 server on 127.0.0.1 (the caller terminates it); with `auth`, requests need a real
    IAM key (made here). Returns (process, endpoint URL, access key)."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3" if auth else "inf")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    key = {"AccessKeyId": "testing", "SecretAccessKey": "testing"}
    if auth:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
        iam.create_user(UserName="umx")
        iam.put_user_policy(UserName="umx", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="umx")["AccessKey"]
    return proc, url, key


@contextlib.contextmanager
def moto_bucket(bucket: str):
    """A moto S3 server with one bucket, its endpoint and keys in the AWS environment variables and
    umx's storage options for as long as the block runs; the server is stopped after."""
    import boto3

    from umx.shards import storage

    proc, url, key = start_moto()
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in names}
    try:
        os.environ.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
                          AWS_ENDPOINT_URL=url, AWS_DEFAULT_REGION="us-east-1")
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        storage.configure({"endpoint_url": url})  # what --storage-options would give
        yield client
    finally:
        storage.configure()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(10)


class Interrupted(Exception):
    """Raised by `interrupted` in place of a training step: a run killed there."""


@contextlib.contextmanager
def interrupted(monkeypatch, at: tuple[int, int]):
    """Inside the block, training stops at (epoch, step) as if killed (the block must reach it);
    afterwards the trainer steps normally again."""
    from umx.train import trainer as trainer_mod

    step = trainer_mod.Trainer.train_step

    def stop(self, pcm, epoch, i, *rest):
        if (epoch, i) == at:
            raise Interrupted
        return step(self, pcm, epoch, i, *rest)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop)
    try:
        with pytest.raises(Interrupted):
            yield
    finally:
        monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)
