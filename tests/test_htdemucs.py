"""HTDemucs (`--arch htdemucs`): the demucs package's network trained through the model seam from shards,
separated by the package's own apply_model, fine-tuned from Demucs' model packages without a pickle."""

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from cli_flags import flags
from conftest import interrupted
from msst_fixture import make_fixture
from one_line import one_line
from umx import synth
from umx.errors import UmxError
from umx.evaluate_cli import main as eval_main
from umx.models import registry
from umx.models.htdemucs import HTDemucsOptions, check_network, constructor_kwargs
from umx.models.htdemucs.loss import WaveformLoss
from umx.models.protocol import ModelSpec
from umx.prep import prepare
from umx.separate import main as separate_main
from umx.train.cli import main as train_main

TARGETS = ["vocals", "drums", "bass", "other"]
# depth 4 with Demucs' nfft and strides (the cheapest geometry on a CPU: short transformer sequences)
TINY = dict(channels=8, growth=1, t_layers=1, t_heads=2)


def _args(shard_set, out, *extra, **options):
    opts = {**dict(arch="htdemucs", targets=TARGETS, seq_dur=1.0, batch_size=4, samples_per_track=2, epochs=2,
                   lr=0.003, quiet=True), **TINY, **options}
    return ["--shards", str(shard_set), "--output", str(out), *flags(opts), *extra]


def _results(out):
    return json.loads((Path(out) / "htdemucs.json").read_text())


def _eval(model, shards, out):
    assert eval_main([str(model), "--shards", str(shards), "--split", "valid", "--outdir", str(out)]) == 0
    return json.loads((Path(out) / "eval_valid.json").read_text())


@pytest.fixture(scope="module")
def trained(shard_set, tmp_path_factory):
    """Four stems, with Demucs' augmentations on the device, scored by --eval-every."""
    out = tmp_path_factory.mktemp("htdemucs") / "m"
    assert train_main(_args(shard_set, out, "--random-track-mix", "--source-augmentations", "shift:4410",
                            "channelswap", "flipsign", "scale", samples_per_track=8, epochs=4, eval_every=4,
                            eval_separation="exact", lr=0.03)) == 0
    return out


def test_four_stems_train_through_the_cli_and_beat_the_mixture(trained, shard_set, tmp_path):
    res = _results(trained)
    losses = res["train_loss_history"]
    assert res["epochs_trained"] == 4 and losses[-1] < losses[0]
    assert np.isfinite(res["valid_sdr_history"][-1])
    assert sorted(p.name for p in trained.iterdir() if p.suffix in (".pth", ".chkpnt", ".json")) == \
        ["htdemucs.chkpnt", "htdemucs.json", "htdemucs.pth", "separator.json"]
    conf = json.loads((trained / "separator.json").read_text())
    # the model's window is the training crops' length, exactly (Demucs' export sets it so)
    assert conf["architecture"] == "htdemucs" and conf["targets"] == TARGETS and conf["segment"] == [1, 1]
    scores = _eval(trained, shard_set, tmp_path / "e")
    for t in TARGETS:
        assert scores["usdr"]["scores"][t] > scores["usdr"]["mixture_baseline"][t], t


@pytest.fixture(scope="module")
def musdb_set(tmp_path_factory):
    base = tmp_path_factory.mktemp("hd-musdb")
    mus = synth.write_layout("musdb", base / "mus", n_train=4, n_valid=1, duration=3.0, seed=5)
    prepare("musdb", mus, base / "shards", shard_bytes=2**20, progress=False)
    return base / "shards"


def test_two_stems_vocals_and_accompaniment(musdb_set, tmp_path):
    """Demucs' two-stem model (`--two-stems vocals`): one network of the vocals and the accompaniment."""
    out = tmp_path / "m"
    assert train_main(_args(musdb_set, out, targets=["vocals", "accompaniment"], samples_per_track=8,
                            epochs=4, lr=0.03)) == 0
    res = _results(out)
    assert res["train_loss_history"][-1] < res["train_loss_history"][0]
    conf = json.loads((out / "separator.json").read_text())
    assert conf["targets"] == ["vocals", "accompaniment"]
    state = torch.load(out / "htdemucs.pth", weights_only=True)
    # the last decoder layers give 2 sources × 2 channels (× real and imaginary in the spectral branch)
    assert state["tdecoder.3.conv_tr.weight"].shape[1] == 4 and state["decoder.3.conv_tr.weight"].shape[1] == 8
    scores = _eval(out, musdb_set, tmp_path / "e")  # (umx-eval scores the accompaniment: mixture − vocals)
    for t in ("vocals", "accompaniment"):
        assert scores["usdr"]["scores"][t] > scores["usdr"]["mixture_baseline"][t], t


def test_umx_separate_is_the_package_s_apply_model(trained, tmp_path):
    """umx-separate's stems are demucs.apply.apply_model's on the same model and track (shifts, overlap
    and its transition window included)."""
    from demucs.apply import apply_model
    import random

    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.3, 0.3, (3 * 44100 + 77, 2)).astype(np.float32)
    sf.write(tmp_path / "song.wav", audio, 44100, subtype="FLOAT")
    assert separate_main([str(trained), str(tmp_path / "song.wav"), "--outdir", str(tmp_path / "s")]) == 0
    ours = np.stack([sf.read(tmp_path / "s" / "song" / f"{t}.wav", always_2d=True, dtype="float32")[0]
                     for t in TARGETS])
    model = registry.get("htdemucs").separation(trained, None, _separation_options(), torch.device("cpu")).network
    random.seed(0)  # umx seeds apply_model's shifts so that a separation repeats
    with torch.no_grad():
        want = apply_model(model, torch.from_numpy(audio.T)[None], shifts=1, split=True, overlap=0.25)[0]
    # umx-separate writes 16-bit PCM by default: the stems within one quantisation step
    np.testing.assert_allclose(ours, want.numpy().transpose(0, 2, 1), atol=1.5 / 32768)


def _separation_options(**kw):
    from umx.models.protocol import SeparationOptions

    return SeparationOptions(**kw)


def test_separation_with_a_residual_and_without_shifts_is_deterministic(trained, tmp_path):
    sep = registry.get("htdemucs").separation(trained, None, _separation_options(residual=True), torch.device("cpu"))
    audio = torch.from_numpy(np.random.default_rng(1).uniform(-0.3, 0.3, (1, 2, 50_000)).astype(np.float32))
    a, b = sep(audio), sep(audio)
    assert sep.target_names == [*TARGETS, "residual"] and a.shape == (1, 5, 2, 50_000)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the shifts are seeded
    torch.testing.assert_close(a.sum(1), audio, rtol=0, atol=1e-5)


def test_some_targets_of_the_network(trained):
    """--targets of umx-separate/umx-eval: the network's stems of those names, the residual the rest."""
    arch, cpu = registry.get("htdemucs"), torch.device("cpu")
    audio = torch.from_numpy(np.random.default_rng(2).uniform(-0.3, 0.3, (1, 2, 20_000)).astype(np.float32))
    every = arch.separation(trained, None, _separation_options(), cpu)(audio)
    some = arch.separation(trained, ["bass", "vocals"], _separation_options(residual=True), cpu)
    out = some(audio)
    assert some.target_names == ["bass", "vocals", "residual"]
    torch.testing.assert_close(out[:, :2], every[:, [2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2], audio - every[:, [2, 0]].sum(1), rtol=0, atol=1e-6)
    with pytest.raises(UmxError, match="not piano"):
        arch.separation(trained, ["piano"], _separation_options(), cpu)


def test_resumes_mid_epoch_exactly_with_ema_accumulation_and_fp16(shard_set, tmp_path, monkeypatch,
                                                                   one_torch_thread):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = dict(targets=["vocals", "drums"], ema=0.9, grad_accum=2, samples_per_track=4, epochs=1, precision="fp16",
                source_augmentations=["repitch:0.5", "shift:441", "flipsign"])
    assert train_main(_args(shard_set, whole, "--save-every", "2", **args)) == 0
    with interrupted(monkeypatch, (1, 3)):
        train_main(_args(shard_set, cut, "--save-every", "2", **args))
    assert train_main(_args(shard_set, cut, "--save-every", "2", "--resume", "auto", **args)) == 0
    a, b = _results(whole), _results(cut)
    assert a["train_loss_history"] == b["train_loss_history"] and a["valid_loss_history"] == b["valid_loss_history"]
    wa, wb = (torch.load(p / "htdemucs.pth", weights_only=True) for p in (whole, cut))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ckpt = torch.load(cut / "htdemucs.chkpnt", weights_only=True)
    assert set(ckpt["ema"]) == {"ema0.9"} and ckpt["scaler"]["_growth_tracker"] > 0


@pytest.mark.slow  # (~19 s; the seam's DDP and elastic path runs by default in test_arch_plugin and test_elastic)
def test_two_gloo_ranks_killed_then_continued_on_one(shard_set, tmp_path):
    """Under torchrun (gloo): killed mid-epoch on two ranks after a checkpoint, continued on one
    (elastic), ending with a model."""
    env = dict(os.environ, UMX_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    out = tmp_path / "m"
    args = _args(shard_set, out, "--save-every", "1", samples_per_track=4, epochs=1, batch_size=2,
                 targets=["vocals", "drums"], seq_dur=0.5)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    killed = [str(Path(__file__).parent / "killed_at.py"), "1", "2"]
    r = subprocess.run([*run, "--nproc-per-node=2", *killed, *args], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    position = torch.load(out / "htdemucs.chkpnt", weights_only=True)["umx"]["position"]
    # (the first rank to kill itself may take the other down before its last checkpoint is renamed)
    assert (position["epoch"], position["world"]) == (1, 2) and position["step"] in (1, 2)
    r = subprocess.run([*run, "--nproc-per-node=1", "-m", "umx.train", *args, "--resume", "auto"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _results(out)["epochs_trained"] == 1 and (out / "htdemucs.pth").is_file()


# --- Demucs' own model packages ---------------------------------------------------------------

def _demucs_package(path, segment=Fraction(1), **kw):
    """A model package as Demucs writes one: its own serialize_model (fp16 state, the class pickled)."""
    from demucs.htdemucs import HTDemucs
    from demucs.states import serialize_model
    from omegaconf import OmegaConf

    torch.manual_seed(3)
    model = HTDemucs(**{**dict(sources=TARGETS, samplerate=44100, segment=segment, **TINY), **kw})
    package = serialize_model(model, OmegaConf.create({"optim": {"lr": 3e-4}}))
    package["kwargs"]["segment"] = segment  # as Demucs' tools/export.py sets it
    torch.save(package, path)
    return model


def test_a_demucs_package_fine_tunes(shard_set, tmp_path):
    """Written by the package's own serialisation, read without running its pickle, the weights
    (Demucs stores them in fp16) are the network's, and the run trains on from them."""
    made = _demucs_package(tmp_path / "955717e8.th", segment=Fraction(39, 5))
    arch = registry.get("htdemucs")
    spec = ModelSpec(tuple(TARGETS), 44100, 2, 44100)
    model = arch.fine_tune(tmp_path / "955717e8.th", spec, HTDemucsOptions(**TINY))
    for k, v in made.state_dict().items():
        assert torch.equal(model.network.state_dict()[k], v.half().float()), k
    out = tmp_path / "ft"
    assert train_main(_args(shard_set, out, "--model", str(tmp_path / "955717e8.th"), epochs=1)) == 0
    assert _results(out)["epochs_trained"] == 1


def test_a_demucs_package_of_other_sizes_or_sources_is_one_line(shard_set, tmp_path, capsys):
    _demucs_package(tmp_path / "wide.th", channels=16)
    assert train_main(_args(shard_set, tmp_path / "o", "--model", str(tmp_path / "wide.th"), epochs=1)) == 2
    one_line(capsys, "wide.th: was built with --channels 16")
    _demucs_package(tmp_path / "order.th", sources=["drums", "bass", "other", "vocals"])
    assert train_main(_args(shard_set, tmp_path / "o", "--model", str(tmp_path / "order.th"), epochs=1)) == 2
    one_line(capsys, "(--targets drums bass other vocals)")


class _Runs:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_hostile_demucs_package_is_refused_and_nothing_runs(shard_set, tmp_path, capsys):
    _demucs_package(tmp_path / "ok.th")
    package = torch.load(tmp_path / "ok.th", weights_only=False)  # (our own file, in the test)
    marker = tmp_path / "ran"
    torch.save({**package, "training_args": {"x": _Runs(marker)}}, tmp_path / "evil.th")
    assert train_main(_args(shard_set, tmp_path / "o", "--model", str(tmp_path / "evil.th"), epochs=1)) == 2
    one_line(capsys, "evil.th")
    assert not marker.exists() and not (tmp_path / "o" / "htdemucs.pth").exists()


# --- the network, the loss, the options ------------------------------------------------------

def test_the_trainable_is_the_package_s_network_and_keeps_its_window():
    """Training mode: the package's forward itself. HTDemucs sets its window to each training input's
    length; the trainable keeps the model's (so apply_model windows what separator.json says)."""
    arch = registry.get("htdemucs")
    spec = ModelSpec(("vocals", "drums"), 44100, 2, 22050)
    model = arch.build(spec, HTDemucsOptions(**TINY), None).train()
    x = torch.randn(2, 2, 30000)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    b = model.network(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model(x)
    assert model.network.segment == Fraction(1, 2) and a.shape == (2, 2, 2, 30000)


def test_the_loss_is_demucs_per_source_l1_weighted():
    torch.manual_seed(0)
    est, ref = torch.randn(3, 2, 2, 100), torch.randn(3, 2, 2, 100)
    per = torch.nn.functional.l1_loss(est, ref, reduction="none").mean(dim=(2, 3)).mean(0)  # Demucs' solver
    row = WaveformLoss("l1", (1.0, 3.0))(est, ref, est.sum(1))
    torch.testing.assert_close(row, torch.stack([(per * torch.tensor([1.0, 3.0])).sum() / 4] * 2))
    mse = WaveformLoss("mse")(est, ref, est.sum(1))[0]
    torch.testing.assert_close(mse, torch.nn.functional.mse_loss(est, ref))


def test_the_optimizer_groups_the_transformer_as_demucs_does():
    from umx.models.protocol import OptimiserSettings

    arch = registry.get("htdemucs")
    options = HTDemucsOptions(**TINY, t_weight_decay=0.05, t_lr=1e-4, optimizer="adamw")
    model = arch.build(ModelSpec(("vocals", "drums"), 44100, 2, 44100), options, None)
    settings = OptimiserSettings(lr=3e-4, weight_decay=0.0, lr_decay_gamma=0.3, lr_decay_patience=80, graph=False,
                                 device=torch.device("cpu"))
    opt = arch.optimisers(model, options, settings)["htdemucs"].optimizer
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    rest, transformer = opt.param_groups
    assert (rest["lr"], rest["weight_decay"]) == (3e-4, 0.0)
    assert (transformer["lr"], transformer["weight_decay"]) == (1e-4, 0.05)
    assert {id(p) for p in transformer["params"]} == {id(p) for p in model.network.crosstransformer.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.network.parameters()))


def test_the_options_are_the_constructor_s_with_demucs_defaults():
    """Every HTDemucs constructor argument but the data's and the sparse-attention ones is an option,
    defaulting to Demucs' htdemucs configuration (the class defaults, but where conf/config.yaml differs)."""
    import inspect

    from demucs.htdemucs import HTDemucs

    params = inspect.signature(HTDemucs.__init__).parameters
    kwargs = constructor_kwargs(ModelSpec(("a",), 44100, 2, 44100), HTDemucsOptions(), Fraction(1))
    sparse = {p for p in params if p.startswith(("t_sparse", "t_mask", "t_global", "t_sparsity", "t_auto"))}
    assert set(params) - {"self"} - sparse == set(kwargs)
    differ = {k: v for k, v in kwargs.items() if params[k].default != v}
    assert differ == {"sources": ["a"], "segment": 1}  # conf/config.yaml's htdemucs block: the class defaults


@pytest.mark.parametrize("kw, phrase", [
    (dict(channels=4), "--channels 4 is below --dconv-comp 8"),
    (dict(t_heads=3, channels=8, growth=1), "--t-heads 3"),
    (dict(stft_n_fft=256), "--stft-n-fft 256 is too small for --depth 4"),
    (dict(stft_n_fft=3000), "--stft-n-fft 3000: HTDemucs takes a power of two"),
    (dict(kernel_size=4), "its layers do not fit together"),
    (dict(wiener_iters=1), "--end-iters 0 must equal --wiener-iters 1"),
    (dict(norm_starts=1, norm_groups=5), "--norm-groups 5 does not divide"),
])
def test_sizes_htdemucs_cannot_run_are_one_line(kw, phrase):
    with pytest.raises(UmxError, match=phrase.replace("(", r"\(")):
        check_network(HTDemucsOptions(**kw), ModelSpec(("a", "b"), 44100, 2, 44100))


def test_every_size_the_check_accepts_builds_and_runs():
    """The check against the package: a grid of geometries either passes the check and trains a
    step, or is refused by it."""
    spec = ModelSpec(("a", "b"), 44100, 2, 8192)
    arch = registry.get("htdemucs")
    accepted = 0
    for depth, n_fft, stride, kernel in [(2, 512, 4, 8), (3, 1024, 4, 8), (2, 128, 4, 8), (2, 64, 4, 8),
                                         (3, 2048, 2, 4), (2, 1024, 8, 16), (4, 4096, 4, 8)]:
        options = HTDemucsOptions(channels=8, growth=1, t_layers=1, t_heads=2, depth=depth, stft_n_fft=n_fft,
                                  stride=stride, kernel_size=kernel)
        try:
            arch.check(options, spec, "fast")
        except UmxError:
            continue
        accepted += 1
        model = arch.build(spec, options, None).train()
        model(torch.randn(1, 2, 8192)).abs().mean().backward()
    assert accepted >= 4


def test_an_option_of_htdemucs_is_refused_for_another_architecture(shard_set, tmp_path, capsys):
    assert train_main(["--shards", str(shard_set), "--output", str(tmp_path / "o"), "--t-layers", "2"]) == 2
    one_line(capsys, "--t-layers is an option of --arch htdemucs, not of --arch openunmix")


def test_the_package_is_imported_only_when_an_htdemucs_is_built():
    code = "import sys, umx.models.htdemucs, umx.train.cli; print('demucs' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr[-2000:]


def test_training_and_separating_import_no_torchaudio_and_no_demucs_training_code(trained, tmp_path):
    """umx uses demucs' model and apply modules only: no torchaudio, no Dora/Hydra, no demucs.train."""
    code = ("import sys; from umx.models import registry; from umx.models.protocol import SeparationOptions; "
            "import torch; registry.get('htdemucs').separation(sys.argv[1], None, SeparationOptions(), "
            "torch.device('cpu'))(torch.zeros(1, 2, 4410)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchaudio', 'dora', 'hydra', 'omegaconf') "
            "or m in ('demucs.train', 'demucs.solver', 'demucs.repitch', 'demucs.wav')))")
    r = subprocess.run([sys.executable, "-c", code, str(trained)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


def test_a_model_directory_s_segment_and_weights_are_checked(trained, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained, model)
    conf = json.loads((model / "separator.json").read_text())
    sf.write(tmp_path / "x.wav", np.zeros((4410, 2)), 44100)
    for bad, phrase in [({"segment": [1, 0]}, "segment must be [numerator, denominator]"),
                        ({"segment": [10**9, 1]}, "segment must be"),
                        ({"options": {**conf["options"], "channels": 4}}, "--channels 4 is below")]:
        (model / "separator.json").write_text(json.dumps({**conf, **bad}))
        assert separate_main([str(model), str(tmp_path / "x.wav"), "--outdir", str(tmp_path / "out")]) == 2
        one_line(capsys, phrase)
    (model / "separator.json").write_text(json.dumps({**conf, "options": {**conf["options"], "channels": 16}}))
    assert separate_main([str(model), str(tmp_path / "x.wav"), "--outdir", str(tmp_path / "out")]) == 2
    one_line(capsys, "htdemucs.pth")


# --- MSST's HTDemucs config ---------------------------------------------------------------------

MSST_CONFIG = Path(__file__).parent / "data" / "msst" / "config_musdb18_htdemucs.yaml"


def test_msst_s_htdemucs_config_becomes_umx_options(tmp_path, shard_set, monkeypatch, capsys):
    """MSST's config_musdb18_htdemucs.yaml (`model: htdemucs` and Demucs' keys in its own section) read by
    --config: the network it describes, MSST's training options; the command line overrides it."""
    seen = {}
    monkeypatch.setattr("umx.train.build.train", lambda cfg: seen.update(cfg=cfg))
    assert train_main(["--shards", str(shard_set), "--arch", "htdemucs", "--config", str(MSST_CONFIG), "--lr", "0.01",
                       "--output", str(tmp_path / "o")]) == 0
    cfg, o = seen["cfg"], seen["cfg"].arch_options
    assert cfg.targets == ["drums", "bass", "other", "vocals"] and cfg.seq_dur == 11.0 and cfg.batch_size == 8
    assert (cfg.lr, cfg.precision, cfg.ema, cfg.epoch_steps, cfg.min_mean_abs) == (0.01, "fp16", [0.999], 1000, 0.001)
    assert cfg.source_augmentations == ["gain:0.5:1.5"]
    assert (o.bottom_channels, o.dconv_mode, o.stft_n_fft, o.segment, o.overlap) == (512, 3, 4096, 11, 0.75)
    assert (o.channels_time, o.t_lr, o.multi_freqs) == (0, 0.0, ())  # Demucs' None: the options' "off"
    warned = capsys.readouterr().err
    for key in ("training.shift", "training.normalize", "training.q", "audio.hop_length"):
        assert key in warned, key
    # the package's network of those options, at MSST's sizes (on the meta device: nothing allocated)
    with torch.device("meta"):
        model = registry.get("htdemucs").build(ModelSpec(tuple(cfg.targets), 44100, 2, 485100), o, None)
    assert model.network.bottom_channels == 512 and model.network.segment == Fraction(11)


def test_an_msst_config_of_another_model_or_sparse_attention_is_one_line(tmp_path, shard_set, capsys):
    text = MSST_CONFIG.read_text()
    for name, changed, arch, phrase in [
            ("bs.yaml", text, "bs_roformer", "configures MSST's model 'htdemucs', not --arch bs_roformer"),
            ("sparse.yaml", text.replace("t_sparse_self_attn: False", "t_sparse_self_attn: True"), "htdemucs",
             "htdemucs.t_sparse_self_attn True: the demucs package's network takes only False")]:
        (tmp_path / name).write_text(changed)
        assert train_main(["--shards", str(shard_set), "--arch", arch, "--config", str(tmp_path / name),
                           "--output", str(tmp_path / "o")]) == 2
        one_line(capsys, phrase)


def test_msst_s_htdemucs_checkpoint_fine_tunes_and_gives_msst_s_output(tmp_path, shard_set, capsys):
    """A checkpoint of MSST's own HTDemucs (its MUSDB18 config at a tiny width: names and shapes recorded
    by make_fixture.py from MSST's code) in MSST's training format loads into the package's network,
    which then separates as MSST's network did; `umx-train --model` trains on from it."""
    fixture = make_fixture()
    record = json.loads((MSST_CONFIG.parent / "htdemucs.json").read_text())
    state = {k: fixture.fixture_tensor(k, shape) for k, shape in record["keys"].items()}
    path = tmp_path / "model_htdemucs.ckpt"
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}},
               path)
    options = HTDemucsOptions(dconv_mode=3, **{**TINY, **fixture.HTDEMUCS_TINY})
    targets = ("drums", "bass", "other", "vocals")
    model = registry.get("htdemucs").fine_tune(path, ModelSpec(targets, 44100, 2, 44100), options).eval()
    with torch.no_grad():
        out = model.network(fixture.htdemucs_input())
    assert list(out.shape) == record["output_shape"]
    want = torch.tensor(record["output"])
    # (measured: 0.0 with AVX2 kernels, 1.3e-8 with ATEN_CPU_CAPABILITY=default, outputs up to 0.05)
    torch.testing.assert_close(out.flatten()[::record["every"]], want, rtol=0, atol=1e-6)
    args = _args(shard_set, tmp_path / "ft", "--model", str(path), "--dconv-mode", "3", "--bottom-channels", "0",
                 targets=list(targets), epochs=1, samples_per_track=1)
    assert train_main(args) == 0
    assert train_main(_args(shard_set, tmp_path / "o", "--model", str(path), targets=list(targets), epochs=1)) == 2
    one_line(capsys, "model_htdemucs.ckpt: its weights do not fit this run's network")
