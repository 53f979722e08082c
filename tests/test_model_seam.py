"""The model seam (umx/models/protocol.py): open-unmix is one architecture among several, bit for bit
the recipe it was; the rest of umx names no architecture; the registry is the one place names resolve."""

import json
import re
from pathlib import Path

import pytest
import torch

from one_line import one_line
from umx.models import registry
from umx.train.cli import main as train_main

UMX = Path(__file__).parents[1] / "umx"
TINY = ["--hidden-size", "8", "--seq-dur", "0.5", "--batch-size", "3", "--nfft", "1024", "--nhop", "512",
        "--epochs", "2", "--samples-per-track", "1", "--quiet", "--seed", "3", "--debug"]


def test_arch_openunmix_is_the_default_bit_for_bit(shard_set, tmp_path, one_torch_thread):
    a, b = tmp_path / "default", tmp_path / "named"
    assert train_main(["--shards", str(shard_set), "--output", str(a), *TINY]) == 0
    assert train_main(["--shards", str(shard_set), "--output", str(b), "--arch", "openunmix", *TINY]) == 0
    wa, wb = (torch.load(p / "vocals.pth", weights_only=True) for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((p / "vocals.json").read_text()) for p in (a, b))
    assert ra["train_loss_history"] == rb["train_loss_history"] and ra["valid_loss_history"] == rb["valid_loss_history"]
    # open-unmix's model directory, as before: separator.json names no architecture (openunmix reads it)
    assert (a / "separator.json").read_bytes() == (b / "separator.json").read_bytes()
    assert "architecture" not in json.loads((a / "separator.json").read_text())


def test_default_runs_fingerprint_as_before_architectures(shard_set):
    """A checkpoint written before --arch existed resumes (--resume auto compares fingerprints)."""
    from umx.shards import manifest as mf
    from umx.train import TrainConfig
    from umx.train.build import run_fingerprint

    manifest = mf.load(str(shard_set))
    options = run_fingerprint(TrainConfig(shards=str(shard_set)), manifest)["options"]
    assert "arch" not in options and "arch_options" not in options and options["nfft"] == 4096


def test_an_unknown_architecture_is_one_line(shard_set, tmp_path, capsys):
    assert train_main(["--shards", str(shard_set), "--output", str(tmp_path), "--arch", "os.system"]) == 2
    err = capsys.readouterr().err
    assert "--arch" in err and "os.system" in err and "Traceback" not in err
    with pytest.raises(Exception, match="unknown architecture 'nope'"):
        registry.get("nope")


def test_umx_names_no_architecture_outside_the_model_layer():
    """The trainer, separate and evaluate talk to the protocol only: no OpenUnmix, no probing of a
    model with isinstance / hasattr / getattr."""
    places = [*(UMX / "train").glob("*.py"), UMX / "separate.py", UMX / "evaluate.py", UMX / "bench.py"]
    for path in places:
        text = path.read_text()
        assert "OpenUnmix" not in text and "Joint" not in text, path
        assert not re.search(r"(hasattr|getattr)\([^)]*(model|net|step)\b", text), path


def test_an_architecture_module_is_never_imported_from_a_name_given(monkeypatch):
    """Only registered names resolve; the built-in name cannot be shadowed by a plugin."""
    assert registry.names()[0] == registry.DEFAULT
    assert registry.get("openunmix").name == "openunmix"
    for name in ("umx.models.openunmix", "umx.models.openunmix:ARCHITECTURE", "../openunmix", ""):
        with pytest.raises(Exception, match="unknown architecture"):
            registry.get(name)


def test_a_model_directory_naming_no_architecture_is_open_unmix(shard_set, tmp_path, capsys):
    out = tmp_path / "m"
    assert train_main(["--shards", str(shard_set), "--output", str(out), *TINY, "--epochs", "1"]) == 0
    assert registry.directory_architecture(out).name == "openunmix"
    conf = json.loads((out / "separator.json").read_text())
    (out / "separator.json").write_text(json.dumps({**conf, "architecture": 7}))
    from umx.evaluate_cli import main as eval_main

    capsys.readouterr()
    assert eval_main([str(out), "--shards", str(shard_set), "--split", "valid"]) == 2
    one_line(capsys, "separator.json: architecture must be an architecture's name, got 7")
