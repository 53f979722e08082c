"""Dataset layouts of the open-unmix spec, each scanned into `Track` records.

A layout module knows folder structure only: which files form a track and
which source each file is. Reading and checking audio is prep's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LayoutError
from ..names import safe_name


@dataclass
class Track:
    """One record to prepare: its split, a safe id, and where each source's audio is.

    `files` maps source name → file; `mixture` is the real mixture file where
    the layout has one; `stems` is a multistream file (MUSDB18 `.stem.mp4`)
    whose stream ids `files` then names instead (`stem_ids`).
    """

    split: str
    name: str  # original name (folder or file name), kept in metadata
    files: dict[str, Path]
    mixture: Path | None = None
    stems: Path | None = None
    stem_ids: dict[str, int] = field(default_factory=dict)
    id: str = ""


@dataclass
class Scan:
    """What a layout found (tracks to prepare, candidates rejected and why) and
    how its data is to be sampled at training time (`sampling`, see manifest.py)."""

    tracks: list[Track] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    target: str = ""
    options: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    splits: tuple[str, ...] = ("train", "valid")

    def reject(self, split: str, track: str, file, problem: str, action: str = "track skipped",
               cls: str = "missing") -> None:
        self.rejected.append({"split": split, "track": track, "file": str(file), "problem": problem,
                              "action": action, "class": cls})


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(name: str) -> str:
    """A track id that is a safe tar member / zarr key: no separators, dots or controls.

    Dots are replaced too: WebDataset splits a member name at its first dot.
    """
    ident = _UNSAFE.sub("_", name).strip("_")
    return ident or "track"


def assign_ids(tracks: list[Track]) -> None:
    """Give every track a unique safe id within its split (suffixing clashes)."""
    seen: dict[tuple[str, str], int] = {}
    for t in tracks:
        base = safe_id(t.name)
        n = seen.get((t.split, base), 0)
        seen[(t.split, base)] = n + 1
        t.id = base if n == 0 else f"{base}_{n}"


RESERVED = {"mixture"}  # a record's real mixture is stored under this name
# the ranges of the sample-count options (--samples-per-track, --nb-train-samples, --nb-valid-samples):
# umx-prep, umx-eval and umx-train all take them from here
SAMPLE_COUNTS = {"samples_per_track": (1, 10**6), "nb_train_samples": (1, 10**9), "nb_valid_samples": (1, 10**6)}

# The model directory's files (train/outputs.py, plot.py; umx-eval writes there by default): each
# target's own, `<target>` + one of TARGET_SUFFIXES, and the files the directory holds once. A
# source or target named so that one of its own files is one of those (`separator` → separator.json,
# `xumx` → xumx.pth, `targets` → targets_loss.png) would overwrite it: refused, by prep as a source
# name and by umx-train as a target (`check_target_name`).
TARGET_SUFFIXES = (".pth", ".chkpnt", ".chkpnt.next", ".json", "_loss.png")
SHARED_FILES = ("separator.json", "xumx.pth", "targets_loss.png", "eval_train.json", "eval_valid.json",
                "eval_test.json")
RESERVED_TARGETS = frozenset(f[:-len(x)] for f in SHARED_FILES for x in TARGET_SUFFIXES if f.endswith(x))


def check_target_name(name: str, where: str) -> None:
    """Refuse (LayoutError, one line naming `where`) a source or target name whose model files would
    overwrite the model directory's own; compared case-blind (macOS and Windows file systems are)."""
    if name.casefold() in RESERVED_TARGETS:
        clash = [f for f in SHARED_FILES for x in TARGET_SUFFIXES if f == name.casefold() + x]
        raise LayoutError(f"{where}: '{name}' cannot be a source or target name: its model files would "
                          f"overwrite the model directory's {', '.join(clash)}")


def source_name(filename: str) -> str:
    """Source name of a file name pattern: its stem, lower-case and safe."""
    name = safe_id(Path(filename).stem.replace("*", "")).lower()
    if name in RESERVED:
        raise LayoutError(f"'{filename}' cannot be a source: '{name}' is reserved for the mixture input")
    return name


def sampling(records: str = "tracks", train_input: str = "sum", valid_input: str = "sum",
             valid: str = "full_tracks", remix: str = "independent", augment: bool = True, **defaults) -> dict:
    """How the trainer samples this data (written to the manifest; see manifest.Sampling). Training
    defaults left None (or unnamed) are manifest.LayoutDefaults'."""
    return {"records": records, "train_input": train_input, "valid_input": valid_input, "valid": valid,
            "remix": remix, "augment": augment,
            "defaults": {k: v for k, v in defaults.items() if v is not None}}


# open-unmix's musdb targets include `accompaniment`, the sum of every source but the vocals;
# any set of aligned tracks with a vocals source can train it
COMPLEMENT = {"name": "accompaniment", "of": "vocals"}


def complement(found: "Scan") -> dict | None:
    """The complement target this data offers (stored in the manifest's sampling section)."""
    if found.sampling["records"] == "tracks" and COMPLEMENT["of"] in found.sources:
        return dict(COMPLEMENT)
    return None


def split_dir(root: Path, split: str) -> Path:
    """The folder of one split, or a LayoutError naming what is missing."""
    d = root / split
    if not d.is_dir():
        raise LayoutError(f"{root}: no '{split}' folder (expected {d})")
    return d


def scan(layout: str, root: str | Path, **options) -> Scan:
    """Scan `root` as `layout`; options are the layout's own (target file, …)."""
    from . import aligned, musdb, sourcefolder, trackfolder_fix, trackfolder_var

    scanners = {"musdb": musdb.scan, "aligned": aligned.scan, "sourcefolder": sourcefolder.scan,
                "trackfolder_fix": trackfolder_fix.scan, "trackfolder_var": trackfolder_var.scan}
    if layout not in scanners:
        raise LayoutError(f"unknown layout '{layout}' (this version prepares: {sorted(scanners)})")
    check_names(options)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder not found")
    result = scanners[layout](root, **{k: v for k, v in options.items() if v is not None})
    for name in dict.fromkeys([result.target, *result.sources]):  # every layout's names, before any work
        check_target_name(name, str(next((t.files[name] for t in result.tracks if name in t.files), root)))
    assign_ids(result.tracks)
    extra = complement(result)
    if extra is not None:
        result.sampling["complement"] = extra
    return result


# options that decide what prep reads, per layout (open-unmix's dataset arguments)
STRUCTURE = {
    "musdb": ("is_wav", "subsets"),
    "aligned": ("input_file", "output_file"),
    "sourcefolder": ("target_dir", "interferer_dirs", "ext"),
    "trackfolder_fix": ("target_file", "interferer_files"),
    "trackfolder_var": ("target_file", "ext"),
}
# options that act at training time; prep stores them as the shard set's defaults
TRAINING = {
    "musdb": ("samples_per_track",),
    "aligned": ("samples_per_track",),
    "sourcefolder": ("nb_train_samples", "nb_valid_samples"),
    "trackfolder_fix": ("samples_per_track", "random_track_mix"),
    "trackfolder_var": ("samples_per_track", "silence_missing_targets", "random_interferer_mix"),
}


# options that name a file or folder inside a track folder or split folder: one path component
# each, never a path (`--target-file ../../valid/x.wav` would read another split's file);
# aligned's --input-file / --output-file are globs (glob characters allowed, separators not)
NAME_OPTIONS = {"target_file": "file name", "interferer_files": "file name", "input_file": "file name (glob)",
                "output_file": "file name (glob)", "target_dir": "folder name", "interferer_dirs": "folder name",
                "ext": "file extension"}


def check_names(options: dict) -> None:
    """Refuse (UnsafeNameError, one line) a layout option naming a file or folder that is not one
    plain name: separators, '..', control characters, …"""
    for key, what in NAME_OPTIONS.items():
        value = options.get(key)
        if value is None:
            continue
        for name in (value if isinstance(value, (list, tuple)) else [value]):
            safe_name(name, what, flag(key))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(layout: str, given: dict, allowed: tuple[str, ...] | None = None) -> None:
    """Refuse options that belong to another layout, naming the option and what fits."""
    allowed = allowed if allowed is not None else STRUCTURE[layout] + TRAINING[layout]
    wrong = [k for k, v in given.items() if v not in (None, False, []) and k not in allowed]
    if wrong:
        raise LayoutError(f"{', '.join(flag(k) for k in wrong)}: not an option of the {layout} layout "
                          f"(its options: {', '.join(flag(k) for k in allowed) or 'none'})")
