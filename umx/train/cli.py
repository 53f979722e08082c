"""`umx-train --shards DIR --target vocals [open-unmix's train.py options]`."""

from __future__ import annotations

import argparse
import sys

from ..cli_util import run_cli, underscore_aliases
from .trainer import TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="umx-train", description="Train an Open-Unmix target model from a shard set.")
    p.add_argument("--shards", required=True, help="shard set folder (or its manifest.json) written by umx-prep")
    p.add_argument("--target", default=d.target, help="source to separate (a source of the shard set)")
    p.add_argument("--output", default=d.output, help="model directory to write")
    p.add_argument("--checkpoint", help="model directory of a run to resume")
    p.add_argument("--model", help="model directory of a trained target to fine-tune")
    p.add_argument("--no-cuda", action="store_true", help="train on the CPU even if CUDA is available")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs, help="train until this epoch (counting resumed ones)")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--patience", type=int, default=d.patience, help="early stopping patience (epochs)")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--lr-decay-patience", type=int, default=d.lr_decay_patience)
    t.add_argument("--lr-decay-gamma", type=float, default=d.lr_decay_gamma)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--seed", type=int, default=d.seed)

    m = p.add_argument_group("model")
    m.add_argument("--seq-dur", type=float, default=d.seq_dur, help="crop length in s; <= 0: full tracks")
    m.add_argument("--unidirectional", action="store_true", help="unidirectional LSTM (real time)")
    m.add_argument("--hidden-size", type=int, default=d.hidden_size)
    m.add_argument("--nfft", type=int, default=d.nfft)
    m.add_argument("--nhop", type=int, default=d.nhop)
    m.add_argument("--bandwidth", type=int, default=d.bandwidth, help="max bandwidth (Hz) seen by the LSTM")
    m.add_argument("--nb-channels", type=int, default=d.nb_channels, choices=(1, 2))

    s = p.add_argument_group("data")
    s.add_argument("--nb-workers", type=int, default=d.nb_workers, help="DataLoader worker processes")
    s.add_argument("--samples-per-track", type=int, help="crops per track per epoch (musdb: 64, else 1)")
    s.add_argument("--source-augmentations", nargs="*", choices=("gain", "channelswap"),
                   help="per-source augmentations (musdb: gain channelswap, else none)")
    s.add_argument("--random-track-mix", action=argparse.BooleanOptionalAction, default=None,
                   help="draw interferers from other tracks (musdb: on, else off)")
    s.add_argument("--pool-size", type=int, default=d.pool_size, help="tracks each worker holds for random crops")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    underscore_aliases(p)
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = train(TrainConfig(**vars(args)))
    print(f"model written to {out} ({args.target}.pth, {args.target}.json, separator.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
