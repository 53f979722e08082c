"""The model seam fits more than open-unmix: `tinymask` (tests/plugins/umx_tinymask), installed as a
plugin through the `umx.architectures` entry-point group, trains, resumes, runs under torchrun,
separates and is evaluated through the plain command lines. No line of umx names it."""

import json
import subprocess
import sys
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import interrupted
from one_line import one_line
from umx.evaluate_cli import main as eval_main
from umx.models import registry
from umx.models.chunked import overlap_add
from umx.separate import main as separate_main
from umx.train.cli import main as train_main

pytestmark = pytest.mark.skipif("tinymask" not in registry.names(),
                                reason="the test plugin is not installed (scripts/setup_tests.sh installs it)")
TARGETS = ["vocals", "drums", "bass", "other"]
UMX = Path(__file__).parents[1] / "umx"


def _args(shard_set, out, *extra, **options):
    opts = {**dict(arch="tinymask", targets=TARGETS, seq_dur=0.5, batch_size=4, samples_per_track=4, quiet=True,
                   epochs=2, lr=0.01, tiny_channels=4, random_track_mix=True), **options}
    args = ["--shards", str(shard_set), "--output", str(out)]
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [flag, *map(str, v)] if isinstance(v, list) else [flag, str(v)]
    return args + list(extra)


def _results(out):
    return json.loads((Path(out) / "tinymask.json").read_text())


def test_registered_through_the_entry_point_group_and_named_nowhere_in_umx():
    assert [ep.value for ep in entry_points(group=registry.GROUP) if ep.name == "tinymask"] == \
        ["umx_tinymask:ARCHITECTURE"]
    assert registry.get("tinymask").name == "tinymask"
    assert not [p for p in UMX.rglob("*.py") if "tinymask" in p.read_text()]


@pytest.fixture(scope="module")
def trained(shard_set, tmp_path_factory):
    """4 epochs of one network of four targets, scored by --eval-every 2."""
    out = tmp_path_factory.mktemp("tiny") / "m"
    assert train_main(_args(shard_set, out, epochs=4, eval_every=2, eval_separation="exact")) == 0
    return out


def test_trains_one_network_of_all_targets_and_its_loss_falls(trained):
    res = _results(trained)
    losses = res["train_loss_history"]
    assert res["epochs_trained"] == 4 and losses[-1] < losses[0]
    assert res["args"]["arch"] == "tinymask" and res["args"]["arch_options"]["tiny_channels"] == 4
    files = sorted(p.name for p in trained.iterdir() if p.suffix in (".pth", ".chkpnt", ".json"))
    assert files == ["separator.json", "tinymask.chkpnt", "tinymask.json", "tinymask.pth"]  # no <target>.pth
    assert json.loads((trained / "separator.json").read_text())["architecture"] == "tinymask"
    # --eval-every 2 scored the validation tracks inside the validation pass, with the chunked inference
    sdr = res["valid_sdr_history"]
    assert sdr[0] is None and sdr[2] is None and all(np.isfinite(v) for v in (sdr[1], sdr[3]))


def test_separates_and_is_evaluated_through_the_command_lines(trained, dataset, tmp_path, capsys):
    song = next((dataset / "test").glob("*")) if (dataset / "test").is_dir() else next((dataset / "valid").glob("*"))
    mixture = sum(sf.read(f, always_2d=True)[0] for f in song.glob("*.wav"))
    sf.write(tmp_path / "song.wav", mixture, 44100, subtype="FLOAT")
    assert separate_main([str(trained), str(tmp_path / "song.wav"), "--outdir", str(tmp_path / "s"),
                          "--residual"]) == 0
    stems = {p.stem: sf.read(p, always_2d=True)[0] for p in (tmp_path / "s" / "song").iterdir()}
    assert sorted(stems) == sorted([*TARGETS, "residual"])
    assert all(s.shape == mixture.shape for s in stems.values())
    # the estimates and the residual make up the mixture (float WAV: no rounding)
    np.testing.assert_allclose(sum(stems.values()), mixture, atol=1e-4)
    capsys.readouterr()
    assert eval_main([str(trained), "--shards", str(_shards_of(trained)), "--split", "valid",
                      "--outdir", str(tmp_path / "e")]) == 0
    scores = json.loads((tmp_path / "e" / "eval_valid.json").read_text())
    assert scores["n_tracks"] == 2 and scores["targets"] == TARGETS
    assert set(scores["usdr"]["scores"]) >= set(TARGETS)  # scored: every target (what the SDRs are: docs/)


def _shards_of(out):
    return _results(out)["args"]["shards"]


def test_resumes_mid_epoch_exactly(shard_set, tmp_path, monkeypatch, one_torch_thread):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train_main(_args(shard_set, whole, "--save-every", "2")) == 0
    with interrupted(monkeypatch, (2, 3)):
        train_main(_args(shard_set, cut, "--save-every", "2"))
    assert train_main(_args(shard_set, cut, "--save-every", "2", "--resume", "auto")) == 0
    a, b = _results(whole), _results(cut)
    assert a["train_loss_history"] == b["train_loss_history"] and a["valid_loss_history"] == b["valid_loss_history"]
    wa, wb = (torch.load(p / "tinymask.pth", weights_only=True) for p in (whole, cut))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _torchrun(nproc, shard_set, out, *extra, killed_at=None, **options):
    run = ["-m", "umx.train"] if killed_at is None else [str(Path(__file__).parent / "killed_at.py"),
                                                         *map(str, killed_at)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *run,
            *_args(shard_set, out, *extra, **options)]


def _env(tmp_path):
    import os

    env = dict(os.environ, UMX_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _samples(out, ranks, epoch):
    seen = Counter()
    for rank in ranks:
        for line in (out / f"trace-rank{rank}.jsonl").read_text().splitlines():
            x = json.loads(line)
            if x.get("epoch") == epoch:
                seen.update((x["batch"], i, t, o) for i, (t, o) in enumerate(zip(x["tracks"], x["offsets"])))
    return seen


def test_two_gloo_ranks_then_elastic_on_one(shard_set, tmp_path):
    """Two ranks (gloo) killed mid-epoch after a checkpoint, continued on one: the epoch's samples are
    the uninterrupted two-rank run's, each once, and the run ends with a model."""
    opts = dict(epochs=1, samples_per_track=8, batch_size=2, save_every=1, trace=True)  # 40 samples, 20 batches
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = subprocess.run(_torchrun(2, shard_set, whole, **opts), env=_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    want = _samples(whole, [0, 1], 1)
    assert sum(want.values()) == 40
    r = subprocess.run(_torchrun(2, shard_set, cut, killed_at=(1, 4), **opts), env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    position = torch.load(cut / "tinymask.chkpnt", weights_only=True)["umx"]["position"]
    assert (position["epoch"], position["step"], position["world"]) == (1, 4, 2)
    before = [x for rank in (0, 1) for x in map(json.loads, (whole / f"trace-rank{rank}.jsonl").read_text()
                                                 .splitlines()) if x.get("epoch") == 1 and x["step"] < 4]
    n0 = len((cut / "trace-rank0.jsonl").read_text().splitlines())
    r = subprocess.run(_torchrun(1, shard_set, cut, resume="auto", **opts), env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    after = [x for x in map(json.loads, (cut / "trace-rank0.jsonl").read_text().splitlines()[n0:])
             if x.get("epoch") == 1]
    got = Counter((x["batch"], i, t, o) for x in before + after
                  for i, (t, o) in enumerate(zip(x["tracks"], x["offsets"])))
    assert got == want
    assert (cut / "tinymask.pth").is_file() and _results(cut)["epochs_trained"] == 1


def test_an_option_of_another_architecture_is_refused(shard_set, tmp_path, capsys):
    args = _args(shard_set, tmp_path / "o", arch="openunmix")
    assert train_main(args) == 2
    one_line(capsys, "--tiny-channels is an option of --arch tinymask, not of --arch openunmix")


@pytest.mark.parametrize("name", ["os", "umx_tinymask:ARCHITECTURE", "../tinymask", "evil_seam_module"])
def test_a_model_directory_names_an_architecture_never_a_module(trained, tmp_path, name, capsys, monkeypatch):
    """separator.json's architecture is a key into the registry: anything else is one line, and no
    module is imported (a module of that name on sys.path stays unimported)."""
    (tmp_path / "evil_seam_module.py").write_text("import sys\nsys.modules['evil_seam_imported'] = sys\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    for f in trained.iterdir():
        if f.is_file():
            (model / f.name).write_bytes(f.read_bytes())
    conf = json.loads((model / "separator.json").read_text())
    (model / "separator.json").write_text(json.dumps({**conf, "architecture": name}))
    sf.write(tmp_path / "x.wav", np.zeros((44100, 2)), 44100)
    assert separate_main([str(model), str(tmp_path / "x.wav"), "--outdir", str(tmp_path / "out")]) == 2
    one_line(capsys, "separator.json: architecture")
    assert "evil_seam_imported" not in sys.modules and "evil_seam_module" not in sys.modules


def test_overlap_add_is_the_whole_track_for_a_pointwise_model():
    """Chunked inference of a model that acts sample by sample is the model on the whole track,
    whatever the chunk, overlap and batch; batches never hold more than `batch` chunks."""
    torch.manual_seed(0)
    audio = torch.randn(2, 10_007)
    sizes = []

    def model(chunks):
        sizes.append(chunks.shape[0])
        return torch.stack([chunks * 0.5, torch.tanh(chunks)], dim=1)

    want = torch.stack([audio * 0.5, torch.tanh(audio)])
    for chunk, overlap, batch in [(1000, 4, 3), (4096, 2, 1), (333, 1, 8), (20_000, 4, 2)]:
        sizes.clear()
        got = overlap_add(model, audio, chunk, overlap, batch)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        assert max(sizes) <= batch
