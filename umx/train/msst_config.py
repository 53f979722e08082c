"""`umx-train --config FILE.yaml`: an MSST config file, read as umx options, so MSST users bring their
configs unchanged.

A config file is untrusted input. It is read with a safe YAML loader whose one addition is MSST's
`!!python/tuple` tag, which becomes a sequence; no other tag constructs anything (one line names the
file and the tag). It is bounded in size. Each known key becomes an umx option; a key umx cannot
honour gets one warning line naming it, and no key is ignored silently. Options given on the
command line override the file (`merged`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UmxError

MAX_CONFIG_BYTES = 2**20
TUPLE_TAG = "tag:yaml.org,2002:python/tuple"


class ConfigLoader(yaml.SafeLoader):
    """yaml's safe loader, plus MSST's tuples as sequences."""


ConfigLoader.add_constructor(TUPLE_TAG, lambda loader, node: loader.construct_sequence(node))


@dataclass
class ConfigValues:
    """What a config file gives: umx-train's options, the architecture's, and the warnings."""

    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# MSST model keys the bs-roformer package has no argument for, and the value with which umx's
# network is the same: other values cannot be honoured
MODEL_FIXED = {"linear_transformer_depth": 0, "mlp_expansion_factor": 4, "stereo": True}
MODEL_UNHONOURED = {"skip_connection": False}
MODEL_UNUSED = ("dim_freqs_in",)  # read by neither MSST's network nor the package's
# MSST's configs of Demucs' networks (`model: htdemucs` and a section of that name, Demucs' own keys)
MODEL_RENAMED = {"nfft": "stft_n_fft"}  # MSST's key → the option's name where they differ
MODEL_FIXED_DEMUCS = {"num_subbands": 1, "t_sparse_self_attn": False, "t_sparse_cross_attn": False}
# read by Demucs' transformer only with sparse attention, which MODEL_FIXED_DEMUCS keeps off
MODEL_INERT = ("t_mask_type", "t_mask_random_seed", "t_sparse_attn_window", "t_global_window", "t_sparsity",
               "t_auto_sparsity")
DEMUCS_DATASET = ("shift", "normalize")  # Demucs' dataset: crop stride, per-track standardisation
AUDIO_UNUSED = ("n_fft", "hop_length", "dim_f", "dim_t")  # MSST's other models' STFT, not RoFormers'
TRAINING_UNUSED = ("q", "coarse_loss_clip", "other_fix")  # not used for RoFormers by MSST either
TRAINING_MAP = {"batch_size": "batch_size", "lr": "lr", "num_epochs": "epochs", "num_steps": "epoch_steps",
                "patience": "lr_decay_patience", "reduce_factor": "lr_decay_gamma",
                "gradient_accumulation_steps": "grad_accum", "grad_clip": "grad_clip"}
INFERENCE_MAP = {"batch_size": "inference_batch_size", "num_overlap": "num_overlap", "chunk_size": "chunk_size"}
AUGMENTATION_PER_SOURCE = {"channel_shuffle": "channelswap", "random_polarity": "flipsign"}


def load(path: str | Path) -> dict:
    """The YAML file as plain data, or one line naming the file and the problem."""
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise UmxError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UmxError(f"--config {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file")
    try:
        loader = ConfigLoader(data)  # a SafeLoader: no tag constructs objects
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())[:200]
        raise UmxError(f"--config {path}: not a config umx can read safely ({first})") from None
    except RecursionError:
        raise UmxError(f"--config {path}: nested too deeply") from None
    if not isinstance(raw, dict):
        raise UmxError(f"--config {path}: must be a mapping of sections (audio, model, training, …)")
    return raw


def read(path: str | Path, model_fields: dict[str, type], arch: str | None = None) -> ConfigValues:
    """An MSST config file as umx options. `model_fields`: the architecture's option names → their
    types (the model section's keys that are the package's constructor arguments). MSST's configs of
    Demucs' networks name the model (`model: htdemucs`) and give its arguments in a section of that
    name; `arch` (umx's name of the architecture trained) must then be that name."""
    raw = load(path)
    out = ConfigValues()
    where = f"--config {Path(path).name}"

    def warn(key: str, why: str) -> None:
        out.warnings.append(f"{where}: {key} {why}")

    named = raw.get("model") if isinstance(raw.get("model"), str) else None
    if named is not None and named != arch:
        raise UmxError(f"{where}: configures MSST's model '{named[:40]}', not --arch {arch}")
    sections = ("audio", "model", "training", "augmentations", "inference", "loss_multistft") + \
        ((named,) if named else ())
    for section in raw:
        if section not in sections:
            warn(section, "is not a section umx reads (not honoured)")
    model = _section(raw, named, path) if named else _section(raw, "model", path)
    audio, training = _section(raw, "audio", path), _section(raw, "training", path)
    augmentations, inference = _section(raw, "augmentations", path), _section(raw, "inference", path)
    if "loss_multistft" in raw:
        warn("loss_multistft", "configures MSST's --loss multistft, not the RoFormers' own loss (not honoured)")

    rate = _number(audio.get("sample_rate", 44100), "audio.sample_rate", path)
    for key, value in audio.items():
        if key == "chunk_size":
            chunk = int(_number(value, "audio.chunk_size", path))
            out.train["seq_dur"] = chunk / rate
            out.model.setdefault("chunk_size", chunk)
        elif key == "sample_rate":
            pass  # the crops' length in seconds; the shard set has its own rate
        elif key == "num_channels":
            if value != 2:
                raise UmxError(f"{where}: audio.num_channels {value!r}: RoFormers are trained stereo")
        elif key == "min_mean_abs":
            out.train["min_mean_abs"] = float(value)
        elif key in AUDIO_UNUSED:
            warn(f"audio.{key}", "is used by MSST's other models, not by this one (not honoured)")
        else:
            warn(f"audio.{key}", "is not an MSST key umx knows (not honoured)")

    for key, value in model.items():
        if named and value is None:
            continue  # Demucs' "None": the option's own "off" value, its default
        if named and key in MODEL_FIXED_DEMUCS:
            if value != MODEL_FIXED_DEMUCS[key]:
                raise UmxError(f"{where}: {named}.{key} {value!r}: the demucs package's network takes only "
                               f"{MODEL_FIXED_DEMUCS[key]!r} (sparse attention needs xformers; subbands are MSST's)")
        elif named and key in MODEL_INERT:
            pass
        elif MODEL_RENAMED.get(key, key) in model_fields and named:
            name = MODEL_RENAMED.get(key, key)
            out.model[name] = tuple(value) if isinstance(value, list) else _yaml_float(value, model_fields[name])
        elif key in model_fields:
            out.model[key] = tuple(value) if isinstance(value, list) else value
        elif key == "num_stems":
            out.train["_num_stems"] = value
        elif key in MODEL_FIXED:
            if value != MODEL_FIXED[key]:
                raise UmxError(f"{where}: model.{key} {value!r}: the bs-roformer package builds only "
                               f"{MODEL_FIXED[key]!r}")
        elif key in MODEL_UNHONOURED:
            if value != MODEL_UNHONOURED[key]:
                warn(f"model.{key}", f"{value!r} is not honoured (the bs-roformer package has no such option)")
        elif key == "sample_rate":
            pass  # Mel-Band RoFormer's filterbank takes the shard set's rate
        elif key in MODEL_UNUSED:
            warn(f"model.{key}", "is read by no network (not honoured)")
        else:
            warn(f"model.{key}", "is not an option of this architecture (not honoured)")

    for key, value in training.items():
        if key in TRAINING_MAP:
            out.train[TRAINING_MAP[key]] = value
        elif key == "instruments":
            out.train["_instruments"] = list(value) if isinstance(value, (list, tuple)) else value
        elif key == "target_instrument":
            out.train["_target_instrument"] = value
        elif key == "ema_momentum":
            if value:
                out.train["ema"] = [float(value)]
        elif key == "use_amp":
            if value:
                out.train["precision"] = "fp16"  # autocast with a GradScaler, as MSST's
        elif key == "optimizer":
            out.model["optimizer"] = value
        elif named and key == "segment" and "segment" in model_fields:
            out.model["segment"] = value  # Demucs' model window, in seconds
        elif named and key == "channels":
            out.train["nb_channels"] = value
        elif named and key == "samplerate":
            pass  # the shard set has its own rate
        elif named and key in DEMUCS_DATASET:
            warn(f"training.{key}", "belongs to Demucs' dataset (not honoured: umx draws crops anywhere and does "
                 "not standardise tracks)")
        elif key in TRAINING_UNUSED:
            warn(f"training.{key}", "is not used for this model (MSST reads it only with --use_standard_loss)")
        else:
            warn(f"training.{key}", "is not an MSST key umx knows (not honoured)")
    _targets(out, path)

    out.train["source_augmentations"] = _augmentations(augmentations, warn)
    for key, value in inference.items():
        if key in INFERENCE_MAP and INFERENCE_MAP[key] in model_fields:
            out.model[INFERENCE_MAP[key]] = value
        elif key == "num_overlap" and "overlap" in model_fields:  # windows overlapping each sample → a fraction
            out.model["overlap"] = 1 - 1 / _number(value, "inference.num_overlap", path)
        else:
            warn(f"inference.{key}", "is not honoured (not an inference option of this architecture)")
    return out


def _yaml_float(value: Any, kind: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string; for a float option it is the number it spells (an
    unparsable string stays a string, which the option's check refuses in one line)."""
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _section(raw: dict, name: str, path) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise UmxError(f"--config {path}: {name} must be a mapping")
    return value


def _number(value: Any, key: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UmxError(f"--config {path}: {key} must be a positive number, got {value!r:.40}")
    return float(value)


def _targets(out: ConfigValues, path) -> None:
    """training.instruments and target_instrument → --targets; model.num_stems must agree."""
    instruments = out.train.pop("_instruments", None)
    target = out.train.pop("_target_instrument", None)
    stems = out.train.pop("_num_stems", None)
    if target:
        out.train["targets"] = [str(target)]
    elif instruments:
        if not all(isinstance(i, str) for i in instruments):
            raise UmxError(f"--config {path}: training.instruments must be names")
        out.train["targets"] = list(instruments)
    if stems is not None and "targets" in out.train and stems != len(out.train["targets"]):
        raise UmxError(f"--config {path}: model.num_stems {stems!r} but {len(out.train['targets'])} target(s) "
                       f"({', '.join(out.train['targets'])})")


def _augmentations(section: dict, warn) -> list[str]:
    """MSST's augmentations → umx's device augmentations (`--source-augmentations`)."""
    if not section or not section.get("enable", True):
        for key in section:
            if key != "enable":
                warn(f"augmentations.{key}", "is off (augmentations.enable is false)")
        return []
    out = []
    if section.get("loudness"):
        low, high = section.get("loudness_min", 0.5), section.get("loudness_max", 1.5)
        out.append(f"gain:{low}:{high}")
    per_source = section.get("all") or {}
    if not isinstance(per_source, dict):
        per_source = {}
    for key, value in per_source.items():
        if key in AUGMENTATION_PER_SOURCE and value:
            out.append(f"{AUGMENTATION_PER_SOURCE[key]}:{value}")
        elif value:
            warn(f"augmentations.all.{key}", "has no umx device augmentation (not honoured)")
    for key, value in section.items():
        if key in ("enable", "loudness", "loudness_min", "loudness_max", "all"):
            continue
        if value:
            warn(f"augmentations.{key}", "has no umx device augmentation (not honoured)"
                 if not isinstance(value, dict) else "(per-instrument augmentations) is not honoured: umx "
                 "augments every source alike")
    return out


def merged(values: ConfigValues, given: dict[str, Any], given_names: set[str], model_names: set[str]
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command line's values over the file's: (umx-train options, architecture options)."""
    train = {k: v for k, v in values.train.items() if k not in given_names}
    model = {k: v for k, v in values.model.items() if k not in given_names and k in model_names}
    return train, model


def print_warnings(values: ConfigValues) -> None:
    for line in values.warnings:
        print(f"warning: {line}", file=sys.stderr)

