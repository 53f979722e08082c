"""`--eval-every`: separation quality of the validation tracks during training, and `--select-by`."""

import json
import math

import pytest

from umx.errors import UmxError
from umx.evaluate import evaluate
from umx.train import TrainConfig, build_trainer, train

TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, quiet=True, debug=True,
            samples_per_track=2)


def _results(out, target):
    return json.loads((out / f"{target}.json").read_text())


def test_eval_every_records_sdr_where_evaluated(shard_set, tmp_path):
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path), epochs=4, eval_every=2, **TINY))
    r = _results(tmp_path, "vocals")
    sdr, usdr = r["valid_sdr_history"], r["valid_usdr_history"]
    assert len(sdr) == len(usdr) == 4 and sdr[0] is None and sdr[2] is None and usdr[0] is None
    assert all(isinstance(v, float) and math.isfinite(v) for v in (sdr[1], sdr[3], usdr[1], usdr[3]))
    assert r["best_epoch"] == 1 + r["valid_loss_history"].index(min(r["valid_loss_history"]))  # still the loss
    assert (tmp_path / "vocals_loss.png").stat().st_size > 0


def test_in_training_scores_are_umx_evals(shard_set, tmp_path):
    """The cSDR recorded for an epoch is what umx-eval (fast BSSv4) gives the weights of that epoch."""
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path), epochs=1, eval_every=1, **TINY))
    r = _results(tmp_path, "vocals")
    res = evaluate(tmp_path, str(shard_set), "valid", workers=1, progress=False, metrics=("bssv4", "usdr"))
    assert r["valid_sdr_history"][0] == pytest.approx(res["scores"]["vocals"]["SDR"], abs=1e-3)
    assert r["valid_usdr_history"][0] == pytest.approx(res["usdr"]["scores"]["vocals"], abs=1e-3)


def test_select_by_sdr(shard_set, tmp_path):
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path), epochs=3, eval_every=1, select_by="sdr",
                      lr=0.01, **TINY))
    r = _results(tmp_path, "vocals")
    sdr = r["valid_sdr_history"]
    assert r["best_epoch"] == 1 + sdr.index(max(sdr)) and r["best_loss"] == pytest.approx(-max(sdr))
    assert r["args"]["select_by"] == "sdr"


def test_select_by_sdr_needs_eval_every(shard_set, tmp_path):
    with pytest.raises(UmxError, match="--select-by sdr follows the SDR of --eval-every"):
        build_trainer(TrainConfig(shards=str(shard_set), output=str(tmp_path), select_by="sdr", **TINY))
