#!/usr/bin/env python
"""umx's Separator against open-unmix's `model.Separator`, same weights, same track, one run.

    python scripts/bench_separate.py [--seconds 30] [--targets 1] [--hidden-size 512] [--niter 1]
                                     [--repeats 3] [--threads N] [--device cpu] [--json OUT]

Both separate the same random stereo mixture with the same networks (umxhq's sizes by default:
hidden 512, nfft 4096, hop 1024, Wiener windows of 300 frames), in turns, median of `--repeats`.
With one target a residual is added (the usual `--residual` separation); with four, the four
targets are filtered together. Reports both times, their ratio, and the largest difference of
the estimates relative to the largest sample (they should agree to float rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # openunmix imports torchaudio's old API

from umx.models.openunmix.network import OpenUnmix, bandwidth_to_max_bin  # noqa: E402
from umx.models.openunmix.separator import Separator  # noqa: E402

NAMES = ["vocals", "drums", "bass", "other"]


def run(args) -> dict:
    import openunmix_compat

    openunmix_compat.register()
    from openunmix import model as ou_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    max_bin = bandwidth_to_max_bin(44100, 4096, 16000)
    nets = {n: OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=args.hidden_size, max_bin=max_bin).eval().to(device)
            for n in NAMES[:args.targets]}
    residual = args.targets == 1
    ours = Separator(nets, niter=args.niter, residual=residual, wiener_win_len=300).to(device).freeze()
    theirs = ou_model.Separator(nets, niter=args.niter, residual=residual, wiener_win_len=300).to(device).eval()
    x = (0.1 * torch.randn(1, 2, int(args.seconds * 44100))).to(device)
    times: dict[str, list[float]] = {"umx": [], "openunmix": []}
    out = {}
    with torch.no_grad():
        for name, sep in (("umx", ours), ("openunmix", theirs)):  # warm-up
            out[name] = sep(x)
        for _ in range(args.repeats):
            for name, sep in (("umx", ours), ("openunmix", theirs)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out[name] = sep(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
    scale = out["openunmix"].abs().max()
    r = {"device": str(device), "threads": torch.get_num_threads(), "seconds": args.seconds, "targets": args.targets,
         "residual": residual, "hidden_size": args.hidden_size, "niter": args.niter, "repeats": args.repeats,
         "umx_s": statistics.median(times["umx"]), "openunmix_s": statistics.median(times["openunmix"]),
         "times_s": times, "max_rel_difference": float((out["umx"] - out["openunmix"]).abs().max() / scale)}
    r["speedup"] = r["openunmix_s"] / r["umx_s"]
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--targets", type=int, default=1, choices=(1, 2, 3, 4))
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--niter", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    args = p.parse_args(argv)
    r = run(args)
    print(f"{r['seconds']:g} s stereo, {r['targets']} target(s){' + residual' if r['residual'] else ''}, hidden "
          f"{r['hidden_size']}, niter {r['niter']}, {r['device']} ({r['threads']} threads): umx {r['umx_s']:.2f} s, "
          f"open-unmix {r['openunmix_s']:.2f} s = {r['speedup']:.2f}x; largest difference "
          f"{r['max_rel_difference']:.1e} of the largest sample")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
