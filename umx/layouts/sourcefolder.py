"""sourcefolder: `split/<source folder>/*.ext`, unaligned files per source.

open-unmix's SourceFolderDataset: each record is one file of one source
folder; a training sample draws one random file (and a random chunk of it)
per source folder. An epoch is `--nb-train-samples` samples; validation is
`--nb-valid-samples` chunks, the same ones every epoch.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from . import Scan, Track, sampling, split_dir

SPLITS = ("train", "valid")


def scan(root: Path, target_dir: str | None = None, interferer_dirs: list[str] | None = None,
         ext: str = ".wav", nb_train_samples: int | None = None, nb_valid_samples: int | None = None) -> Scan:
    if not target_dir or not interferer_dirs:
        raise LayoutError("sourcefolder needs --target-dir and --interferer-dirs (e.g. vocals / car_noise wind_noise)")
    ext = ext if ext.startswith(".") else "." + ext
    folders = [target_dir, *interferer_dirs]
    if len(set(folders)) != len(folders):
        raise LayoutError(f"source folders {folders} are not distinct")
    if "mixture" in folders:
        raise LayoutError("'mixture' cannot be a source folder name (it is reserved for the mixture input)")
    result = Scan(sources=folders, target=target_dir,
                  sampling=sampling(records="source_files", valid="crops", remix="never",
                                    nb_train_samples=nb_train_samples, nb_valid_samples=nb_valid_samples),
                  options={"target_dir": target_dir, "interferer_dirs": list(interferer_dirs), "ext": ext})
    for split in SPLITS:
        base = split_dir(root, split)
        for source in folders:
            folder = base / source
            files = sorted(p for p in folder.glob("*" + ext) if p.is_file()) if folder.is_dir() else []
            if not files:
                result.reject(split, source, folder, f"no *{ext} files in source folder", "source has no data", cls="empty")
            for path in files:
                result.tracks.append(Track(split, f"{source}/{path.stem}", {source: path}))
    return result
