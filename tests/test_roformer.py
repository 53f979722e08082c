"""BS-RoFormer and Mel-Band RoFormer (`--arch bs_roformer | mel_band_roformer`): the bs-roformer
package's networks trained as MSST trains them, MSST's checkpoints and config files read safely."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_flags import flags
from conftest import interrupted
from msst_fixture import make_fixture
from one_line import one_line
from umx.errors import UmxError
from umx.evaluate_cli import main as eval_main
from umx.models import registry
from umx.models.protocol import ModelSpec
from umx.models.roformer.loss import MultiResolutionLoss
from umx.models.roformer.msst import load_msst_checkpoint
from umx.separate import main as separate_main
from umx.train import msst_config
from umx.train.cli import main as train_main

MSST = Path(__file__).parent / "data" / "msst"
BANDS = (8,) * 32 + (1,)
TINY = dict(dim=16, depth=1, dim_head=8, heads=2, attn_dropout=0.0, ff_dropout=0.0, flash_attn=False, stft_n_fft=512,
            stft_hop_length=256, stft_win_length=512, mask_estimator_depth=2)
EXTRA = {"bs_roformer": dict(freqs_per_bands=BANDS), "mel_band_roformer": dict(num_bands=8)}
TARGETS = ["vocals", "drums", "bass", "other"]


def _options(name, **kw):
    return registry.get(name).options(**{**TINY, **EXTRA[name], **kw})


def _cli(shard_set, out, name, *extra, **options):
    opts = {**dict(arch=name, targets=TARGETS, seq_dur=0.25, batch_size=2, samples_per_track=2, epochs=2, lr=0.002,
                   quiet=True, chunk_size=11025, inference_batch_size=4), **TINY, **EXTRA[name], **options}
    return ["--shards", str(shard_set), "--output", str(out), *flags(opts), *extra]


def msst_checkpoint(name: str, folder: Path) -> Path:
    """A checkpoint as MSST's train.py saves it, of MSST's state-dict names and shapes (recorded from MSST's
    own network by make_fixture.py), every tensor `fixture_tensor(name, shape)`."""
    fixture, record = make_fixture(), json.loads((MSST / f"{name}.json").read_text())
    state = {k: fixture.fixture_tensor(k, shape) for k, shape in record["keys"].items()}
    path = folder / f"{name}.ckpt"
    torch.save({"epoch": 3, "optimizer_name": "adam", "optimizer_state_dict": {"state": {}, "param_groups": []},
                "best_metric": 1.5, "model_state_dict": state}, path)
    return path


@pytest.mark.parametrize("name", ["bs_roformer", "mel_band_roformer"])
def test_msst_checkpoint_gives_msst_output(name, tmp_path):
    """A checkpoint of MSST's state-dict names and shapes loads into the package's network, which then
    separates as MSST's own network code did (its output recorded by tests/data/msst/make_fixture.py)."""
    arch = registry.get(name)
    model = arch.build(ModelSpec(("vocals", "drums"), 44100, 2), _options(name), None).eval()
    load_msst_checkpoint(msst_checkpoint(name, tmp_path), model.network, name)
    record = json.loads((MSST / f"{name}.json").read_text())
    with torch.no_grad():
        out = model(make_fixture().fixture_input())
    assert list(out.shape) == record["output_shape"]
    # measured: 2.9e-7 at most between kernel sets (ATEN_CPU_CAPABILITY default, avx2), outputs up to 0.52
    torch.testing.assert_close(out.flatten()[::record["every"]], torch.tensor(record["output"]), rtol=1e-4, atol=1e-5)


def test_umx_train_fine_tunes_an_msst_checkpoint(shard_set, tmp_path):
    """`--model FILE.ckpt`: training starts from MSST's weights (the run's first validation is that
    network's), through the plain command line."""
    out = tmp_path / "ft"
    ckpt = msst_checkpoint("bs_roformer", tmp_path)
    assert train_main(_cli(shard_set, out, "bs_roformer", "--model", str(ckpt), epochs=1,
                           samples_per_track=1, targets=["vocals", "drums"], lr=1e-9)) == 0
    trained = torch.load(out / "bs_roformer.pth", weights_only=True)
    msst = torch.load(ckpt, weights_only=True)["model_state_dict"]
    key = "band_split.to_features.0.1.weight"  # a name both share
    torch.testing.assert_close(trained[key], msst[key], rtol=0, atol=1e-6)


def test_an_msst_checkpoint_of_other_sizes_names_the_keys(capsys, tmp_path):
    arch = registry.get("bs_roformer")
    model = arch.build(ModelSpec(("vocals", "drums"), 44100, 2), _options("bs_roformer", dim=32), None)
    with pytest.raises(UmxError, match=r"bs_roformer.ckpt: does not fit this run's bs_roformer .*keys .*of other "
                                       r"shapes \(e.g\. "):
        load_msst_checkpoint(msst_checkpoint("bs_roformer", tmp_path), model.network, "bs_roformer")


class Payload:
    def __reduce__(self):
        return (subprocess.call, (["touch", "/tmp/umx-roformer-pwned"],))


def test_a_pickled_object_in_an_msst_checkpoint_is_refused_and_never_runs(tmp_path):
    bad = tmp_path / "evil.ckpt"
    state = torch.load(msst_checkpoint("bs_roformer", tmp_path), weights_only=True)
    torch.save({**state, "hook": Payload()}, bad)
    model = registry.get("bs_roformer").build(ModelSpec(("vocals", "drums"), 44100, 2), _options("bs_roformer"), None)
    with pytest.raises(UmxError, match=r"evil.ckpt: cannot be loaded: refused.*pickled code; it pickles the global \S+call\)"):
        load_msst_checkpoint(bad, model.network, "bs_roformer")
    assert not Path("/tmp/umx-roformer-pwned").exists()
    assert pickle  # (the payload would run under pickle.load)


def test_our_loss_is_the_packages_and_msst_s():
    """umx's MSST loss (outside the network) equals the package's BS-RoFormer loss (inside it, which
    MSST's is: tests/data/msst/make_fixture.py's notes), for one and for several stems."""
    torch.manual_seed(0)
    for stems in (1, 2):
        model = registry.get("bs_roformer").build(ModelSpec(tuple(TARGETS[:stems]), 44100, 2),
                                                  _options("bs_roformer"), None).eval()
        x = torch.randn(2, 2, 256 * 20)
        target = torch.randn(2, stems, 2, 256 * 20) if stems > 1 else torch.randn(2, 2, 256 * 20)
        with torch.no_grad():
            theirs = model.network(x, target=target)
            est = model(x)
        ours = MultiResolutionLoss((4096, 2048, 1024, 512, 256), 147, 512, 1.0)(est, target.reshape(est.shape), x)
        torch.testing.assert_close(ours[0], theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["bs_roformer", "mel_band_roformer"])
def test_msst_s_musdb18_config_builds_the_package_s_model(name):
    """MSST's own MUSDB18 config, read by --config, builds the network the package builds from the same
    values (the keys it has no argument for left out, MSST's architecture: one residual stream, zero_dc)."""
    import bs_roformer

    path = MSST / f"config_musdb18_{name}.yaml"
    arch = registry.get(name)
    values = msst_config.read(path, {f: None for f in arch.options.__dataclass_fields__})
    assert values.train["targets"] == ["vocals"] and values.train["seq_dur"] == 131584 / 44100
    options = arch.options(**values.model)
    raw = msst_config.load(path)["model"]
    cls = bs_roformer.BSRoformer if name == "bs_roformer" else bs_roformer.MelBandRoformer
    accepted = set(__import__("inspect").signature(cls.__init__).parameters)
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in accepted}
    given.update(num_residual_streams=1, zero_dc=True,
                 **({"add_value_residual": False, "match_input_audio_length": True} if name != "bs_roformer" else {}))
    with torch.device("meta"):
        theirs = cls(**given).state_dict()
        ours = arch.build(ModelSpec(("vocals",), 44100, 2), options, None).network.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


CONFIG = """
audio: {chunk_size: 11025, num_channels: 2, sample_rate: 44100, min_mean_abs: 0.001, dim_t: 256}
model:
  dim: 16
  depth: 1
  num_stems: 4
  stereo: true
  linear_transformer_depth: 0
  freqs_per_bands: !!python/tuple [%s]
  multi_stft_resolutions_window_sizes: !!python/tuple [1024, 512]
  dim_freqs_in: 1025
  use_torch_checkpoint: false
  frobnicate: 3
training: {batch_size: 3, lr: 5.0e-05, instruments: [vocals, bass, drums, other], target_instrument: null,
           num_steps: 4, patience: 2, reduce_factor: 0.95, ema_momentum: 0.999, optimizer: adamw, q: 0.95,
           gradient_accumulation_steps: 2, grad_clip: 5}
augmentations: {enable: true, loudness: true, loudness_min: 0.5, loudness_max: 1.5,
                all: {channel_shuffle: 0.5, random_polarity: 0.5, random_inverse: 0.1}}
inference: {batch_size: 2, num_overlap: 2}
""" % ", ".join(map(str, BANDS))


def test_an_msst_config_becomes_umx_options(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    values = msst_config.read(path, {f: None for f in registry.get("bs_roformer").options.__dataclass_fields__})
    assert values.model["freqs_per_bands"] == BANDS and values.model["multi_stft_resolutions_window_sizes"] == (1024, 512)
    assert values.model["optimizer"] == "adamw" and values.model["chunk_size"] == 11025
    assert values.model["inference_batch_size"] == 2 and values.model["num_overlap"] == 2
    t = values.train
    assert t["targets"] == ["vocals", "bass", "drums", "other"] and t["seq_dur"] == 0.25 and t["batch_size"] == 3
    assert (t["lr"], t["lr_decay_patience"], t["lr_decay_gamma"], t["ema"]) == (5e-05, 2, 0.95, [0.999])
    assert (t["grad_accum"], t["grad_clip"], t["epoch_steps"]) == (2, 5, 4)
    assert t["source_augmentations"] == ["gain:0.5:1.5", "channelswap:0.5", "flipsign:0.5"]
    warned = " | ".join(values.warnings)
    assert t["min_mean_abs"] == 0.001
    for key in ("audio.dim_t", "model.frobnicate", "model.dim_freqs_in", "training.q",
                "augmentations.all.random_inverse"):
        assert key in warned, key


@pytest.mark.parametrize("text, phrase", [
    ("model: !!python/object/apply:os.system ['touch /tmp/umx-yaml-pwned']\n", "not a config umx can read safely"),
    ("model: !!python/name:os.system\n", "not a config umx can read safely"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("model:\n  num_stems: 3\ntraining:\n  instruments: [a, b]\n", "model.num_stems 3 but 2 target(s)"),
])
def test_a_config_file_constructs_nothing(tmp_path, capsys, text, phrase, shard_set):
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    assert train_main(["--shards", str(shard_set), "--output", str(tmp_path / "o"), "--arch", "bs_roformer",
                       "--config", str(path)]) == 2
    one_line(capsys, phrase)
    assert not Path("/tmp/umx-yaml-pwned").exists() and not (tmp_path / "o").exists()


def test_the_command_line_overrides_the_config(tmp_path, shard_set, monkeypatch):
    from umx.train import options

    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    seen = {}
    monkeypatch.setattr("umx.train.build.train", lambda cfg: seen.update(cfg=cfg))
    assert train_main(["--shards", str(shard_set), "--arch", "bs_roformer", "--config", str(path), "--lr", "0.01",
                       "--dim", "24", "--output", str(tmp_path / "o")]) == 0
    cfg = seen["cfg"]
    assert cfg.lr == 0.01 and cfg.arch_options.dim == 24 and cfg.batch_size == 3 and cfg.arch_options.depth == 1
    assert options.architecture_fields()["dim"].archs == ["bs_roformer", "mel_band_roformer"]


@pytest.fixture(scope="module")
def trained_bs(shard_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("bs") / "m"
    assert train_main(_cli(shard_set, out, "bs_roformer", epochs=3, eval_every=3)) == 0
    return out


def test_bs_roformer_trains_through_the_cli(trained_bs):
    res = json.loads((trained_bs / "bs_roformer.json").read_text())
    assert res["epochs_trained"] == 3 and res["train_loss_history"][-1] < res["train_loss_history"][0]
    assert np.isfinite(res["valid_sdr_history"][-1])
    conf = json.loads((trained_bs / "separator.json").read_text())
    assert conf["architecture"] == "bs_roformer" and conf["targets"] == TARGETS
    assert conf["options"]["freqs_per_bands"] == list(BANDS)


def test_bs_roformer_separates_evaluates_and_fine_tunes(trained_bs, shard_set, tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "song.wav", np.random.default_rng(0).uniform(-0.3, 0.3, (30000, 2)), 44100)
    assert separate_main([str(trained_bs), str(tmp_path / "song.wav"), "--outdir", str(tmp_path / "s")]) == 0
    assert sorted(p.stem for p in (tmp_path / "s" / "song").iterdir()) == sorted(TARGETS)
    assert eval_main([str(trained_bs), "--shards", str(shard_set), "--split", "valid", "--metric", "usdr",
                      "--outdir", str(tmp_path / "e")]) == 0
    assert set(json.loads((tmp_path / "e" / "eval_valid.json").read_text())["usdr"]["scores"]) >= set(TARGETS)
    out = tmp_path / "ft"
    assert train_main(_cli(shard_set, out, "bs_roformer", "--model", str(trained_bs), epochs=1)) == 0
    capsys.readouterr()
    assert train_main(_cli(shard_set, tmp_path / "x", "bs_roformer", "--model", str(trained_bs), dim=24)) == 2
    one_line(capsys, "its options differ from this run's (dim)")


def test_bs_roformer_resumes_mid_epoch_exactly_with_ema_and_fp16(shard_set, tmp_path, monkeypatch, one_torch_thread):
    """MSST's recipe: --ema and fp16 autocast with a GradScaler, whose state is in the checkpoint."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = dict(samples_per_track=2, epochs=1, targets=["vocals"], ema=0.9, precision="fp16")
    assert train_main(_cli(shard_set, whole, "bs_roformer", "--save-every", "2", **args)) == 0
    with interrupted(monkeypatch, (1, 3)):
        train_main(_cli(shard_set, cut, "bs_roformer", "--save-every", "2", **args))
    assert train_main(_cli(shard_set, cut, "bs_roformer", "--save-every", "2", "--resume", "auto", **args)) == 0
    a, b = (json.loads((p / "bs_roformer.json").read_text()) for p in (whole, cut))
    assert a["train_loss_history"] == b["train_loss_history"] and a["valid_loss_history"] == b["valid_loss_history"]
    wa, wb = (torch.load(p / "bs_roformer.pth", weights_only=True) for p in (whole, cut))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ckpt = torch.load(cut / "bs_roformer.chkpnt", weights_only=True)
    assert ckpt["scaler"]["_growth_tracker"] > 0 and set(ckpt["ema"]) == {"ema0.9"}


def test_a_checkpoint_s_scaler_state_is_checked(shard_set, tmp_path, capsys):
    out = tmp_path / "m"
    args = dict(samples_per_track=1, epochs=1, targets=["vocals"], precision="fp16")
    assert train_main(_cli(shard_set, out, "bs_roformer", **args)) == 0
    ckpt = torch.load(out / "bs_roformer.chkpnt", weights_only=True)
    torch.save({**ckpt, "scaler": {**ckpt["scaler"], "scale": float("inf")}}, out / "bs_roformer.chkpnt")
    capsys.readouterr()
    assert train_main(_cli(shard_set, tmp_path / "o", "bs_roformer", "--checkpoint", str(out),
                           **{**args, "epochs": 2})) == 2
    one_line(capsys, "bs_roformer.chkpnt: field 'scaler.scale' must be a finite number")


def test_umx_forward_is_the_package_s(shard_set):
    """The architecture's forward is the package's network called directly (same weights, same input)."""
    torch.manual_seed(0)
    for name in ("bs_roformer", "mel_band_roformer"):
        model = registry.get(name).build(ModelSpec(("vocals", "drums"), 44100, 2), _options(name), None).eval()
        x = torch.randn(1, 2, 256 * 16)
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.network(x), rtol=0, atol=0)


def test_overlap_add_of_a_short_track_is_one_forward_and_weights_sum_to_one():
    from umx.models.chunked import layout, overlap_add, weight_sums

    model = registry.get("bs_roformer").build(ModelSpec(("vocals", "drums"), 44100, 2), _options("bs_roformer"),
                                              None).eval()
    x = torch.randn(2, 256 * 30)
    run = lambda chunks: model(chunks)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(overlap_add(run, x, chunk=256 * 30), model(x[None])[0], rtol=0, atol=0)
    for length, chunk, overlap in [(10_000, 1024, 4), (44_100, 4096, 2), (5000, 333, 1), (131_584 * 3 + 7, 131_584, 4)]:
        sums = weight_sums(length, chunk, overlap)
        border, windows = layout(length, chunk, overlap)
        assert (sums > 0).all()
        normalised = torch.zeros_like(sums)
        for start, window in windows:
            normalised[start:start + len(window)] += window / sums[start:start + len(window)]
        torch.testing.assert_close(normalised, torch.ones_like(sums))


@pytest.mark.slow  # (~25 s; the seam's DDP path runs by default in test_arch_plugin and test_elastic)
def test_two_gloo_ranks_then_one(shard_set, tmp_path):
    """BS-RoFormer under torchrun (gloo): killed mid-epoch on two ranks, continued on one."""
    import os

    env = dict(os.environ, UMX_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = tmp_path / "m"
    args = _cli(shard_set, out, "bs_roformer", "--save-every", "1", samples_per_track=4, epochs=1,
                targets=["vocals", "drums"])
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    killed = [str(Path(__file__).parent / "killed_at.py"), "1", "2"]
    r = subprocess.run([*run, "--nproc-per-node=2", *killed, *args], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    position = torch.load(out / "bs_roformer.chkpnt", weights_only=True)["umx"]["position"]
    assert (position["epoch"], position["step"], position["world"]) == (1, 2, 2)
    r = subprocess.run([*run, "--nproc-per-node=1", "-m", "umx.train", *args, "--resume", "auto"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "bs_roformer.json").read_text())
    assert res["epochs_trained"] == 1 and (out / "bs_roformer.pth").is_file()


def test_mel_band_roformer_trains_and_separates(shard_set, tmp_path):
    out = tmp_path / "mel"
    assert train_main(_cli(shard_set, out, "mel_band_roformer", "--grad-clip", "1.0", targets=["vocals"])) == 0
    res = json.loads((out / "mel_band_roformer.json").read_text())
    assert res["epochs_trained"] == 2 and all(np.isfinite(res["valid_loss_history"]))
    import soundfile as sf

    sf.write(tmp_path / "song.wav", np.random.default_rng(1).uniform(-0.3, 0.3, (20000, 2)), 44100)
    assert separate_main([str(out), str(tmp_path / "song.wav"), "--outdir", str(tmp_path / "s"), "--residual"]) == 0
    assert sorted(p.stem for p in (tmp_path / "s" / "song").iterdir()) == ["residual", "vocals"]


def test_a_model_directory_with_tied_weights_loads_and_untied_views_are_refused(tmp_path):
    """BS-RoFormer shares one rotary embedding between its layers: those keys may be stored once. Other
    keys sharing one stored tensor would let a small file pass for a larger network: refused."""
    from umx.models.protocol import SeparationOptions

    arch = registry.get("bs_roformer")
    spec, options = ModelSpec(("vocals",), 44100, 2), _options("bs_roformer", depth=2)
    model = arch.build(spec, options, None)
    arch.write_directory(tmp_path, spec, options)
    state = model.network.state_dict()
    arch.write_weights(tmp_path, options, {"bs_roformer": state}, ["bs_roformer"])
    assert registry.load_separation(tmp_path, None, SeparationOptions(), "cpu").target_names == ["vocals"]
    same = [k for k in state if k.endswith("to_out.0.weight")]
    assert len(same) >= 2 and state[same[0]].shape == state[same[1]].shape
    forged = {**state, same[1]: state[same[0]]}  # two untied keys, one stored tensor
    torch.save(forged, tmp_path / "bs_roformer.pth")
    with pytest.raises(UmxError, match="views claiming more elements than the file stores"):
        registry.load_separation(tmp_path, None, SeparationOptions(), "cpu")


def test_roformer_options_are_checked(shard_set, tmp_path, capsys):
    assert train_main(_cli(shard_set, tmp_path / "o", "bs_roformer", freqs_per_bands=(8,) * 30)) == 2
    one_line(capsys, "--freqs-per-bands adds up to 240 bins, but --stft-n-fft 512 gives 257")
    assert train_main(_cli(shard_set, tmp_path / "o", "bs_roformer", "--nb-channels", "1")) == 2
    one_line(capsys, "stereo only")
    assert train_main(_cli(shard_set, tmp_path / "o", "mel_band_roformer", freqs_per_bands=BANDS)) == 2
    one_line(capsys, "--freqs-per-bands is an option of --arch bs_roformer, not of --arch mel_band_roformer")


def test_activation_checkpointing_changes_no_number():
    """--use-torch-checkpoint recomputes the transformers' activations in the backward pass: the same
    loss and gradients (dropout included: the RNG state is kept), the same parameter names."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 2, 256 * 12), torch.randn(2, 2, 2, 256 * 12)
    grads = []
    for flag in (False, True):
        torch.manual_seed(1)
        model = registry.get("bs_roformer").build(ModelSpec(("vocals", "drums"), 44100, 2),
                                                  _options("bs_roformer", use_torch_checkpoint=flag,
                                                           attn_dropout=0.2, ff_dropout=0.2), None).train()
        loss = MultiResolutionLoss((512, 256), 147, 512, 1.0)(model(x, seed=5), y, x)[-1]
        loss.backward()
        grads.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    assert torch.equal(grads[0][0], grads[1][0]) and grads[0][1].keys() == grads[1][1].keys()
    for k in grads[0][1]:
        torch.testing.assert_close(grads[0][1][k], grads[1][1][k], rtol=1e-5, atol=1e-7)


def test_quiet_crops_are_replaced_on_the_device():
    """MSST's min_mean_abs: crops with a source below the floor give way to the batch's loud crops, in
    turn; the input slot is not a source; a batch of only quiet crops stays."""
    from umx.train.augment import replace_quiet

    pcm = torch.full((5, 3, 2, 100), 1000, dtype=torch.int16)
    pcm[1, 0] = 0  # a silent source
    pcm[3, 2] = 0  # silent in the last slot only
    out = replace_quiet(pcm, 0.001, sources=3)
    assert torch.equal(out[[0, 2, 4]], pcm[[0, 2, 4]])
    assert torch.equal(out[1], pcm[0]) and torch.equal(out[3], pcm[2])  # the loud ones, in turn
    assert torch.equal(replace_quiet(pcm, 0.001, sources=2)[3], pcm[3])  # slot 2 is the stored input
    quiet = torch.zeros_like(pcm)
    assert torch.equal(replace_quiet(quiet, 0.001, 3), quiet)
    assert torch.equal(replace_quiet(pcm, 0.0, 3), pcm)


def test_the_package_is_imported_only_when_a_roformer_is_built():
    code = "import umx.train.cli, umx.separate, umx.models.roformer, sys; print('bs_roformer' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr[-2000:]
