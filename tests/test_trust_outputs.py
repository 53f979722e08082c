"""Trust boundary, outputs (docs/security.md): what umx writes stays in the folder it writes to.

A model directory handed over may hold symbolic links where umx-eval makes its folders, links at
the temporary names of atomic writes, or hostile `<target>.json` files; names given on the command
line may try to leave the folder. Each test builds that input and checks that nothing outside was
written and that the refusal is one line. Also: an all-silent validation target is scored as NaN
frames (museval's rule for a silent frame) instead of a traceback."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from umx.evaluate import evaluate, score_track, shard_split, silent_sources
from umx.evaluate_cli import main as eval_main
from umx.names import UnsafeNameError, subfolder
from umx.plot import main as plot_main
from umx.plot import plot_history
from umx.shards import storage
from umx.shards.records import TrackRecord
from umx.shards.storage import atomic_writer, write_json
from umx.train import TrainConfig, train
from one_line import one_line as _one_line  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEEP = "not yours to write\n"




def _victim(tmp_path: Path) -> Path:
    """A file outside every output folder, which no test may change."""
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text(KEEP)
    return victim


@pytest.fixture(scope="module")
def model(shard_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust-outputs") / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), hidden_size=8, seq_dur=0.5, batch_size=3,
                      nfft=1024, nhop=512, epochs=1, quiet=True))
    return out


def _model_copy(model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(model, folder, symlinks=True)
    return folder


def _eval(model_dir: Path, shard_set, *extra: str) -> int:
    return eval_main([str(model_dir), "--shards", str(shard_set), "--split", "valid", "--quiet", "--workers", "1",
                      "--no-cuda", *extra])


# --- 1. umx-eval's folders: no link followed out of the output folder ---------------------------------

@pytest.mark.parametrize("planted", ["bssv4", "bssv4/valid"])
def test_eval_refuses_a_link_planted_where_it_makes_a_folder(model, shard_set, tmp_path, planted, capsys):
    """The default --outdir is the model directory: a link there at `bssv4` or `bssv4/valid` would carry
    the per-track files elsewhere (and overwrite files there)."""
    folder = _model_copy(model, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    track_ids = [r.id for r in shard_split(str(shard_set), "valid").records()]
    for track in track_ids:  # what a link to `valid` would overwrite
        (elsewhere / f"{track}.json").write_text(KEEP)
    link = folder / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    assert _eval(folder, shard_set) == 2
    _one_line(capsys, f"{link}: is a symbolic link")
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(f"{t}.json" for t in track_ids)
    assert all(p.read_text() == KEEP for p in elsewhere.iterdir())
    assert not (folder / "eval_valid.json").exists()


def test_subfolder_makes_real_folders_and_refuses_links_and_files(tmp_path):
    out = subfolder(tmp_path / "new" / "out", ["bssv4", "valid"], "here")
    assert out == tmp_path / "new" / "out" / "bssv4" / "valid" and out.is_dir() and not out.is_symlink()
    assert subfolder(tmp_path / "new" / "out", ["bssv4", "valid"], "here") == out  # again: already there
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    (tmp_path / "file").write_text(KEEP)
    with pytest.raises(UnsafeNameError, match="dangling: is a symbolic link"):
        subfolder(tmp_path, ["dangling", "x"], "here")
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(UnsafeNameError, match="file: exists and is not a folder"):
        subfolder(tmp_path, ["file"], "here")
    with pytest.raises(UnsafeNameError, match="not a safe name"):
        subfolder(tmp_path, [".."], "here")


# --- 2. atomic writes: an exclusive temp file, a rename that replaces a link ---------------------------

def test_a_link_at_the_temp_name_is_never_written_through(tmp_path, monkeypatch):
    """The old temp name `.NAME.tmp<pid>` could be planted (one link per pid covers every run)."""
    victim = _victim(tmp_path)
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    folder = tmp_path / "out"
    folder.mkdir()
    for pid in (4242, real_pid):
        (folder / f".x.json.tmp{pid}").symlink_to(victim)
    write_json(folder / "x.json", {"a": 1})
    assert victim.read_text() == KEEP
    assert not (folder / "x.json").is_symlink() and json.loads((folder / "x.json").read_text()) == {"a": 1}
    assert (folder / ".x.json.tmp4242").is_symlink()  # left alone, not followed


def test_the_rename_replaces_a_link_at_the_final_name(tmp_path):
    victim = _victim(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "x.json").symlink_to(victim)
    write_json(folder / "x.json", {"a": 1})
    assert victim.read_text() == KEEP
    assert not (folder / "x.json").is_symlink() and json.loads((folder / "x.json").read_text()) == {"a": 1}


def test_temp_names_are_new_and_unpredictable(tmp_path, monkeypatch):
    used = []
    replace = os.replace
    monkeypatch.setattr(storage.os, "replace", lambda a, b: (used.append(Path(a).name), replace(a, b))[1])
    old = os.umask(0o022)
    try:
        for _ in range(2):
            write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert len(set(used)) == 2 and all(re.fullmatch(r"\.x\.json\.tmp[0-9a-f]{16}", n) for n in used), used
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644  # as open() makes files: the umask applies


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    write_json(tmp_path / "x.json", {"a": 1})
    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "x.json", "w") as f:
        f.write("{half")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == ["x.json"] and json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_a_temp_file_that_cannot_be_made_names_the_file_meant(tmp_path):
    path = tmp_path / ("a" * 250)  # a fine name, but with the temp file's prefix and suffix past NAME_MAX
    with pytest.raises(OSError) as e:
        write_json(path, {})
    assert e.value.filename == str(path) and not os.listdir(tmp_path)


def _results(epochs: int = 3) -> dict:
    return {"args": {"lr": 1e-3, "dataset": "trackfolder_fix"}, "train_loss_history": [3.0, 2.0, 1.5][:epochs],
            "valid_loss_history": [3.5, 2.5, 2.0][:epochs], "lr_history": [1e-3, 3e-4, 3e-4][:epochs],
            "best_epoch": epochs}


def test_umx_plot_never_writes_through_planted_links(tmp_path, monkeypatch):
    victim = _victim(tmp_path)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "vocals.json").write_text(json.dumps(_results()))
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    (folder / ".vocals_loss.png.tmp4242").symlink_to(victim)
    (folder / "vocals_loss.png").symlink_to(victim)
    assert plot_main([str(folder), "--target", "vocals"]) == 0
    assert victim.read_text() == KEEP
    png = folder / "vocals_loss.png"
    assert not png.is_symlink() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- 3. umx-plot --target: a name, not a path ------------------------------------------------------------

@pytest.mark.parametrize("target", ["../x", "/tmp/x", "a/../x", "x\ny"])
def test_plot_target_must_be_a_name(tmp_path, target, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "x.json").write_text(json.dumps(_results()))  # what `--target ../x` would read
    assert plot_main([str(folder), "--target", target]) == 2
    _one_line(capsys, "--target", "not a safe name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "x.json"] and not list(folder.iterdir())


# --- 4. umx-plot reads a model directory's JSON bounded and checked --------------------------------------

HOSTILE_JSON = {
    "nested": ('{"train_loss_history": ' + "[" * 100_000 + "]" * 100_000 + "}").encode(),
    "not utf-8": b'{"train_loss_history": [1.0], "note": "\xff\xfe"}',
    "long integer": b'{"train_loss_history": [' + b"1" * 5000 + b"]}",
    "string history": b'{"train_loss_history": "abc"}',
    "string in a history": b'{"train_loss_history": [1.0, "x"]}',
    "object history": b'{"train_loss_history": {"a": 1}}',
    "bool in a history": b'{"train_loss_history": [true]}',
    "args a list": b'{"train_loss_history": [1.0], "args": [1]}',
    "lr a string": b'{"train_loss_history": [1.0], "lr_history": [1e-3], "args": {"lr": "fast"}}',
    "dataset a number": b'{"train_loss_history": [1.0], "args": {"dataset": 5}}',
    "best epoch a string": b'{"train_loss_history": [1.0], "valid_loss_history": [1.0], "best_epoch": "1"}',
    "sdr a list": b'{"train_loss_history": [1.0], "valid_sdr_history": [[1]]}',
}


@pytest.mark.parametrize("case", HOSTILE_JSON)
def test_hostile_results_json_is_one_line(tmp_path, case, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "vocals.json").write_bytes(HOSTILE_JSON[case])
    assert plot_main([str(folder), "--target", "vocals"]) == 2
    _one_line(capsys, "vocals.json")
    assert not (folder / "vocals_loss.png").exists()


def test_results_json_over_the_limit_is_not_read(tmp_path, monkeypatch, capsys):
    """The glob of umx-plot (no --target) read every *.json whole; now through the 64 MiB reader."""
    from umx.models import directory

    monkeypatch.setattr(directory, "MAX_JSON_BYTES", 4096)
    folder = tmp_path / "m"
    folder.mkdir()
    big = _results()
    big["padding"] = "x" * 8192
    (folder / "vocals.json").write_text(json.dumps(big))
    assert plot_main([str(folder), "--target", "vocals"]) == 2
    _one_line(capsys, "vocals.json: larger than")
    assert plot_main([str(folder)]) == 2  # not a results file umx will read: passed over
    _one_line(capsys, "no <target>.json with a loss history")
    assert not (folder / "vocals_loss.png").exists()


def test_umx_plot_passes_over_other_json_and_refuses_damaged_results(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "vocals.json").write_text(json.dumps(_results()))
    (folder / "nested.json").write_bytes(HOSTILE_JSON["nested"])
    (folder / "latin.json").write_bytes(HOSTILE_JSON["not utf-8"])
    (folder / "list.json").write_text("[1, 2]")
    (folder / "separator.json").write_text(json.dumps({"nfft": 4096}))
    assert plot_main([str(folder)]) == 0
    assert capsys.readouterr().out.split() == [str(folder / "vocals_loss.png")]
    (folder / "bass.json").write_bytes(HOSTILE_JSON["string history"])  # a results file, damaged
    assert plot_main([str(folder)]) == 2
    _one_line(capsys, "bass.json: 'train_loss_history' must be a list of numbers")


def test_gaps_and_non_finite_values_are_drawn(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    res = {**_results(), "train_loss_history": [3.0, None, float("nan"), float("inf"), 2.0],
           "valid_sdr_history": [None, 1.5, None], "args": {"lr": 10 ** 400}, "best_epoch": 10 ** 30}
    (folder / "vocals.json").write_text(json.dumps(res))
    assert plot_history(folder, "vocals").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- 5. an all-silent validation target ------------------------------------------------------------------

def test_score_track_of_a_silent_source_is_nan_frames():
    rng = np.random.default_rng(3)
    refs = {"vocals": np.zeros((8000 * 3 + 100, 2)), "rest": rng.standard_normal((8000 * 3 + 100, 2))}
    ests = {"vocals": rng.standard_normal((8000 * 3 + 100, 2)), "rest": refs["rest"]}
    antiphase = np.stack([refs["rest"][:, 0], -refs["rest"][:, 0]], 1)  # left == -right: silent to museval
    assert silent_sources(refs) == ["vocals"] and silent_sources({"a": antiphase}) == ["a"]
    silent_estimate = ({"vocals": ests["vocals"], "rest": refs["rest"]}, {**ests, "vocals": 0 * ests["vocals"]})
    for metric in ("bssv4", "museval"):  # museval raises for either; scored as museval scores a silent frame
        for r, e in ((refs, ests), silent_estimate):
            scores = score_track(r, e, 8000, metric)
            assert set(scores) == {"vocals", "rest"}
            for name in scores:
                assert all(len(v) == 3 and all(math.isnan(x) for x in v) for v in scores[name].values())


def test_eval_scores_a_silent_target_as_nan_and_writes_its_json(model, shard_set, tmp_path, capsys):
    base = shard_split(str(shard_set), "valid")
    silent_id = next(iter(base.records())).id

    def records():
        for rec in base.records():
            if rec.id == silent_id:
                rec = TrackRecord(rec.id, rec.meta, {**rec.sources, "vocals": np.zeros_like(rec.sources["vocals"])},
                                  rec.mixture)
            yield rec

    folder = _model_copy(model, tmp_path)
    victim = _victim(tmp_path)
    (folder / "eval_valid.json").symlink_to(victim)  # the final name a link: replaced, not followed
    results = evaluate(folder, dataclasses.replace(base, records=records), "valid", workers=1, progress=False,
                       outdir=folder)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"track '{silent_id}'" in warnings[0] and "reference 'vocals'" in warnings[0]
    assert "Traceback" not in err
    assert victim.read_text() == KEEP and not (folder / "eval_valid.json").is_symlink()
    written = json.loads((folder / "eval_valid.json").read_text())
    tracks = {t["id"]: t for t in written["tracks"]}
    assert len(tracks) == 2 and tracks[silent_id]["scores"]["vocals"]["SDR"] is None
    other = next(t for i, t in tracks.items() if i != silent_id)
    assert written["scores"]["vocals"]["SDR"] == pytest.approx(other["scores"]["vocals"]["SDR"], abs=1e-4)
    assert results["scores"]["vocals"]["SDR"] == pytest.approx(other["scores"]["vocals"]["SDR"], abs=1e-4)
    assert math.isfinite(tracks[silent_id]["usdr"]["vocals"])  # uSDR is defined for a silent reference
    frames = json.loads((folder / "bssv4" / "valid" / f"{silent_id}.json").read_text())
    assert all(math.isnan(f["metrics"]["SDR"]) for t in frames["targets"] for f in t["frames"])


# --- 6. split names name files: safe_name first ------------------------------------------------------------

@pytest.mark.parametrize("split", ["../escape", "a/b", ".."])
def test_eval_split_must_be_a_name(model, shard_set, tmp_path, split, capsys):
    assert eval_main([str(model), "--shards", str(shard_set), "--split", split, "--outdir", str(tmp_path / "o"),
                      "--quiet"]) == 2
    _one_line(capsys, "--split", "not a safe name")
    assert not (tmp_path / "o").exists()
    base = shard_split(str(shard_set), "valid")  # an EvalSet does not check its split: evaluate() does
    with pytest.raises(UnsafeNameError, match="split name"):
        evaluate(model, base, split, workers=1, progress=False, outdir=tmp_path / "o", metrics=("usdr",))
    assert not list(tmp_path.rglob("*escape*")) and not (tmp_path / "o").exists()



def test_no_writer_uses_a_guessable_temp_name(tmp_path, monkeypatch):
    """Every temp file umx makes comes from storage.new_temp (or a private mkdtemp folder): links
    planted at the names the old writers used (pid, thread id, fixed suffixes) are never written."""
    import hashlib
    import os
    import threading

    import numpy as np

    from umx import audio
    from umx.shards import cache

    monkeypatch.setattr(os, "getpid", lambda: 4242)
    victim = tmp_path / "victim"
    victim.write_text(KEEP)
    out = tmp_path / "out"
    out.mkdir()
    for name in (".a.wav.tmp", ".a.wav.tmp4242", f".x.bin.4242-{threading.get_ident()}.part",
                 f"..x.bin.verified.4242-{threading.get_ident()}.tmp", ".tmp-s.stem.mp4"):
        (out / name).symlink_to(victim)
    audio.write(out / "a.wav", np.zeros((2, 100), np.float32), 44100)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    cache.download_verified(str(src), out / "x.bin", hashlib.sha256(b"x" * 1000).hexdigest(), cache.CacheStats(), out)
    assert victim.read_text() == KEEP
    assert (out / "x.bin").read_bytes() == b"x" * 1000 and audio.read(out / "a.wav")[0].shape == (2, 100)
