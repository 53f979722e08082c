"""`umx-separate`: audio files in, one folder of stems per file out, with any architecture's model
directory (its whole-track separation: `models.registry.load_separation`).

    umx-separate MODEL_DIR song.flac other.wav --outdir stems/ [--targets vocals] [--residual]

writes `stems/song/vocals.wav`, … at the model's sample rate (as open-unmix does).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import click
import numpy as np
import torch

from . import audio as audio_io
from .cli_util import apply, argument, command, option, run_command
from .errors import UmxError
from .models.protocol import NITER, WIENER_WIN_LEN, Separation, SeparationOptions
from .models.registry import load_separation
from .names import inside, safe_name, subfolder

OUTPUT_FORMATS = ("wav", "flac", "ogg", "aiff", "aif", "mp3")  # what umx.audio.write knows


# --- files -------------------------------------------------------------------

def load_input(path: str | Path, sample_rate: int) -> tuple[np.ndarray, int]:
    """Read any file soundfile reads as float32 stereo `[2, frames]` at `sample_rate`.

    As open-unmix prepares input: more than two channels → the first two,
    mono → duplicated; other rates are resampled (soxr). Returns the audio and
    the file's own rate.
    """
    data, rate = audio_io.read(path)
    data = data[:2]
    if not np.isfinite(data).all():  # would come out as all-NaN stems, silently
        raise UmxError(f"{path}: contains NaN or infinite samples")
    if rate != sample_rate:
        data = audio_io.resample(data, rate, sample_rate)
    return np.ascontiguousarray(audio_io.force_stereo(data), dtype=np.float32), rate


def _subtype(ext: str) -> str | None:
    """Float WAV (as torchaudio writes open-unmix's estimates: no clipping, no rounding); 24-bit FLAC."""
    return {".wav": "FLOAT", ".flac": "PCM_24", ".aiff": "FLOAT", ".aif": "FLOAT"}.get(ext.lower())


def stem_folder(outdir: str | Path, path: str | Path) -> Path:
    """`outdir/<file stem>`, the folder of one input's stems. The stem is a name from outside:
    `...wav`'s is `..`, which would put the stems beside `outdir`."""
    stem = safe_name(Path(path).stem, "stem folder name", str(path))
    return inside(outdir, stem, "stem folder name", str(path))


def write_estimates(estimates: Mapping[str, np.ndarray], folder: Path, sample_rate: int,
                    ext: str = ".wav") -> dict[str, Path]:
    """Write `[channels, frames]` estimates as `folder/<target><ext>`."""
    folder.mkdir(parents=True, exist_ok=True)
    subtype = _subtype(ext)
    written = {}
    for name, est in estimates.items():
        if subtype is not None and subtype.startswith("PCM") or ext.lower() in (".ogg", ".mp3"):
            est = np.clip(est, -1.0, 1.0)  # integer and lossy formats cannot hold peaks beyond full scale
        path = inside(folder, f"{safe_name(name, 'target name', str(folder))}{ext}", "target name")
        audio_io.write(path, est, sample_rate, subtype=subtype)  # atomic: an exclusive temp file, renamed
        written[name] = path
    return written


@torch.inference_mode()
def separate_file(separator: Separation, path: str | Path, outdir: str | Path, ext: str = ".wav",
                  device: str | torch.device | None = None) -> dict[str, Path]:
    """Separate one audio file into `outdir/<file stem>/<target><ext>` (at the model's rate)."""
    mix, _ = load_input(path, separator.sample_rate)
    device = device if device is not None else torch.device("cpu")
    est = separator(torch.from_numpy(mix)[None].to(device))[0].float().cpu().numpy()
    folder = subfolder(outdir, [stem_folder(outdir, path).name], str(path))  # a real folder, no planted link
    return write_estimates(dict(zip(separator.target_names, est, strict=True)), folder, separator.sample_rate, ext)


# --- CLI ---------------------------------------------------------------------

def device_for(no_cuda: bool) -> torch.device:
    return torch.device("cuda" if not no_cuda and torch.cuda.is_available() else "cpu")


def filter_options(f):
    """`--niter` and `--wiener-win-len` (umx-separate, umx-eval), defaults from SeparationOptions."""
    return apply(
        option("--niter", type=click.IntRange(NITER.low, NITER.high), default=SeparationOptions.niter,
               help="EM iterations of the Wiener filter (0: none)"),
        option("--wiener-win-len", type=click.IntRange(WIENER_WIN_LEN.low, WIENER_WIN_LEN.high),
               default=SeparationOptions.wiener_win_len,
               help="frames filtered together; 0: the whole track (more memory)"),
    )(f)


EPILOG = """\b
Example:
  umx-separate open-unmix song.wav other.flac --outdir separated --targets vocals"""


@command("umx-separate", epilog=EPILOG,
         help="Separate audio files (FILE …: anything soundfile reads) with the model of MODEL_DIR "
              "(umx-train's, of any architecture, or open-unmix's).")
@click.argument("model", metavar="MODEL_DIR")
@argument("input", metavar="FILE ...", nargs=-1, required=True)
@option("--outdir", required=True, help="write DIR/<file stem>/<target><ext>")
@option("--targets", nargs="+", help="targets to separate (default: every target of MODEL_DIR)")
@option("--ext", default=".wav", help="output format by extension: .wav (float), .flac, .ogg, …")
@filter_options
@option("--residual", is_flag=True, help="also write the mixture minus the targets")
@option("--residual-name", default="residual", metavar="NAME", help="name of that source")
@option("--softmask", is_flag=True, help="initial estimates from ratio masks")
@option("--no-cuda", is_flag=True, help="run on the CPU even if CUDA is available")
@option("--quiet", is_flag=True, help="no progress bar")
def cli(**params) -> int:
    from tqdm import tqdm

    args = SimpleNamespace(**params)
    ext = args.ext if args.ext.startswith(".") else "." + args.ext
    if ext.lower().lstrip(".") not in OUTPUT_FORMATS:
        raise UmxError(f"--ext {ext}: unknown audio format (use one of {', '.join(OUTPUT_FORMATS)})")
    stems: dict[Path, str] = {}
    for f in args.input:  # every input is checked before the models load
        audio_io.info(f)
        folder = stem_folder(args.outdir, f)
        if folder in stems:
            raise UmxError(f"{f}: has the same name as {stems[folder]}; both would be written to {folder}")
        stems[folder] = f
    device = device_for(args.no_cuda)
    how = SeparationOptions(residual=args.residual_name if args.residual else False, niter=args.niter,
                            wiener_win_len=args.wiener_win_len, softmask=args.softmask)
    separator = load_separation(args.model, args.targets, how, device)
    for f in tqdm(args.input, desc="separating", disable=args.quiet or len(args.input) == 1):
        written = separate_file(separator, f, args.outdir, ext, device)
        print(f"{f} -> {stem_folder(args.outdir, f)}/ ({', '.join(p.name for p in written.values())})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "umx-separate")


if __name__ == "__main__":
    sys.exit(main())
