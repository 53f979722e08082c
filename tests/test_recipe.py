"""The modern recipe in training: device augmentations, EMA weights, gradient accumulation, together."""

import json

import pytest
import torch

from conftest import interrupted
from umx.errors import UmxError
from umx.models.openunmix import OpenUnmixModel
from umx.models.openunmix.network import Joint, OpenUnmix, Spectrogram
from umx.train import TrainConfig, build_trainer, train
from umx.train import trainer as trainer_mod
from umx.train.ema import EMA

TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, quiet=True, debug=True,
            samples_per_track=3)
ALL = ["gain", "channelswap", "flipsign", "scale", "shift:2048", "speed:0.05", "pitch:1"]


def _results(out, target="vocals"):
    return json.loads((out / f"{target}.json").read_text())


def test_mid_epoch_resume_exact_with_everything_on(shard_set, tmp_path, monkeypatch, one_torch_thread):
    """Every augmentation, two EMA decays and --grad-accum 2, killed mid-epoch and resumed: the
    history of the uninterrupted run, EMA losses and weight choices included."""
    common = dict(TINY, source_augmentations=ALL, random_track_mix=True, ema=[0.9, 0.99], grad_accum=2,
                  save_every=2, epochs=2)
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path / "whole"), **common))
    with interrupted(monkeypatch, (2, 3)):
        train(TrainConfig(shards=str(shard_set), output=str(tmp_path / "cut"), **common))
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path / "cut"), checkpoint=str(tmp_path / "cut"),
                      **common))
    a, b = _results(tmp_path / "whole"), _results(tmp_path / "cut")
    for key in ("train_loss_history", "valid_loss_history", "ema_valid_loss_history", "weights_history",
                "best_epoch", "best_weights"):
        assert a[key] == b[key], key
    wa = torch.load(tmp_path / "whole" / "vocals.pth", weights_only=True)
    wb = torch.load(tmp_path / "cut" / "vocals.pth", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_longer_crops_stream_and_gather_alike(shard_set, tmp_path):
    """The crops that shift/speed/pitch trim are as long when gathered from the device-resident split
    as when streamed: the same batches, the same histories."""
    common = dict(TINY, source_augmentations=["shift:2048", "speed:0.05"], random_track_mix=True, epochs=1)
    for cache in ("off", "on"):
        train(TrainConfig(shards=str(shard_set), output=str(tmp_path / cache), device_cache=cache, **common))
    a, b = _results(tmp_path / "off"), _results(tmp_path / "on")
    assert a["train_loss_history"] == b["train_loss_history"] and a["valid_loss_history"] == b["valid_loss_history"]


def test_ema_is_a_moving_average_and_the_best_is_written(shard_set, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = OpenUnmixModel(Spectrogram(128, 32), Joint({"v": OpenUnmix(nb_bins=65, hidden_size=4)}))
    ema = EMA(model, [0.5])
    before = {k: v.clone() for k, v in model.units["v"].state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(["v"])
    avg = ema.shadows[0.5]["v"]
    assert torch.allclose(avg["fc1.weight"], before["fc1.weight"] + 0.5)
    with ema.swapped(0.5, ["v"]):
        assert torch.allclose(model.units["v"].fc1.weight, before["fc1.weight"] + 0.5)
    assert torch.allclose(model.units["v"].fc1.weight, before["fc1.weight"] + 1.0)

    # in a run: make the average win the validation and check <target>.pth holds it
    validate = trainer_mod.Trainer.validate
    calls = {"n": 0}

    def fake(self):
        calls["n"] += 1
        scores = validate(self)
        if calls["n"] % 2 == 0:  # every second call validates the EMA weights: make them the best
            scores.targets = {t: v / 10 for t, v in scores.targets.items()}
            scores.objective /= 10
        return scores

    monkeypatch.setattr(trainer_mod.Trainer, "validate", fake)
    out = tmp_path / "run"
    t = build_trainer(TrainConfig(shards=str(shard_set), output=str(out), ema=[0.9], epochs=1, **TINY))
    t.fit()
    r = _results(out)
    assert r["weights_history"] == ["ema0.9"] and r["best_weights"] == "ema0.9"
    assert r["ema_valid_loss_history"]["ema0.9"][0] == pytest.approx(r["best_loss"])
    pth = torch.load(out / "vocals.pth", weights_only=True)
    shadow = t.parts.ema.shadows[0.9]["vocals"]
    assert all(torch.equal(pth[k], shadow[k]) for k in pth)
    assert not torch.equal(pth["fc1.weight"], t.model.units["vocals"].fc1.weight)


@pytest.mark.parametrize("kw, match", [
    (dict(ema=[1.0]), "--ema decays must be in"),
    (dict(ema=[0.9, 0.9]), "given twice"),
    (dict(source_augmentations=["speed:2"]), "MAX_CHANGE must be"),
    (dict(source_augmentations=["reverb"]), "unknown source augmentation 'reverb'"),
    (dict(source_augmentations=["shift"], seq_dur=0.0), "need crops"),
])
def test_recipe_options_refused(shard_set, tmp_path, kw, match):
    with pytest.raises(UmxError, match=match):
        build_trainer(TrainConfig(shards=str(shard_set), output=str(tmp_path), **{**TINY, **kw}))


def test_resume_without_the_averages_is_refused(shard_set, tmp_path):
    out = tmp_path / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=1, **TINY))
    with pytest.raises(UmxError, match="has no moving averages"):
        build_trainer(TrainConfig(shards=str(shard_set), output=str(out), epochs=2, checkpoint=str(out), ema=[0.9],
                                  **TINY))
