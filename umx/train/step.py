"""The optimisation step: open-unmix's eager step, or the same step captured as one CUDA graph.

open-unmix's step is launch-bound on a GPU: its three LSTM layers launch ~1,500
small kernels per batch, so the GPU waits on Python and the driver for about
40 % of the step. `GraphStep` records forward, backward and Adam once as a CUDA
graph and replays it: one launch per step, the same fp32 kernels. That needs

- static shapes: inputs are copied into fixed buffers (a batch of another shape,
  say the last of an epoch, runs the same step uncaptured);
- an optimizer that keeps everything on the device: fused Adam with
  `capturable=True` and the learning rate as a device tensor, so the plateau
  scheduler's changes reach the graph;
- every draw from the philox generator (`Trainable.make_capturable`: open-unmix's cuDNN
  LSTM dropout keeps a state set up on the host, which a graph would freeze);
- no host synchronisation per step: losses stay on the device and `LossLog`
  reads them back asynchronously;
- the batch's augmentation and mixing inside the step too (`prepare`: int16 crops →
  mixture and targets), drawing from the default generator, which the step seeds per
  batch before running or replaying: the graph's philox draws take the seed at replay.

Where capture is impossible (CPU, DDP, whole-track batches) the trainer uses
`EagerStep`; `GraphStep(capture=False)` runs the graph step's exact code
uncaptured, which is how its equivalence with the eager step is tested on CPU.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..models.protocol import Objective, Trainable
from .state import StateError, shown

MODES = ("auto", "on", "off")


def settle_lr(optimizer: torch.optim.Optimizer) -> None:
    """After `load_state_dict`: give each group its lr in the form this optimizer needs
    (a device tensor where it is capturable, else a float), whatever the checkpoint held."""
    for group in optimizer.param_groups:
        value = float(group["lr"])
        if group.get("capturable"):
            device = group["params"][0].device
            group["lr"] = torch.tensor(value, device=device)
        else:
            group["lr"] = value


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict with plain-float learning rates (readable by open-unmix
    and by an optimizer of the other kind)."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"] = float(group["lr"])
    return state


# --- a checkpoint's optimizer and scheduler, checked before they are loaded ----------------------

HYPER = ("lr", "betas", "eps", "weight_decay")  # what a checkpoint's Adam groups give; the rest is this run's
MOMENTS = ("exp_avg", "exp_avg_sq")


def checked_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer) -> dict:
    """A checkpoint's Adam state, checked against `optimizer`'s own parameters and made fit for its
    `load_state_dict` (which checks only the group sizes): every group's ids, lr (positive, finite),
    betas, eps and weight decay; every parameter's step count (finite, whole, >= 0) and moments
    (tensors of the parameter's shape, finite; exp_avg_sq >= 0). How the optimizer runs (fused,
    capturable, foreach, …) stays this run's. StateError names the first bad field."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        raise StateError("optimizer", "must be a mapping with 'state' and 'param_groups'")
    live_groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(live_groups):
        raise StateError("optimizer.param_groups", f"must be {len(live_groups)} group(s), not "
                         f"{len(saved['param_groups'])}")
    params: dict[int, Tensor] = {}
    groups = []
    for i, (group, live) in enumerate(zip(saved["param_groups"], live_groups)):
        name = f"optimizer.param_groups[{i}]"
        if not isinstance(group, dict):
            raise StateError(name, "must be a mapping")
        ids = group.get("params")
        if not isinstance(ids, list) or len(ids) != len(live["params"]) \
                or not all(isinstance(k, int) and not isinstance(k, bool) and k not in params for k in ids) \
                or len(set(ids)) != len(ids):
            raise StateError(f"{name}.params", f"must be {len(live['params'])} distinct parameter ids")
        params.update(zip(ids, live["params"]))
        hyper = {key: _hyper(key, group.get(key), f"{name}.{key}") for key in HYPER}
        groups.append({**{k: v for k, v in live.items() if k != "params"}, **hyper, "params": ids})
    state = {}
    for key, entry in saved["state"].items():
        name = f"optimizer.state[{key!r}]"
        if key not in params:
            raise StateError(name, "belongs to no parameter of the groups")
        if not isinstance(entry, dict) or set(entry) != {"step", *MOMENTS}:
            raise StateError(name, f"must hold exactly step, {', '.join(MOMENTS)} (Adam's state)")
        state[key] = {"step": _step_count(entry["step"], f"{name}.step"),
                      **{m: _moment(entry[m], params[key], f"{name}.{m}", m == "exp_avg_sq") for m in MOMENTS}}
    return {"state": state, "param_groups": groups}


def _number(value: Any) -> float | None:
    """A plain number or a one-element tensor as a float; None for anything else."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.is_complex():
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _hyper(key: str, value: Any, name: str):
    if key == "betas":
        betas = [_number(b) for b in value] if isinstance(value, (list, tuple)) and len(value) == 2 else None
        if betas is None or not all(b is not None and 0 <= b < 1 for b in betas):
            raise StateError(name, f"must be two numbers in [0, 1), not {shown(value)}")
        return tuple(betas)
    number = _number(value)
    positive = key == "lr"
    if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise StateError(name, f"must be a finite number {'> 0' if positive else '>= 0'}, not {shown(value)}")
    return number


def _step_count(value: Any, name: str) -> Tensor:
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0 or not number.is_integer():
        raise StateError(name, f"must be a whole number of steps >= 0, not {shown(value)}")
    return torch.tensor(number, dtype=torch.float32)


def _moment(value: Any, param: Tensor, name: str, non_negative: bool) -> Tensor:
    if not torch.is_tensor(value) or not value.is_floating_point() or value.shape != param.shape:
        got = f"{value.dtype} {list(value.shape)}" if torch.is_tensor(value) else type(value).__name__
        raise StateError(name, f"must be a float tensor of its parameter's shape {list(param.shape)}, not {got}")
    if not bool(torch.isfinite(value).all()) or (non_negative and bool((value < 0).any())):
        raise StateError(name, f"must be finite{' and >= 0' if non_negative else ''}")
    return value


def _count(v: Any, n: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise StateError(n, f"must be a whole number >= 0, not {shown(v)}")


def _real(v: Any, n: str, low: float = 0.0, high: float = math.inf, finite: bool = True) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) and low <= v <= high
    if not ok or (finite and not math.isfinite(v)):
        raise StateError(n, f"must be a {'finite ' if finite else ''}number in [{low:g}, {high:g}], not {shown(v)}")


def _factor(v: Any, n: str) -> None:
    """The plateau's factor: each drop multiplies the lr by it, so strictly between 0 and 1."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
        raise StateError(n, f"must be a number in (0, 1), not {shown(v)}")


def _choice(*allowed: str) -> Callable[[Any, str], None]:
    def check(v: Any, n: str) -> None:
        if v not in allowed or not isinstance(v, str):
            raise StateError(n, f"must be one of {', '.join(allowed)}, not {shown(v)}")
    return check


def _per_group(low: float, positive: bool = False) -> Callable[[Any, str, int], None]:
    def check(v: Any, n: str, groups: int) -> None:
        if not isinstance(v, list) or len(v) != groups:
            raise StateError(n, f"must be a list of {groups} number(s), not {shown(v)}")
        for i, x in enumerate(v):
            _real(x, f"{n}[{i}]", low)
            if positive and x == 0:
                raise StateError(f"{n}[{i}]", "must be > 0")
    return check


# ReduceLROnPlateau's fields (its state dict is its __dict__, which load_state_dict updates whole:
# a field of another name would set any attribute, so only these load)
_PLATEAU: dict[str, Callable[[Any, str], None]] = {
    "factor": _factor,
    "default_min_lr": lambda v, n: None if v is None else _real(v, n),
    "patience": _count, "cooldown": _count, "cooldown_counter": _count, "num_bad_epochs": _count,
    "last_epoch": _count,
    "eps": _real, "threshold": _real,
    "mode": _choice("min", "max"), "threshold_mode": _choice("rel", "abs"),
    "best": lambda v, n: _real(v, n, -math.inf, math.inf, finite=False),
    "mode_worse": lambda v, n: _real(v, n, -math.inf, math.inf, finite=False),
}
_PLATEAU_GROUPS = {"min_lrs": _per_group(0.0), "_last_lr": _per_group(0.0, positive=True)}


def checked_scheduler_state(saved: Any, scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau) -> dict:
    """A checkpoint's plateau scheduler state, checked field by field (types, ranges, one value per
    parameter group) before `load_state_dict`; only the fields this scheduler has are kept."""
    if not isinstance(saved, dict):
        raise StateError("scheduler", "must be a mapping")
    fresh, groups = scheduler.state_dict(), len(scheduler.optimizer.param_groups)
    out = {}
    for key, value in saved.items():
        if key in _PLATEAU:
            _PLATEAU[key](value, f"scheduler.{key}")
        elif key in _PLATEAU_GROUPS:
            _PLATEAU_GROUPS[key](value, f"scheduler.{key}", groups)
        else:
            continue  # no field of this scheduler: never loaded
        if key in fresh:
            out[key] = value
    return out


def checked_scaler_state(saved: Any) -> dict:
    """A checkpoint's GradScaler state (--precision fp16), field by field: the scale finite and > 0,
    growth > 1, backoff in (0, 1), the interval and the tracker whole numbers."""
    if not isinstance(saved, dict):
        raise StateError("scaler", "must be a mapping (a checkpoint of --precision fp16)")
    checks = {"scale": lambda v, n: _real(v, n, 1e-30), "growth_factor": lambda v, n: _real(v, n, 1.0 + 1e-9),
              "backoff_factor": _factor, "growth_interval": _count, "_growth_tracker": _count}
    for key, check in checks.items():
        if key not in saved:
            raise StateError(f"scaler.{key}", "is missing")
        check(saved[key], f"scaler.{key}")
    if saved["growth_interval"] < 1:
        raise StateError("scaler.growth_interval", "must be >= 1")
    return {k: saved[k] for k in checks}


def _given(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    return x, y


class EagerStep:
    """open-unmix's step as it is: zero_grad, forward, loss, backward, Adam — for every unit of
    the run at once: `net` (a `Trainable`, or its DDP wrapper) estimates from the mixture waveform,
    `objective` scores the estimates, each unit's optimizer steps its own network. `prepare` turns the
    step's inputs into (mixture, targets): by default they are those; the trainer gives the int16
    crops and its augmentation and mixing (trainer.Mixer), which so run inside the step."""

    captured = False

    def __init__(self, net: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                 objective: Objective, bf16: bool = False, accumulate: int = 1, ema=None,
                 names: Sequence[str] = (), prepare: Callable[..., tuple[Tensor, Tensor]] = _given,
                 clip: float = 0.0, scaler: "torch.amp.GradScaler | None" = None):
        self.net, self.objective, self.bf16 = net, objective, bf16
        self.clip = clip  # --grad-clip: the gradients' global norm at most this (0: never)
        self.scaler = scaler  # --precision fp16: the loss scaled, steps with infinite gradients skipped
        self.prepare = prepare
        self.optimizers = list(optimizers)
        self.ema, self.names = ema, list(names)  # --ema: the averages of these units follow each step
        self.accumulate, self.pending = accumulate, 0  # --grad-accum: batches per optimizer step

    def terms(self, x: Tensor, y: Tensor, seed: int | None = None) -> Tensor:
        """The objective's row: each unit's loss term, then the objective."""
        dtype = torch.float16 if self.scaler is not None else torch.bfloat16
        with torch.autocast(x.device.type, dtype=dtype, enabled=self.bf16 or self.scaler is not None,
                            cache_enabled=False):
            return self.objective(self.net(x, seed), y, x)

    def __call__(self, *inputs: Tensor, seed: int, update: bool = True) -> Tensor:
        """One batch (`inputs`: what `prepare` takes); the optimizers step where `update` (every
        batch, or with --grad-accum N the N-th batch and an epoch's last). Every draw — the
        augmentation's, then dropout's — comes from the default generator seeded with `seed`.
        Returns the loss terms as a device tensor (no host sync)."""
        torch.manual_seed(seed)
        if self.pending == 0:
            for opt in self.optimizers:
                opt.zero_grad()
        x, y = self.prepare(*inputs)
        terms = self.terms(x, y, seed)
        loss = terms[-1] if self.accumulate == 1 else terms[-1] / self.accumulate
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        self.pending += 1
        if update:
            if self.scaler is not None:
                for opt in self.optimizers:
                    self.scaler.unscale_(opt)  # the clip and the optimizer see the true gradients
            self.clip_gradients()
            for opt in self.optimizers:
                opt.step() if self.scaler is None else self.scaler.step(opt)
            if self.scaler is not None:
                self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.names)
            self.pending = 0
        return terms.detach()

    def clip_gradients(self) -> None:
        """--grad-clip: every stepped parameter's gradient scaled to a global norm of at most `clip`
        (on the device, no host sync: capturable)."""
        if self.clip:
            params = [p for o in self.optimizers for g in o.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip)


class GraphStep(EagerStep):
    """The eager step with static buffers, captured on first use as one CUDA graph.

    Capture needs a few warm-up iterations (cuDNN/cuFFT plans, the optimizer's
    state); they run on a snapshot of the model and optimizer, which is put back,
    so the first real step starts from the same state an eager run would.
    """

    def __init__(self, net: Trainable, optimizers: Sequence[torch.optim.Optimizer],
                 objective: Objective, bf16: bool = False, capture: bool = True, warmup: int = 3,
                 warn: Callable[[str], None] | None = None, accumulate: int = 1, ema=None,
                 names: Sequence[str] = (), prepare: Callable[..., tuple[Tensor, Tensor]] = _given,
                 clip: float = 0.0):
        super().__init__(net, optimizers, objective, bf16, accumulate, ema, names, prepare, clip)
        self.capture, self.warmup = capture, warmup
        self.warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[tuple[Tensor, ...], Tensor] | None = None  # the inputs' buffers, the loss terms
        self.uncaptured_steps = 0
        net.make_capturable()  # never DDP-wrapped: the graph step runs on one process

    @property
    def captured(self) -> bool:  # type: ignore[override]
        return self.graph is not None

    def __call__(self, *inputs: Tensor, seed: int, update: bool = True) -> Tensor:
        if self.capture and inputs[0].device.type == "cuda" and self.graph is None and self.accumulate == 1:
            self._try_capture(inputs)  # (accumulating steps are not captured: see build.graph_step_wanted)
        if self.graph is None or [i.shape for i in inputs] != [s.shape for s in self.static[0]]:
            self.uncaptured_steps += 1
            return super().__call__(*inputs, seed=seed, update=update)
        buffers, terms = self.static
        for buffer, value in zip(buffers, inputs):
            buffer.copy_(value)
        torch.manual_seed(seed)  # the graph's philox draws take the generator's seed at replay
        self.graph.replay()
        return terms.clone()

    def _try_capture(self, inputs: tuple[Tensor, ...]) -> None:
        try:
            self._capture(inputs)
        except Exception as e:  # noqa: BLE001 (anything capture refuses: run eager from here on)
            self.graph, self.static, self.capture = None, None, False
            self.warn(f"could not capture the training step as a CUDA graph ({type(e).__name__}: {e}); "
                      "training continues with the uncaptured step")

    def _capture(self, inputs: tuple[Tensor, ...]) -> None:
        model, opts = self.net, self.optimizers
        saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        had_state = [{p: {k: v.detach().clone() for k, v in s.items()} for p, s in o.state.items()} for o in opts]
        buffers = tuple(i.detach().clone() for i in inputs)
        saved_ema = self.ema.snapshot() if self.ema is not None else None
        device = inputs[0].device

        def step() -> Tensor:
            for o in opts:
                o.zero_grad(set_to_none=True)
            terms = self.terms(*self.prepare(*buffers))  # augmentation and mixing are captured too
            terms[-1].backward()
            self.clip_gradients()
            for o in opts:
                o.step()
            if self.ema is not None:  # the averages' update is captured with the step
                self.ema.update(self.names)
            return terms

        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: plans, workspaces and the optimizer's state
            for _ in range(self.warmup):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for o in opts:
            o.zero_grad(set_to_none=True)
        # thread_local: the DataLoader's pin-memory thread may allocate pinned memory meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            terms = step()
        # capture only recorded; put back what the warm-up changed
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for o, before_all in zip(opts, had_state):
                for p, s in o.state.items():
                    before = before_all.get(p)
                    for k, v in s.items():
                        if torch.is_tensor(v):
                            v.copy_(before[k]) if before is not None else v.zero_()
            if saved_ema is not None:
                self.ema.restore(saved_ema)
        self.graph, self.static = graph, (buffers, terms.detach())


class LossLog:
    """Step losses kept on the device, read back without stalling the GPU.

    A step's loss is a row (each target's loss, then the objective: losses.py). Every
    `chunk` steps the pending rows go to pinned host memory with a non-blocking copy and
    an event; `known()` returns the ones whose copy has finished, `values()` waits for
    all. On CPU every loss is known at once.
    """

    def __init__(self, device: torch.device, initial: list[float] | None = None, chunk: int = 8):
        self.device, self.chunk = device, chunk
        self.done: list[list[float]] = [list(r) for r in initial or []]
        self.pending: list[Tensor] = []
        self.in_flight: list[tuple[torch.cuda.Event, Tensor]] = []

    def __len__(self) -> int:
        return len(self.done) + len(self.pending) + sum(len(h) for _, h in self.in_flight)

    def append(self, loss: Tensor) -> None:
        if self.device.type != "cuda" or not torch.is_tensor(loss):
            if self.pending or self.in_flight:
                self.values()  # keep step order
            self.done.append([float(v) for v in torch.as_tensor(loss).reshape(-1)])
            return
        self.pending.append(loss.reshape(-1))
        if len(self.pending) >= self.chunk:
            self._send()

    def _send(self) -> None:
        if not self.pending:
            return
        host = torch.empty((len(self.pending), self.pending[0].numel()), dtype=torch.float32, pin_memory=True)
        host.copy_(torch.stack(self.pending).float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.in_flight.append((event, host))
        self.pending = []

    def known(self) -> list[list[float]]:
        """Every loss whose value has reached the host (in step order)."""
        while self.in_flight and self.in_flight[0][0].query():
            _, host = self.in_flight.pop(0)
            self.done.extend(host.tolist())
        return self.done

    def values(self) -> list[list[float]]:
        """Every loss (waits for the device)."""
        self._send()
        for event, _ in self.in_flight:
            event.synchronize()
        return self.known()
