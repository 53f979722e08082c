"""The train stage keeps doing what it did: every golden run (tests/golden_runs.py) reproduces its
committed record — the same first batches bit for bit, the same loss histories."""

import json

import pytest

import golden_runs

RECORD = json.loads(golden_runs.RECORD.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return golden_runs.run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", list(RECORD))
def test_run_reproduces_its_record(runs, name):
    # data and draws exactly; losses within the spread measured over CPU kernel sets (golden_runs.TOLERANCE)
    assert golden_runs.compare(RECORD[name], runs[name]) == []


def _nudged(epoch_samples, epoch: int):
    """TrainStream.epoch_samples with one draw changed: the last sample of `epoch` placed elsewhere."""
    def samples(self):
        order, place = epoch_samples(self)
        if self.epoch == epoch:
            place = place.copy()
            place[-1] = (place[-1] + 0.5) % 1.0
        return order, place
    return samples


def test_the_record_still_catches_one_changed_draw(tmp_path, monkeypatch):
    """The tolerance on losses does not hide a change of what is drawn: one crop offset of the last
    epoch moved fails the record (its draw hash), though every first step is the same."""
    from umx.train import streams

    sets = golden_runs.datasets(tmp_path / "data")
    monkeypatch.setattr(streams.TrainStream, "epoch_samples", _nudged(streams.TrainStream.epoch_samples, 3))
    bad = golden_runs.compare(RECORD["zarr"], golden_runs.run_one("zarr", sets, tmp_path / "run"))
    assert "draws_sha256" in bad and "first_steps_sha256" not in bad and "data_sha256" not in bad, bad


def test_the_record_still_catches_one_changed_data_byte(tmp_path):
    """One byte of one source of one track, late in the track, changed before prep: the record fails
    (the data hash), whatever the crops of the first steps cover."""
    import soundfile as sf

    from umx import synth
    from umx.prep import prepare

    fix = synth.write_layout("trackfolder_fix", tmp_path / "fix", n_train=5, n_valid=1, duration=2.0, seed=11)
    wav = fix / "train" / "track_004" / "other.wav"
    pcm, rate = sf.read(wav, dtype="int16")
    pcm[-10, 0] ^= 1  # the lowest bit of one sample
    sf.write(wav, pcm, rate, subtype="PCM_16")
    prepare("trackfolder_fix", fix, tmp_path / "zarr", shard_bytes=2**20, progress=False, format="zarr",
            **golden_runs.FIX)
    got = golden_runs.run_one("zarr", {"zarr": tmp_path / "zarr"}, tmp_path / "run")
    bad = golden_runs.compare(RECORD["zarr"], got)
    assert "data_sha256" in bad and "draws_sha256" not in bad, bad
