"""musdb: MUSDB18 (`.stem.mp4`) and MUSDB18-HQ (`--is-wav` folders), via the `musdb` package.

Splits as open-unmix uses them: `train` is the train subset minus the 14
validation tracks of musdb's configuration, `valid` those tracks (evaluated
as full tracks against the real mixture), `test` the test subset, kept for
evaluation. The real mixture is stored for valid and test tracks. Training
defaults: 64 samples per track, gain + channel swap, random track mixing.
"""

from __future__ import annotations

from pathlib import Path

from .. import audio
from ..errors import LayoutError
from . import Scan, Track, sampling


def _setup() -> dict:
    """musdb's own configuration (sources, validation tracks, stem ids), read from its package folder
    without importing it: musdb imports stempeg, which refuses to import without ffmpeg, and WAV
    folders need no ffmpeg."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("musdb")
    if spec is None or not spec.submodule_search_locations:
        raise LayoutError("the musdb layout needs the musdb package (pip install musdb)")
    with open(Path(next(iter(spec.submodule_search_locations))) / "configs" / "mus.yaml") as f:
        return yaml.safe_load(f)


def scan(root: Path, is_wav: bool = True, subsets: list[str] | None = None, samples_per_track: int = 64) -> Scan:
    setup = _setup()
    sources = list(setup["sources"])  # vocals, drums, bass, other
    validation = set(setup["validation_tracks"])
    subsets = subsets or ["train", "test"]
    unknown = [s for s in subsets if s not in ("train", "test")]
    if unknown:
        raise LayoutError(f"--subsets: unknown subset(s) {unknown}; MUSDB18 has 'train' and 'test'")
    result = Scan(sources=sources, target="vocals", splits=("train", "valid", "test") if "test" in subsets
                  else ("train", "valid"),
                  sampling=sampling(valid_input="mixture", remix="independent", samples_per_track=samples_per_track,
                                    source_augmentations=["gain", "channelswap"], random_mix=True),
                  options={"is_wav": is_wav, "subsets": subsets})
    for subset in subsets:
        folder = root / subset
        if not folder.is_dir():
            raise LayoutError(f"{root}: no '{subset}' folder: is this a MUSDB18 root?"
                              + ("" if is_wav else " (for MUSDB18-HQ wav folders leave --is-wav on)"))
        for name, track in _tracks(folder, is_wav, setup, sources, result, subset):
            split = "test" if subset == "test" else ("valid" if name in validation else "train")
            track.split = split
            if split == "train":
                track.mixture = None  # training mixes the sources; the real mix is only for valid/test
            result.tracks.append(track)
    if not any(t.split == "train" for t in result.tracks) and not result.rejected:
        raise LayoutError(f"{root}: no MUSDB tracks found" + (" (.stem.mp4 files; use --is-wav for wav folders)"
                                                             if not is_wav else " (wav folders)"))
    return result


def _tracks(folder: Path, is_wav: bool, setup: dict, sources: list[str], result: Scan, subset: str):
    if is_wav:
        for track_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = {s: track_dir / setup["sources"][s] for s in sources}
            mixture = track_dir / setup["mixture"]
            missing = [p for p in [*files.values(), mixture] if not p.is_file()]
            if missing:
                result.reject(subset, track_dir.name, missing[0], "missing file " + ", ".join(map(str, missing)))
                continue
            yield track_dir.name, Track(subset, track_dir.name, files, mixture=mixture)
    else:
        missing = audio.ffmpeg_missing()
        if missing:  # one line for the set, not one skipped track per file
            raise LayoutError(f"{folder}: MUSDB18 .stem.mp4 files are decoded by ffmpeg; {missing} not found on "
                              f"PATH: {audio.FFMPEG_HINT} (MUSDB18-HQ wav folders need neither: --is-wav)")
        for path in sorted(folder.glob("*.stem.mp4")):
            name = path.name[: -len(".stem.mp4")]
            ids = dict(setup["stem_ids"])
            yield name, Track(subset, name, {s: path for s in sources}, mixture=path, stems=path, stem_ids=ids)
