"""umx-prep never destroys what is not its own, never publishes stale data, bounds the work a
hostile file can cause, and reports bad options and machine failures as one line.

Disk-full and read-only cases use small tmpfs mounts (the tests run as root); they skip
where mounting is not permitted. Bucket cases use moto's S3 server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from conftest import FIX_OPTS, moto_bucket
from umx import audio, synth
from umx.errors import AudioError, UmxError
from umx.prep import prepare
from umx.prep.cli import main as prep_main
from umx.shards import manifest as mf
from umx.shards import storage
from umx.shards.storage import sha256_of

SR = 8000  # prep at the data's own rate: no resampling, small shards
PREP = dict(sample_rate=SR, progress=False, **FIX_OPTS)
FIX_ARGS = ["--target-file", "vocals.wav", "--interferer-files", "bass.wav", "drums.wav", "other.wav"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """trackfolder_fix, 2 train + 1 valid tracks of ~1 s at 8 kHz (~130 KB per track)."""
    return synth.write_layout("trackfolder_fix", tmp_path_factory.mktemp("tiny") / "d", n_train=2, n_valid=1,
                              duration=1.0, seed=5, sample_rate=SR)


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _verified(out):
    """The shard set at `out` loads and every shard matches its manifest entry."""
    m = mf.load(out)
    for split in m.splits():
        for e in m.shards(split):
            assert sha256_of(m.shard_url(e)) == (e.sha256, e.bytes), e.name
    return m


def _cli(capsys, *args):
    rc = prep_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@contextlib.contextmanager
def _tmpfs(path, size="1m", ro=False):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount_ro(path):
    r = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {r.stderr.strip()}")


# --- 1. --out is only ever a shard set -----------------------------------------------------------------


def test_folder_of_other_files_is_refused_and_left_alone(tiny, tmp_path):
    out = tmp_path / "out"
    (out / "store.zarr" / "train").mkdir(parents=True)
    (out / "store.zarr" / "train" / "zarr.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "train-000000.tar").write_bytes(b"another tool's shard")
    (out / "clip-000003.tar").write_bytes(b"and another")
    before = _tree(out)
    for overwrite in (False, True):
        with pytest.raises(UmxError, match=re.escape(f"{out}: is not empty and holds no umx shard set")):
            prepare("trackfolder_fix", tiny, out, overwrite=overwrite, **PREP)
        assert _tree(out) == before and not (out / ".staging").exists()
    (out / "manifest.json").write_text('{"project": "not umx"}')  # a manifest, but not a umx one
    before = _tree(out)
    for overwrite in (False, True):
        with pytest.raises(UmxError, match="holds a manifest.json that is not a umx shard set"):
            prepare("trackfolder_fix", tiny, out, overwrite=overwrite, **PREP)
        assert _tree(out) == before


def test_out_overlapping_the_dataset_is_refused(tiny, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    before = _tree(root)
    for out, why in [(root, "is the dataset folder itself"), (tmp_path, "contains the dataset folder"),
                     (root / "train" / "track_000" / "shards", "inside the dataset's 'train' folder"),
                     (root / "valid" / "new", "inside the dataset's 'valid' folder")]:
        for overwrite in (False, True):
            with pytest.raises(UmxError, match=re.escape(why)):
                prepare("trackfolder_fix", root, out, overwrite=overwrite, **PREP)
    assert _tree(root) == before
    prepare("trackfolder_fix", root, root / "shards", **PREP)  # beside the splits is not where data is read
    assert _verified(root / "shards").splits() == ["train", "valid"]


def test_overwrite_replaces_only_what_the_old_manifest_lists(tiny, tmp_path):
    out = tmp_path / "set"
    prepare("trackfolder_fix", tiny, out, shard_bytes=100_000, **PREP)  # one shard per track
    old = {e.name for s in mf.load(out).splits() for e in mf.load(out).shards(s)}
    assert len(old) == 3
    mine = {"notes.txt": b"mine", "valid-000099.tar": b"someone else's shard", "store.zarr/zarr.json": b"{}"}
    for name, blob in mine.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(blob)
    prepare("trackfolder_fix", tiny, out, overwrite=True, **PREP)  # default size: one shard per split
    m = _verified(out)
    assert {e.name for s in m.splits() for e in m.shards(s)} == {"train-000000.tar", "valid-000000.tar"}
    assert not (out / "train-000001.tar").exists()  # the old set's, no longer listed: removed
    assert {n: (out / n).read_bytes() for n in mine} == mine  # not the old set's: untouched
    assert not (out / ".staging").exists()


def test_a_new_name_taken_by_a_foreign_file_is_refused(tiny, tmp_path):
    out = tmp_path / "set"
    prepare("trackfolder_fix", tiny, out, **PREP)  # train-000000.tar, valid-000000.tar
    (out / "train-000001.tar").write_bytes(b"not umx's")
    (out / "store.zarr").mkdir()
    (out / "store.zarr" / "mine").write_text("x")
    before = _tree(out)
    with pytest.raises(UmxError, match=r"train-000001.tar already exist.*refusing to replace"):
        prepare("trackfolder_fix", tiny, out, shard_bytes=100_000, overwrite=True, **PREP)
    assert _tree(out) == before
    with pytest.raises(UmxError, match=r"store.zarr already exist"):
        prepare("trackfolder_fix", tiny, out, overwrite=True, format="zarr", **PREP)
    assert _tree(out) == before
    _verified(out)


# --- 3. resource bounds: absurd sample rates, lengths before resampling ---------------------------------


def _with_rate(path, rate):
    """Patch the sample rate (and byte rate) in a valid WAV's fmt chunk."""
    blob = bytearray(path.read_bytes())
    at = blob.index(b"fmt ") + 8
    block_align = int.from_bytes(blob[at + 12: at + 14], "little")
    blob[at + 4: at + 8] = rate.to_bytes(4, "little")
    blob[at + 8: at + 12] = (rate * block_align).to_bytes(4, "little")
    path.write_bytes(bytes(blob))


def test_absurd_header_rates_are_refused_by_audio(tmp_path):
    path = tmp_path / "x.wav"
    for rate in (1, 7999, 384001, 10**9):
        sf.write(str(path), np.zeros((16384, 2), np.int16), 44100, subtype="PCM_16")  # 64 KiB of audio
        _with_rate(path, rate)
        assert sf.info(str(path)).samplerate == rate  # the crafted header is what libsndfile sees
        with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside the supported 8000–384000 Hz"):
            audio.info(path)
        with pytest.raises(AudioError, match=f"sample rate {rate} Hz"):
            audio.read(path)
    assert (audio.MIN_RATE, audio.MAX_RATE) == (8000, 384000)
    for rate in (audio.MIN_RATE, audio.MAX_RATE):
        sf.write(str(path), np.zeros((100, 2), np.int16), rate, subtype="PCM_16")
        assert audio.info(path).sample_rate == rate and audio.read(path)[1] == rate


def test_prep_skips_a_track_with_an_absurd_rate(tiny, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    bad = root / "train" / "track_000" / "bass.wav"
    _with_rate(bad, 1)  # ~36 KB that would "last" 4.5 hours at 1 Hz
    with pytest.raises(AudioError):  # (checked first: prep without the bound would grow to GBs)
        audio.info(bad)
    m = prepare("trackfolder_fix", root, tmp_path / "out", **PREP)
    assert m["splits"]["train"]["tracks"] == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    entry = next(e for e in report["files"] if e["file"] == str(bad))
    assert entry["status"] == "skipped" and entry["action"] == "track skipped"
    assert "sample rate 1 Hz is outside" in entry["problem"]
    with pytest.raises(UmxError, match=r"--strict: 1 file"):
        prepare("trackfolder_fix", root, tmp_path / "strict", strict=True, **PREP)


def test_lengths_are_checked_before_resampling(tiny, tmp_path, monkeypatch):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    long = root / "train" / "track_001" / "other.wav"
    audio.write(long, np.zeros((2, 22050 * 4), np.float32), 22050)  # 4 s at another rate beside ~1 s

    def resample(*args):
        raise AssertionError("resampled a track that is skipped for its lengths")
    monkeypatch.setattr(audio, "resample", resample)
    m = prepare("trackfolder_fix", root, tmp_path / "out", workers=1, **PREP)
    assert m["splits"]["train"]["tracks"] == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    entry = next(e for e in report["files"] if e["class"] == "length")
    assert entry["status"] == "skipped" and entry["file"] == str(long) and "> --max-length-diff" in entry["problem"]


# --- 4. bad options and machine failures: one line -------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--sample-rate", "0"], "--sample-rate"), (["--sample-rate", "-44100"], "--sample-rate"),
    (["--sample-rate", "100000000"], "--sample-rate"), (["--workers", "0"], "--workers"),
    (["--workers", "-3"], "--workers"), (["--shard-size", "0"], "--shard-size"),
    (["--shard-size", "-1"], "--shard-size"), (["--shard-size", "nan"], "--shard-size"),
    (["--max-length-diff", "-0.5"], "--max-length-diff"), (["--max-length-diff", "nan"], "--max-length-diff"),
    (["--storage-options", "{not json"], "--storage-options"),
])
def test_bad_settings_are_one_line_before_any_work(tiny, tmp_path, capsys, monkeypatch, extra, message):
    def scan(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")
    monkeypatch.setattr("umx.prep.pipeline.scan", scan)
    rc, err = _cli(capsys, "trackfolder_fix", tiny, "--out", tmp_path / "o", "--quiet", *FIX_ARGS, *extra)
    assert rc == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("a file")
    rc, err = _cli(capsys, "trackfolder_fix", tiny, "--out", out, "--quiet", "--workers", "1", *FIX_ARGS)
    assert rc == 2 and err == f"error: {out}: --out is an existing file, not a folder\n"
    assert out.read_text() == "a file"


def test_disk_full_is_one_line_and_keeps_the_old_set(tmp_path, capsys):
    small = synth.write_layout("trackfolder_fix", tmp_path / "small", n_train=1, n_valid=1, duration=1.0, seed=1,
                               sample_rate=SR)
    big = synth.write_layout("trackfolder_fix", tmp_path / "big", n_train=8, n_valid=1, duration=2.0, seed=2,
                             sample_rate=SR)  # ~2.3 MB of shards
    out = tmp_path / "disk"
    with _tmpfs(out, "1m"):
        prepare("trackfolder_fix", small, out, **PREP)
        before = _tree(out)
        rc, err = _cli(capsys, "trackfolder_fix", big, "--out", out, "--overwrite", "--quiet", "--workers", "1",
                       "--sample-rate", SR, *FIX_ARGS)
        assert rc == 1 and err.count("\n") == 1, err
        assert err.startswith(f"error: {out}/") and err.endswith(": no space left on device\n"), err
        assert {k: v for k, v in _tree(out).items() if not k.startswith(".staging")} == before
        _verified(out)


def test_read_only_out_is_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "ro"
    with _tmpfs(out, "1m", ro=True):
        rc, err = _cli(capsys, "trackfolder_fix", tiny, "--out", out, "--quiet", "--workers", "1",
                       "--sample-rate", SR, *FIX_ARGS)
        assert rc == 1 and err == f"error: {out}/.staging: read-only file system\n", err
    with _tmpfs(out, "1m"):  # a shard set on a file system that became read-only: kept as it is
        prepare("trackfolder_fix", tiny, out, **PREP)
        before = _tree(out)
        _remount_ro(out)
        rc, err = _cli(capsys, "trackfolder_fix", tiny, "--out", out, "--overwrite", "--quiet", "--workers", "1",
                       "--shard-size", "0.1", "--sample-rate", SR, *FIX_ARGS)
        assert rc == 1 and err.count("\n") == 1 and "read-only file system" in err, err
        assert _tree(out) == before
        _verified(out)


# --- 5. layout options name files in a track folder, never paths ------------------------------------------


def test_target_file_cannot_reach_into_another_split(tiny, tmp_path, capsys):
    rc, err = _cli(capsys, "trackfolder_fix", tiny, "--out", tmp_path / "o", "--quiet", "--workers", "1",
                   "--sample-rate", SR, "--target-file", "../../valid/track_000/vocals.wav",
                   "--interferer-files", "bass.wav", "drums.wav")
    assert rc == 2 and err.count("\n") == 1
    assert "--target-file: file name '../../valid/track_000/vocals.wav' is not a safe name" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("layout, args, flag", [
    ("trackfolder_fix", ["--target-file", "vocals.wav", "--interferer-files", "bass.wav", "../t/drums.wav"],
     "--interferer-files"),
    ("trackfolder_fix", ["--target-file", "..", "--interferer-files", "bass.wav"], "--target-file"),
    ("trackfolder_var", ["--target-file", "../track_001/vocals.wav"], "--target-file"),
    ("trackfolder_var", ["--target-file", "vocals.wav", "--ext", "/../../valid/x.wav"], "--ext"),
    ("aligned", ["--input-file", "../*/mixture.wav", "--output-file", "vocals.wav"], "--input-file"),
    ("aligned", ["--input-file", "mixture.wav", "--output-file", "**/vocals.wav"], "--output-file"),
    ("sourcefolder", ["--target-dir", "../valid/vocals", "--interferer-dirs", "bass"], "--target-dir"),
    ("sourcefolder", ["--target-dir", "vocals", "--interferer-dirs", "bass", "/etc"], "--interferer-dirs"),
    ("sourcefolder", ["--target-dir", "vocals", "--interferer-dirs", "bass", "--ext", "wav\\..\\x"], "--ext"),
    ("trackfolder_fix", ["--target-file", "voc\x00als.wav", "--interferer-files", "bass.wav"], "--target-file"),
])
def test_layout_names_are_names_not_paths(tmp_path, capsys, layout, args, flag):
    root = tmp_path / "d"
    (root / "train").mkdir(parents=True)
    (root / "valid").mkdir()
    rc, err = _cli(capsys, layout, root, "--out", tmp_path / "o", "--quiet", *args)
    assert rc == 2 and err.startswith(f"error: {flag}: ") and "is not a safe name" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_aligned_globs_are_allowed():
    from umx.layouts import check_names

    check_names({"input_file": "mix*.wav", "output_file": "voc[a-z]ls?.wav", "ext": ".flac",
                 "interferer_dirs": ["car noise", "wind"], "interferer_files": None})


# --- 1 + 2 in a bucket: refuse what is not ours, upload by checksum ---------------------------------------

BUCKET = "umx-safety"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1, one bucket; endpoint and keys via the AWS environment."""
    pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    with moto_bucket(BUCKET) as client:
        yield client


def _objects(client, prefix):
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in listed}


def _bucket_verified(client, prefix):
    """Every shard in the bucket is the one its manifest lists (sha256 of the object itself)."""
    m = mf.load(f"s3://{BUCKET}/{prefix}")
    objects = _objects(client, prefix)
    for split in m.splits():
        for e in m.shards(split):
            assert hashlib.sha256(objects[e.name]).hexdigest() == e.sha256, e.name
    return m, objects


def test_bucket_prefix_of_other_objects_is_refused(s3, tiny):
    for key in ("foreign/notes.txt", "foreign/other-000000.tar", "foreign/store.zarr/zarr.json"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not umx's")
    before = _objects(s3, "foreign")
    for overwrite in (False, True):
        with pytest.raises(UmxError, match="is not empty and holds no umx shard set"):
            prepare("trackfolder_fix", tiny, f"s3://{BUCKET}/foreign", overwrite=overwrite, **PREP)
        assert _objects(s3, "foreign") == before


def test_bucket_overwrite_removes_only_listed_objects(s3, tiny):
    url = f"s3://{BUCKET}/kept"
    prepare("trackfolder_fix", tiny, url, shard_bytes=100_000, **PREP)
    assert len(_objects(s3, "kept")) == 5  # 3 shards, report, manifest
    mine = {"mine-000001.tar": b"someone else's shard", "notes.txt": b"mine"}
    for name, blob in mine.items():
        s3.put_object(Bucket=BUCKET, Key=f"kept/{name}", Body=blob)
    prepare("trackfolder_fix", tiny, url, overwrite=True, **PREP)
    _, objects = _bucket_verified(s3, "kept")
    assert set(objects) == {"train-000000.tar", "valid-000000.tar", "report.json", "manifest.json", *mine}
    assert {n: objects[n] for n in mine} == mine


def _same_length_change(path):
    pcm, rate = audio.read(path, "int16")
    size = path.stat().st_size
    audio.write(path, audio.to_float32(pcm // 2), rate)
    assert path.stat().st_size == size  # same length, same bytes: only the content differs


def test_changed_source_of_the_same_length_is_uploaded(s3, tiny, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    url = f"s3://{BUCKET}/changed"
    first = prepare("trackfolder_fix", root, url, **PREP)
    _same_length_change(root / "train" / "track_000" / "vocals.wav")
    second = prepare("trackfolder_fix", root, url, overwrite=True, **PREP)
    old, new = (m["splits"]["train"]["shards"][0] for m in (first, second))
    assert old["bytes"] == new["bytes"] and old["sha256"] != new["sha256"]
    _bucket_verified(s3, "changed")


def test_interrupted_upload_resends_only_what_is_missing_or_changed(s3, tiny, tmp_path, monkeypatch):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    url = f"s3://{BUCKET}/resumed"
    real, sent = storage.upload, []

    def flaky(local, dest):
        if len(sent) == 2:
            raise storage.StorageError(f"{dest}: connection lost (simulated)")
        sent.append(dest.rsplit("/", 1)[1])
        real(local, dest)

    monkeypatch.setattr(storage, "upload", flaky)
    with pytest.raises(UmxError, match="connection lost"):
        prepare("trackfolder_fix", root, url, shard_bytes=100_000, **PREP)
    first = list(sent)
    assert len(first) == 2 and "manifest.json" not in _objects(s3, "resumed")
    # the same input: the rerun is the interrupted prep's own; what it sent is not sent again
    sent.clear()
    monkeypatch.setattr(storage, "upload", lambda local, dest: (sent.append(dest.rsplit("/", 1)[1]),
                                                                real(local, dest)))
    prepare("trackfolder_fix", root, url, shard_bytes=100_000, **PREP)
    assert not set(first) & set(sent) and "manifest.json" in sent
    _bucket_verified(s3, "resumed")
    # interrupted again, then the input changes (same lengths): what was sent is stale, so sent again
    sent.clear()
    monkeypatch.setattr(storage, "upload", flaky)
    (root / "train" / "track_000" / "bass.wav").touch()  # other input: a new prep
    with pytest.raises(UmxError, match="connection lost"):
        prepare("trackfolder_fix", root, url, shard_bytes=100_000, overwrite=True, **PREP)
    for track in ("track_000", "track_001"):
        _same_length_change(root / "train" / track / "vocals.wav")
    monkeypatch.setattr(storage, "upload", real)
    prepare("trackfolder_fix", root, url, shard_bytes=100_000, overwrite=True, **PREP)
    _bucket_verified(s3, "resumed")
