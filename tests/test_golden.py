"""The train stage keeps doing what it did: every golden run (tests/golden_runs.py) reproduces its
committed record — the same first batches bit for bit, the same loss histories."""

import json

import pytest

import golden_runs

RECORD = json.loads(golden_runs.RECORD.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return golden_runs.run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", list(RECORD))
def test_run_reproduces_its_record(runs, name):
    want, got = RECORD[name], runs[name]
    for key in ("first_steps_sha256", "trace_sha256", "best_epoch", "epochs_trained", "lr_history"):
        assert got.get(key) == want.get(key), key
    for key in ("train_loss_history", "valid_loss_history"):
        # one thread, the same order of float operations: exact on one machine; 1e-6 leaves room only
        # for another CPU's vector kernels, far below what any change of data or draws would move
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=0), key
