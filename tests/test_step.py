"""The training step: the CUDA-graph step (static buffers, fused Adam, philox dropout, losses read
back asynchronously) against open-unmix's eager step. Capture itself needs a GPU; its tests skip
without one (scripts/bench_gpu.sh runs them on a GPU machine)."""

import json

import pytest
import torch

from umx.errors import UmxError
from umx.models.openunmix.network import Joint, OpenUnmix, Spectrogram, lstm_layer_by_layer
from umx.models.openunmix.losses import Independent
from umx.models.openunmix import OpenUnmixModel
from umx.models.optimisers import adam
from umx.models.protocol import OptimiserSettings
from umx.train.step import EagerStep, GraphStep, LossLog, optimizer_state, settle_lr
from umx.train import TrainConfig, build_trainer, train

SMALL = dict(hidden_size=16, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")


def _history(out):
    return json.loads((out / "vocals.json").read_text())


@pytest.mark.parametrize("unidirectional", [False, True])
def test_layer_by_layer_lstm_is_nn_lstm_on_cpu(unidirectional):
    """The graph step's LSTM (philox dropout between layers) is nn.LSTM exactly on CPU: same
    outputs, same gradients, same dropout draws for the same seed."""
    lstm = torch.nn.LSTM(12, 6 if unidirectional else 3, num_layers=3, dropout=0.4,
                         bidirectional=not unidirectional).train()
    x = torch.randn(20, 3, 12, requires_grad=True)
    outs = []
    for f in (lambda v: lstm(v)[0], lambda v: lstm_layer_by_layer(lstm, v)):
        lstm.zero_grad()
        x.grad = None
        torch.manual_seed(3)
        y = f(x)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        outs.append([y.detach(), x.grad.clone(), *[p.grad.clone() for p in lstm.parameters()]])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    torch.manual_seed(4)  # and the dropout really draws: another seed, another output
    assert not torch.equal(lstm_layer_by_layer(lstm, x), outs[1][0])


def test_graph_step_matches_eager_step(shard_set, tmp_path, one_torch_thread):
    """--cuda-graph on (on CPU: the graph step's code uncaptured — fused Adam, static buffers,
    losses through LossLog) trains the same history as open-unmix's eager step, within float noise."""
    common = dict(shards=str(shard_set), epochs=3, random_track_mix=True, no_cuda=True, **SMALL,
                  source_augmentations=["gain", "channelswap", "flipsign", "scale", "shift:2048", "speed:0.05",
                                        "pitch:1"])  # every augmentation runs inside the step
    train(TrainConfig(output=str(tmp_path / "eager"), cuda_graph="off", **common))
    train(TrainConfig(output=str(tmp_path / "graph"), cuda_graph="on", **common))
    eager, graph = _history(tmp_path / "eager"), _history(tmp_path / "graph")
    for key in ("train_loss_history", "valid_loss_history"):
        assert graph[key] == pytest.approx(eager[key], rel=1e-4)
    assert graph["lr_history"] == eager["lr_history"]
    a = torch.load(tmp_path / "eager" / "vocals.pth")
    b = torch.load(tmp_path / "graph" / "vocals.pth")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_checkpoint_moves_between_step_kinds(shard_set, tmp_path, one_torch_thread):
    """A checkpoint written by the graph step resumes with the eager step and back: learning rates are
    stored as floats whatever the optimizer held, and each optimizer gets the form it needs."""
    common = dict(shards=str(shard_set), no_cuda=True, **SMALL)
    out = tmp_path / "m"
    train(TrainConfig(output=str(out), epochs=1, cuda_graph="on", lr_decay_patience=0, **common))
    ckpt = torch.load(out / "vocals.chkpnt", weights_only=False)
    assert all(isinstance(g["lr"], float) for g in ckpt["optimizer"]["param_groups"])
    train(TrainConfig(output=str(out), epochs=2, cuda_graph="off", checkpoint=str(out), lr_decay_patience=0,
                      **common))
    train(TrainConfig(output=str(out), epochs=3, cuda_graph="on", checkpoint=str(out), lr_decay_patience=0,
                      **common))
    h = _history(out)
    assert h["epochs_trained"] == 3 and all(isinstance(v, float) for v in h["lr_history"])


def test_cuda_graph_option_choices(shard_set, tmp_path):
    base = dict(shards=str(shard_set), output=str(tmp_path), no_cuda=True, **SMALL)
    with pytest.raises(UmxError, match="--cuda-graph must be one of"):
        build_trainer(TrainConfig(cuda_graph="maybe", **base))
    with pytest.raises(UmxError, match="whole-track batches"):
        build_trainer(TrainConfig(cuda_graph="on", **{**base, "seq_dur": 0.0}))
    cpu = build_trainer(TrainConfig(**base))  # auto on CPU: open-unmix's eager step and optimizer
    assert type(cpu.step) is EagerStep and not cpu.optimizer.defaults.get("fused")
    on = build_trainer(TrainConfig(cuda_graph="on", **base))
    assert type(on.step) is GraphStep and on.optimizer.defaults["fused"] and not on.step.captured
    assert all(m.graph_safe_dropout for m in on.model.units.values())


def test_graph_step_on_cpu_never_captures():
    model, encoder = OpenUnmix(nb_bins=129, hidden_size=8), Spectrogram(256, 64)
    opt = adam(model, OptimiserSettings(1e-3, 1e-5, 0.3, 80, graph=True, device=torch.device("cpu")))
    step = GraphStep(OpenUnmixModel(encoder, Joint({"vocals": model})), [opt], Independent(encoder), capture=True)
    x = torch.randn(2, 2, 2048)
    loss = step(x, (x / 2)[:, None], seed=1)
    assert loss.shape == (2,) and not step.captured and step.uncaptured_steps == 1


def test_loss_log_keeps_order_and_values():
    log = LossLog(torch.device("cpu"), initial=[[1.0, 1.0]])
    log.append(torch.tensor([2.0, 2.5]))
    log.append(torch.tensor([3.0, 3.5]))
    assert log.known() == [[1.0, 1.0], [2.0, 2.5], [3.0, 3.5]] == log.values() and len(log) == 3


def test_settle_lr_and_optimizer_state():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    opt.param_groups[0]["lr"] = torch.tensor(0.25)  # as a capturable optimizer's checkpoint could hold
    assert optimizer_state(opt)["param_groups"][0]["lr"] == 0.25
    settle_lr(opt)
    assert opt.param_groups[0]["lr"] == 0.25 and isinstance(opt.param_groups[0]["lr"], float)


# --- on a GPU ------------------------------------------------------------------------------

def _cuda_trainer(shard_set, out, mode, **kw):
    cfg = TrainConfig(shards=str(shard_set), output=str(out), cuda_graph=mode, debug=True,
                      **{**SMALL, "hidden_size": 32, **kw})
    return build_trainer(cfg)


AUGMENTED = dict(random_track_mix=True, source_augmentations=["gain", "channelswap", "flipsign", "scale",
                                                               "shift:2048", "speed:0.05", "pitch:1"])


@cuda
@pytest.mark.parametrize("options", [{}, AUGMENTED], ids=["plain", "augmented"])
def test_cuda_graph_replays_the_uncaptured_step(shard_set, tmp_path, options):
    """Captured and uncaptured graph steps from the same start on the same batches give the same
    losses and weights: dropout included (the graph reseeds philox at every replay), and every
    augmentation, which runs inside the captured step (trainer.Mixer)."""
    runs = []
    for capture in (True, False):
        t = _cuda_trainer(shard_set, tmp_path / str(capture), "on", **options)
        t.step.capture = capture
        t.stream.set_epoch(1)
        batches = [t.batch_audio(b) for _, b in zip(range(6), iter(t.stream))]
        losses = [t.train_step(pcm, 1, i) for i, pcm in enumerate(batches)]
        assert t.step.captured == capture
        runs.append((torch.stack(losses).cpu(), {k: v.detach().cpu() for k, v in t.model.state_dict().items()}))
    (la, wa), (lb, wb) = runs
    assert torch.allclose(la, lb, rtol=1e-4, atol=1e-6), (la, lb)
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


@cuda
def test_cuda_graph_dropout_differs_per_step(shard_set, tmp_path):
    """A replay with another step's seed draws another dropout mask (not one frozen at capture)."""
    t = _cuda_trainer(shard_set, tmp_path, "on")
    t.stream.set_epoch(1)
    pcm = t.batch_audio(next(iter(t.stream)))
    t.step(pcm, seed=0)
    state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    opt = {p: {k: v.clone() for k, v in s.items()} for p, s in t.optimizer.state.items()}

    def loss_at(step):
        with torch.no_grad():
            for k, v in t.model.state_dict().items():
                v.copy_(state[k])
            for p, s in t.optimizer.state.items():
                for k, v in s.items():
                    v.copy_(opt[p][k])
        return t.step(pcm, seed=step)[-1].item()

    assert t.step.captured
    assert loss_at(5) == loss_at(5) != loss_at(6)


@cuda
def test_cuda_graph_sees_learning_rate_changes(shard_set, tmp_path):
    """The plateau scheduler changes the lr in place; the captured Adam reads it at every replay
    (a float lr would have been frozen into the graph)."""
    t = _cuda_trainer(shard_set, tmp_path, "on")
    t.stream.set_epoch(1)
    pcm = t.batch_audio(next(iter(t.stream)))
    t.step(pcm, seed=0)
    assert t.step.captured
    for group in t.optimizer.param_groups:
        group["lr"].fill_(0.0)  # what ReduceLROnPlateau does to a tensor lr
    before = {k: v.detach().clone() for k, v in t.model.named_parameters()}
    t.step(pcm, seed=1)
    assert all(torch.equal(before[k], v) for k, v in t.model.named_parameters())
