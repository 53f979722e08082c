"""Shared fixtures: a small synthetic dataset and its shard set, made once per session."""

from __future__ import annotations

import os
import sys
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
