"""Golden training runs: a record of what the train stage does, to keep it the same through refactors.

Each run trains a tiny model on synthetic data and records, exactly: a sha256 of the shard set's
audio (`data_sha256`), of every step's draws (batch index, track ids, offsets: `draws_sha256`) and of
what the trainer saw in its first steps (track ids, the int16 batch, the mixture and target the
device made of it); and, to a measured tolerance, its loss histories. `python tests/golden_runs.py`
writes `tests/golden/train_runs.json`; `tests/test_golden.py` runs the same and compares (`compare`).
Runs use one torch thread, so that float sums are in one order on every machine; the CPU's vector
kernels still round differently (see TOLERANCE).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from umx import synth  # noqa: E402
from umx.prep import prepare  # noqa: E402
from umx.train import trainer as trainer_mod  # noqa: E402
from umx.train import TrainConfig, train  # noqa: E402

RECORD = Path(__file__).parent / "golden" / "train_runs.json"
TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, quiet=True, debug=True, epochs=3)
HASHED_STEPS = 4  # of epoch 1
EXACT = ("data_sha256", "draws_sha256", "first_steps_sha256", "trace_sha256", "best_epoch", "epochs_trained",
         "lr_history")
# Relative tolerance of the loss histories, from the spread measured over kernel sets (the same
# runs under ATEN_CPU_CAPABILITY=default, avx2, none and MKL_CBWR=COMPATIBLE on an AVX2 machine, and
# the record written on an AVX-512 one): train losses 1.8e-7 at most, validation losses 4.6e-4 (the
# validation pass runs whole tracks through the networks' inference kernels). Data and draws are
# compared exactly above, so the tolerance only has to cover float rounding: about 5x the spread.
TOLERANCE = {"train_loss_history": 1e-6, "valid_loss_history": 2e-3}
FIX = dict(target_file="vocals.wav", interferer_files=["bass.wav", "drums.wav", "other.wav"])


def datasets(base: Path) -> dict[str, Path]:
    """The shard sets the runs train on (made from fixed seeds: the same bytes every time)."""
    sets = {}
    fix = synth.write_layout("trackfolder_fix", base / "fix", n_train=5, n_valid=1, duration=2.0, seed=11)
    prepare("trackfolder_fix", fix, base / "wds", shard_bytes=2**20, progress=False, **FIX)
    prepare("trackfolder_fix", fix, base / "zarr", shard_bytes=2**20, progress=False, format="zarr", **FIX)
    sets["wds"], sets["zarr"] = base / "wds", base / "zarr"
    src = synth.write_layout("sourcefolder", base / "src", n_train=4, n_valid=1, duration=1.5, seed=12)
    prepare("sourcefolder", src, base / "sourcefolder", shard_bytes=2**20, progress=False, target_dir="vocals",
            interferer_dirs=["bass", "drums"], nb_train_samples=12, nb_valid_samples=3)
    sets["sourcefolder"] = base / "sourcefolder"
    mus = synth.write_layout("musdb", base / "mus", n_train=3, n_valid=1, duration=2.0, seed=13)
    prepare("musdb", mus, base / "musdb", shard_bytes=2**20, progress=False)
    sets["musdb"] = base / "musdb"
    return sets


# name → (shard set, options)
RUNS = {
    "webdataset-pool": ("wds", dict(sampling="pool", pool_size=2, samples_per_track=2,
                                    source_augmentations=["gain", "channelswap"], random_track_mix=True)),
    "zarr": ("zarr", dict(samples_per_track=2, random_track_mix=True)),
    "device-cache-cpu": ("wds", dict(device_cache="on", samples_per_track=2, random_track_mix=True)),
    "sourcefolder": ("sourcefolder", dict()),
    "musdb-accompaniment": ("musdb", dict(target="accompaniment", samples_per_track=2)),
    "workers": ("wds", dict(nb_workers=2, samples_per_track=3, random_track_mix=True,
                            source_augmentations=["gain"])),
    "mid-epoch-resume": ("wds", dict(samples_per_track=3, random_track_mix=True, save_every=2,
                                     source_augmentations=["gain", "channelswap"])),
}


class _Interrupt(Exception):
    pass


def data_digest(shards: Path) -> str:
    """sha256 of a shard set's audio: every int16 `.npy` member of its tars, every chunk object of its
    zarr store (not the tars or the manifest whole: those name the folder the set was made from)."""
    h = hashlib.sha256()
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf:
                if member.name.endswith(".npy"):
                    h.update(member.name.encode())
                    h.update(tf.extractfile(member).read())
    store = shards / "store.zarr"
    for obj in sorted(store.rglob("*")) if store.is_dir() else ():
        if obj.is_file() and "c" in obj.relative_to(store).parts:
            h.update(str(obj.relative_to(store)).encode())
            h.update(obj.read_bytes())
    return h.hexdigest()


def compare(want: dict, got: dict) -> list[str]:
    """What differs between a recorded run and a new one: exact keys, then losses beyond TOLERANCE."""
    bad = [key for key in EXACT if got.get(key) != want.get(key)]
    for key, rel in TOLERANCE.items():
        a, b = got[key], want[key]
        if len(a) != len(b) or any(abs(x - y) > rel * abs(y) for x, y in zip(a, b)):
            bad.append(key)
    return bad


def _watch(kill_at: tuple[int, int] | None = None, draws=None):
    """Wrap the trainer's per-step hook: hash what the first steps see and every step's draws (into
    `draws`, when given, to continue a hash); optionally stop at (epoch, step)."""
    seen = hashlib.sha256()
    draws = draws if draws is not None else hashlib.sha256()
    steps = {"n": 0}
    batch_audio, train_step = trainer_mod.Trainer.batch_audio, trainer_mod.Trainer.train_step
    mix = trainer_mod.mix_and_target

    def hooked_batch(self, batch):
        pcm = batch_audio(self, batch)
        draws.update(json.dumps([batch.index, batch.track_ids, batch.offsets], default=int).encode())
        if steps["n"] < HASHED_STEPS:
            seen.update(json.dumps(batch.track_ids).encode())
            seen.update(pcm.cpu().numpy().tobytes())
        return pcm

    def hooked_mix(*args, **kw):
        x, y = mix(*args, **kw)
        if steps["n"] < HASHED_STEPS and torch.is_grad_enabled():  # training steps, not validation
            seen.update(x.detach().cpu().numpy().tobytes())
            seen.update(y.detach().cpu().numpy().tobytes())
        return x, y

    def hooked_step(self, pcm, epoch, step, *rest):
        if kill_at is not None and (epoch, step) == kill_at:
            raise _Interrupt
        loss = train_step(self, pcm, epoch, step, *rest)
        steps["n"] += 1
        return loss

    trainer_mod.Trainer.batch_audio, trainer_mod.Trainer.train_step = hooked_batch, hooked_step
    trainer_mod.mix_and_target = hooked_mix

    def undo():
        trainer_mod.Trainer.batch_audio, trainer_mod.Trainer.train_step = batch_audio, train_step
        trainer_mod.mix_and_target = mix
    return seen, draws, undo


def _histories(out: Path, target: str) -> dict:
    res = json.loads((out / f"{target}.json").read_text())
    return {k: res[k] for k in ("train_loss_history", "valid_loss_history", "lr_history", "best_epoch",
                                "epochs_trained")}


def run_one(name: str, sets: dict[str, Path], out: Path) -> dict:
    key, options = RUNS[name]
    cfg = TrainConfig(shards=str(sets[key]), output=str(out), **{**TINY, **options})
    target = options.get("target", "vocals")
    seen, draws, undo = _watch()
    try:
        if name == "mid-epoch-resume":  # stop after step 3 of epoch 2 (a checkpoint at step 2), then resume
            undo()
            _, draws, undo = _watch(kill_at=(2, 3))
            try:
                train(cfg)
                raise AssertionError("the run was not interrupted")
            except _Interrupt:
                pass
            undo()
            seen, draws, undo = _watch(draws=draws)
            train(TrainConfig(**{**cfg.__dict__, "checkpoint": str(out)}))
        else:
            train(cfg)
    finally:
        undo()
    return {**_histories(out, target), "first_steps_sha256": seen.hexdigest(), "draws_sha256": draws.hexdigest(),
            "data_sha256": data_digest(sets[key])}


def run_two_ranks(sets: dict[str, Path], out: Path) -> dict:
    """Two ranks on gloo under torchrun: per-rank track ids of every step, and the histories."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    args = ["--shards", str(sets["wds"]), "--output", str(out), "--trace", "--samples-per-track", "2",
            "--random-track-mix"]
    for k, v in TINY.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [] if v is False else [flag, str(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "umx.train",
           *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    traces = hashlib.sha256()
    for rank in (0, 1):  # every step's draws (the last line, the final weights' hash, is float rounding)
        lines = (out / f"trace-rank{rank}.jsonl").read_text().splitlines()
        traces.update("\n".join(line for line in lines if "final_weights_sha256" not in line).encode())
    return {**_histories(out, "vocals"), "trace_sha256": traces.hexdigest(), "data_sha256": data_digest(sets["wds"])}


def run_all(base: Path) -> dict:
    """Every golden run, on one torch thread (the caller's thread setting is restored)."""
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the trainer then keeps one thread
    try:
        sets = datasets(base / "data")
        record = {name: run_one(name, sets, base / name) for name in RUNS}
        record["two-ranks-gloo"] = run_two_ranks(sets, base / "ddp")
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    return record


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UMX_CACHE"] = str(Path(tmp) / "cache")
        result = run_all(Path(tmp))
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RECORD}")
