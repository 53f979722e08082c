#!/usr/bin/env python
"""umx's loader against MSST's `MSSDataset` (dataset type 1, its MUSDB18 BS-RoFormer config, chunk
131584) on the same tracks, per CPU core, in one run.

    git clone https://github.com/ZFTurbo/Music-Source-Separation-Training /tmp/msst
    pip install --target /tmp/msst-deps --no-deps ml_collections omegaconf antlr4-python3-runtime
    PYTHONPATH=/tmp/msst-deps python scripts/bench_msst_loader.py --msst /tmp/msst [--tracks 8] [--samples 40]

MSST's code is imported from `--msst` only (never part of umx). Its `audiomentations` and
`pedalboard` imports are stubbed: the MUSDB18 configs use neither (only `loudness`, which MSST
applies in `__getitem__`). Both read the same synthetic tracks (umx.synth, a track folder per track
with vocals/bass/drums/other.wav: MSST's layout and umx's `trackfolder_fix`): MSST reads every
stem of every sample from a random track's WAV file (`soundfile`, at a random offset, redrawing quiet
chunks), umx crops its prepared shard set (the same random track mixing, the loudness done on the
device). Each in this process, one core (`torch.set_num_threads(1)`): samples/s, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "data" / "msst" / "config_musdb18_bs_roformer.yaml"
STEMS = ["vocals", "bass", "drums", "other"]


def msst_dataset(msst: Path, tracks: Path, work: Path):
    """MSST's MSSDataset, type 1, its MUSDB18 BS-RoFormer config (all four instruments)."""
    for name in ("audiomentations", "pedalboard"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(msst))
    import yaml
    from ml_collections import ConfigDict
    from utils.dataset import MSSDataset  # MSST's

    config = ConfigDict(yaml.load(CONFIG.read_text(), Loader=yaml.FullLoader))  # MSST's own way to read it
    config.training.target_instrument = None  # every stem, as umx's batches carry them
    return MSSDataset(config, [str(tracks)], metadata_path=str(work / "metadata.pkl"), dataset_type=1,
                      verbose=False)


def msst_rate(dataset, samples: int) -> float:
    dataset[0]
    t = time.perf_counter()
    for i in range(samples):
        dataset[i]
    return samples / (time.perf_counter() - t)


def umx_rate(shards: Path, samples: int, chunk: int) -> float:
    from umx import bench
    from umx.shards import manifest as mf
    from umx.train.streams import TrainStream

    batch = 10  # the config's batch size
    stream = TrainStream(mf.load(shards), STEMS[0], chunk, batch, samples_per_track=64, pool_size=8, seed=42)
    return bench.measure_loader(stream, 0, max(1, samples // batch))["loader_samples_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--msst", required=True, help="a clone of Music-Source-Separation-Training")
    p.add_argument("--work", default="bench-msst")
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    from umx import synth
    from umx.prep.pipeline import prepare

    work = Path(args.work)
    data, shards = work / "data", work / "shards"
    if not (shards / "manifest.json").is_file():
        synth.write_layout("trackfolder_fix", data, n_train=args.tracks, n_valid=1, duration=args.duration, seed=3)
        prepare("trackfolder_fix", data, shards, workers=2, progress=False, overwrite=True,
                target_file="vocals.wav", interferer_files=["bass.wav", "drums.wav", "other.wav"])
    chunk = 131584
    dataset = msst_dataset(Path(args.msst), data / "train", work)
    rounds = {"msst": [], "umx": []}
    for _ in range(args.rounds):  # alternating
        rounds["msst"].append(msst_rate(dataset, args.samples))
        rounds["umx"].append(umx_rate(shards, args.samples * 4, chunk))
    med = {k: float(np.median(v)) for k, v in rounds.items()}
    result = {"chunk": chunk, "tracks": args.tracks, "duration_s": args.duration, "threads": 1, "rounds": rounds,
              "median_samples_per_s": med, "umx_over_msst": med["umx"] / med["msst"]}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"one core, chunk {chunk} (MSST's MUSDB18 config), {args.tracks} tracks of {args.duration:g} s")
        print(f"MSST MSSDataset type 1: {med['msst']:8.1f} samples/s")
        print(f"umx loader:             {med['umx']:8.1f} samples/s   ({result['umx_over_msst']:.1f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
