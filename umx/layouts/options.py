"""open-unmix's dataset layout options on a command line: the `--dataset` choices and the
per-layout arguments (`--target-file`, `--is-wav`, …), shared by umx-prep, umx-train,
umx-eval and umx-bench, and reading them back from the parsed arguments."""

from __future__ import annotations

import argparse

from ..shards.manifest import LayoutDefaults
from . import STRUCTURE, TRAINING

LAYOUTS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
LAYOUT_ARGS = sorted({k for v in STRUCTURE.values() for k in v} | {k for v in TRAINING.values() for k in v})


def add_layout_arguments(p: argparse.ArgumentParser, training: bool = True) -> None:
    """open-unmix's per-dataset arguments (defaults None: the layout's own apply)."""
    g = p.add_argument_group("dataset layout options (open-unmix's)")
    g.add_argument("--is-wav", action=argparse.BooleanOptionalAction, default=None,
                   help="musdb: MUSDB18-HQ wav folders (default); --no-is-wav reads .stem.mp4")
    g.add_argument("--subsets", nargs="+", help="musdb: subsets to prepare (default: train test)")
    g.add_argument("--input-file", help="aligned: input file name (glob), e.g. mixture.wav")
    g.add_argument("--output-file", help="aligned: output file name (glob), e.g. vocals.wav")
    g.add_argument("--target-dir", help="sourcefolder: folder of the target source")
    g.add_argument("--interferer-dirs", nargs="+", help="sourcefolder: folders of interfering sources")
    g.add_argument("--ext", help="sourcefolder / trackfolder_var: audio file extension (default .wav)")
    g.add_argument("--target-file", help="trackfolder_fix / _var: target file name, e.g. vocals.wav")
    g.add_argument("--interferer-files", nargs="+", help="trackfolder_fix: interferer file names")
    g.add_argument("--silence-missing-targets", "--silence-missing", action="store_true", default=None,
                   help="trackfolder_var: tracks without the target get a silent one")
    g.add_argument("--nb-train-samples", type=int,
                   help=f"sourcefolder: samples per epoch (default {LayoutDefaults.nb_train_samples})")
    g.add_argument("--nb-valid-samples", type=int,
                   help=f"sourcefolder: validation samples (default {LayoutDefaults.nb_valid_samples})")
    g.add_argument("--samples-per-track", type=int, help="crops per track per epoch (musdb 64, else 1)")
    if not training:  # umx-train defines these with its other training options
        g.add_argument("--random-track-mix", action="store_true", default=None,
                       help="trackfolder_fix: make random track mixing the set's default")
        g.add_argument("--random-interferer-mix", action="store_true", default=None,
                       help="trackfolder_var: make random interferer mixing the set's default")


def layout_options(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k, None) for k in LAYOUT_ARGS}


def given_layout_options(args: argparse.Namespace) -> dict:
    """The dataset options the command line gave (the others are left to the layout)."""
    return {k: v for k, v in layout_options(args).items() if v is not None}
