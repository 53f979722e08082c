"""open-unmix's dataset layout options on a command line: the `--dataset` choices and the
per-layout options (`--target-file`, `--is-wav`, …) as one click decorator, shared by
umx-prep, umx-train, umx-eval and umx-bench, and reading them back from the parsed values."""

from __future__ import annotations

from typing import Callable

from ..cli_util import IntRange, apply, option
from ..shards.manifest import LayoutDefaults
from . import SAMPLE_COUNTS, STRUCTURE, TRAINING

LAYOUTS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
LAYOUT_ARGS = sorted({k for v in STRUCTURE.values() for k in v} | {k for v in TRAINING.values() for k in v})
GROUP = "layout"
HEADING = "Dataset layout options (open-unmix's)"


def _count(name: str) -> IntRange:
    low, high = SAMPLE_COUNTS[name]
    return IntRange(low, high)


def layout_click_options(training: bool = True) -> Callable:
    """open-unmix's per-dataset options (defaults None: the layout's own apply). With
    `training`, umx-train defines the random-mix switches with its other data options."""
    g = dict(group=GROUP)
    decorators = [
        option("--is-wav/--no-is-wav", default=None, **g,
               help="musdb: MUSDB18-HQ wav folders (default); --no-is-wav reads .stem.mp4"),
        option("--subsets", nargs="+", **g, help="musdb: subsets to prepare (default: train test)"),
        option("--input-file", **g, help="aligned: input file name (glob), e.g. mixture.wav"),
        option("--output-file", **g, help="aligned: output file name (glob), e.g. vocals.wav"),
        option("--target-dir", **g, help="sourcefolder: folder of the target source"),
        option("--interferer-dirs", nargs="+", **g, help="sourcefolder: folders of interfering sources"),
        option("--ext", **g, help="sourcefolder / trackfolder_var: audio file extension (default .wav)"),
        option("--target-file", **g, help="trackfolder_fix / _var: target file name, e.g. vocals.wav"),
        option("--interferer-files", nargs="+", **g, help="trackfolder_fix: interferer file names"),
        option("--silence-missing-targets", "--silence-missing", is_flag=True, default=None, **g,
               help="trackfolder_var: tracks without the target get a silent one"),
        option("--nb-train-samples", type=_count("nb_train_samples"), **g,
               help=f"sourcefolder: samples per epoch (default {LayoutDefaults.nb_train_samples})"),
        option("--nb-valid-samples", type=_count("nb_valid_samples"), **g,
               help=f"sourcefolder: validation samples (default {LayoutDefaults.nb_valid_samples})"),
        option("--samples-per-track", type=_count("samples_per_track"), **g,
               help="crops per track per epoch (musdb 64, else 1)"),
    ]
    if not training:
        decorators += [
            option("--random-track-mix", is_flag=True, default=None, **g,
                   help="trackfolder_fix: make random track mixing the set's default"),
            option("--random-interferer-mix", is_flag=True, default=None, **g,
                   help="trackfolder_var: make random interferer mixing the set's default"),
        ]
    return apply(*decorators)


def layout_options(params: dict) -> dict:
    """The dataset options of a command's parsed values (None: not given)."""
    return {k: params.get(k) for k in LAYOUT_ARGS}


def given_layout_options(params: dict) -> dict:
    """The dataset options the command line gave (the others are left to the layout)."""
    return {k: v for k, v in layout_options(params).items() if v is not None}
