"""`umx-train --shards DIR [open-unmix's train.py options]`, or open-unmix's own
command line (`--dataset LAYOUT --root DIR …`), which prepares the dataset once
into a cache and trains from that shard set.

Multi-GPU / multi-node: `torchrun --nproc-per-node N -m umx.train …` (the same
options; `--batch-size` is per process)."""

from __future__ import annotations

import argparse
import sys

from ..cli_util import run_cli, underscore_aliases
from ..errors import UmxError
from ..layouts import STRUCTURE, TRAINING, check_options, flag
from ..prep import cache
from ..prep.cli import LAYOUTS, add_layout_arguments, layout_options
from .trainer import TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="umx-train", description="Train an Open-Unmix target model from a shard set "
                                "(or, with open-unmix's --dataset/--root, from a dataset folder prepared on demand).")
    p.add_argument("--shards", help="shard set written by umx-prep: folder, manifest.json, or URL "
                   "(s3://, gs://, https://)")
    p.add_argument("--dataset", choices=LAYOUTS, help="open-unmix's dataset layout of --root (default: musdb)")
    p.add_argument("--root", help="open-unmix's dataset folder: prepared once into a cache, then streamed")
    p.add_argument("--target", help="source to separate (default: the shard set's target, e.g. vocals)")
    p.add_argument("--output", default=d.output, help="model directory to write")
    p.add_argument("--checkpoint", help="model directory of a run to resume")
    p.add_argument("--model", help="model directory of a trained target to fine-tune")
    p.add_argument("--no-cuda", action="store_true", help="train on the CPU even if CUDA is available")
    p.add_argument("--audio-backend", help="accepted for open-unmix compatibility and ignored: "
                   "umx-prep decodes audio once (soundfile, ffmpeg for .stem.mp4)")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs, help="train until this epoch (counting resumed ones)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (torchrun: × nproc)")
    t.add_argument("--patience", type=int, default=d.patience, help="early stopping patience (epochs)")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--lr-decay-patience", type=int, default=d.lr_decay_patience)
    t.add_argument("--lr-decay-gamma", type=float, default=d.lr_decay_gamma)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--debug", action="store_true", help="skip the input statistics (faster start)")
    t.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write the checkpoint every N steps inside an epoch (exact mid-epoch resume)")
    t.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="fp32 (default, exact), tf32 matmuls on GPUs, or bf16 autocast")
    t.add_argument("--cuda-graph", choices=("auto", "on", "off"), default=d.cuda_graph,
                   help="capture the training step as one CUDA graph: auto (default: on one GPU with fixed "
                        "shapes), on (also runs that step, uncaptured, on CPU), off (open-unmix's eager step)")
    t.add_argument("--device-cache", choices=("auto", "on", "off"), default=d.device_cache,
                   help="hold the train split in device memory, so workers send crop positions, not audio: "
                        "auto (default: on a GPU where it takes at most half the free memory), on, off")
    t.add_argument("--trace", action="store_true",
                   help="log the track ids of every step per rank to OUTPUT/trace-rank<r>.jsonl")

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
    s.add_argument("--source-augmentations", nargs="*", choices=("gain", "channelswap"),
                   help="per-source augmentations (musdb: gain channelswap, else none)")
    s.add_argument("--random-track-mix", action=argparse.BooleanOptionalAction, default=None,
                   help="draw interferers from other tracks (musdb: on, else off)")
    s.add_argument("--random-interferer-mix", action=argparse.BooleanOptionalAction, default=None,
                   help="trackfolder_var: all interferers from one random track")
    s.add_argument("--pool-size", type=int, default=d.pool_size, help="tracks each worker holds for random crops")
    s.add_argument("--cache-dir", help="local cache of remote shards (default $UMX_CACHE/shards)")
    s.add_argument("--cache-size", type=float, default=d.cache_size, help="cache size limit in GiB (LRU)")
    s.add_argument("--skip-bad-shards", action="store_true",
                   help="skip (and count) shards whose checksum or structure is wrong instead of stopping")
    s.add_argument("--storage-options", help="JSON options for the bucket filesystem (endpoint, credentials, …)")
    s.add_argument("--anon", action="store_true", help="read a public bucket without credentials")
    add_layout_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    underscore_aliases(p)
    return p


TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)


def resolve_shards(args: argparse.Namespace) -> str:
    """--shards as given, or open-unmix's --dataset/--root prepared into the cache."""
    options = layout_options(args)
    options["random_track_mix"], options["random_interferer_mix"] = args.random_track_mix, args.random_interferer_mix
    if args.shards:
        if args.root or args.dataset:
            raise UmxError("--shards and --root/--dataset exclude each other: give a shard set or a dataset folder")
        structural = {k: v for k, v in options.items() if v is not None and k not in
                      {x for v in TRAINING.values() for x in v}}
        if structural:
            raise UmxError(f"{', '.join(flag(k) for k in structural)}: dataset options need --root "
                           "(a shard set was prepared with its own)")
        return args.shards
    layout = args.dataset or "musdb"
    check_options(layout, options)
    prep_options = {k: options[k] for k in STRUCTURE[layout] if options[k] is not None}
    root = args.root or cache.synthetic(layout, prep_options, args.quiet)
    return str(cache.prepared(layout, root, prep_options, quiet=args.quiet))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.shards = resolve_shards(args)
    out = train(TrainConfig(**{k: v for k, v in vars(args).items() if k in TRAIN_FIELDS}))
    print(f"model written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
