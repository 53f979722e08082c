"""Every layout of the spec becomes a shard set that trains with open-unmix's sampling semantics."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from umx import audio, synth
from umx.errors import LayoutError, UmxError
from umx.prep import prepare
from umx.shards import manifest as mf
from umx.shards.webdataset import read_shard
from umx.train.augment import Augment, Remix, mix_and_target
from umx.train.streams import SourceFileStream, TrainStream
from umx.train.validation import load_validation
from umx.train import TrainConfig, build_trainer, train

SR = 44100
TINY = dict(hidden_size=8, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True, epochs=1)


def _records(shards, split):
    m = mf.load(shards)
    return [r for e in m.shards(split) for r in read_shard(m.shard_url(e))]


def _prep(tmp_path_factory, layout, opts, **synth_kw):
    base = tmp_path_factory.mktemp(layout)
    root = synth.write_layout(layout, base / "data", **{"n_train": 4, "n_valid": 2, "duration": 3.0, "seed": 1,
                                                         **synth_kw})
    prepare(layout, root, base / "shards", progress=False, **opts)
    return root, base / "shards"


def _train_one_epoch(shards, tmp_path, **kw):
    out = tmp_path / "model"
    train(TrainConfig(shards=str(shards), output=str(out), **{**TINY, **kw}))
    res = json.loads(next(out.glob("*.json")).read_text()) if not (out / "vocals.json").exists() \
        else json.loads((out / "vocals.json").read_text())
    assert res["epochs_trained"] == 1 and np.isfinite(res["train_loss_history"][0])
    return res


# --- musdb --------------------------------------------------------------------
@pytest.fixture(scope="module")
def musdb(tmp_path_factory):
    return _prep(tmp_path_factory, "musdb", {})


def test_musdb_splits_follow_the_validation_list(musdb):
    root, shards = musdb
    m = mf.load(shards)
    assert m.splits() == ["train", "valid", "test"] and m.sources == ["vocals", "drums", "bass", "other"]
    names = {s: [r.meta["name"] for r in _records(shards, s)] for s in m.splits()}
    assert sorted(names["valid"]) == sorted(synth.MUSDB_VALID_NAMES[:2])
    assert sorted(names["train"]) == sorted(p.name for p in (root / "train").iterdir()
                                            if p.name not in synth.MUSDB_VALID_NAMES)
    assert sorted(names["test"]) == sorted(p.name for p in (root / "test").iterdir())
    # the real mixture is stored for evaluation splits only, and equals the file
    assert all(r.mixture is None for r in _records(shards, "train"))
    for r in _records(shards, "valid"):
        mix, _ = audio.read(root / "train" / r.meta["name"] / "mixture.wav", "int16")
        np.testing.assert_array_equal(r.mixture, mix)


def test_musdb_defaults_are_open_unmix_musdb(musdb, tmp_path):
    cfg = TrainConfig(shards=str(musdb[1])).resolved(mf.load(musdb[1]))
    assert cfg.target == "vocals" and cfg.samples_per_track == 64
    assert cfg.source_augmentations == ["gain", "channelswap"] and cfg.random_track_mix
    stream = TrainStream(mf.load(musdb[1]), "vocals", SR, 16, samples_per_track=64)
    assert stream.samples_per_epoch() == 4 * 64  # the four non-validation train tracks × 64
    res = _train_one_epoch(musdb[1], tmp_path, samples_per_track=4)
    assert res["args"]["source_augmentations"] == ["gain", "channelswap"]


def test_musdb_accompaniment_target(musdb, tmp_path):
    m = mf.load(musdb[1])
    stream = TrainStream(m, "accompaniment", SR, 4)
    assert stream.slots.order[0] == "vocals" and stream.slots.complement
    batch = next(iter(stream))
    x, y = mix_and_target(Augment()(batch.audio), complement=True)
    wav = batch.audio.float() / 32768
    torch.testing.assert_close(y, wav[:, 1:].sum(1))  # drums + bass + other
    valid = load_validation(m, "accompaniment")
    assert all(v.mixture is not None for v in valid)
    res = _train_one_epoch(musdb[1], tmp_path, target="accompaniment", samples_per_track=2)
    assert res["args"]["target"] == "accompaniment"


def test_musdb_stems_and_wav_give_the_same_pcm(tmp_path):
    wav = synth.write_layout("musdb", tmp_path / "wav", n_train=1, n_valid=1, duration=2.0, seed=4)
    stems = synth.write_layout("musdb", tmp_path / "stems", n_train=1, n_valid=1, duration=2.0, seed=4,
                               as_stems=True)
    prepare("musdb", wav, tmp_path / "a", progress=False)
    prepare("musdb", stems, tmp_path / "b", progress=False, is_wav=False)
    for split in ("train", "valid", "test"):
        for ra, rb in zip(_records(tmp_path / "a", split), _records(tmp_path / "b", split)):
            assert ra.meta["name"] == rb.meta["name"]
            for name in ra.sources:
                ref, dec = ra.sources[name].astype(np.float64), rb.sources[name][:, :ra.frames].astype(np.float64)
                assert ra.frames <= rb.frames <= ra.frames + 4096
                snr = 10 * np.log10((ref ** 2).sum() / ((ref - dec) ** 2).sum())
                assert snr > 10, (split, name, snr)  # AAC at 256 kb/s: same music, aligned


def test_musdb_wrong_options_are_named(musdb, tmp_path):
    with pytest.raises(LayoutError, match="--subsets: unknown subset"):
        prepare("musdb", musdb[0], tmp_path / "x", progress=False, subsets=["valid"])
    with pytest.raises(LayoutError, match="no MUSDB tracks found.*stem.mp4"):
        prepare("musdb", musdb[0], tmp_path / "y", progress=False, is_wav=False)


# --- aligned ------------------------------------------------------------------
@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    return _prep(tmp_path_factory, "aligned", {"input_file": "mix*.wav", "output_file": "vocals.wav"})


def test_aligned_input_is_the_stored_file_never_augmented(aligned, tmp_path):
    root, shards = aligned
    m = mf.load(shards)
    assert m.sources == ["vocals"] and m.target == "vocals" and not m.sampling.augment
    for r in _records(shards, "train"):
        mix, _ = audio.read(root / "train" / r.meta["name"] / "mixture.wav", "int16")
        np.testing.assert_array_equal(r.mixture, mix)
    stream = TrainStream(m, "vocals", SR, 4)
    batch = next(iter(stream))
    assert batch.audio.shape[1] == 2  # target, stored input
    x, y = mix_and_target(Augment()(batch.audio), input_slot=True)
    assert torch.equal(x, batch.audio[:, 1].float() / 32768) and torch.equal(y, batch.audio[:, 0].float() / 32768)
    cfg = TrainConfig(shards=str(shards)).resolved(m)
    assert (cfg.source_augmentations, cfg.random_track_mix) == ([], False)
    with pytest.raises(UmxError, match="never remixed or augmented"):
        TrainConfig(shards=str(shards), source_augmentations=["gain"]).resolved(m)
    _train_one_epoch(shards, tmp_path)


def test_aligned_tracks_shorter_than_seq_dur_left_out(aligned):
    m = mf.load(aligned[1])
    frames = sorted(f for e in m.shards("train") for f in e.track_frames)
    assert TrainStream(m, "vocals", frames[0] + 1, 4).samples_per_epoch() == len(frames) - 1


# --- sourcefolder ------------------------------------------------------------
@pytest.fixture(scope="module")
def sourcefolder(tmp_path_factory):
    return _prep(tmp_path_factory, "sourcefolder", {"target_dir": "vocals", "interferer_dirs": ["bass", "drums"],
                                                    "nb_train_samples": 40, "nb_valid_samples": 6})


def test_sourcefolder_counts_files(sourcefolder):
    root, shards = sourcefolder
    m = mf.load(shards)
    for split in ("train", "valid"):
        on_disk = sum(len(list((root / split / s).glob("*.wav"))) for s in ("vocals", "bass", "drums"))
        assert m.split(split).tracks == on_disk
    assert m.sampling.defaults.nb_train_samples == 40


def test_sourcefolder_draws_independent_random_files(sourcefolder):
    m = mf.load(sourcefolder[1])
    stream = SourceFileStream(m, "vocals", SR // 2, 8, nb_samples=40, seed=3)
    batches = list(stream)
    assert sum(len(b.track_ids) for b in batches) == 40 == stream.samples_per_epoch()
    combos = [tuple(t.split("+")) for b in batches for t in b.track_ids]
    assert all(c[0].startswith("vocals") and c[1].startswith("bass") and c[2].startswith("drums") for c in combos)
    n_vocals = len({c[0] for c in combos})
    assert n_vocals >= 3  # many target files are used
    # target and interferer files are drawn independently: their pairing is not fixed
    pairs = Counter((c[0], c[1]) for c in combos)
    assert len(pairs) > n_vocals


def test_sourcefolder_validation_is_the_same_every_time(sourcefolder, tmp_path):
    m = mf.load(sourcefolder[1])
    a = load_validation(m, "vocals", nb_samples=6, seq_len=SR // 2)
    b = load_validation(m, "vocals", nb_samples=6, seq_len=SR // 2)
    assert len(a) == 6 and all(torch.equal(x.sources, y.sources) for x, y in zip(a, b))
    assert len({x.sources[0].sum().item() for x in a}) > 1  # different indices, different crops
    res = _train_one_epoch(sourcefolder[1], tmp_path, nb_train_samples=8, nb_valid_samples=3)
    assert res["args"]["nb_train_samples"] == 8


# --- trackfolder_fix ------------------------------------------------------------
def test_trackfolder_fix_random_track_mix_draws_interferers_from_other_tracks(shard_set):
    m = mf.load(shard_set)
    batch = next(iter(TrainStream(m, "vocals", SR, 5, seed=2)))
    wav = batch.audio.float()
    g = torch.Generator().manual_seed(0)
    mixed = Remix()(wav, g)
    # each output slot equals some input item's slot: find where it came from
    origin = [[next(j for j in range(5) if torch.equal(mixed[i, s], wav[j, s])) for s in range(4)] for i in range(5)]
    assert all(o[0] == i for i, o in enumerate(origin))  # target stays
    assert sum(o[s] != i for i, o in enumerate(origin) for s in range(1, 4)) >= 8  # most interferers moved


# --- trackfolder_var ------------------------------------------------------------
@pytest.fixture(scope="module")
def trackfolder_var(tmp_path_factory):
    base = tmp_path_factory.mktemp("var")
    root = synth.write_layout("trackfolder_var", base / "data", n_train=5, n_valid=2, duration=3.0, seed=1,
                              target_ext=".flac")
    (root / "train" / "track_004" / "vocals.flac").unlink()  # a track without the target
    prepare("trackfolder_var", root, base / "shards", progress=False, target_file="vocals.flac", ext=".wav")
    return root, base / "shards"


def test_trackfolder_var_interferer_is_every_other_source(trackfolder_var):
    root, shards = trackfolder_var
    m = mf.load(shards)
    assert m.target == "vocals" and m.split("train").tracks == 5  # the target-less track is kept
    records = {r.meta["name"]: r for r in _records(shards, "train")}
    for name, r in records.items():
        on_disk = {p.stem for p in (root / "train" / name).iterdir()}
        assert set(r.sources) == on_disk
    stream = TrainStream(m, "vocals", SR // 2, 8)
    batches = list(stream)
    ids = [t for b in batches for t in b.track_ids]
    assert len(ids) == 4 and records["track_004"].id not in ids  # left out: no target
    for b in batches:
        for crop, tid in zip(b.audio, b.track_ids):
            r = records[[n for n, x in records.items() if x.id == tid][0]]
            x, y = mix_and_target(Augment()(crop[None]))
            n = len(r.sources) - 1
            assert crop.shape[0] == 1 + m.split("train").max_sources
            assert torch.count_nonzero(crop[1 + n:]) == 0  # padding slots are silent
    silent = TrainStream(m, "vocals", SR // 2, 8, silence_missing_targets=True)
    got = {t: b.audio[i] for b in silent for i, t in enumerate(b.track_ids)}
    assert records["track_004"].id in got and torch.count_nonzero(got[records["track_004"].id][0]) == 0


def test_trackfolder_var_random_interferer_mix_moves_interferers_together(trackfolder_var, tmp_path):
    wav = torch.arange(32, dtype=torch.float32)[:, None, None, None].repeat(1, 4, 2, 3)
    out = Remix(joint=True)(wav, torch.Generator().manual_seed(1))
    origin = out[:, :, 0, 0].long()
    assert torch.equal(origin[:, 0], torch.arange(32))
    assert torch.equal(origin[:, 1], origin[:, 2]) and torch.equal(origin[:, 2], origin[:, 3])
    assert (origin[:, 1] != torch.arange(32)).sum() >= 24
    t = build_trainer(TrainConfig(shards=str(trackfolder_var[1]), output=str(tmp_path), random_interferer_mix=True, **TINY))
    assert t.augment.steps[0].joint
    t.fit()


def test_wrong_option_combinations_are_named(dataset, tmp_path):
    from umx.layouts import check_options

    with pytest.raises(LayoutError, match="--interferer-files: not an option of the musdb layout"):
        check_options("musdb", {"interferer_files": ["bass.wav"]})
    with pytest.raises(LayoutError, match="--target-dir: not an option of the trackfolder_fix layout"):
        check_options("trackfolder_fix", {"target_file": "v.wav", "target_dir": "vocals"})
    with pytest.raises(LayoutError, match="needs --target-file"):
        prepare("trackfolder_var", dataset, tmp_path / "x", progress=False)
