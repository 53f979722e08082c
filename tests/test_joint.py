"""Joint training of several targets in one run (`--targets`, `--loss`, `--bridge`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import openunmix_compat
from conftest import interrupted
from umx import synth
from umx.errors import UmxError
from umx.models.openunmix.network import Joint, OpenUnmix, Spectrogram
from umx.prep import prepare
from umx.models.openunmix.separator import Separator
from umx.separate import main as separate_main
from umx.train import TrainConfig, build_trainer, train
from umx.train import trainer as trainer_mod
from umx.models.openunmix.losses import Independent, MultiDomain, weighted_sdr
from umx.train.state import Progress

FOUR = ["vocals", "drums", "bass", "other"]
TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, quiet=True, debug=True, epochs=2,
            samples_per_track=2)


@pytest.fixture(scope="module")
def musdb(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("joint")
    mus = synth.write_layout("musdb", base / "mus", n_train=4, n_valid=1, duration=1.5, seed=21)
    prepare("musdb", mus, base / "shards", shard_bytes=2**20, progress=False)
    return base / "shards"


def _cfg(shards, out, **kw) -> TrainConfig:
    return TrainConfig(shards=str(shards), output=str(out), **{**TINY, **kw})


def _results(out: Path, target: str) -> dict:
    return json.loads((out / f"{target}.json").read_text())


# --- equivalence with single-target runs ---------------------------------------------------

def test_independent_targets_train_as_single_runs_do(musdb, tmp_path, one_torch_thread):
    """`--targets a b --loss independent` without remixing or augmentation: per target the loss
    histories and weights of single-target runs fed the same batches (float tolerance: the mixture
    is summed over the slots in another order)."""
    plain = dict(random_track_mix=False, source_augmentations=[], samples_per_track=2, epochs=3)
    train(_cfg(musdb, tmp_path / "joint", targets=["vocals", "drums"], **plain))
    for target in ("vocals", "drums"):
        train(_cfg(musdb, tmp_path / target, target=target, **plain))
        joint, alone = _results(tmp_path / "joint", target), _results(tmp_path / target, target)
        for key in ("train_loss_history", "valid_loss_history"):
            assert joint[key] == pytest.approx(alone[key], rel=1e-5), (target, key)
        assert joint["lr_history"] == alone["lr_history"] and joint["best_epoch"] == alone["best_epoch"]
        a = torch.load(tmp_path / "joint" / f"{target}.pth", weights_only=True)
        b = torch.load(tmp_path / target / f"{target}.pth", weights_only=True)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_networks_start_as_single_runs_would(musdb, tmp_path):
    """Each target's fresh network is the one a run of that target alone starts from."""
    joint = build_trainer(_cfg(musdb, tmp_path / "j", targets=["vocals", "drums"]))
    alone = build_trainer(_cfg(musdb, tmp_path / "d", target="drums"))
    a, b = joint.model.units["drums"].state_dict(), alone.model.units["drums"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- model directory: open-unmix's files per target ----------------------------------------------

@pytest.fixture(scope="module")
def four(musdb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("four")
    train(_cfg(musdb, out, targets=FOUR))
    return out


def test_model_directory_holds_every_target(four):
    for target in FOUR:
        for ext in (".pth", ".json", ".chkpnt", "_loss.png"):
            assert (four / f"{target}{ext}").is_file(), target + ext
        r = _results(four, target)
        assert r["epochs_trained"] == 2 and len(r["train_loss_history"]) == 2 and r["args"]["targets"] == FOUR
    assert (four / "separator.json").is_file() and (four / "targets_loss.png").is_file()
    ckpt = torch.load(four / "drums.chkpnt", weights_only=True)
    assert {"epoch", "state_dict", "best_loss", "optimizer", "scheduler"} <= set(ckpt)
    assert not list(four.glob("*.next"))  # every checkpoint generation completed


def test_openunmix_loads_every_target_strictly(four):
    openunmix_compat.register()
    ou_model = pytest.importorskip("openunmix.model")
    ou_utils = pytest.importorskip("openunmix.utils")
    for target in FOUR:
        state = torch.load(four / f"{target}.pth", weights_only=True)
        net = ou_model.OpenUnmix(nb_bins=513, nb_channels=2, hidden_size=8, max_bin=state["input_mean"].shape[0])
        net.load_state_dict(state, strict=True)
    separator = ou_utils.load_separator(str(four), targets=FOUR, niter=1)
    separator.freeze()
    ours = Separator.from_dir(four, FOUR, niter=1)
    x = torch.randn(1, 2, 22050)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), separator(x), rtol=1e-4, atol=1e-5)


def test_separate_and_eval_take_the_joint_directory(four, musdb, tmp_path):
    from umx.evaluate import evaluate

    mix = tmp_path / "song.wav"
    from umx import audio

    audio.write(mix, (np.random.default_rng(0).standard_normal((2, 44100)) * 0.1).astype(np.float32), 44100)
    assert separate_main([str(four), str(mix), "--outdir", str(tmp_path / "stems")]) == 0
    assert sorted(p.stem for p in (tmp_path / "stems" / "song").iterdir()) == sorted(FOUR)
    results = evaluate(four, str(musdb), split="valid", progress=False)
    assert sorted(results["targets"]) == sorted(FOUR) and "residual" not in json.dumps(results["targets"])


# --- bridged networks (X-UMX) ------------------------------------------------------------------

def test_bridged_model_loads_in_umx_not_openunmix(musdb, tmp_path):
    out = tmp_path / "xumx"
    train(_cfg(musdb, out, targets=FOUR, bridge=True, loss="multidomain", combination=True))
    assert (out / "xumx.pth").is_file() and not list(out.glob("*.pth"))[1:]  # one weights file, no <target>.pth
    conf = json.loads((out / "separator.json").read_text())
    assert conf["bridged_targets"] == FOUR
    sep = Separator.from_dir(out, niter=1)
    assert sep.bridge and sep.target_names == FOUR
    x = torch.randn(1, 2, 22050)
    with torch.no_grad():
        bridged = sep(x)
        sep.bridge = False  # the same weights without the bridges: other estimates
        plain = sep(x)
    assert bridged.shape == (1, 4, 2, 22050) and not torch.allclose(bridged, plain)
    with pytest.raises(UmxError, match="separates all its targets together"):
        Separator.from_dir(out, ["vocals"])
    openunmix_compat.register()
    ou_utils = pytest.importorskip("openunmix.utils")
    with pytest.raises((StopIteration, FileNotFoundError, RuntimeError)):
        ou_utils.load_separator(str(out), targets=FOUR)  # there is no vocals*.pth for it to load


def test_bridge_averages_encodings_and_lstm_outputs():
    """Joint(bridge) is X-UMX's forward: LSTMs read the mean encoding, decoders the mean of
    [encoding, LSTM output]; without the bridge each network is its own OpenUnmix."""
    torch.manual_seed(0)
    models = {t: OpenUnmix(nb_bins=65, nb_channels=2, hidden_size=8).eval() for t in ("a", "b")}
    spec = Spectrogram(128, 32)(torch.randn(2, 2, 2048))
    joint = Joint(models, bridge=True).eval()
    with torch.no_grad():
        got = joint(spec)
        enc = [m.encode(spec) for m in models.values()]
        cross = (enc[0][1] + enc[1][1]) / 2
        cat = [torch.cat([e, m.recurrent(cross)], -1) for m, (_, e) in zip(models.values(), enc)]
        want = [m.decode((cat[0] + cat[1]) / 2, mix) for m, (mix, _) in zip(models.values(), enc)]
        assert all(torch.allclose(g, w) for g, w in zip(got, want))
        plain = Joint(models).eval()(spec)
        assert all(torch.equal(p, m(spec)) for p, m in zip(plain, models.values()))


# --- losses -----------------------------------------------------------------------------------

def test_weighted_sdr_bounds():
    ref, mix = torch.randn(3, 1000), torch.randn(3, 1000)
    mix = mix + ref
    assert torch.allclose(weighted_sdr(ref, ref, mix), torch.full((3,), -1.0), atol=1e-5)
    assert (weighted_sdr(-ref, ref, mix) > 0).all()  # the wrong sign is worse than silence


def test_multidomain_inverse_stft_and_combinations():
    """The estimates go back to waveforms exactly (the mixture's magnitude with its phase is the
    mixture, over the covered samples), and the combination loss scores X-UMX's 14 groups of 4."""
    enc = Spectrogram(256, 64)
    loss = MultiDomain(enc, mix_coef=10, combination=True)
    mix = torch.randn(2, 2, 4096)
    wave = loss.waveforms([enc(mix)], mix, enc)
    start, stop = loss.covered(enc(mix).shape[-1])
    torch.testing.assert_close(wave[:, 0], mix[..., start:stop], atol=1e-4, rtol=1e-4)
    assert len(loss.groups(4)) == 14 and len(MultiDomain(enc).groups(4)) == 4
    refs = torch.randn(2, 4, 2, 4096) * 0.1
    terms = loss([enc(refs[:, i]) for i in range(4)], refs, refs.sum(1))
    assert terms.shape == (5,) and torch.allclose(terms[:4], torch.zeros(4), atol=1e-6)
    # perfect magnitudes are not perfect waveforms (the mixture's phase), but nearly
    assert 0 <= terms[-1] < 10


def test_independent_loss_is_the_sum_of_mses():
    enc = Spectrogram(256, 64)
    refs, est = torch.randn(2, 2, 2, 2048), [torch.rand(2, 2, 129, 29) for _ in range(2)]
    terms = Independent(enc)(est, refs, refs.sum(1))
    want = [torch.nn.functional.mse_loss(e, enc(refs[:, i])) for i, e in enumerate(est)]
    torch.testing.assert_close(terms, torch.stack([*want, want[0] + want[1]]))


def test_joint_objective_shares_best_epoch_and_stopping(musdb, tmp_path):
    out = tmp_path / "md"
    train(_cfg(musdb, out, targets=["vocals", "bass"], loss="multidomain", epochs=3))
    a, b = _results(out, "vocals"), _results(out, "bass")
    assert a["objective_valid_history"] == b["objective_valid_history"] and len(a["objective_valid_history"]) == 3
    assert a["best_epoch"] == b["best_epoch"] and a["best_loss"] == b["best_loss"] == min(a["objective_valid_history"])
    assert a["valid_loss_history"] != b["valid_loss_history"]  # each target's own MSE is still recorded


# --- per-target early stopping ----------------------------------------------------------------

def test_a_stopped_target_no_longer_updates(musdb, tmp_path, monkeypatch):
    """Early stopping per target: drums stops after its patience, its network stays as it was,
    vocals trains on; the run ends when every target stopped (here: at --epochs)."""
    valid = iter([({"vocals": 3.0, "drums": 1.0}), ({"vocals": 2.0, "drums": 2.0}), ({"vocals": 1.0}),
                  ({"vocals": 0.5})])

    def fake_validate(self):
        scores = next(valid)
        return trainer_mod.Scores({t: scores[t] for t in self.active}, sum(scores.values()))

    monkeypatch.setattr(trainer_mod.Trainer, "validate", fake_validate)
    out = tmp_path / "m"
    train(_cfg(musdb, out, targets=["vocals", "drums"], patience=1, epochs=2))
    drums_before = torch.load(out / "drums.chkpnt", weights_only=True)["state_dict"]
    train(_cfg(musdb, out, targets=["vocals", "drums"], patience=1, epochs=4, checkpoint=str(out)))
    drums_after = torch.load(out / "drums.chkpnt", weights_only=True)
    assert all(torch.equal(drums_before[k], drums_after["state_dict"][k]) for k in drums_before)
    d, v = _results(out, "drums"), _results(out, "vocals")
    assert d["stopped"] and d["epochs_trained"] == 2 and d["best_epoch"] == 1
    assert not v["stopped"] and v["epochs_trained"] == 4 and v["best_epoch"] == 4


# --- resume -----------------------------------------------------------------------------------

def test_joint_mid_epoch_resume_is_exact(musdb, tmp_path, monkeypatch, one_torch_thread):
    common = dict(targets=["vocals", "accompaniment", "bass"], samples_per_track=3, save_every=2,
                  source_augmentations=["gain", "channelswap"], random_track_mix=True, epochs=2)
    train(_cfg(musdb, tmp_path / "whole", **common))
    with interrupted(monkeypatch, (2, 3)):
        train(_cfg(musdb, tmp_path / "cut", **common))
    train(_cfg(musdb, tmp_path / "cut", checkpoint=str(tmp_path / "cut"), **common))
    for target in common["targets"]:
        a, b = _results(tmp_path / "whole", target), _results(tmp_path / "cut", target)
        for key in ("train_loss_history", "valid_loss_history", "lr_history", "best_epoch"):
            assert a[key] == b[key], (target, key)


def test_an_interrupted_checkpoint_generation_is_settled(four, tmp_path):
    """A kill while renaming a generation: completed if every file of it was written, else dropped."""
    import shutil

    from umx.train.outputs import load_checkpoints

    for complete in (True, False):
        out = tmp_path / str(complete)
        shutil.copytree(four, out)
        os.replace(out / "bass.chkpnt", out / "bass.chkpnt.next")  # the rename of bass never happened
        if not complete:  # killed while writing: other's file of the new generation is missing
            ckpt = torch.load(out / "other.chkpnt", weights_only=True)
            ckpt["umx"]["generation"] = "older"
            torch.save(ckpt, out / "other.chkpnt")
        if complete:
            ckpts, state = load_checkpoints(out, FOUR)
            assert set(ckpts) == set(FOUR) and (out / "bass.chkpnt").is_file()
        else:
            with pytest.raises(UmxError, match="not found"):
                load_checkpoints(out, FOUR)  # dropped the half generation: bass has no complete file
        assert not (out / "bass.chkpnt.next").exists()


def test_single_target_checkpoints_of_before_resume():
    """Step losses of a checkpoint written before joint training (one float per step) resume."""
    assert Progress.from_dict({"epoch": 2, "step": 1, "losses": [0.5]}).losses == [[0.5, 0.5]]


# --- options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(targets=["vocals"], bridge=True), "--bridge joins"),
    (dict(targets=FOUR, combination=True), "--combination"),
    (dict(targets=["vocals", "bass"], loss="multidomain", combination=True), "three targets"),
    (dict(target="drums", targets=["vocals", "bass"]), "not one of --targets"),
    (dict(targets=["vocals", "vocals"]), "given twice"),
    (dict(targets=["vocals", "piano"]), "target 'piano' is not a source"),
    (dict(loss="l1"), "--loss must be one of"),
])
def test_joint_options_refused(musdb, tmp_path, kw, match):
    with pytest.raises(UmxError, match=match):
        build_trainer(_cfg(musdb, tmp_path, **kw))


def test_cli_takes_targets(musdb, tmp_path):
    from umx.train.cli import main

    out = tmp_path / "cli"
    args = ["--shards", str(musdb), "--output", str(out), "--targets", "vocals", "bass", "--epochs", "1",
            "--samples-per-track", "2",
            "--hidden-size", "8", "--seq-dur", "0.5", "--nfft", "1024", "--nhop", "512", "--debug", "--quiet"]
    assert main(args) == 0
    assert (out / "vocals.pth").is_file() and (out / "bass.pth").is_file()


def test_two_ranks_train_jointly(musdb, tmp_path):
    """torchrun with 2 gloo ranks: a joint run ends with the same weights on both ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "umx.train",
           "--shards", str(musdb), "--output", str(out), "--targets", "vocals", "drums", "--epochs", "1",
           "--hidden-size", "8", "--seq-dur", "0.5", "--nfft", "1024", "--nhop", "512", "--debug", "--quiet",
           "--trace", "--batch-size", "2", "--samples-per-track", "2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    finals = [json.loads((out / f"trace-rank{k}.jsonl").read_text().splitlines()[-1]) for k in (0, 1)]
    assert finals[0] == finals[1] and "final_weights_sha256" in finals[0]


def test_bench_reports_target_samples(musdb):
    from umx.bench import bench
    from umx.bench_advice import report

    r = bench(TrainConfig(shards=str(musdb), targets=["vocals", "drums"], **TINY), steps=2, warmup=1,
              loader_batches=2)
    assert r["targets"] == ["vocals", "drums"]
    assert r["device_target_samples_per_s"] == pytest.approx(2 * r["device_samples_per_s"])
    assert r["train_target_samples_per_s"] == pytest.approx(2 * r["train_samples_per_s"])
    assert "target-samples/s" in report(r)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_joint_cuda_graph_replays_the_uncaptured_step(musdb, tmp_path):
    """All targets' forward, backward and Adam in one captured graph: the same losses and weights
    as the uncaptured graph step from the same start."""
    runs = []
    for capture in (True, False):
        t = build_trainer(TrainConfig(shards=str(musdb), output=str(tmp_path / str(capture)), cuda_graph="on",
                                      targets=FOUR, loss="multidomain", bridge=True, **TINY))
        t.step.capture = capture
        t.stream.set_epoch(1)
        batches = [t.batch_audio(b) for _, b in zip(range(4), iter(t.stream))]
        losses = torch.stack([t.train_step(pcm, 1, i) for i, pcm in enumerate(batches)]).cpu()
        assert t.step.captured == capture
        runs.append((losses, {k: v.detach().cpu() for k, v in t.model.state_dict().items()}))
    (la, wa), (lb, wb) = runs
    assert torch.allclose(la, lb, rtol=1e-4, atol=1e-6)
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


# --- gradient accumulation (--grad-accum) -------------------------------------------------------

def test_grad_accum_sums_the_gradients_of_n_batches(musdb, tmp_path):
    """--grad-accum 2: one Adam step from the mean of two batches' gradients (checked against
    doing that by hand), and the weights stay put after the first batch."""
    t = build_trainer(_cfg(musdb, tmp_path / "a", grad_accum=2, targets=["vocals"]))
    t.stream.set_epoch(1)
    pcm = [t.batch_audio(b) for _, b in zip(range(2), iter(t.stream))]
    ref = build_trainer(_cfg(musdb, tmp_path / "b", targets=["vocals"]))
    before = {k: v.clone() for k, v in t.model.named_parameters()}
    t.model.train(), ref.model.train()
    t.train_step(pcm[0], 1, 0, update=False)
    assert all(torch.equal(before[k], v) for k, v in t.model.named_parameters())  # (BatchNorm's stats do move)
    t.train_step(pcm[1], 1, 1, update=True)
    # by hand: the same two batches' gradients, averaged, then one step
    opt = ref.optimizer
    opt.zero_grad()
    for i, p in enumerate(pcm):
        seed = trainer_mod.sampling.torch_seed(ref.cfg.seed, trainer_mod.sampling.STEP, 1, i)
        torch.manual_seed(seed)  # one seed per batch: its augmentation's draws, then dropout's
        x, y = trainer_mod.mix_and_target(ref.augment(p), targets=ref.data.slots.target_slots)
        (ref.step.terms(x, y, seed)[-1] / 2).backward()
    opt.step()
    a, b = t.model.state_dict(), ref.model.state_dict()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-6


def test_grad_accum_options(musdb, tmp_path):
    with pytest.raises(UmxError, match="multiple of --grad-accum"):
        build_trainer(_cfg(musdb, tmp_path, grad_accum=2, save_every=3))
    with pytest.raises(UmxError, match="--grad-accum > 1"):
        build_trainer(_cfg(musdb, tmp_path, grad_accum=2, cuda_graph="on"))
    out = tmp_path / "run"
    train(_cfg(musdb, out, grad_accum=3, targets=["vocals", "bass"]))  # an epoch's last, partial group steps too
    assert _results(out, "bass")["epochs_trained"] == 2


@pytest.mark.parametrize("bridge", [False, True])
def test_eval_every_scores_every_target_in_the_validation_pass(musdb, tmp_path, bridge):
    """--eval-every with four targets (plain and X-UMX): the scored pass keeps the plain pass's
    losses bit for bit, and the two separations agree closely on every target, even on these
    1.5-s tracks, whose edges weigh heavily."""
    trainer = build_trainer(_cfg(musdb, tmp_path, targets=FOUR, bridge=bridge, eval_every=1, lr=0.01))
    trainer.fit()
    scores = {}
    for separation in ("exact", "fast"):
        trainer.cfg.eval_separation = separation
        losses, scores[separation] = trainer.validate_scored()
        assert losses == trainer.validate()
    # measured: cSDR within 0.005 dB; uSDR (energy-weighted, so the edges count) within 0.005 plain, 0.22 bridged
    for fast, exact, tolerance in zip(scores["fast"], scores["exact"], (0.05, 0.5)):
        assert set(fast) == set(FOUR)
        for target in FOUR:
            assert np.isfinite(exact[target]) and fast[target] == pytest.approx(exact[target], abs=tolerance), target
