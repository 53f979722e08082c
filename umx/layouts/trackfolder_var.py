"""trackfolder_var: `split/<track>/*.ext`, a variable set of sources per track.

open-unmix's VariableSourcesTrackFolderDataset: every file with `--ext` in a
track folder is a source; the target file is one of them and all the others
sum to the interferer. Tracks without the target are kept in the shard set
(the trainer excludes them, or gives them a silent target with
`--silence-missing-targets`); `--random-interferer-mix` takes all
interferers of a sample together from one random track.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from . import Scan, Track, sampling, source_name, split_dir

SPLITS = ("train", "valid")


def scan(root: Path, target_file: str | None = None, ext: str = ".wav", silence_missing_targets: bool = False,
         samples_per_track: int = 1, random_interferer_mix: bool = False) -> Scan:
    if not target_file:
        raise LayoutError("trackfolder_var needs --target-file (e.g. vocals.wav)")
    ext = ext if ext.startswith(".") else "." + ext
    target = source_name(target_file)
    result = Scan(target=target, sampling=sampling(remix="joint", silence_missing_targets=silence_missing_targets,
                                    samples_per_track=samples_per_track, random_mix=random_interferer_mix),
                  options={"target_file": target_file, "ext": ext})
    names: set[str] = {target}
    for split in SPLITS:
        for track_dir in sorted(p for p in split_dir(root, split).iterdir() if p.is_dir()):
            target_path = track_dir / target_file
            found = sorted(p for p in track_dir.glob("*" + ext) if p.is_file() and p != target_path)
            if target_path.is_file():
                found.insert(0, target_path)
            if not found:
                result.reject(split, track_dir.name, track_dir, f"empty track folder (no *{ext} files)", cls="empty")
                continue
            files: dict[str, Path] = {}
            for path in found:
                name = source_name(path.name) if path != target_path else target
                while name in files:  # e.g. vocals.flac (target) beside vocals.wav
                    name += "_" + path.suffix.lstrip(".")
                files[name] = path
            names.update(files)
            result.tracks.append(Track(split, track_dir.name, files))
    result.sources = [target] + sorted(names - {target})
    return result
