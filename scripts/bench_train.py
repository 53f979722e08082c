#!/usr/bin/env python
"""End-to-end training samples/s: umx against open-unmix 1.3.0's train loop, same device, same run.

    python scripts/bench_train.py [--work DIR] [--nb-workers N] [--steps N] [--json] [--quick]

Both sides train the same OpenUnmix (umxhq recipe by default: hidden 512, nfft 4096, hop
1024, 6 s crops, batch 16, gain + channelswap, random track mix) on the synthetic data set
of scripts/bench_loader.py, with `--nb-workers` loader workers for umx and `--reference-workers`
for open-unmix (default: the same), for `--steps` timed steps after `--warmup` untimed ones:

  umx         umx.bench: the Trainer's loader (shards, device-side augmentation) feeding
              Trainer.train_step; also its device step time without the loader, so the
              report gives umx's end-to-end rate as a fraction of its no-loader rate; the step is
              captured as a CUDA graph on a GPU (`--cuda-graph`, as umx-train); `--also-eager`
              measures umx with open-unmix's eager step too;
  open-unmix  the loop of open-unmix's scripts/train.py: DataLoader(MUSDBDataset(is_wav=True)
              or FixedSourcesTrackFolderDataset, shuffle, pin_memory on CUDA) → x, y to the
              device → encoder (STFT + ComplexNorm) → OpenUnmix → MSE → Adam step.

Targets (GPU): umx ≥ 3× open-unmix end to end, and umx end to end ≥ 90 % of its own no-loader
step rate. On a CPU the figures only show that the script works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_loader  # noqa: E402

from umx import bench  # noqa: E402
from umx.train import TrainConfig  # noqa: E402

UMXHQ = dict(hidden_size=512, nfft=4096, nhop=1024, seq_dur=6.0, batch_size=16, bandwidth=16000, nb_channels=2)
QUICK = dict(hidden_size=16, nfft=2048, nhop=512, seq_dur=1.0, batch_size=2, bandwidth=16000, nb_channels=2)


def openunmix_rate(dataset, recipe: dict, nb_workers: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Samples/s of open-unmix's train loop (scripts/train.py's `train`) after `warmup` steps."""
    from openunmix import model, transforms, utils

    stft, _ = transforms.make_filterbanks(n_fft=recipe["nfft"], n_hop=recipe["nhop"], center=False,
                                          sample_rate=44100.0, method="torch")
    encoder = torch.nn.Sequential(stft, model.ComplexNorm(mono=recipe["nb_channels"] == 1)).to(device)
    max_bin = utils.bandwidth_to_max_bin(44100.0, recipe["nfft"], recipe["bandwidth"])
    unmix = model.OpenUnmix(nb_bins=recipe["nfft"] // 2 + 1, nb_channels=recipe["nb_channels"],
                            hidden_size=recipe["hidden_size"], max_bin=max_bin).to(device)
    optimizer = torch.optim.Adam(unmix.parameters(), lr=0.001, weight_decay=0.00001)
    kwargs = {"num_workers": nb_workers, "pin_memory": True} if device.type == "cuda" else {"num_workers": nb_workers}
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True,
                                             num_samples=recipe["batch_size"] * (steps + warmup))
    loader = DataLoader(dataset, batch_size=recipe["batch_size"], sampler=sampler, **kwargs)
    unmix.train()
    start, samples, n = None, 0, 0
    for n, (x, y) in enumerate(loader, start=1):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(unmix(encoder(x)), encoder(y))
        loss.backward()
        optimizer.step()
        loss.item()
        if n == warmup:
            start = time.perf_counter()
        elif n > warmup:
            samples += x.shape[0]
    if start is None or samples == 0:
        raise RuntimeError("open-unmix's loader gave too few batches")
    return {"samples_per_s": samples / (time.perf_counter() - start), "steps": n - warmup}


def run(args) -> dict:
    recipe = QUICK if args.quick else UMXHQ
    work = Path(args.work) if args.work else Path(bench_loader.tempfile.mkdtemp(prefix="umx-bench-train-"))
    paths = bench_loader.make_data(work, args.tracks, args.duration, musdb=args.dataset == "musdb")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    if args.dataset == "musdb":
        reference = bench_loader.musdb_dataset(paths["musdb"], recipe["seq_dur"])
        shards = paths["musdb_shards"]
        opts = {}
    else:
        reference = bench_loader.fixed_dataset(paths["fix"], recipe["seq_dur"])
        shards = paths["fix_shards"]
        # 64 crops per track (the musdb recipe's): with open-unmix's default of 1, 16 tracks are one
        # batch per epoch, which more than one worker can only deliver as partial batches
        opts = {"source_augmentations": ["gain", "channelswap"], "random_track_mix": True, "samples_per_track": 64}
    config = TrainConfig(shards=str(shards), target="vocals", nb_workers=args.nb_workers, no_cuda=args.no_cuda,
                         cuda_graph=args.cuda_graph, **recipe, **opts)
    ref_workers = args.nb_workers if args.reference_workers is None else args.reference_workers
    runs: dict[str, list] = {"umx": [], "openunmix": [], "umx_eager": []}
    for _ in range(args.repeats):
        runs["umx"].append(bench.bench(config, args.steps, args.warmup, args.loader_batches))
        if args.also_eager:
            eager = dataclasses.replace(config, cuda_graph="off")
            runs["umx_eager"].append(bench.bench(eager, args.steps, args.warmup, args.loader_batches))
        runs["openunmix"].append(openunmix_rate(reference, recipe, ref_workers, args.steps, args.warmup, device))
    umx_rate = [r["train_samples_per_s"] for r in runs["umx"]]
    ou_rate = [r["samples_per_s"] for r in runs["openunmix"]]
    ratio = statistics.median(a / b for a, b in zip(umx_rate, ou_rate))
    of_step = statistics.median(r["train_samples_per_s"] / r["device_samples_per_s"] for r in runs["umx"])
    out = {"device": runs["umx"][0]["device"], "recipe": recipe, "reference": args.dataset,
           "nb_workers": args.nb_workers, "reference_workers": ref_workers, "steps": args.steps,
           "repeats": args.repeats, "umx_step_kind": runs["umx"][0].get("step_kind", "eager"),
           "umx_train_samples_per_s": statistics.median(umx_rate),
           "umx_step_ms": statistics.median(r["step_ms"] for r in runs["umx"]),
           "umx_gpu_busy": statistics.median(r["gpu_busy"] for r in runs["umx"]),
           "openunmix_train_samples_per_s": statistics.median(ou_rate),
           "ratio_umx_over_openunmix": ratio, "umx_end_to_end_over_no_loader": of_step,
           "targets": {"umx >= 3x open-unmix end to end": ratio >= 3,
                       "umx end to end >= 90% of its no-loader step rate": of_step >= 0.9},
           "runs": runs}
    if runs["umx_eager"]:
        out["umx_eager_train_samples_per_s"] = statistics.median(r["train_samples_per_s"] for r in runs["umx_eager"])
        out["umx_eager_step_ms"] = statistics.median(r["step_ms"] for r in runs["umx_eager"])
    return out


def table(r: dict) -> str:
    rec = r["recipe"]
    lines = [f"train loop benchmark on {r['device']}: hidden {rec['hidden_size']}, nfft {rec['nfft']}, batch "
             f"{rec['batch_size']} × {rec['seq_dur']} s, {r['nb_workers']} loader worker(s) for umx, "
             f"{r.get('reference_workers', r['nb_workers'])} for open-unmix, {r['steps']} timed steps, "
             f"median of {r['repeats']}",
             f"  umx end to end                       {r['umx_train_samples_per_s']:10.1f} samples/s "
             f"(device step {r['umx_step_ms']:.1f} ms, {r.get('umx_step_kind', 'eager')}; steps take "
             f"{100 * r['umx_gpu_busy']:.0f} % of the wall time)"]
    if "umx_eager_train_samples_per_s" in r:
        lines.append(f"  umx end to end, eager step           {r['umx_eager_train_samples_per_s']:10.1f} samples/s "
                     f"(device step {r['umx_eager_step_ms']:.1f} ms)")
    lines += [f"  open-unmix train loop ({r['reference']:<6})       {r['openunmix_train_samples_per_s']:10.1f} samples/s",
             f"  umx / open-unmix                     {r['ratio_umx_over_openunmix']:10.1f}×",
             f"  umx end to end / no-loader rate      {100 * r['umx_end_to_end_over_no_loader']:10.0f} %"]
    lines += [f"target {'holds' if ok else 'MISSED'}: {name}" for name, ok in r["targets"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="data folder (shared with bench_loader.py; reused when it matches)")
    p.add_argument("--tracks", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--dataset", choices=("musdb", "fixed"),
                   help="open-unmix's dataset: MUSDBDataset(is_wav=True) (umxhq, the default) or "
                        "FixedSourcesTrackFolderDataset (the default with --quick)")
    p.add_argument("--nb-workers", type=int, default=8, help="umx's loader workers (default 8)")
    p.add_argument("--reference-workers", type=int, help="open-unmix's loader workers (default: --nb-workers)")
    p.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto", help="umx's step (as umx-train)")
    p.add_argument("--also-eager", action="store_true", help="also measure umx with --cuda-graph off")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, 1 s crops, tiny data, fixed-sources reference: a smoke run (figures meaningless)")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.tracks, args.duration, args.steps, args.warmup, args.loader_batches = 3, 2.5, 2, 1, 2
        args.nb_workers, args.dataset, args.repeats = min(args.nb_workers, 1), args.dataset or "fixed", 1
    args.dataset = args.dataset or "musdb"
    r = run(args)
    print(json.dumps(r, indent=2, default=str) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
