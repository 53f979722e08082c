"""umx-bench and the benchmark scripts run and report what they document (no timing claims here)."""

import importlib.util
import json
import math
from pathlib import Path

from umx import bench, bench_advice, bench_cli
from umx.shards import manifest as mf
from umx.train.streams import TrainStream
from umx.train import TrainConfig

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TINY = ["--seq-dur", "1", "--batch-size", "2", "--hidden-size", "16", "--nfft", "2048", "--nhop", "512"]
KEYS = ("loader_samples_per_s", "loader_samples_per_s_per_worker", "step_ms", "train_samples_per_s", "gpu_busy",
        "device_samples_per_s", "data_bound", "advice", "worker_memory", "pool", "device")


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sane(r: dict) -> None:
    for key in KEYS:
        assert key in r, key
    for key in ("loader_samples_per_s", "loader_samples_per_s_per_worker", "step_ms", "train_samples_per_s",
                "device_samples_per_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert 0 < r["gpu_busy"] <= 1
    assert isinstance(r["data_bound"], bool)
    assert r["advice"] and all(isinstance(a, str) and a for a in r["advice"])


def test_bench_function_in_process(shard_set):
    cfg = TrainConfig(shards=str(shard_set), seq_dur=1.0, batch_size=2, hidden_size=16, nfft=2048, nhop=512)
    r = bench.bench(cfg, steps=2, warmup=1, loader_batches=3)
    _sane(r)
    assert r["nb_workers"] == 0 and r["device"].startswith("cpu")
    assert r["loader_samples_per_s_per_worker"] == r["loader_samples_per_s"]
    assert r["step_batch"] == 2 and r["train_steps"] == 2 and r["loader_batches"] == 3
    assert "device" in bench_advice.report(r) and "GPU" not in bench_advice.report(r)


def test_cli_json_with_a_worker(shard_set, capsys):
    assert bench_cli.main(["--shards", str(shard_set), *TINY, "--nb-workers", "1", "--steps", "2", "--warmup", "1",
                           "--loader-batches", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    _sane(r)
    assert r["nb_workers"] == 1
    worker = r["worker_memory"]["workers"]
    assert len(worker) == 1 and worker[0]["peak_rss"] > 0  # measured in the worker process (Linux)
    assert r["pool"]["budget_bytes"] == r["pool"]["pool_bytes"] + r["pool"]["batch_buffers_bytes"]


def test_cli_summary_and_errors(shard_set, capsys):
    assert bench_cli.main(["--shards", str(shard_set), *TINY, "--steps", "1", "--warmup", "0",
                           "--loader-batches", "1"]) == 0
    out = capsys.readouterr().out
    for word in ("loader", "step", "end to end", "memory", "data-bound"):
        assert word in out.lower()
    assert bench_cli.main(["--shards", str(shard_set), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_pool_budget_formula(shard_set):
    m = mf.load(shard_set)
    stream = TrainStream(m, "vocals", 44100, batch_size=4, pool_size=3, plan="pool")
    b = bench.pool_budget(stream, prefetch=4)
    largest = max(f for e in m.shards("train") for f in e.track_frames)
    assert b["pool_bytes"] == 3 * largest * 2 * 2 * 4  # pool × frames × channels × int16 × slots
    glob = bench.pool_budget(TrainStream(m, "vocals", 44100, batch_size=4, pool_size=3), prefetch=4)
    assert glob["pool_bytes"] == 0 and "no pool (global plan" in glob["formula"]
    assert b["batch_bytes"] == 4 * 4 * 2 * 44100 * 2
    assert b["batch_buffers_bytes"] == 6 * b["batch_bytes"]  # prefetch 4 + one being filled + one in use


def test_bench_loader_script_quick(tmp_path, capsys):
    module = _script("bench_loader")
    assert module.main(["--quick", "--work", str(tmp_path), "--no-first-step", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("umx_fix_worker", "umx_fix_inprocess", "umx_musdb_worker", "fixed_worker", "fixed_inprocess",
                "musdb_inprocess"):
        assert r["samples_per_s"][key] > 0, key
    assert all(v > 0 for v in r["ratios"].values())
    assert r["memory"]["fix"]["budget"]["budget_bytes"] > 0 and r["memory"]["fix"]["worker"]["peak_rss"] > 0
    assert set(r["targets"]) >= {"umx one worker >= 10x FixedSourcesTrackFolderDataset",
                                 "umx one worker >= 300x MUSDBDataset(is_wav)"}


def test_bench_prep_script_quick(tmp_path, capsys):
    module = _script("bench_prep")
    assert module.main(["--quick", "--work", str(tmp_path), "--no-stems"]) == 0
    out = capsys.readouterr().out
    assert "umx-prep, PCM16 wav" in out and "decode only" in out and "target" in out


def test_time_to_first_step(shard_set, tmp_path):
    r = bench.time_to_first_step(["--shards", str(shard_set), *TINY, "--debug", "--quiet", "--epochs", "1",
                                  "--output", str(tmp_path / "m")])
    assert 0 < r["first_step_start_s"] < r["first_step_done_s"]


def test_verdict_says_data_bound_and_what_to_change():
    base = dict(device_kind="GPU", nb_workers=4, cpus=16, device_samples_per_s=400.0, gpu_busy=0.6,
                loader_samples_per_s=200.0, loader_samples_per_s_per_worker=50.0)
    bound, advice = bench_advice.verdict(base)
    assert bound and "data-bound" in advice[0] and "--nb-workers 10" in advice[1]
    bound, advice = bench_advice.verdict({**base, "loader_samples_per_s": 4000.0,
                                          "loader_samples_per_s_per_worker": 1000.0, "gpu_busy": 0.97})
    assert not bound and advice[0].startswith("compute-bound") and "fewer workers" in advice[1]
    bound, advice = bench_advice.verdict({**base, "cpus": 4, "loader_samples_per_s_per_worker": 5.0})
    assert bound and "more than the 4 cores" in advice[1]


def test_bench_train_script_quick(tmp_path, capsys):
    module = _script("bench_train")
    assert module.main(["--quick", "--work", str(tmp_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["umx_train_samples_per_s"] > 0 and r["openunmix_train_samples_per_s"] > 0
    assert r["ratio_umx_over_openunmix"] > 0 and set(r["targets"]) == {
        "umx >= 3x open-unmix end to end", "umx end to end >= 90% of its no-loader step rate"}
