"""The trust boundary (docs/security.md): a shard set, a bucket or a model directory handed to umx
can never run code, write outside its folder, or end in a traceback. Each test builds the hostile
or unlucky input and checks the one clear line (and that nothing was run or written)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIX_OPTS
from umx import audio
from umx.errors import ManifestError, ShardError, UmxError
from umx.names import UnsafeNameError, inside, safe_key, safe_name
from umx.prep import prepare
from umx.separate import main as separate_main
from umx.shards import manifest as mf
from umx.shards.reader import ShardReader
from umx.shards.storage import sha256_of
from umx.shards.webdataset import ShardWriter
from umx.shards.zarr_store import ZarrReader
from umx.train.cli import main as train_main
from umx.train import TrainConfig, train
from one_line import one_line as _one_line  # noqa: E402

TINY = dict(hidden_size=8, seq_dur=1.0, batch_size=4, nfft=1024, nhop=512, quiet=True, debug=True)
TINY_ARGS = ["--hidden-size", "8", "--seq-dur", "1.0", "--batch-size", "4", "--nfft", "1024", "--nhop", "512",
             "--quiet", "--debug"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")




# --- one name check -----------------------------------------------------------------------------

HOSTILE = ["..", ".", "", "../x", "/etc/passwd", "a/b", "a\\b", "..\\..\\x", "x\0y", "x\ny", "x\ry", "tab\there",
           "a" * 201, "é" * 101, "\u202eevil", "a\u2028b", "\ufeffbom", "e\u0301", " lead", "trail ", 7, None]
FINE = ["vocals", "Björk - Jóga", "日本語のトラック", "track_01", "a" * 200, "Al Jarreau - Boogie Down", "x.y"]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_safe_name_refuses(name):
    with pytest.raises(UnsafeNameError, match=r"^where: track id .* is not a safe name: "):
        safe_name(name, "track id", "where")


@pytest.mark.parametrize("name", FINE)
def test_safe_name_keeps_real_names(name):
    assert safe_name(name, "track id", "where") == name


@pytest.mark.parametrize("key", ["../x", "/abs/x", "a//b", "a/../b", "a/./b", "a\\b/c", "a/\0", "a/\n", "C:/x",
                                 "/".join(["a"] * 17), "x/" + "b" * 300, ""])
def test_safe_key_refuses(key):
    with pytest.raises(UnsafeNameError):
        safe_key(key, "object key", "where")


def test_safe_key_keeps_zarr_keys():
    assert safe_key("train/vocals/c/0/12", "k", "w") == "train/vocals/c/0/12"


def test_inside_refuses_a_link_out(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "out").symlink_to(tmp_path)
    with pytest.raises(UnsafeNameError, match="leads outside"):
        inside(tmp_path / "base", "out/x.json")
    assert inside(tmp_path / "base", "a/b.json") == tmp_path / "base" / "a" / "b.json"


# --- hostile manifests --------------------------------------------------------------------------

def _raw(shard_set) -> dict:
    return json.loads((Path(shard_set) / "manifest.json").read_text())


def _copy(shard_set, tmp_path, edit=None) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(shard_set, folder)
    if edit is not None:
        raw = _raw(folder)
        edit(raw)
        (folder / "manifest.json").write_text(json.dumps(raw))
    return folder


def _shard(raw):
    return raw["splits"]["train"]["shards"][0]


EDITS = {
    "track id ../../x": (lambda r: _shard(r)["track_ids"].__setitem__(0, "../../x"), r"track_ids\[0\]"),
    "absolute track id": (lambda r: _shard(r)["track_ids"].__setitem__(0, "/etc/passwd"), "track_ids"),
    "newline in id": (lambda r: _shard(r)["track_ids"].__setitem__(0, "a\nb"), "U\\+000A"),
    "shard name ../x.tar": (lambda r: _shard(r).__setitem__("name", "../x.tar"), r"shards\[0\].name"),
    "300-character shard name": (lambda r: _shard(r).__setitem__("name", "a" * 296 + ".tar"), "longer than"),
    "source with a slash": (lambda r: r["sources"].__setitem__(1, "a/b"), r"sources\[1\]"),
    "split name ..": (lambda r: r["splits"].__setitem__("..", r["splits"].pop("valid")), "split name"),
    "track source not in sources": (lambda r: _shard(r)["track_sources"][0].append("../x"), "track_sources"),
    "statistics of the wrong length": (lambda r: [r["statistics"]["stft4096-hop1024"][k].pop() for k in
                                                   ("mean", "std")], "frequency bins"),
    "negative std": (lambda r: r["statistics"]["stft4096-hop1024"]["std"].__setitem__(3, -1.0), "std"),
    "storage format": (lambda r: r["storage"].__setitem__("format", "pickle"), "storage.format"),
    "zarr key ../../escape": (lambda r: r["storage"].update(format="zarr", objects={"../../escape": "0" * 64}),
                              "storage.objects"),
    "absolute zarr key": (lambda r: r["storage"].update(format="zarr", objects={"/tmp/escape": "0" * 64}),
                          "absolute path"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_hostile_manifest_is_refused_naming_the_field(shard_set, tmp_path, case, capsys):
    edit, field = EDITS[case]
    folder = _copy(shard_set, tmp_path, edit)
    with pytest.raises(ManifestError, match=field):
        mf.load(folder)
    assert train_main(["--shards", str(folder), "--output", str(tmp_path / "m"), "--epochs", "1", *TINY_ARGS]) == 2
    _one_line(capsys, "manifest.json")
    assert not (tmp_path / "m").exists()


def test_deeply_nested_or_huge_manifest(tmp_path, monkeypatch):
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ManifestError, match="nested too deeply"):
        mf.load(tmp_path / "deep")
    monkeypatch.setattr(mf, "MAX_BYTES", 1000)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "manifest.json").write_text(json.dumps({"x": "y" * 2000}))
    with pytest.raises(ManifestError, match="larger than"):
        mf.load(tmp_path / "big")


def test_remote_zarr_keys_never_leave_the_cache(tmp_path):
    """Object keys of a bucket's store become cache paths only once checked (no network needed
    to refuse: the check comes before the download)."""
    reader = ZarrReader("http://127.0.0.1:9/set", {"train/../../../../escape": "0" * 64},
                        cache=__import__("umx.shards.cache", fromlist=["ShardCache"]).ShardCache(tmp_path / "c"))
    with pytest.raises(UnsafeNameError, match="not a safe key"):
        reader.ensure("train/../../../../escape", "metadata")
    assert not list(tmp_path.rglob("escape"))


# --- records and zarr metadata that disagree with the manifest ----------------------------------

def test_record_shape_disagreeing_with_manifest(shard_set, tmp_path):
    folder = _copy(shard_set, tmp_path, lambda r: _shard(r)["track_frames"].__setitem__(0, 12345))
    m = mf.load(folder)
    with pytest.raises(ShardError, match=r"has shape \[2, \d+\]; the manifest says \[2, 12345\]"):
        list(ShardReader(m, verify_local=False).records(m.shards("train")[0]))


def test_record_that_lacks_the_target_it_is_listed_with(shard_set, tmp_path):
    folder = _copy(shard_set, tmp_path)
    m = mf.load(folder)
    entry = m.shards("train")[0]
    records = list(ShardReader(m).records(entry))
    del records[0].sources["vocals"]  # the record now claims the target is absent
    records[0].meta["sources"] = list(records[0].sources)
    (folder / entry.name).unlink()
    writer = ShardWriter(tmp_path / "w", "train")
    (tmp_path / "w").mkdir()
    for r in records:
        writer.write(r)
    new = writer.close()[0]
    shutil.move(tmp_path / "w" / new["name"], folder / entry.name)
    raw = _raw(folder)
    _shard(raw).update(sha256=new["sha256"], bytes=new["bytes"])
    (folder / "manifest.json").write_text(json.dumps(raw))
    m = mf.load(folder)
    with pytest.raises(ShardError, match="holds sources .*; the manifest lists"):
        list(ShardReader(m).records(m.shards("train")[0]))
    with pytest.raises(UmxError, match="holds sources"):
        train(TrainConfig(shards=str(folder), output=str(tmp_path / "m"), epochs=1, **TINY))


@pytest.fixture(scope="module")
def zarr_set(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust-zarr") / "z"
    prepare("trackfolder_fix", dataset, out, shard_bytes=7 * 2**20, progress=False, format="zarr", **FIX_OPTS)
    return out


def _edit_zarr_json(folder: Path, key: str, edit) -> None:
    path = folder / "store.zarr" / key
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    raw = _raw(folder)
    raw["storage"]["objects"][key] = sha256_of(str(path))[0]  # a consistent, hostile set
    (folder / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("chunk", [0, -4])
def test_zarr_chunk_shape_zero_or_negative(zarr_set, tmp_path, chunk):
    folder = _copy(zarr_set, tmp_path)
    _edit_zarr_json(folder, "train/vocals/zarr.json",
                    lambda m: m["codecs"][0]["configuration"].__setitem__("chunk_shape", [2, chunk]))
    with pytest.raises(UmxError, match="impossible geometry"):
        train(TrainConfig(shards=str(folder), output=str(tmp_path / "m"), epochs=1, **TINY))


def test_zarr_shape_disagreeing_with_the_track_index(zarr_set, tmp_path):
    folder = _copy(zarr_set, tmp_path)
    _edit_zarr_json(folder, "train/vocals/zarr.json", lambda m: m.__setitem__("shape", [2, 1000]))
    with pytest.raises(UmxError, match="holds 1000 frames but the track index needs"):
        train(TrainConfig(shards=str(folder), output=str(tmp_path / "m"), epochs=1, **TINY))


# --- model directories: no pickle ever runs ---------------------------------------------------------

class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(marker))}, f)


@pytest.fixture(scope="module")
def model(shard_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust-model") / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=1, **TINY))
    return out


def test_checkpoints_are_plain_data(model):
    ckpt = torch.load(model / "vocals.chkpnt", weights_only=True)  # would raise on anything but plain data
    assert {"epoch", "state_dict", "best_loss", "optimizer", "scheduler"} <= set(ckpt)  # open-unmix's keys


def test_pickled_checkpoint_never_runs(shard_set, model, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    marker = tmp_path / "pwned"
    _evil(folder / "vocals.chkpnt", marker)
    args = ["--shards", str(shard_set), "--output", str(folder), "--checkpoint", str(folder), "--epochs", "2"]
    assert train_main(args + TINY_ARGS) == 2
    line = _one_line(capsys, "vocals.chkpnt: cannot be loaded: refused")
    # what was refused, not torch's advice to load it unsafely (nor its terminal colour codes)
    # (pickle.dump's protocol: torch's unpickler refuses its STACK_GLOBAL opcode before reading the global)
    assert "pickled code; Unsupported operand 149)" in line and "\x1b" not in line and "two options" not in line
    assert not marker.exists()


def test_pickled_model_never_runs(shard_set, model, tmp_path, capsys, dataset):
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    marker = tmp_path / "pwned"
    _evil(folder / "vocals.pth", marker)
    args = ["--shards", str(shard_set), "--output", str(tmp_path / "o"), "--model", str(folder), "--epochs", "1"]
    assert train_main(args + TINY_ARGS) == 2
    _one_line(capsys, "vocals.pth: cannot be loaded: refused")
    song = next(dataset.glob("valid/*/vocals.wav"))
    assert separate_main([str(folder), str(song), "--outdir", str(tmp_path / "s"), "--targets", "vocals",
                          "--niter", "0"]) == 2
    _one_line(capsys, "vocals.pth: cannot be loaded")
    assert not marker.exists()


def test_checkpoint_of_another_model_size(shard_set, model, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    args = ["--shards", str(shard_set), "--output", str(folder), "--checkpoint", str(folder), "--epochs", "2"]
    assert train_main(args + [a if a != "8" else "12" for a in TINY_ARGS]) == 2
    _one_line(capsys, "vocals.chkpnt: does not fit this run's model")


def test_model_with_another_nfft(shard_set, model, tmp_path, capsys):
    args = ["--shards", str(shard_set), "--output", str(tmp_path / "o"), "--model", str(model), "--epochs", "1"]
    assert train_main(args + [a if a != "1024" else "2048" for a in TINY_ARGS]) == 2
    _one_line(capsys, "513 frequency bins", "--nfft 2048")


@pytest.mark.parametrize("conf, phrase", [
    ({"nfft": -4}, "nfft must be a whole number"), ({"sample_rate": "fast"}, "sample_rate must be"),
    ({"nb_channels": 7}, "nb_channels must be"), ({"nhop": 0}, "nhop must be"), ({"nhop": 4096}, "nhop 4096 is larger than nfft"),
    ({"nfft": float("nan")}, "nfft must be"), ({"sample_rate": 1e12}, "sample_rate must be"),
])
def test_nonsense_separator_json(model, tmp_path, dataset, conf, phrase, capsys):
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    sep = json.loads((folder / "separator.json").read_text())
    (folder / "separator.json").write_text(json.dumps({**sep, **conf}))
    song = next(dataset.glob("valid/*/vocals.wav"))
    assert separate_main([str(folder), str(song), "--outdir", str(tmp_path / "s"), "--niter", "0"]) == 2
    _one_line(capsys, "separator.json: " + phrase)


def test_separate_refuses_nan_input(model, tmp_path, capsys):
    x = np.zeros((2, 44100), np.float32)
    x[0, 1000] = np.nan
    audio.write(tmp_path / "nan.wav", x, 44100, subtype="FLOAT")
    assert separate_main([str(model), str(tmp_path / "nan.wav"), "--outdir", str(tmp_path / "s"),
                          "--niter", "0"]) == 2
    _one_line(capsys, "nan.wav: contains NaN or infinite samples")
    assert not (tmp_path / "s").exists()


# --- options and paths ------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--batch-size", "0"), ("--batch-size", "-3"), ("--nfft", "0"), ("--nhop", "0"), ("--hidden-size", "0"),
    ("--lr", "-0.1"), ("--lr", "nan"), ("--nb-workers", "-1"), ("--bandwidth", "-5"), ("--seq-dur", "nan"),
    ("--seq-dur", "inf"), ("--samples-per-track", "-1"), ("--samples-per-track", "0"), ("--epochs", "0"),
    ("--lr-decay-gamma", "0"), ("--weight-decay", "-1"), ("--pool-size", "0"), ("--cache-size", "0"),
])
def test_out_of_range_option_is_one_line(shard_set, tmp_path, option, value, capsys):
    args = ["--shards", str(shard_set), "--output", str(tmp_path / "m"), *TINY_ARGS, option, value]
    assert train_main(args) == 2
    _one_line(capsys, option)
    assert not (tmp_path / "m").exists()


def test_wrong_kinds_of_path(shard_set, tmp_path, capsys, dataset):
    wav = next(dataset.glob("train/*/vocals.wav"))
    out = ["--output", str(tmp_path / "m"), *TINY_ARGS]
    assert train_main(["--shards", str(wav), *out]) == 2
    _one_line(capsys, "is a file, not a shard set")
    assert train_main(["--shards", "ftp://example.com/set", *out]) == 2
    _one_line(capsys, "'ftp://' is not a storage umx reads")
    (tmp_path / "file").write_text("x")
    assert train_main(["--shards", str(shard_set), "--output", str(tmp_path / "file"), *TINY_ARGS]) == 2
    _one_line(capsys, "--output", "is a file, not a folder")


# --- the machine: full disks and read-only folders ------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(folder: Path, size: str = "4m", read_only: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=10)


def test_disk_full_while_checkpointing_keeps_the_previous_one(shard_set, tmp_path, capsys):
    with _tmpfs(tmp_path / "disk", "3m") as disk:
        out = disk / "m"
        base = ["--shards", str(shard_set), "--output", str(out), *TINY_ARGS]
        assert train_main(base + ["--epochs", "1"]) == 0
        capsys.readouterr()
        before = (out / "vocals.chkpnt").read_bytes()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - 64 * 1024))  # room for the json, not a checkpoint
        assert train_main(base + ["--epochs", "2", "--checkpoint", str(out)]) == 1
        _one_line(capsys, str(out), "no space left on device")
        assert (out / "vocals.chkpnt").read_bytes() == before  # the previous checkpoint is intact
        assert torch.load(out / "vocals.chkpnt", weights_only=True)["epoch"] == 2
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_read_only_output_and_cache(shard_set, tmp_path, capsys, model, dataset, monkeypatch):
    with _tmpfs(tmp_path / "ro", read_only=True) as ro:
        assert train_main(["--shards", str(shard_set), "--output", str(ro / "m"), "--epochs", "1", *TINY_ARGS]) == 1
        _one_line(capsys, str(ro / "m"), "read-only file system")
        song = next(dataset.glob("valid/*/vocals.wav"))
        assert separate_main([str(model), str(song), "--outdir", str(ro / "s"), "--niter", "0"]) == 1
        _one_line(capsys, "read-only file system")
        monkeypatch.setenv("UMX_CACHE", str(ro / "cache"))
        fresh = _copy(shard_set, tmp_path)  # not yet verified: needs a marker in the cache
        assert train_main(["--shards", str(fresh), "--output", str(tmp_path / "m"), "--epochs", "1",
                           *TINY_ARGS]) == 1
        _one_line(capsys, "read-only file system")


def test_eval_never_writes_outside_outdir(shard_set, model, tmp_path, capsys):
    from umx.evaluate_cli import main as eval_main

    folder = _copy(shard_set, tmp_path, lambda r: r["splits"]["valid"]["shards"][0]["track_ids"].__setitem__(
        0, "../../../escaped"))
    outdir = tmp_path / "deep" / "er" / "out"
    assert eval_main([str(model), "--shards", str(folder), "--split", "valid", "--outdir", str(outdir)]) == 2
    _one_line(capsys, "track_ids[0]", "not a safe name")
    assert not list(tmp_path.rglob("escaped*"))


def test_separate_refuses_an_absurd_sample_rate_before_decoding(model, tmp_path, capsys):
    path = tmp_path / "one_hz.wav"
    audio.write(path, np.zeros((2, 16000), np.float32), 44100)
    blob = bytearray(path.read_bytes())
    blob[24:28] = (1).to_bytes(4, "little")  # the fmt chunk's sample rate: 1 Hz (resampled: ~5 GB)
    path.write_bytes(bytes(blob))
    assert separate_main([str(model), str(path), "--outdir", str(tmp_path / "s"), "--niter", "0"]) == 2
    _one_line(capsys, "one_hz.wav", "sample rate")


def test_statistics_without_skipped_shards_are_not_cached(shard_set, tmp_path, monkeypatch, capsys):
    """--skip-bad-shards leaves shards out of the statistics too: such statistics are not the set's,
    so they must not be cached under its checksums (a later run on the intact set would use them)."""
    from umx.train.build import input_statistics

    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))
    damaged = _copy(shard_set, tmp_path)
    victim = sorted(damaged.glob("train-*.tar"))[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    victim.write_bytes(bytes(blob))
    m = mf.load(damaged)
    partial = input_statistics(m, 1024, 512, True, ShardReader(m, skip_bad=True))
    assert "not cached" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("stats/*"))
    whole = input_statistics(mf.load(shard_set), 1024, 512, True)  # the intact set: its own statistics
    assert whole["mean"] != partial["mean"] and list((tmp_path / "cache").glob("stats/*"))
