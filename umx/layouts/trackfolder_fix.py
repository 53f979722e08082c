"""trackfolder_fix: `split/<track>/<source file>`, the same source files in every track.

open-unmix's FixedSourcesTrackFolderDataset: the target file plus a fixed
list of interferer files; a track lacking any of them is excluded (reported).
With `--random-track-mix` each interferer comes from a random track.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from . import Scan, Track, sampling, source_name, split_dir

SPLITS = ("train", "valid")


def scan(root: Path, target_file: str | None = None, interferer_files: list[str] | None = None,
         samples_per_track: int = 1, random_track_mix: bool = False) -> Scan:
    if not target_file:
        raise LayoutError("trackfolder_fix needs --target-file (e.g. vocals.wav)")
    if not interferer_files:
        raise LayoutError("trackfolder_fix needs --interferer-files (e.g. bass.wav drums.wav other.wav)")
    files = [target_file, *interferer_files]
    names = [source_name(f) for f in files]
    if len(set(names)) != len(names):
        raise LayoutError(f"source files {files} do not have distinct names")

    result = Scan(sources=names, target=names[0], sampling=sampling(remix="independent", samples_per_track=samples_per_track,
                                                        random_mix=random_track_mix),
                  options={"target_file": target_file, "interferer_files": list(interferer_files)})
    for split in SPLITS:
        folder = split_dir(root, split)
        for track_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            paths = {n: track_dir / f for n, f in zip(names, files)}
            missing = [str(p) for p in paths.values() if not p.is_file()]
            if missing:
                result.reject(split, track_dir.name, missing[0], "missing source file"
                              + ("s " if len(missing) > 1 else " ") + ", ".join(missing))
                continue
            result.tracks.append(Track(split, track_dir.name, paths))
    return result
