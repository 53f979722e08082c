import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FIX_OPTS
from umx import audio, synth
from umx.errors import UmxError
from umx.models.openunmix.network import Spectrogram
from umx.prep import prepare
from umx.prep.cli import main as prep_main
from umx.shards import manifest as mf
from umx.shards.storage import sha256_of
from umx.shards.webdataset import read_shard

SOURCES = ["vocals", "bass", "drums", "other"]


def _all_records(shard_dir, split):
    m = mf.load(shard_dir)
    return [r for e in m.shards(split) for r in read_shard(m.shard_url(e))]


def test_records_bit_exact_against_source_pcm(dataset, shard_set):
    for split in ("train", "valid"):
        records = _all_records(shard_set, split)
        folders = sorted(p for p in (dataset / split).iterdir())
        assert [r.meta["name"] for r in records] == [p.name for p in folders]
        for record, folder in zip(records, folders):
            assert list(record.sources) == SOURCES
            for name in SOURCES:
                pcm, rate = audio.read(folder / f"{name}.wav", "int16")
                assert rate == 44100
                np.testing.assert_array_equal(record.sources[name], pcm)


def test_manifest_counts_and_checksums(shard_set):
    m = mf.load(shard_set)
    for split in m.splits():
        for entry in m.shards(split):
            digest, nbytes = sha256_of(m.shard_url(entry))
            assert (digest, nbytes) == (entry.sha256, entry.bytes)
            records = list(read_shard(m.shard_url(entry)))
            assert [r.id for r in records] == list(entry.track_ids)
            assert [r.frames for r in records] == list(entry.track_frames)
    report = json.loads((shard_set / "report.json").read_text())
    assert report["summary"]["tracks_kept"] == {"train": 5, "valid": 2}
    assert {e["status"] for e in report["files"]} == {"ok"} and len(report["files"]) == 28


def test_statistics_equal_direct_computation(dataset, shard_set):
    frames = []
    for folder in sorted((dataset / "train").iterdir()):
        mix = sum(audio.read(folder / f"{n}.wav")[0] for n in SOURCES)
        spec = Spectrogram(4096, 1024)(torch.from_numpy(mix)[None])
        frames.append(spec[0].mean(0).T.double().numpy())
    frames = np.concatenate(frames)
    std = frames.std(0)
    std = np.maximum(std, 1e-4 * std.max())
    stats = mf.load(shard_set).statistics(4096, 1024)
    assert stats["frames"] == frames.shape[0]
    np.testing.assert_allclose(stats["mean"], frames.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-6, atol=1e-9)


def test_output_independent_of_worker_count(dataset, shard_set, tmp_path):
    prepare("trackfolder_fix", dataset, tmp_path / "one", workers=1, shard_bytes=3 * 2**20,
            progress=False, **FIX_OPTS)
    a = json.loads((tmp_path / "one" / "manifest.json").read_text())
    b = json.loads((shard_set / "manifest.json").read_text())
    assert a == b  # shards included: same names, bytes and sha256


def _copy(dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    return root


def test_bad_tracks_are_skipped_and_reported(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    (root / "train" / "track_000" / "vocals.wav").unlink()
    (root / "train" / "track_001" / "drums.wav").write_bytes(b"garbage, not a wav file")
    m = prepare("trackfolder_fix", root, tmp_path / "out", progress=False, **FIX_OPTS)
    assert m["splits"]["train"]["tracks"] == 3
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    skipped = {e["file"]: e for e in report["files"] if e["status"] == "skipped"}
    missing = str(root / "train" / "track_000" / "vocals.wav")
    assert "missing source file" in skipped[missing]["problem"]
    bad = skipped[str(root / "train" / "track_001" / "drums.wav")]
    assert "not a readable audio file" in bad["problem"] and bad["action"] == "track skipped"
    with pytest.raises(UmxError, match="--strict: 2 file"):
        prepare("trackfolder_fix", root, tmp_path / "strict", strict=True, progress=False, **FIX_OPTS)


def test_repairs_mono_and_other_rates(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    track = root / "train" / "track_002"
    stereo, _ = audio.read(track / "bass.wav")
    audio.write(track / "bass.wav", stereo[:1], 44100)
    other, _ = audio.read(track / "other.wav")
    audio.write(track / "other.wav", audio.resample(other, 44100, 22050), 22050)
    prepare("trackfolder_fix", root, tmp_path / "out", progress=False, **FIX_OPTS)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    actions = [(e["file"], e["action"]) for e in report["files"] if e["status"] == "repaired"]
    assert (str(track / "bass.wav"), "duplicated to stereo") in actions
    assert (str(track / "other.wav"), "resampled to 44100 Hz") in actions
    rec = [r for r in _all_records(tmp_path / "out", "train") if r.meta["name"] == "track_002"][0]
    assert rec.sources["bass"].shape[0] == 2
    np.testing.assert_array_equal(rec.sources["bass"][0], rec.sources["bass"][1])
    assert len({a.shape[1] for a in rec.sources.values()}) == 1


def test_empty_split_is_an_error_listing_why(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    for folder in (root / "valid").iterdir():
        (folder / "other.wav").unlink()
    with pytest.raises(UmxError) as e:
        prepare("trackfolder_fix", root, tmp_path / "out", progress=False, **FIX_OPTS)
    msg = str(e.value)
    assert "no usable track in the 'valid' split" in msg
    assert "track_000/other.wav" in msg and "missing source file" in msg
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_failed_prep_keeps_existing_shard_set(dataset, shard_set, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(shard_set, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UmxError, match="already holds a shard set"):
        prepare("trackfolder_fix", dataset, out, progress=False, **FIX_OPTS)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "valid").mkdir()
    with pytest.raises(UmxError, match="no usable track"):
        prepare("trackfolder_fix", empty, out, overwrite=True, progress=False, **FIX_OPTS)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_replaces_and_drops_stale_shards(dataset, shard_set, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(shard_set, out)
    prepare("trackfolder_fix", dataset, out, overwrite=True, progress=False, **FIX_OPTS)  # 256 MB shards
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "valid-000000.tar"]
    assert not list(out.glob(".staging*"))


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert prep_main(["trackfolder_fix", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                      "--target-file", "vocals.wav", "--interferer-files", "bass.wav"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope: dataset folder not found" in err and "Traceback" not in err
    (tmp_path / "d" / "train").mkdir(parents=True)
    assert prep_main(["trackfolder_fix", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                      "--target_file", "vocals.wav", "--interferer_files", "bass.wav"]) == 2
    assert "no 'valid' folder" in capsys.readouterr().err
    assert prep_main(["trackfolder_fix", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    assert "needs --target-file" in capsys.readouterr().err


def test_cli_writes_shard_set(tmp_path, capsys):
    root = synth.write_layout("trackfolder_fix", tmp_path / "d", n_train=2, n_valid=1, duration=2.0, seed=3)
    assert prep_main(["trackfolder_fix", str(root), "--out", str(tmp_path / "s"), "--quiet", "--workers", "1",
                      "--target-file", "vocals.wav", "--interferer-files", "bass.wav", "drums.wav"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 tracks" in out and "shard set written to" in out
    assert mf.load(tmp_path / "s").sources == ["vocals", "bass", "drums"]
