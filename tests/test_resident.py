"""--device-cache: the train split held in device memory, workers sending crop positions. The
batches must be the streamed ones bit for bit (same draws, same tracks, same audio), so the
training history is the same; on CPU the "device" is host memory, which runs the same code."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from umx import synth
from umx.errors import UmxError
from umx.prep import prepare
from umx.shards import manifest as mf
from umx.shards.reader import ShardReader
from umx.train.streams import TrainStream
from umx.train.resident import ResidentTracks, split_bytes
from umx.train import TrainConfig, build_trainer, train

SMALL = dict(hidden_size=16, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True)
SEQ = 44100


@pytest.fixture(scope="module")
def var_set(tmp_path_factory):
    """trackfolder_var (variable source sets, padded slots, joint remix), several small shards."""
    root = tmp_path_factory.mktemp("var")
    data = synth.write_layout("trackfolder_var", root / "data", n_train=6, n_valid=1, duration=3.0, seed=3)
    prepare("trackfolder_var", data, root / "shards", workers=1, progress=False, shard_bytes=2**20,
            target_file="vocals.wav")
    return root / "shards"


@pytest.fixture(scope="module")
def musdb_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("musdb")
    data = synth.write_layout("musdb", root / "data", n_train=4, n_valid=1, duration=3.0, seed=5)
    prepare("musdb", data, root / "shards", workers=1, progress=False, shard_bytes=2**20)
    return root / "shards"


def _batches(stream, workers, epoch, start_step=0):
    stream.set_epoch(epoch, start_step)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)
    return [(b.track_ids, b.audio.clone() if b.audio is not None else b.starts) for b in loader]


@pytest.mark.parametrize("which,target", [("shard_set", "vocals"), ("var_set", "vocals"),
                                          ("musdb_set", "accompaniment")])
def test_resident_batches_are_the_streamed_ones(request, which, target):
    manifest = mf.load(request.getfixturevalue(which))
    streamed = TrainStream(manifest, target, SEQ, 3, samples_per_track=3, pool_size=3)
    split = ResidentTracks(manifest, streamed.slots, ShardReader(manifest), torch.device("cpu"), quiet=True)
    positions = TrainStream(manifest, target, SEQ, 3, samples_per_track=3, pool_size=3, resident=split.starts)
    assert split.nbytes == split_bytes(manifest, positions.slots)
    for epoch, workers, start in [(1, 0, 0), (2, 2, 0), (3, 2, 2)]:  # with workers; resumed mid-epoch
        a, b = _batches(streamed, workers, epoch, start), _batches(positions, workers, epoch, start)
        assert len(a) == len(b) > 0
        for (ids_a, audio), (ids_b, starts) in zip(a, b):
            assert ids_a == ids_b and starts.dtype == torch.int64 and starts.shape == (len(ids_b),)
            assert torch.equal(audio, split.gather(starts, SEQ))


@pytest.fixture(scope="module")
def source_set(tmp_path_factory):
    """sourcefolder: unaligned source files, a position per slot."""
    root = tmp_path_factory.mktemp("sources")
    data = synth.write_layout("sourcefolder", root / "data", n_train=4, n_valid=1, duration=2.0, seed=9)
    prepare("sourcefolder", data, root / "shards", workers=1, progress=False, shard_bytes=2**20,
            target_dir="vocals", interferer_dirs=["bass", "drums"], nb_train_samples=20, nb_valid_samples=4)
    return root / "shards"


def test_resident_source_files_are_the_streamed_ones(source_set):
    from umx.train.streams import SourceFileStream
    from umx.train.resident import ResidentSources

    manifest = mf.load(source_set)
    streamed = SourceFileStream(manifest, "vocals", SEQ, 3, 20, seed=4)
    split = ResidentSources(manifest, streamed.slots, ShardReader(manifest), torch.device("cpu"), SEQ, quiet=True)
    positions = SourceFileStream(manifest, "vocals", SEQ, 3, 20, seed=4, resident=split.files)
    assert split.nbytes <= split_bytes(manifest, positions.slots)
    for epoch, workers, start in [(1, 0, 0), (2, 2, 0), (3, 2, 2)]:
        a, b = _batches(streamed, workers, epoch, start), _batches(positions, workers, epoch, start)
        assert len(a) == len(b) > 0
        for (ids_a, audio), (ids_b, starts) in zip(a, b):
            assert ids_a == ids_b and starts.shape == (len(ids_b), 3)
            assert torch.equal(audio, split.gather(starts, SEQ))


def test_training_from_the_resident_split_is_the_same_run(shard_set, tmp_path, one_torch_thread):
    common = dict(shards=str(shard_set), epochs=2, source_augmentations=["gain", "channelswap"],
                  random_track_mix=True, nb_workers=1, no_cuda=True, **SMALL)
    train(TrainConfig(output=str(tmp_path / "streamed"), device_cache="off", **common))
    train(TrainConfig(output=str(tmp_path / "resident"), device_cache="on", **common))
    a, b = (json.loads((tmp_path / d / "vocals.json").read_text()) for d in ("streamed", "resident"))
    assert a["train_loss_history"] == b["train_loss_history"]
    assert a["valid_loss_history"] == b["valid_loss_history"]


def test_device_cache_choices(shard_set, tmp_path):
    base = dict(shards=str(shard_set), output=str(tmp_path), no_cuda=True, **SMALL)
    assert build_trainer(TrainConfig(**base)).resident is None  # auto: on a GPU only
    t = build_trainer(TrainConfig(device_cache="on", **base))
    assert t.resident is not None and t.stream.source.columns is t.resident.positions
    batch = next(iter(t.stream))
    assert batch.audio is None and t.batch_audio(batch).shape == (4, 4, 2, 44100)
    with pytest.raises(UmxError, match="whole-track batches"):
        build_trainer(TrainConfig(device_cache="on", **{**base, "seq_dur": 0.0}))
    with pytest.raises(UmxError, match="--device-cache must be one of"):
        build_trainer(TrainConfig(device_cache="always", **base))


def test_training_from_resident_source_files_is_the_same_run(source_set, tmp_path, one_torch_thread):
    common = dict(shards=str(source_set), epochs=2, nb_workers=1, no_cuda=True, **SMALL)
    train(TrainConfig(output=str(tmp_path / "streamed"), device_cache="off", **common))
    train(TrainConfig(output=str(tmp_path / "resident"), device_cache="on", **common))
    a, b = (json.loads((tmp_path / d / "vocals.json").read_text()) for d in ("streamed", "resident"))
    assert a["train_loss_history"] == b["train_loss_history"]
