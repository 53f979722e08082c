"""The click command lines: every spec command line parses to what the argparse version
parsed (recorded in data/cli_argparse_expected.json before argparse was removed), `--help`
is grouped and lists every option, errors keep their form, and `umx` runs each command."""

import json
import os
import re
from pathlib import Path

import pytest

from umx.train.options import architecture_fields

from umx import bench_cli, cli as umx_cli, evaluate_cli, plot, separate
from umx.prep import cli as prep_cli
from umx.train import cli as train_cli
from umx.train import config

EXPECTED = json.loads((Path(__file__).parent / "data" / "cli_argparse_expected.json").read_text())
COMMANDS = {"train": train_cli.cli, "prep": prep_cli.cli, "eval": evaluate_cli.cli, "separate": separate.cli,
            "bench": bench_cli.cli}
CASES = [(name, argv, want) for name, cases in EXPECTED.items() for argv, want in cases]
SPEC = Path(__file__).parent / "data" / "open-unmix-training.md"  # a copy of ../shared/spec/
SPEC_OPTIONS = sorted({"--dataset", "--root", "--is-wav", "--samples-per-track", "--source-augmentations",
                       "--target", "--output", "--checkpoint", "--model", "--no-cuda", "--epochs", "--batch-size",
                       "--patience", "--seq-dur", "--unidirectional", "--hidden-size", "--nfft", "--nhop", "--lr",
                       "--lr-decay-patience", "--lr-decay-gamma", "--weight-decay", "--bandwidth",
                       "--nb-channels", "--nb-workers", "--quiet", "--seed", "--audio-backend", "--input-file",
                       "--output-file", "--interferer-dirs", "--target-dir", "--ext", "--nb-train-samples",
                       "--nb-valid-samples", "--target-file", "--interferer-files", "--random-track-mix",
                       "--silence-missing-targets"})


# options added after argparse was removed: the record cannot hold them; their defaults keep the old behaviour
ADDED_SINCE = {"targets": None, "loss": "independent", "mix_coef": 10.0, "combination": False, "bridge": False,
               "eval_every": 0, "eval_separation": "fast", "select_by": "loss", "metrics": (), "grad_accum": 1, "ema": None,
               "resume": None, "dist_timeout": 600.0, "data_timeout": 600.0, "sampling": "auto", "arch": "openunmix",
               "config": None, "grad_clip": 0.0, "epoch_steps": None, "min_mean_abs": 0.0}
# installed plugin architectures' options: None where not given (their defaults are theirs)
ADDED_SINCE.update({name: None for name in architecture_fields()})


def _params(cmd, argv: list[str]) -> dict:
    params = dict(cmd.make_context(cmd.name, argv).params)
    if "as_json" in params:
        params["json"] = params.pop("as_json")
    return params


@pytest.mark.parametrize("name, argv, want", CASES, ids=[f"{n}: {a}" for n, a, _ in CASES])
def test_parses_as_argparse_did(name, argv, want):
    if "--workers" not in argv.split():  # the default is the machine's CPU count
        want = {k: v for k, v in want.items() if k != "workers"}
    got = _params(COMMANDS[name], argv.split())
    got.pop("workers", None) if "workers" not in want else None
    for key, default in ADDED_SINCE.items():
        if key in got and key not in want:
            assert got.pop(key) == default
    assert got == want


def test_train_gets_the_config_argparse_gave(monkeypatch):
    seen = {}
    monkeypatch.setattr("umx.prep.cache.resolve_shards", lambda shards, dataset, root, options, quiet:
                        seen.update(dataset=dataset, root=root, options=options) or "prepared")
    monkeypatch.setattr("umx.train.build.train", lambda cfg: seen.update(cfg=cfg) or "out")
    argv = "--root /data --dataset trackfolder_fix --target-file vocals.flac --interferer-files bass.flac " \
           "drums.flac other.flac --source-augmentations --no_cuda".split()
    assert umx_cli.main(["train", *argv]) == 0
    cfg = seen["cfg"]
    assert cfg.shards == "prepared" and cfg.no_cuda and cfg.source_augmentations == []
    assert cfg.random_track_mix is None  # absent: the shard set's default
    assert seen["options"]["interferer_files"] == ["bass.flac", "drums.flac", "other.flac"]


def test_spec_examples_are_covered():
    """Every `python train.py …` line of the spec is one of the recorded cases."""
    recorded = {a for _, a, _ in CASES}
    for line in re.findall(r"python train\.py\s+(.*)", SPEC.read_text()):
        assert " ".join(line.split()) in recorded or not line.startswith("-"), line


HEADINGS = {"train": ["Run options", "Training options", "Model options", "Data options",
                      "Dataset layout options", "Buckets and the shard cache"],
            "bench": ["Training options", "Model options", "Data options", "Dataset layout options",
                      "Buckets and the shard cache", "Benchmark options"],
            "prep": ["Options", "Dataset layout options", "Buckets"],
            "eval": ["Options", "Dataset layout options"]}


@pytest.mark.parametrize("name", ["synth", "prep", "train", "separate", "eval", "plot", "bench"])
def test_help_is_grouped_and_lists_every_option(name, capsys):
    assert umx_cli.main([name, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Example" in text
    for heading in HEADINGS.get(name, ["Options"]):
        assert f"\n{heading}" in text, heading
    cmd = umx_cli.LazyGroup.get_command(umx_cli.cli, None, name)
    for p in cmd.params:
        for flag in getattr(p, "opts", []):
            if flag.startswith("--"):
                assert flag in text, flag
    if name in ("train", "bench"):
        for flag in SPEC_OPTIONS:
            assert flag in text, flag
        assert "[default: 1000; 1<=x<=1000000]" in text and "[fp32|tf32|bf16|fp16]" in text  # defaults, ranges, choices


def test_help_defaults_come_from_the_table(capsys):
    assert train_cli.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # words wrapped at hyphens
    for f, opt in config.options():
        if f.default not in (None, False, "") and not opt.layout:
            assert f"default: {f.default}" in text, f.name


def test_usage_and_umx_errors(capsys, tmp_path):
    # a value click's types refuse: one line, like every other bad input
    assert train_cli.main(["--epochs", "0"]) == 2
    assert capsys.readouterr().err == "error: Invalid value for '--epochs': 0 is not in the range 1<=x<=1000000.\n"
    assert train_cli.main(["--nb-channels", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: Invalid value for '--nb-channels': '3' is not one of '1', '2'")
    # the other usage errors in click's form
    assert train_cli.main(["--subsets"]) == 2
    err = capsys.readouterr().err
    assert "Usage: umx-train" in err and "requires at least one value" in err
    assert train_cli.main(["--no-such-option"]) == 2
    assert "Error: No such option '--no-such-option'" in capsys.readouterr().err
    assert prep_cli.main(["trackfolder_fix", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert plot.main([str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_nb_channels_is_an_int_and_seq_dur_may_be_negative():
    params = _params(train_cli.cli, ["--nb-channels", "1", "--seq-dur", "-1"])
    assert params["nb_channels"] == 1 and isinstance(params["nb_channels"], int) and params["seq_dur"] == -1.0


def test_storage_options_from_the_environment(monkeypatch):
    monkeypatch.setenv("UMX_STORAGE_OPTIONS", '{"anon": true}')
    assert _params(train_cli.cli, [])["storage_options"] == '{"anon": true}'
    assert _params(prep_cli.cli, ["musdb", "r", "--out", "o"])["storage_options"] == '{"anon": true}'


def test_umx_group_runs_each_command(tmp_path, capsys):
    assert umx_cli.main(["synth", "trackfolder_fix", str(tmp_path / "d"), "--train", "1", "--valid", "1",
                         "--duration", "1", "--sample-rate", "8000"]) == 0
    assert "wrote 1 train" in capsys.readouterr().out
    assert umx_cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in umx_cli.COMMANDS)
    assert umx_cli.main(["nope"]) == 2


def test_shell_completion_is_clicks(monkeypatch, capsys):
    monkeypatch.setenv("_UMX_TRAIN_COMPLETE", "bash_source")
    with pytest.raises(SystemExit) as e:
        train_cli.main([])
    assert e.value.code == 0
    assert "_UMX_TRAIN_COMPLETE" in capsys.readouterr().out
    monkeypatch.delenv("_UMX_TRAIN_COMPLETE")
    monkeypatch.setenv("COMP_WORDS", "umx-train --nb-c")
    monkeypatch.setenv("COMP_CWORD", "1")
    monkeypatch.setenv("_UMX_TRAIN_COMPLETE", "bash_complete")
    with pytest.raises(SystemExit):
        train_cli.main([])
    assert "--nb-channels" in capsys.readouterr().out


def test_no_argparse_left():
    root = Path(train_cli.__file__).parents[1]
    for path in root.rglob("*.py"):
        assert "import argparse" not in path.read_text(), path
    assert os.path.basename(str(root)) == "umx"


def test_a_mistyped_option_suggests_the_right_one(capsys):
    from umx.train.cli import main as train_main

    assert train_main(["--hiden-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "No such option '--hiden-size'" in err and "'--hidden-size'" in err and "Did you mean" in err
