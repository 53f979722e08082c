"""Checkpoints and run state are input like any file (docs/security.md): a resumed run's state is
parsed as one typed structure and held against what the run can hold; the optimizer and scheduler
state against the run's own; only --output is ever written; a run whose targets all stopped early
resumes to one line; --trace never follows a link."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from umx.errors import UmxError
from umx.models.openunmix import OpenUnmixModel
from umx.models.openunmix.network import Joint, OpenUnmix, Spectrogram
from umx.train import TrainConfig, train
from umx.train.cli import main as train_main
from umx.train.ema import EMA
from umx.train.outputs import append_to, load_checkpoints
from umx.train.state import Bounds, Progress, StateError, TargetState
from umx.train.step import checked_optimizer_state, checked_scheduler_state
from one_line import one_line  # noqa: E402

TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, quiet=True, debug=True)
TINY_ARGS = ["--hidden-size", "8", "--seq-dur", "0.5", "--batch-size", "3", "--nfft", "1024", "--nhop", "512",
             "--quiet", "--debug"]
# the shard set: 5 train tracks, one crop each → 5 samples, batches of 3 → 2 global batches an epoch
BOUNDS = Bounds(("vocals",), samples=5, batch_size=3, world=1, workers=0, elastic=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def single(shard_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt-single") / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=1, **TINY))
    return out


@pytest.fixture(scope="module")
def joint(shard_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt-joint") / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=1, targets=["vocals", "drums"], **TINY))
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, change) -> None:
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}



def _one_line(capsys, *phrases: str) -> str:
    return one_line(capsys, *phrases, error=False)


def _args(shard_set, out, *more) -> list[str]:
    return ["--shards", str(shard_set), "--output", str(out), *more, *TINY_ARGS]


def _mid_epoch(ckpt: dict) -> None:
    """A valid position inside epoch 2: one global batch of two taken, on one rank."""
    ckpt["umx"]["position"].update(step=1, world=1, workers=0, consumed=1, losses=[[0.5, 0.5]], seconds=1.0)


# --- 1. a run whose every target stopped early ----------------------------------------------------

@pytest.mark.parametrize("how", ["auto", "checkpoint"])
def test_a_run_whose_target_stopped_resumes_to_one_line(shard_set, single, tmp_path, capsys, how):
    out = _copy(single, tmp_path / "m")
    _edit(out / "vocals.chkpnt", lambda c: c["umx"].update(stopped=True, num_bad_epochs=1))
    before = _snapshot(out)
    args = ["--resume", "auto"] if how == "auto" else ["--checkpoint", str(out)]
    target = out if how == "auto" else tmp_path / "new"
    assert train_main(_args(shard_set, target, "--epochs", "3", "--patience", "1", *args)) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("nothing to train") and err.count("\n") == 1, err
    assert "has stopped early (vocals after epoch 1)" in err
    assert "model written" not in captured.out  # it was not
    assert _snapshot(out) == before and not (tmp_path / "new").exists()  # nothing new written


def test_joint_runs_continue_the_targets_still_training_and_stop_when_all_have(shard_set, joint, tmp_path, capsys):
    out = _copy(joint, tmp_path / "m")
    _edit(out / "drums.chkpnt", lambda c: c["umx"].update(stopped=True))
    drums = json.loads((out / "drums.json").read_text())
    cfg = dict(TINY, targets=["vocals", "drums"], resume="auto")
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=2, **cfg))
    vocals = json.loads((out / "vocals.json").read_text())
    assert vocals["epochs_trained"] == 2 and len(vocals["train_loss_history"]) == 2
    assert json.loads((out / "drums.json").read_text())["train_loss_history"] == drums["train_loss_history"]
    # now every target has stopped: one line, nothing written
    for target in ("vocals", "drums"):
        _edit(out / f"{target}.chkpnt", lambda c: c["umx"].update(stopped=True))
    before = _snapshot(out)
    capsys.readouterr()
    assert train_main(_args(shard_set, out, "--targets", "vocals", "drums", "--epochs", "4", "--resume", "auto")) == 0
    _one_line(capsys, "nothing to train", "vocals after epoch 2, drums after epoch 1")
    assert _snapshot(out) == before


def test_a_loss_that_is_not_finite_stops_at_once():
    t = TargetState()
    assert t.stop_early(math.nan, 5) and t.stopped and t.best_loss is None  # the first epoch's too
    t = TargetState()
    assert not t.stop_early(1.0, 5) and t.stop_early(math.inf, 5) and t.best_loss == 1.0


# --- 2. the run state: one typed structure, held against the run ------------------------------------

def _set(path: str, value):
    """A change of one payload field, by its dotted path."""
    def change(ckpt):
        *parents, last = path.split(".")
        node = ckpt["umx"]
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _and(*changes):
    def change(ckpt):
        for c in changes:
            c(ckpt)
    return change


STATE_CASES = [
    ("run options a string", _set("run.options", "lr=1"), "'run.options' must be a mapping"),
    ("run options a list", _set("run.options", [1, 2]), "'run.options' must be a mapping"),
    ("run a list", _set("run", ["x"]), "'run' must be a mapping"),
    ("position a list", _set("position", [1, 2]), "'position' must be a mapping"),
    ("history a list", _set("history", [1.0]), "'history' must be a mapping"),
    ("step 1e9", _set("position.step", 10**9), "'position.step' is 1000000000, but an epoch of this run has 2"),
    ("step a float", _set("position.step", 1e9), "'position.step' must be an integer >= 0"),
    ("epoch 0", _set("position.epoch", 0), "'position.epoch' must be an integer >= 1"),
    ("epoch ahead of the history", _set("position.epoch", 7), "'history.epochs_trained' is 1, but the run stands"),
    ("rows of the wrong width", _and(_mid_epoch, _set("position.losses", [[0.5, 0.5, 0.5]])),
     "'position.losses' rows hold 3 values"),
    ("rows of two widths", _and(_mid_epoch, _set("position.losses", [[0.5, 0.5], [1.0]])), "'position.losses[1]'"),
    ("a NaN loss row", _and(_mid_epoch, _set("position.losses", [[math.nan, math.nan]])),
     "'position.losses[0][0]' must be a finite number"),
    ("an infinite loss row", _and(_mid_epoch, _set("position.losses", [[0.5, math.inf]])),
     "'position.losses[0][1]' must be a finite number"),
    ("consumed 1e18", _and(_mid_epoch, _set("position.consumed", 10**18)),
     "'position.consumed' is 1000000000000000000 after 1 steps, but an epoch of this run has 2 global batches"),
    ("rows and batches disagree", _and(_mid_epoch, _set("position.losses", [[0.5, 0.5]] * 3)),
     "'position.losses' must hold one row per global batch consumed (1), not 3"),
    ("losses at an epoch's start", _set("position.losses", [[0.5, 0.5]]), "'position.losses' must be empty"),
    ("seconds negative", _set("position.seconds", -1.0), "'position.seconds' must be a finite number >= 0"),
    ("io counters a string", _set("position.io", {"hits": "many"}), "'position.io.hits' must be a finite number"),
    ("best_loss a string", _set("best_loss", "low"), "'best_loss' must be a finite number"),
    ("best_loss NaN", _set("best_loss", math.nan), "'best_loss' must be a finite number"),
    ("num_bad_epochs negative", _set("num_bad_epochs", -2), "'num_bad_epochs' must be an integer >= 0"),
    ("num_bad_epochs beyond the epochs", _set("num_bad_epochs", 50), "'num_bad_epochs' is 50"),
    ("stopped a string", _set("stopped", "no"), "'stopped' must be true or false"),
    ("history of strings", _set("history.train_loss_history", ["a"]), "'history.train_loss_history[0]'"),
    ("a NaN training loss in the history", _set("history.train_loss_history", [math.nan]),
     "'history.train_loss_history[0]' must be a finite number"),
    ("best epoch after the last", _set("history.best_epoch", 9), "'history.best_epoch' is 9"),
    ("another target's file", _set("targets", ["drums"]), "'targets' are ['drums']: this file is no checkpoint"),
]


@pytest.mark.parametrize("change, phrase", [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES])
def test_a_hostile_run_state_is_refused_naming_file_and_field(single, tmp_path, change, phrase):
    out = _copy(single, tmp_path / "m")
    _edit(out / "vocals.chkpnt", change)
    with pytest.raises(UmxError) as e:
        load_checkpoints(out, ["vocals"], BOUNDS)
    assert str(e.value).startswith(f"{out / 'vocals.chkpnt'}: its run state") and phrase in str(e.value), e.value
    assert "\n" not in str(e.value)


def test_a_valid_mid_epoch_state_loads(single, tmp_path):
    """The crafted position the cases above spoil is one a run can hold."""
    out = _copy(single, tmp_path / "m")
    _edit(out / "vocals.chkpnt", _mid_epoch)
    _, state = load_checkpoints(out, ["vocals"], BOUNDS)
    assert (state.progress.epoch, state.progress.step, state.progress.consumed) == (2, 1, 1)
    # the pool plan counts the steps of the topology that took them
    pool = Bounds(("vocals",), samples=5, batch_size=3, world=1, workers=0, elastic=False)
    load_checkpoints(out, ["vocals"], pool)
    _edit(out / "vocals.chkpnt", _set("position.step", 5))
    with pytest.raises(UmxError, match="'position.step' is 5, but an epoch of this run has 2 steps per rank"):
        load_checkpoints(out, ["vocals"], pool)


def test_positions_of_one_generation_must_agree(joint, tmp_path):
    out = _copy(joint, tmp_path / "m")
    load_checkpoints(out, ["vocals", "drums"], Bounds(("vocals", "drums"), 5, 3))
    _edit(out / "drums.chkpnt", _set("position.seconds", 3.0))
    with pytest.raises(UmxError, match=r"drums\.chkpnt: its run state .* field 'position' differs from vocals's"):
        load_checkpoints(out, ["vocals", "drums"], Bounds(("vocals", "drums"), 5, 3))


@pytest.mark.parametrize("args, change, phrase", [
    (["--resume", "auto"], _set("run.options", "x"), "vocals.chkpnt: its run state (\"umx\") field 'run.options'"),
    (["--resume", "auto"], _set("position.step", 10**9), "field 'position.step' is 1000000000"),
    ([], _set("best_loss", "low"), "field 'best_loss' must be a finite number"),
    ([], _set("position.epoch", 0), "field 'position.epoch' must be an integer >= 1"),
], ids=["run.options", "step", "best_loss", "epoch"])
def test_hostile_run_states_end_in_one_line(shard_set, single, tmp_path, capsys, args, change, phrase):
    out = _copy(single, tmp_path / "m")
    _edit(out / "vocals.chkpnt", change)
    resume = args or ["--checkpoint", str(out)]
    assert train_main(_args(shard_set, out, "--epochs", "2", *resume)) == 2
    _one_line(capsys, "error: ", phrase)


def test_an_open_unmix_results_file_is_checked_too(single, tmp_path):
    out = _copy(single, tmp_path / "m")
    _edit(out / "vocals.chkpnt", lambda c: c.pop("umx"))  # open-unmix's checkpoint: the state is in the json
    results = json.loads((out / "vocals.json").read_text())
    load_checkpoints(out, ["vocals"], BOUNDS)
    (out / "vocals.json").write_text(json.dumps({**results, "best_loss": "low"}))
    with pytest.raises(UmxError, match=r"vocals\.json: field 'best_loss' must be a finite number"):
        load_checkpoints(out, ["vocals"], BOUNDS)
    (out / "vocals.json").write_text(json.dumps({**results, "epochs_trained": -1}))
    with pytest.raises(UmxError, match="field 'epochs_trained' must be an integer >= 0"):
        load_checkpoints(out, ["vocals"], BOUNDS)


# --- 2. optimizer, scheduler and --ema state against the run's own ----------------------------------

def _adam():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    return opt


def _with(d: dict, path: list, value) -> dict:
    import copy

    d = copy.deepcopy(d)
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return d


@pytest.mark.parametrize("path, value, phrase", [
    (["state", 0, "exp_avg"], torch.zeros(5), "optimizer.state[0].exp_avg' must be a float tensor of its parameter"),
    (["state", 1, "exp_avg_sq"], -torch.ones(2), "optimizer.state[1].exp_avg_sq' must be finite and >= 0"),
    (["state", 0, "exp_avg"], torch.full((2, 3), math.nan), "must be finite"),
    (["state", 0, "step"], -1.0, "optimizer.state[0].step' must be a whole number of steps >= 0"),
    (["state", 0, "step"], torch.tensor(math.inf), "must be a whole number of steps"),
    (["state", 7], {}, "optimizer.state[7]' belongs to no parameter"),
    (["param_groups", 0, "lr"], "fast", "optimizer.param_groups[0].lr' must be a finite number > 0"),
    (["param_groups", 0, "lr"], 0.0, "must be a finite number > 0"),
    (["param_groups", 0, "lr"], math.nan, "must be a finite number > 0"),
    (["param_groups", 0, "betas"], (0.9, 2.0), "betas' must be two numbers in [0, 1)"),
    (["param_groups", 0, "params"], [0, 0], "params' must be 2 distinct parameter ids"),
    (["param_groups"], [], "optimizer.param_groups' must be 1 group(s)"),
])
def test_optimizer_state_is_checked_against_the_parameters(path, value, phrase):
    opt = _adam()
    saved = opt.state_dict()
    ok = checked_optimizer_state(saved, opt)
    opt.load_state_dict(ok)
    with pytest.raises(StateError) as e:
        checked_optimizer_state(_with(saved, path, value), opt)
    assert phrase in f"'{e.value.name}' {e.value.problem}", e.value


def test_the_optimizer_keeps_running_as_this_run_does():
    """How Adam runs (fused, capturable, foreach) is the run's; the checkpoint gives lr, betas, eps, decay."""
    opt = _adam()
    saved = _with(opt.state_dict(), ["param_groups", 0, "fused"], True)
    saved["param_groups"][0]["lr"] = 0.25
    opt.load_state_dict(checked_optimizer_state(saved, opt))
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize("key, value, phrase", [
    ("best", math.nan, "scheduler.best"), ("factor", "x", "scheduler.factor"), ("factor", 1.5, "scheduler.factor"),
    ("patience", -1, "scheduler.patience"), ("_last_lr", ["x"], "scheduler._last_lr"),
    ("min_lrs", [0, 0], "scheduler.min_lrs' must be a list of 1"), ("mode", "sideways", "scheduler.mode"),
])
def test_scheduler_state_is_checked(key, value, phrase):
    opt = _adam()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=80, cooldown=10)
    saved = sched.state_dict()
    with pytest.raises(StateError) as e:
        checked_scheduler_state({**saved, key: value}, sched)
    assert phrase in f"'{e.value.name}' {e.value.problem}", e.value
    # a field the scheduler does not have would set any attribute (here: shadow its step method)
    sched.load_state_dict(checked_scheduler_state({**saved, "step": 5}, sched))
    sched.step(1.0)


@pytest.mark.parametrize("path, value, phrase", [
    (["state", 0, "exp_avg"], torch.zeros(1), "optimizer.state[0].exp_avg' must be a float tensor"),
    (["param_groups", 0, "lr"], "fast", "optimizer.param_groups[0].lr' must be a finite number > 0"),
], ids=["moments", "lr"])
def test_hostile_optimizer_state_ends_in_one_line(shard_set, single, tmp_path, capsys, path, value, phrase):
    out = _copy(single, tmp_path / "m")
    _edit(out / "vocals.chkpnt", lambda c: c.update(optimizer=_with(c["optimizer"], path, value)))
    assert train_main(_args(shard_set, tmp_path / "o", "--epochs", "2", "--checkpoint", str(out))) == 2
    _one_line(capsys, f"{out / 'vocals.chkpnt'}: field '{phrase}")


def test_ema_averages_must_fit_not_broadcast():
    model = OpenUnmixModel(Spectrogram(128, 32), Joint({"vocals": OpenUnmix(nb_bins=65, nb_channels=1, hidden_size=4,
                                                                            max_bin=65)}, False))
    ema = EMA(model, [0.9])
    good = {k: v.clone() for k, v in ema.shadows[0.9]["vocals"].items()}
    ema.load_target_state("vocals", {"ema0.9": good})
    key = next(k for k, v in good.items() if v.is_floating_point() and v.numel() > 1)
    with pytest.raises(ValueError, match=f"no {key} of shape"):
        ema.load_target_state("vocals", {"ema0.9": {**good, key: torch.zeros(1)}})  # copy_ would broadcast it
    with pytest.raises(ValueError, match="not finite"):
        ema.load_target_state("vocals", {"ema0.9": {**good, key: torch.full_like(good[key], math.nan)}})
    with pytest.raises(KeyError):
        ema.load_target_state("vocals", {})


# --- 3. generations ------------------------------------------------------------------------------

def test_a_next_file_of_no_generation_never_settles(single, tmp_path):
    out = _copy(single, tmp_path / "m")
    _edit(out / "vocals.chkpnt", lambda c: c["umx"].pop("generation"))  # a current file of no generation
    foreign = tmp_path / "foreign.chkpnt"
    shutil.copy(out / "vocals.chkpnt", foreign)
    _edit(foreign, lambda c: c.update(epoch=99))
    shutil.copy(foreign, out / "vocals.chkpnt.next")
    before = (out / "vocals.chkpnt").read_bytes()
    load_checkpoints(out, ["vocals"], BOUNDS)
    assert (out / "vocals.chkpnt").read_bytes() == before  # not replaced (None == None no longer settles)
    assert (out / "vocals.chkpnt.next").read_bytes() == foreign.read_bytes()  # and not deleted: not umx's save


def _interrupted(joint: Path, folder: Path, complete: bool) -> Path:
    """A joint checkpoint folder whose save was interrupted: drums renamed, vocals still `.next`;
    incomplete: drums' file is of the previous generation."""
    out = _copy(joint, folder)
    os.replace(out / "vocals.chkpnt", out / "vocals.chkpnt.next")
    shutil.copy(out / "vocals.chkpnt.next", out / "vocals.chkpnt")
    _edit(out / "vocals.chkpnt", lambda c: c["umx"].update(generation="previous"))
    if not complete:
        _edit(out / "drums.chkpnt", lambda c: c["umx"].update(generation="previous"))
    return out


@pytest.mark.parametrize("complete", [True, False])
def test_an_input_checkpoint_folder_is_never_written(joint, tmp_path, complete):
    """--checkpoint DIR is input: an interrupted generation there is read as settled, never renamed or
    deleted; only the output folder is settled."""
    targets, bounds = ["vocals", "drums"], Bounds(("vocals", "drums"), 5, 3)
    src = _interrupted(joint, tmp_path / "src", complete)
    before = _snapshot(src)
    ckpts, state = load_checkpoints(src, targets, bounds, settle=False)
    assert _snapshot(src) == before
    if not complete:
        return  # the previous generation stands: every current file says "previous"
    assert state.progress.epoch == 2
    out = _interrupted(joint, tmp_path / "out", complete)
    load_checkpoints(out, targets, bounds)  # the output folder: settled in place
    assert not (out / "vocals.chkpnt.next").exists()
    assert (out / "vocals.chkpnt").read_bytes() == before["vocals.chkpnt.next"][0]


def test_resuming_from_another_folder_leaves_it_alone(shard_set, single, tmp_path):
    src = _copy(single, tmp_path / "src")
    os.replace(src / "vocals.chkpnt", src / "vocals.chkpnt.next")  # killed between write and rename
    before = _snapshot(src)
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path / "o"), checkpoint=str(src), epochs=2, **TINY))
    assert _snapshot(src) == before
    assert json.loads((tmp_path / "o" / "vocals.json").read_text())["epochs_trained"] == 2


def test_checkpoints_of_several_targets_need_a_generation(joint, tmp_path):
    out = _copy(joint, tmp_path / "m")
    for target in ("vocals", "drums"):
        _edit(out / f"{target}.chkpnt", lambda c: c["umx"].update(generation=["not", "hashable"]))
    with pytest.raises(UmxError, match="are not of the same step"):
        load_checkpoints(out, ["vocals", "drums"], Bounds(("vocals", "drums"), 5, 3))


# --- 4. --trace never follows a link --------------------------------------------------------------

def test_trace_refuses_a_symlink(shard_set, single, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "trace-rank0.jsonl").symlink_to(victim)
    assert train_main(_args(shard_set, out, "--epochs", "1", "--trace")) == 2
    _one_line(capsys, "trace-rank0.jsonl: is a symbolic link: refused")
    assert victim.read_text() == "precious\n"


def test_append_to_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UmxError, match="is not a regular file"):
        append_to(fifo)  # refused at once, without waiting for a reader
    (tmp_path / "dir").mkdir()
    with pytest.raises(UmxError, match="is not a regular file"):
        append_to(tmp_path / "dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UmxError, match="is a symbolic link"):
        append_to(tmp_path / "dangling")
    assert not (tmp_path / "nowhere").exists()
    with append_to(tmp_path / "t.jsonl") as f:
        f.write("a\n")
    with append_to(tmp_path / "t.jsonl") as f:
        f.write("b\n")
    assert (tmp_path / "t.jsonl").read_text() == "a\nb\n"


def test_progress_parses_old_single_target_rows():
    assert Progress.from_dict({"epoch": 2, "step": 1, "losses": [0.5]}).losses == [[0.5, 0.5]]


# --- the checkpoint file's size, before torch reads it --------------------------------------------

def _rezip(path: Path, compression: int, extra: bytes = b"") -> None:
    """Rewrite a torch zip file member by member with `compression`, optionally with one more member."""
    import zipfile

    with zipfile.ZipFile(path) as src:
        members = [(m, src.read(m)) for m in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for m, data in members:
            dst.writestr(m.filename, data, compress_type=compression)
        if extra:
            dst.writestr(f"{members[0][0].filename.split('/')[0]}/padding", extra, compress_type=compression)


def test_a_deflated_checkpoint_is_refused_before_it_is_read(shard_set, single, tmp_path, capsys):
    """A checkpoint handed over as --checkpoint: compressed members (torch.save never writes them) could
    inflate far past the file; refused in one line, nothing written."""
    import zipfile

    src = _copy(single, tmp_path / "m")
    _rezip(src / "vocals.chkpnt", zipfile.ZIP_DEFLATED)
    assert train_main(_args(shard_set, tmp_path / "new", "--checkpoint", str(src), "--epochs", "2")) == 2
    _one_line(capsys, "vocals.chkpnt", "is compressed")
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_larger_than_the_run_can_hold_is_refused(shard_set, single, tmp_path, capsys):
    import zipfile

    from umx.train.outputs import CHECKPOINT_SLACK

    src = _copy(single, tmp_path / "m")
    _rezip(src / "vocals.chkpnt", zipfile.ZIP_STORED, extra=bytes(CHECKPOINT_SLACK + 2**20))
    assert train_main(_args(shard_set, tmp_path / "new", "--checkpoint", str(src), "--epochs", "2")) == 2
    _one_line(capsys, "vocals.chkpnt", "this run's 'vocals' network")
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_within_its_bounds_resumes(shard_set, single, tmp_path):
    src = _copy(single, tmp_path / "m")
    assert train_main(_args(shard_set, tmp_path / "new", "--checkpoint", str(src), "--epochs", "2")) == 0
    assert (tmp_path / "new" / "vocals.pth").is_file()
