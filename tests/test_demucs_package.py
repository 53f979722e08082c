"""Demucs' exported packages are read without running their pickle (umx.models.htdemucs.package):
demucs' own packages read back as written; hostile or foreign files are one line naming the file,
and nothing of them runs, Demucs' model class included; the allow-list holds for that load only."""

from __future__ import annotations

import copy
import os
import pickle
import struct
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from demucs.demucs import Demucs
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import load_model, serialize_model
from omegaconf import OmegaConf

from umx.errors import UmxError
from umx.models.htdemucs.package import DemucsPackage, read_demucs_package

LIMIT = 2**20  # the tiny model's package is ~60 kB
TINY = dict(sources=["vocals", "accompaniment"], audio_channels=2, channels=8, depth=2, t_layers=1, t_heads=2,
            nfft=512, samplerate=8000, segment=1)


@pytest.fixture(scope="module")
def model() -> HTDemucs:
    torch.manual_seed(0)
    return HTDemucs(**TINY)


@pytest.fixture
def package(model) -> dict:
    """A package as Demucs' solver writes best.th (demucs' own serialize_model, half precision); its
    kwargs a copy (serialize_model hands out the model's own, which the tests change)."""
    package = serialize_model(model, OmegaConf.create({"epochs": 3, "dset": {"segment": 1}, "lr": 3e-4}), half=True)
    package["kwargs"] = copy.deepcopy(package["kwargs"])
    return package


def _save(obj, path: Path, **kwargs) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _refused(path: Path, *phrases: str, max_bytes: int = LIMIT) -> str:
    """read_demucs_package refuses `path` in one line naming it and holding every phrase."""
    with pytest.raises(UmxError) as info:
        read_demucs_package(path, max_bytes)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for phrase in phrases:
        assert phrase in message, message
    return message


class _Call:
    """Pickles as a call of `func(*args)` (a REDUCE): what a hostile file runs while unpickled."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.fixture
def htdemucs_calls(monkeypatch) -> list:
    """Every HTDemucs, HDemucs and Demucs made from here on (none must be, while a file is read)."""
    calls = []
    for klass in (HTDemucs, HDemucs, Demucs):
        original = klass.__init__

        def record(self, *args, _original=original, **kwargs):
            calls.append((type(self).__name__, args, kwargs))
            _original(self, *args, **kwargs)

        monkeypatch.setattr(klass, "__init__", record)
    return calls


# demucs' own packages

@pytest.mark.parametrize("segment", [1, Fraction(39, 5)], ids=["int-segment", "fraction-segment"])
def test_reads_demucs_own_package(package, tmp_path, segment):
    package["kwargs"]["segment"] = segment  # a release's segment is a Fraction (HTDemucs' 39/5 s)
    package["metrics"] = ({"sdr": 1.0}, None)  # as demucs' tools/export.py adds
    path = _save(package, tmp_path / "best.th")
    read = read_demucs_package(path, LIMIT)
    assert isinstance(read, DemucsPackage) and read.klass == "HTDemucs"
    assert read.kwargs == {**TINY, "segment": segment} and type(read.kwargs["segment"]) is type(segment)
    assert list(read.state) == list(package["state"])
    for key, tensor in package["state"].items():
        assert read.state[key].dtype == torch.float16 and torch.equal(read.state[key], tensor), key
    rebuilt = load_model(path)  # demucs' own loader, on our own trusted file
    assert type(rebuilt) is HTDemucs and rebuilt.segment == segment
    assert {k: v.float() for k, v in read.state.items()}.keys() == rebuilt.state_dict().keys()
    for key, tensor in rebuilt.state_dict().items():
        assert torch.equal(read.state[key].float(), tensor), key


def test_legacy_format_package(package, tmp_path, htdemucs_calls):
    """torch's pre-1.6 format stores a module class as a persistent record (its source code too),
    which the weights-only unpickler refuses whatever the allow-list."""
    path = _save(package, tmp_path / "best.th", _use_new_zipfile_serialization=False)
    _refused(path, "it is in torch's legacy format", "umx reads packages in torch's zip format")
    assert htdemucs_calls == []


def test_full_precision_package(model, tmp_path):
    path = _save(serialize_model(model, OmegaConf.create({}), half=False), tmp_path / "best.th")
    read = read_demucs_package(path, LIMIT)
    assert all(torch.equal(read.state[k], v) and read.state[k].dtype == torch.float32
               for k, v in model.state_dict().items())


@pytest.mark.parametrize("klass", [HDemucs, Demucs])
def test_older_model_classes_are_named(package, tmp_path, klass):
    """The reader names the class; which classes umx builds is its caller's to say (it refuses
    HDemucs and Demucs by name), so that refusal can say what the file holds."""
    package["klass"] = klass
    assert read_demucs_package(_save(package, tmp_path / "old.th"), LIMIT).klass == klass.__name__


# nothing of a hostile file runs

@pytest.mark.parametrize("call", [
    lambda marker: _Call(open, str(marker), "w"),
    lambda marker: _Call(os.system, f"touch {marker}"),
    lambda marker: _Call(eval, f"open({str(marker)!r}, 'w')"),
], ids=["open", "os.system", "eval"])
def test_hostile_reduce_runs_nothing(package, tmp_path, call):
    marker = tmp_path / "ran"
    package["training_args"]["x"] = call(marker)
    _refused(_save(package, tmp_path / "best.th"), "refused, it pickles the global ", "never runs pickled code")
    assert not marker.exists()


@pytest.mark.parametrize("klass", [HTDemucs, HDemucs, Demucs])
def test_reduce_on_model_class_builds_nothing(package, tmp_path, htdemucs_calls, klass):
    """A REDUCE on Demucs' class name reaches our marker, which refuses before any of demucs runs."""
    package["kwargs"] = _Call(klass, ["vocals"] * 10**3, 2, 10**7, 10**7)  # sources, channels…: gigabytes
    path = _save(package, tmp_path / "best.th")
    start = time.perf_counter()
    _refused(path, f"pickles a whole {klass.__name__} object", "never runs pickled code")
    assert time.perf_counter() - start < 2 and htdemucs_calls == []


def _raw(tmp_path: Path, data_pkl: bytes) -> Path:
    """A torch zip whose pickle is `data_pkl`, opcode by opcode (what no pickler would write)."""
    base = _save({}, tmp_path / "base.th")
    path = tmp_path / "raw.th"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, data_pkl if member.filename.endswith("/data.pkl") else src.read(member))
    return path


HUGE = b"J" + struct.pack("<i", 10**7)  # BININT 10**7
VOCALS = b"X" + struct.pack("<I", 6) + b"vocals"  # BINUNICODE


@pytest.mark.parametrize("data_pkl, phrase", [
    (b"\x80\x02cdemucs.htdemucs\nHTDemucs\n(]" + VOCALS + b"aK\x02" + HUGE + HUGE + b"tR.",
     "pickles a whole HTDemucs object"),  # REDUCE: HTDemucs(["vocals"], 2, 10**7, 10**7)
    (b"\x80\x02cdemucs.hdemucs\nHDemucs\n)\x81.", "pickles a whole HDemucs object"),  # NEWOBJ
    (b"\x80\x02cdemucs.htdemucs\nHTDemucs\n}b.", "Can only build"),  # BUILD on the class itself
    (b"\x80\x02cfractions\nFraction\nK\x01K\x02\x86\x81.", "TypeError"),  # NEWOBJ on our Fraction
], ids=["reduce-htdemucs", "newobj-hdemucs", "build-class", "newobj-fraction"])
def test_raw_opcodes_on_stand_ins(tmp_path, htdemucs_calls, data_pkl, phrase):
    _refused(_raw(tmp_path, data_pkl), phrase)
    assert htdemucs_calls == []


def test_whole_pickled_model_is_refused(model, tmp_path, htdemucs_calls):
    path = _save(model, tmp_path / "model.th")  # torch.save(model): a NEWOBJ on the class
    _refused(path, "pickles a whole HTDemucs object (torch.save(model)", "demucs.states.serialize_model")
    assert htdemucs_calls == []


@pytest.mark.parametrize("args", [("1e999999999",), ("9" * 5000,), ("1/0",), (2**200, 1), (1, 0), (1.5, 1),
                                  ("39/5 ",)], ids=["exponent", "5000-digits", "zero-string", "huge-int",
                                                    "zero", "float", "space"])
def test_fraction_is_bounded(package, tmp_path, args):
    package["kwargs"]["segment"] = _Call(Fraction, *args)
    start = time.perf_counter()
    _refused(_save(package, tmp_path / "best.th"), "it holds a Fraction")
    assert time.perf_counter() - start < 2


def test_fraction_string_form(package, tmp_path):
    package["kwargs"]["segment"] = _Call(Fraction, "-39/5")
    assert read_demucs_package(_save(package, tmp_path / "best.th"), LIMIT).kwargs["segment"] == Fraction(-39, 5)


# what Demucs writes that is not an exported package

def test_quantized_package(package, tmp_path):
    package["state"] = {"__quantized": True, "quantized": [b"\x00" * 8], "meta": {}}  # as diffq's get_state
    _refused(_save(package, tmp_path / "q.th"), "quantized with diffq: umx fine-tunes unquantized packages")


def test_solver_checkpoint(model, tmp_path):
    """Demucs' solver checkpoint.th (demucs.solver.Solver._serialize): its 'args' is an OmegaConf
    object, which the unpickler refuses."""
    optimizer = {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]}  # as Adam's state_dict()
    checkpoint = {"state": model.state_dict(), "optimizer": optimizer, "history": [],
                  "best_state": model.state_dict(), "args": OmegaConf.create({"epochs": 3})}
    _refused(_save(checkpoint, tmp_path / "checkpoint.th"), "omegaconf.dictconfig.DictConfig",
             "umx reads exported packages such as best.th or a release .th, not the solver's checkpoint.th")
    checkpoint["args"] = {"epochs": 3}  # one whose args are plain: told apart by its keys
    _refused(_save(checkpoint, tmp_path / "plain.th"), "solver checkpoint.th", "best.th")


# files that are not packages

@pytest.mark.parametrize("change, phrase", [
    (lambda p: {"epoch": 3, "state": {"w": 1.0}}, "it has no 'klass', 'args', 'kwargs'"),  # nor a state dict
    (lambda p: [p], "it holds a list, not the dict"),
    (lambda p: {**p, "klass": "HTDemucs"}, "its 'klass' is a str, not one of Demucs' model classes"),
    (lambda p: {**p, "klass": torch.nn.Module}, "refused, it pickles the global torch.nn.modules.module.Module"),
    (lambda p: {**p, "args": (8,)}, "its 'args' must be empty (Demucs passes its model's settings as keyword "
                                     "arguments), got a tuple of 1"),
    (lambda p: {**p, "klass": torch.Tensor}, "its 'klass' is the class Tensor, not one of Demucs' model classes"),
    (lambda p: {**p, "kwargs": [1]}, "its 'kwargs' is a list"),
    (lambda p: {**p, "kwargs": {1: 2}}, "its 'kwargs' has a key of type int"),
    (lambda p: {**p, "kwargs": {"channels": torch.zeros(1)}}, "kwargs['channels'] is not a plain value"),
    (lambda p: {**p, "kwargs": {"sources": {"vocals"}}}, "kwargs['sources'] is not a plain value"),
    (lambda p: {**p, "kwargs": {"x": b"bytes"}}, "kwargs['x'] is not a plain value"),
    (lambda p: {**p, "kwargs": {"x": [[[[[[[[[[1]]]]]]]]]]}}, "up to 8 deep"),
    (lambda p: {**p, "state": [1]}, "its 'state' is a list, not a dict of tensors"),
    (lambda p: {**p, "state": {"w": 1.0}}, "state['w'] is a float, not a dense floating point tensor"),
    (lambda p: {**p, "state": {"w": torch.zeros(2, dtype=torch.int64)}}, "state['w'] is a torch.int64"),
    (lambda p: {**p, "state": {"w": torch.zeros(2).to_sparse()}}, "torch.sparse_coo"),
    (lambda p: {**p, "state": {"w": torch.zeros(1).expand(10**6)}}, "views claiming more elements"),
], ids=["no-state", "list", "klass-str", "klass-other", "args", "klass-tensor", "kwargs-list", "kwargs-key",
        "kwargs-tensor", "kwargs-set", "kwargs-bytes", "kwargs-deep", "state-list", "state-float", "state-int",
        "state-sparse", "state-view"])
def test_not_a_package(package, tmp_path, change, phrase):
    _refused(_save(change(package), tmp_path / "x.th"), phrase)


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"model_state_dict": s, "epoch": 3, "best_metric": 1.5},
                                  lambda s: {"state_dict": s}], ids=["bare", "msst-training", "state_dict"])
def test_msst_s_state_dicts_are_read_without_class_or_arguments(package, tmp_path, wrap):
    """MSST saves its HTDemucs as a state dict (bare, or under model_state_dict while training): read,
    with no class and no arguments (the run's options decide the network; its shapes are checked)."""
    read = read_demucs_package(_save(wrap(package["state"]), tmp_path / "msst.ckpt"), 10**8)
    assert read.klass is None and read.kwargs is None
    assert read.state.keys() == package["state"].keys()
    assert all(torch.equal(read.state[k], v) for k, v in package["state"].items())


def test_over_max_bytes_refused_before_torch_reads(package, tmp_path, monkeypatch):
    path = _save(package, tmp_path / "best.th")

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_load)
    _refused(path, "more than the 1000 they allow", max_bytes=1000)


def test_compressed_member(package, tmp_path):
    path = _save(package, tmp_path / "best.th")
    packed = tmp_path / "packed.th"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member))
    _refused(packed, "is compressed")


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_truncated(package, tmp_path, zipped):
    path = _save(package, tmp_path / "best.th", _use_new_zipfile_serialization=zipped)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(path, "cannot be loaded")


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "best.th"
    path.write_text("not a pickle")
    _refused(path, "cannot be loaded as a Demucs package: refused, Unsupported operand")


# the allow-list holds for one load only

def test_allow_list_does_not_leak(package, tmp_path):
    before = set(torch.serialization.get_safe_globals())
    good = _save(package, tmp_path / "best.th")
    bad = _save({**package, "x": _Call(open, str(tmp_path / "ran"), "w")}, tmp_path / "bad.th")
    read_demucs_package(good, LIMIT)
    _refused(bad, "io.open")
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError, match="demucs.htdemucs.HTDemucs"):
        torch.load(good, weights_only=True)
    with pytest.raises(pickle.UnpicklingError, match="fractions.Fraction"):
        torch.load(_save(Fraction(1, 2), tmp_path / "f.th"), weights_only=True)
