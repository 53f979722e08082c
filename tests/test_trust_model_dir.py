"""A model directory handed over by a colleague (docs/security.md): whatever its JSON files and weights
say, umx-separate, umx-eval and umx-train --model end in one clear line, never a traceback, and never
allocate more than the weights really hold. Model directories are written by hand here (tiny networks,
no training), each test changing one thing."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from umx import audio
from umx import separate
from umx.shards import storage
from umx.errors import UmxError
from umx.evaluate_cli import main as eval_main
from umx.models.openunmix.network import Joint, OpenUnmix
from umx.models.openunmix.files import load_target
from umx.models.openunmix.separator import Separator
from umx.separate import main as separate_main
from umx.train.cli import main as train_main
from one_line import one_line as _one_line  # noqa: E402

NFFT, NHOP, HIDDEN = 1024, 512, 8
TINY_ARGS = ["--hidden-size", str(HIDDEN), "--seq-dur", "1.0", "--batch-size", "4", "--nfft", str(NFFT),
             "--nhop", str(NHOP), "--quiet", "--debug"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def _state(hidden: int = HIDDEN, seed: int = 0, unidirectional: bool = False) -> dict:
    torch.manual_seed(seed)
    net = OpenUnmix(nb_bins=NFFT // 2 + 1, nb_channels=2, hidden_size=hidden, max_bin=100,
                    unidirectional=unidirectional)
    return net.state_dict()


def _args(hidden: int, unidirectional: bool = False) -> dict:
    return {"args": {"nfft": NFFT, "nhop": NHOP, "nb_channels": 2, "hidden_size": hidden,
                     "unidirectional": unidirectional}}


def _model_dir(folder: Path, targets=("vocals",), hidden: dict | None = None, bridged: bool = False) -> Path:
    """A model directory as umx-train writes it: `<target>.json` (args), `<target>.pth` or, bridged,
    one `xumx.pth`, and `separator.json`; `hidden`: target → hidden size (default HIDDEN)."""
    folder.mkdir(parents=True)
    hidden = hidden or {}
    states = {t: _state(hidden.get(t, HIDDEN), seed=i) for i, t in enumerate(targets)}
    for t in targets:
        (folder / f"{t}.json").write_text(json.dumps(_args(hidden.get(t, HIDDEN))))
        if not bridged:
            torch.save(states[t], folder / f"{t}.pth")
    conf = {"nfft": NFFT, "nhop": NHOP, "sample_rate": 44100, "nb_channels": 2}
    if bridged:
        torch.save(states, folder / "xumx.pth")
        conf.update(bridged_targets=list(targets), weights="xumx.pth")
    (folder / "separator.json").write_text(json.dumps(conf))
    return folder


def _edit_json(path: Path, **changes) -> None:
    conf = json.loads(path.read_text())
    (conf["args"] if "args" in conf else conf).update(changes)
    path.write_text(json.dumps(conf))


def _rezip(path: Path, compression: int = zipfile.ZIP_STORED, extra: dict[str, bytes] | None = None) -> None:
    """Rewrite a torch zip file with its members compressed as `compression`, plus `extra` members."""
    with zipfile.ZipFile(path) as src:
        members = [(info.filename, src.read(info)) for info in src.infolist()]
    prefix = members[0][0].split("/")[0]
    with zipfile.ZipFile(path, "w", compression) as out:
        for name, data in members + [(f"{prefix}/{k}", v) for k, v in (extra or {}).items()]:
            out.writestr(name, data)


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    """A quarter of a second: even an STFT with nhop 1 stays small before the fix."""
    path = tmp_path_factory.mktemp("song") / "song.wav"
    audio.write(path, (np.random.default_rng(0).standard_normal((2, 11025)) * 0.1).astype(np.float32), 44100,
                subtype="FLOAT")
    return path


def _separate(folder: Path, song: Path, out: Path, *extra: str) -> int:
    return separate_main([str(folder), str(song), "--outdir", str(out / "stems"), "--niter", "0", *extra])


def _evaluate(folder: Path, shard_set: Path, tmp_path: Path) -> int:
    return eval_main([str(folder), "--shards", str(shard_set), "--split", "valid", "--niter", "0",
                      "--outdir", str(tmp_path / "eval"), "--quiet"])


def _fine_tune(folder: Path, shard_set: Path, tmp_path: Path) -> int:
    return train_main(["--shards", str(shard_set), "--output", str(tmp_path / "run"), "--model", str(folder),
                       "--epochs", "1", *TINY_ARGS])


def test_a_hand_made_model_directory_separates(tmp_path, song):
    """The control: the directories below differ from this one in one thing each."""
    assert _separate(_model_dir(tmp_path / "m"), song, tmp_path) == 0
    assert (tmp_path / "stems" / "song" / "vocals.wav").is_file()
    assert _separate(_model_dir(tmp_path / "x", ("vocals", "drums"), bridged=True), song, tmp_path / "x") == 0


# --- 1. the JSON's sizes are checked against the weights before anything is built ---------------

@pytest.fixture
def no_big_network(monkeypatch):
    """Fails a test the moment a real (not meta-device) network larger than the weights is built."""
    real = OpenUnmix.__init__

    def init(self, *args, **kw):
        if torch.empty(0).device.type != "meta":
            assert kw.get("hidden_size", 512) <= 64, "a network the weights do not hold was about to be built"
        real(self, *args, **kw)
    monkeypatch.setattr(OpenUnmix, "__init__", init)


@pytest.mark.parametrize("cli", ["separate", "eval", "train --model"])
def test_json_sizes_are_checked_against_the_weights_before_building(tmp_path, song, shard_set, cli, capsys,
                                                                   no_big_network):
    folder = _model_dir(tmp_path / "m")
    _edit_json(folder / "vocals.json", hidden_size=16384)  # would build a 20 GiB network
    run = {"separate": lambda: _separate(folder, song, tmp_path),
           "eval": lambda: _evaluate(folder, shard_set, tmp_path),
           "train --model": lambda: _fine_tune(folder, shard_set, tmp_path)}[cli]
    assert run() == 2
    _one_line(capsys, "vocals.pth: cannot be loaded with the sizes in vocals.json",
              "fc1.weight is [8, 200], those sizes give [16384, 200]")


def test_weights_of_views_cannot_pass_for_a_bigger_network(tmp_path, song, capsys):
    """A small file whose tensors are zero-stride views has every shape a big JSON asks for."""
    folder = _model_dir(tmp_path / "m")
    state = {k: torch.zeros(1).expand(v.shape) if v.is_floating_point() else v for k, v in _state(512).items()}
    torch.save(state, folder / "vocals.pth")
    _edit_json(folder / "vocals.json", hidden_size=512)
    assert (folder / "vocals.pth").stat().st_size < 100_000  # the network: 22 MB
    assert _separate(folder, song, tmp_path) == 2
    _one_line(capsys, "vocals.pth: cannot be loaded: its tensors are views")


def test_odd_hidden_size_of_a_bidirectional_network(tmp_path, song, capsys):
    """Weights that fit their JSON, but whose LSTM halves cannot feed the next layer: no forward error."""
    folder = _model_dir(tmp_path / "m")
    torch.save(_state(9), folder / "vocals.pth")
    _edit_json(folder / "vocals.json", hidden_size=9)
    assert _separate(folder, song, tmp_path) == 2
    _one_line(capsys, "vocals.json: args.hidden_size 9 is odd")


@pytest.mark.parametrize("edit, phrase", [
    ({"unidirectional": "yes"}, "args.unidirectional must be true or false"),
    ({"nfft": 32}, "args.nfft must be a whole number in [64, 65536]"),
    ({"nb_channels": 0}, "args.nb_channels must be"),
])
def test_nonsense_target_json(tmp_path, edit, phrase, capsys):
    folder = _model_dir(tmp_path / "m")
    _edit_json(folder / "vocals.json", **edit)
    with pytest.raises(UmxError, match="vocals.json: " + phrase.replace("[", r"\[").replace("]", r"\]")):
        load_target(folder, "vocals")


def test_target_names_stay_in_the_model_directory(tmp_path):
    folder = _model_dir(tmp_path / "m")
    shutil.copy(folder / "vocals.json", tmp_path / "outside.json")
    with pytest.raises(UmxError, match="not a safe name"):
        load_target(folder, "../outside")


# --- 2. STFT sizes, EM iterations and the filter's window are in sane ranges ----------------------

@pytest.mark.parametrize("conf, phrase", [
    ({"nhop": 1}, "nhop must be a whole number in [64, 65536], got 1"),
    ({"nhop": 32}, "nhop must be a whole number in [64, 65536]"),
    ({"nfft": 4096, "nhop": 128}, "nhop 128 is below nfft / 16 (256)"),
    ({"nfft": 32, "nhop": 32}, "nfft must be a whole number in [64, 65536]"),
    ({"sample_rate": 1000}, "sample_rate must be a whole number in [8000, 384000]"),
])
def test_separator_json_sizes(tmp_path, song, conf, phrase, capsys):
    folder = _model_dir(tmp_path / "m")
    _edit_json(folder / "separator.json", **conf)
    assert _separate(folder, song, tmp_path) == 2
    _one_line(capsys, "separator.json: " + phrase)
    assert not (tmp_path / "stems").exists()


@pytest.mark.parametrize("option, value", [("--niter", "101"), ("--wiener-win-len", str(2**16 + 1))])
def test_filter_options_in_range(tmp_path, song, option, value, capsys):
    args = [str(_model_dir(tmp_path / "m")), str(song), "--outdir", str(tmp_path / "stems"), "--residual",
            option, value]
    assert separate_main(args) == 2
    _one_line(capsys, option)


def test_separator_refuses_filter_sizes_out_of_range():
    net = OpenUnmix(nb_bins=NFFT // 2 + 1, hidden_size=HIDDEN)
    with pytest.raises(UmxError, match=r"niter must be a whole number in \[0, 100\]"):
        Separator({"vocals": net}, niter=10**6, residual=True, n_fft=NFFT, n_hop=NHOP)
    with pytest.raises(UmxError, match="wiener_win_len must be"):
        Separator({"vocals": net}, wiener_win_len=10**9, n_fft=NFFT, n_hop=NHOP)


# --- 3. a weights file cannot inflate beyond what its JSON declares --------------------------------

def test_deflated_weights_are_refused(tmp_path, song, shard_set, capsys):
    folder = _model_dir(tmp_path / "m")
    _rezip(folder / "vocals.pth", zipfile.ZIP_DEFLATED)
    torch.load(folder / "vocals.pth", weights_only=True)  # torch itself would inflate it
    assert _separate(folder, song, tmp_path) == 2
    _one_line(capsys, "vocals.pth: cannot be loaded: its member", "is compressed")
    assert _evaluate(folder, shard_set, tmp_path) == 2
    _one_line(capsys, "vocals.pth: cannot be loaded: its member", "is compressed")


def test_deflated_bridged_weights_are_refused(tmp_path, song, capsys):
    """The issue's case: a small deflated xumx.pth with a member inflating to far more than the file."""
    folder = _model_dir(tmp_path / "x", ("vocals", "drums"), bridged=True)
    _rezip(folder / "xumx.pth", zipfile.ZIP_DEFLATED, extra={"padding": bytes(32 * 2**20)})
    assert (folder / "xumx.pth").stat().st_size < 200_000
    assert _separate(folder, song, tmp_path) == 2
    _one_line(capsys, "xumx.pth: cannot be loaded: its member", "is compressed")


def test_weights_larger_than_their_json_declares(tmp_path, song, capsys):
    folder = _model_dir(tmp_path / "m")
    _rezip(folder / "vocals.pth", extra={"padding": bytes(4 * 2**20)})  # stored, as torch.save stores
    torch.load(folder / "vocals.pth", weights_only=True)  # torch would not mind
    assert _separate(folder, song, tmp_path) == 2
    _one_line(capsys, "vocals.pth: cannot be loaded with the sizes in vocals.json", "more than the")


def test_zip_members_declaring_more_than_the_file_holds(tmp_path):
    """A stored member whose header claims more bytes than the sizes allow (the file itself is small)."""
    folder = _model_dir(tmp_path / "m")
    path = folder / "vocals.pth"
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        big, directory = max(z.infolist(), key=lambda m: m.file_size), z.start_dir
    at = blob.index(big.filename.encode(), directory) - 46  # its central directory entry, before its name
    assert blob[at:at + 4] == b"PK\x01\x02"
    claimed = (2**31).to_bytes(4, "little")
    blob[at + 20:at + 28] = claimed + claimed  # its central directory entry: compressed and plain size
    path.write_bytes(bytes(blob))
    with pytest.raises(UmxError, match="vocals.pth: cannot be loaded with the sizes in vocals.json: its members "
                                       "hold more than"):
        load_target(folder, "vocals")


def test_weights_in_torchs_legacy_format_still_load(tmp_path):
    """Not a zip: no members to check, only the file's size; loaded without a memory map."""
    folder = _model_dir(tmp_path / "m")
    torch.save(_state(), folder / "vocals.pth", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(folder / "vocals.pth")
    net = load_target(folder, "vocals")
    torch.testing.assert_close(net.fc1.weight, _state()["fc1.weight"], rtol=0, atol=0)


# --- 4. bridged networks must agree in hidden size ------------------------------------------------------

def test_bridged_networks_of_different_hidden_sizes(tmp_path, song, shard_set, capsys):
    folder = _model_dir(tmp_path / "x", ("vocals", "drums"), hidden={"drums": 16}, bridged=True)
    assert _separate(folder, song, tmp_path) == 2
    _one_line(capsys, "xumx.pth: a bridged (X-UMX) model averages its networks' hidden states",
              "vocals.json 8, drums.json 16")
    assert _evaluate(folder, shard_set, tmp_path) == 2
    _one_line(capsys, "xumx.pth: a bridged (X-UMX) model", "must agree")


def test_bridging_networks_of_different_hidden_sizes_in_code():
    nets = {"vocals": OpenUnmix(nb_bins=NFFT // 2 + 1, hidden_size=8),
            "drums": OpenUnmix(nb_bins=NFFT // 2 + 1, hidden_size=16)}
    with pytest.raises(UmxError, match="hidden sizes must agree"):
        Separator(nets, n_fft=NFFT, n_hop=NHOP, bridge=True)
    with pytest.raises(UmxError, match="hidden sizes must agree"):
        Joint(nets, bridge=True)
    assert Joint(nets).names == ["vocals", "drums"]  # unbridged, they never meet


# --- 5. stems stay inside --outdir, and are written atomically ---------------------------------------

def test_an_input_named_dots_cannot_write_beside_outdir(tmp_path, song, capsys):
    work = tmp_path / "work"
    work.mkdir()
    dots = work / "...wav"  # Path('...wav').stem == '..'
    shutil.copy(song, dots)
    args = [str(_model_dir(tmp_path / "m")), str(dots), "--outdir", str(work / "stems"), "--niter", "0"]
    assert separate_main(args) == 2
    _one_line(capsys, "...wav: stem folder name '..' is not a safe name")
    assert sorted(p.name for p in work.iterdir()) == ["...wav"]
    with pytest.raises(UmxError, match="not a safe name"):
        separate.stem_folder(work / "stems", dots)


def test_stems_are_written_through_atomic_writer(tmp_path, song, monkeypatch):
    written = []
    real = storage.atomic_writer

    def spy(path, *args, **kw):
        written.append(Path(path))
        return real(path, *args, **kw)
    monkeypatch.setattr(storage, "atomic_writer", spy)
    stems = tmp_path / "stems" / "song"
    stems.mkdir(parents=True)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (stems / ".vocals.wav.tmp").symlink_to(victim)  # a name planted where a writer might put its temp file
    assert _separate(_model_dir(tmp_path / "m"), song, tmp_path, "--residual") == 0
    assert written == [stems / "vocals.wav", stems / "residual.wav"]
    assert victim.read_text() == "keep me"
    assert audio.read(stems / "vocals.wav")[0].shape == (2, 11025)
    assert sorted(p.name for p in stems.iterdir()) == [".vocals.wav.tmp", "residual.wav", "vocals.wav"]
