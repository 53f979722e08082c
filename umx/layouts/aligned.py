"""aligned: `split/<track>/<input file>` + `<output file>`: the model's input and output.

open-unmix's AlignedDataset (separation, denoising, bandwidth extension): the
input file is stored as the record's mixture, the output file as its one
source; the target is named after the output file. Never remixed or
augmented. File names may be globs (the first match in each folder counts).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from . import Scan, Track, sampling, source_name, split_dir

SPLITS = ("train", "valid")


def _first(folder: Path, pattern: str) -> Path | None:
    matches = sorted(p for p in folder.glob(pattern) if p.is_file())
    return matches[0] if matches else None


def scan(root: Path, input_file: str | None = None, output_file: str | None = None,
         samples_per_track: int = 1) -> Scan:
    if not input_file or not output_file:
        raise LayoutError("aligned needs --input-file and --output-file (e.g. mixture.wav vocals.wav)")
    target = source_name(output_file)
    result = Scan(sources=[target], target=target,
                  sampling=sampling(train_input="mixture", valid_input="mixture", remix="never", augment=False,
                                    samples_per_track=samples_per_track),
                  options={"input_file": input_file, "output_file": output_file})
    for split in SPLITS:
        for track_dir in sorted(p for p in split_dir(root, split).iterdir() if p.is_dir()):
            x, y = _first(track_dir, input_file), _first(track_dir, output_file)
            if x is None or y is None:
                missing = track_dir / (input_file if x is None else output_file)
                result.reject(split, track_dir.name, missing, "missing input or output file")
                continue
            if x == y:
                result.reject(split, track_dir.name, x, "input and output patterns match the same file")
                continue
            result.tracks.append(Track(split, track_dir.name, {target: y}, mixture=x))
    return result
