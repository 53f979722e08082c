#!/usr/bin/env python
"""Several architectures trained at equal steps on the same synthetic data, then scored by umx-eval.

    python scripts/compare_archs.py [--work DIR] [--epochs 8] [--arch openunmix bs_roformer …] [--json]

Writes a trackfolder_fix set (umx.synth), prepares it once, and trains each architecture through the
plain command line with the same data options (targets vocals drums bass other, crops, batches,
seed, epochs: the same steps), small enough for a CPU. Each model directory is scored by `umx-eval`
on the valid split (cSDR and uSDR); the table gives each target's gain over the mixture baseline and
the wall time. Only what is printed is measured: tiny networks after a few hundred steps, not the
architectures' quality at scale.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["vocals", "drums", "bass", "other"]
DATA = ["--targets", *TARGETS, "--seq-dur", "1.0", "--batch-size", "4", "--samples-per-track", "8", "--seed", "42",
        "--quiet", "--random-track-mix", "--source-augmentations", "gain", "channelswap", "--lr", "0.003"]
SMALL = {
    "openunmix": ["--hidden-size", "64", "--nfft", "2048", "--nhop", "512"],
    "bs_roformer": ["--dim", "32", "--depth", "2", "--heads", "4", "--dim-head", "16", "--stft-n-fft", "1024",
                    "--stft-hop-length", "512", "--stft-win-length", "1024", "--freqs-per-bands",
                    *(["16"] * 32 + ["1"]), "--attn-dropout", "0", "--ff-dropout", "0", "--chunk-size", "88200",
                    "--num-overlap", "2", "--inference-batch-size", "4"],
    "mel_band_roformer": ["--dim", "32", "--depth", "2", "--heads", "4", "--dim-head", "16", "--stft-n-fft", "1024",
                          "--stft-hop-length", "512", "--stft-win-length", "1024", "--num-bands", "16",
                          "--attn-dropout", "0", "--ff-dropout", "0", "--chunk-size", "88200", "--num-overlap", "2",
                          "--inference-batch-size", "4"],
    # Demucs' geometry (nfft 4096, depth 4), 8 channels (growth 2: 64 at the transformer), one transformer layer
    "htdemucs": ["--channels", "8", "--t-layers", "1", "--t-heads", "2"],
}


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", *cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--arch", nargs="+", default=list(SMALL))
    p.add_argument("--json", action="store_true")
    p.add_argument("--reuse", action="store_true", help="keep the models already trained in --work")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data, shards = work / "data", work / "shards"
        if not (shards / "manifest.json").is_file():
            run(["umx.synth", "trackfolder_fix", str(data), "--train", "8", "--valid", "2", "--duration", "12"])
            run(["umx.prep.cli", "trackfolder_fix", str(data), "--out", str(shards), "--target-file", "vocals.wav",
                 "--interferer-files", "bass.wav", "drums.wav", "other.wav"])
        rows = {}
        for arch in args.arch:
            out = work / arch
            reused = args.reuse and (out / f"{'vocals' if arch == 'openunmix' else arch}.json").is_file()
            train_s = None if reused else run(["umx.train", "--shards", str(shards), "--output", str(out), "--arch",
                                               arch, "--epochs", str(args.epochs), *DATA, *SMALL[arch]])
            if reused:
                train_s = sum(json.loads((out / f"{'vocals' if arch == 'openunmix' else arch}.json").read_text())
                              ["train_time_history"])
            eval_s = run(["umx.evaluate_cli", str(out), "--shards", str(shards), "--split", "valid", "--outdir",
                          str(out / "eval"), "--metric", "bssv4", "--metric", "usdr"])
            r = json.loads((out / "eval" / "eval_valid.json").read_text())
            csdr = {t: r["scores"][t]["SDR"] - r["mixture_baseline"][t]["SDR"] for t in TARGETS}
            usdr = {t: r["usdr"]["scores"][t] - r["usdr"]["mixture_baseline"][t] for t in TARGETS}
            rows[arch] = {"csdr_gain": csdr, "usdr_gain": usdr, "csdr": {t: r["scores"][t]["SDR"] for t in TARGETS},
                          "train_s": train_s, "eval_s": eval_s}
    if args.json:
        print(json.dumps({"epochs": args.epochs, "data": DATA, "rows": rows}, indent=1))
        return 0
    print(f"{args.epochs} epochs × 16 steps (batch 4 × 1 s), 8 train / 2 valid synthetic tracks; dB over the mixture")
    print(f"{'arch':18s} " + " ".join(f"{t:>14s}" for t in TARGETS) + f" {'train s':>8s}")
    for arch, r in rows.items():
        cells = " ".join(f"{r['csdr_gain'][t]:+6.2f}/{r['usdr_gain'][t]:+6.2f} " for t in TARGETS)
        print(f"{arch:18s} {cells} {r['train_s']:8.0f}")
    print("(each cell: cSDR gain / uSDR gain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
