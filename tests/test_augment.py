import torch

from umx.train.augment import Augment, ChannelSwap, Gain, Remix, mix_and_target


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_gain_range_and_distribution():
    wav = torch.ones(4000, 4, 2, 8)
    out = Gain()(wav, _gen())
    g = out[:, :, 0, 0]
    assert torch.all(out == g[:, :, None, None])  # one gain per source and item
    assert g.min() >= 0.25 and g.max() <= 1.25
    assert abs(g.mean().item() - 0.75) < 0.01 and abs(g.std().item() - (1 / 12) ** 0.5) < 0.01
    assert len(torch.unique(g)) > 15000  # per (item, source), not shared


def test_channelswap_rate():
    wav = torch.stack([torch.zeros(8), torch.ones(8)])[None, None].repeat(4000, 4, 1, 1)
    out = ChannelSwap()(wav, _gen())
    swapped = out[:, :, 0, 0] == 1
    assert torch.all(out[:, :, 1, 0] == 1 - out[:, :, 0, 0])  # always a permutation of channels
    assert abs(swapped.float().mean().item() - 0.5) < 0.02
    mono = torch.ones(3, 2, 1, 8)
    assert torch.equal(ChannelSwap()(mono, _gen()), mono)


def test_remix_mixes_different_tracks_and_keeps_target():
    b, s = 16, 4
    wav = torch.arange(b, dtype=torch.float32)[:, None, None, None].repeat(1, s, 2, 10)  # value = track
    out = Remix()(wav, _gen(3))
    origin = out[:, :, 0, 0].long()
    assert torch.equal(origin[:, 0], torch.arange(b))  # target stays with its track
    for src in range(1, s):
        assert sorted(origin[:, src].tolist()) == list(range(b))  # a permutation: every track used once
    foreign = (origin[:, 1:] != torch.arange(b)[:, None]).float().mean()
    assert foreign > 0.7  # most interferers come from another track
    assert not torch.equal(origin[:, 1], origin[:, 2])  # independent per source


def test_augment_pipeline_is_seeded_and_converts_int16():
    pcm = torch.randint(-32768, 32767, (8, 4, 2, 100), dtype=torch.int16)
    aug = Augment(["gain", "channelswap"], remix="independent")
    a, b = aug(pcm, _gen(1)), aug(pcm, _gen(1))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert not torch.equal(a, aug(pcm, _gen(2)))
    plain = Augment([])(pcm)
    assert torch.equal(plain, pcm.float() / 32768)
    x, y = mix_and_target(plain)
    assert torch.allclose(x, plain.sum(1)) and torch.equal(y, plain[:, 0])


def test_unknown_augmentation_rejected():
    import pytest

    with pytest.raises(ValueError, match="unknown source augmentation"):
        Augment(["reverb"])
