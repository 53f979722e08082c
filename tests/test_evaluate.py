"""umx-eval: BSSv4 (umx.bss or museval) and uSDR on a split of a shard set, next to the mixture baseline."""

import json
import math
import shutil

import numpy as np
import pytest

from umx.evaluate import evaluate, median_over_frames, median_over_tracks, museval_track_json, score_track
from umx.evaluate_cli import main as eval_main
from umx.train import TrainConfig, train

SMALL = dict(hidden_size=16, seq_dur=1.0, batch_size=4, nfft=2048, nhop=512, quiet=True)
# the shortest budget that separates: ~4 s of CPU training on the 5 synthetic train tracks
QUICK = dict(epochs=12, samples_per_track=4, lr=0.01)


# A ratio above this is float rounding over signal: the mixture scored as its own separation has an
# artifact error of rounding alone (its SAR is 180-195 dB, depending on the CPU's vector kernels).
NOISE_FLOOR_DB = 100.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vocals_model(shard_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "model"
    train(TrainConfig(shards=str(shard_set), output=str(out), **{**SMALL, **QUICK}))
    return out


@pytest.fixture(scope="module")
def cli_run(vocals_model, shard_set, tmp_path_factory):
    """`umx-eval` with a pool of 2 scoring processes: (stdout, output folder)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("evalout") / "eval"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = eval_main([str(vocals_model), "--shards", str(shard_set), "--split", "valid", "--outdir", str(out),
                          "--workers", "2", "--no-cuda", "--quiet"])
    assert code == 0
    return stdout.getvalue(), out


def test_cli_prints_table_and_writes_json(cli_run):
    text, out = cli_run
    assert "valid: 2 tracks" in text
    assert "BSSv4 (umx.bss, museval's definition), 1 s frames: median over frames, median over tracks" in text
    assert "mixture baseline" in text and "uSDR (global SDR per track, as MDX/SDX): mean over tracks" in text
    rows = [line for line in text.splitlines() if "==>" in line]
    assert [r.split()[0] for r in rows] == ["vocals", "residual"] * 4
    for row in rows[:4]:
        for metric in ("SDR:", "SIR:", "ISR:", "SAR:"):
            assert metric in row
    assert all("uSDR:" in row for row in rows[4:])
    assert "SDR over the mixture: vocals +" in text and "uSDR over the mixture: vocals +" in text
    assert f"results written to {out / 'eval_valid.json'}" in text

    res = json.loads((out / "eval_valid.json").read_text())
    assert res["n_tracks"] == 2 and res["split"] == "valid" and res["targets"] == ["vocals"]
    assert res["residual"] == "residual" and res["scored"] == ["vocals", "residual"]
    for key in ("scores", "mixture_baseline"):
        assert set(res[key]) == {"vocals", "residual"}
        assert all(isinstance(res[key]["vocals"][m], float) for m in ("SDR", "SIR", "ISR", "SAR"))
    assert [t["id"] for t in res["tracks"]] == sorted(t["id"] for t in res["tracks"])
    # the aggregate is the median over tracks of the per-track medians over frames
    sdrs = [t["scores"]["vocals"]["SDR"] for t in res["tracks"]]
    assert res["scores"]["vocals"]["SDR"] == pytest.approx(float(np.median(sdrs)), abs=1e-4)
    assert res["metrics"] == ["bssv4", "usdr"] and set(res["usdr"]["scores"]) == {"vocals", "residual"}
    usdrs = [t["usdr"]["vocals"] for t in res["tracks"]]
    assert res["usdr"]["scores"]["vocals"] == pytest.approx(float(np.mean(usdrs)), abs=1e-4)
    # per-track files in museval's own format, frame by frame
    files = sorted((out / "bssv4" / "valid").glob("*.json"))
    assert len(files) == 2
    track = json.loads(files[0].read_text())
    assert [t["name"] for t in track["targets"]] == ["vocals", "residual"]
    assert set(track["targets"][0]["frames"][0]["metrics"]) == {"SDR", "SIR", "ISR", "SAR"}


def test_model_beats_mixture_baseline(vocals_model, shard_set, cli_run):
    """The 12-epoch tiny model: vocals SDR 5.2 dB vs 2.2 dB for the mixture (+3.1 dB) when written."""
    res = evaluate(vocals_model, str(shard_set), "valid", workers=1, progress=False)  # scored in this process
    model, mixture = res["scores"]["vocals"]["SDR"], res["mixture_baseline"]["vocals"]["SDR"]
    print(f"vocals SDR {model:.2f} dB vs mixture {mixture:.2f} dB")
    assert model > mixture + 1.0, (model, mixture)
    assert res["niter"] == 1 and res["residual"] == "residual"  # the residual was added for EM
    pooled = json.loads((cli_run[1] / "eval_valid.json").read_text())
    for key in ("scores", "mixture_baseline"):
        for target, scores in res[key].items():
            for metric, value in scores.items():
                if value > NOISE_FLOOR_DB:  # the mixture's SAR: an error of float rounding alone, whose
                    assert pooled[key][target][metric] > NOISE_FLOOR_DB  # dB value is the CPU's kernels'
                else:
                    assert pooled[key][target][metric] == pytest.approx(value, rel=1e-2, abs=1e-3), metric


@pytest.mark.slow
def test_longer_training_separates_well(shard_set, tmp_path):
    """30 epochs, hidden 32 (~1 min of CPU): vocals SDR 11.4 dB vs 2.2 dB for the mixture (+9.2 dB) when written."""
    train(TrainConfig(shards=str(shard_set), output=str(tmp_path), **{
        **SMALL, "epochs": 30, "samples_per_track": 8, "lr": 0.01, "hidden_size": 32, "seq_dur": 2.0,
        "source_augmentations": ["gain", "channelswap"], "random_track_mix": True}))
    res = evaluate(tmp_path, str(shard_set), "valid", workers=2, progress=False)
    model, mixture = res["scores"]["vocals"]["SDR"], res["mixture_baseline"]["vocals"]["SDR"]
    print(f"vocals SDR {model:.2f} dB vs mixture {mixture:.2f} dB")
    assert model > mixture + 6.0, (model, mixture)


def test_clear_errors(vocals_model, shard_set, tmp_path, capsys):
    piano = tmp_path / "piano_model"
    shutil.copytree(vocals_model, piano)
    for ext in ("pth", "json"):
        (piano / f"vocals.{ext}").rename(piano / f"piano.{ext}")
    cases = [
        ([str(piano)], "has no source 'piano' to score against (it has vocals, bass, drums, other, accompaniment)"),
        ([str(vocals_model), "--targets", "vocals", "guitar"], "no source 'guitar'"),
        ([str(vocals_model), "--split", "test"], "no 'test' split (it has ['train', 'valid'])"),
        ([str(vocals_model), "--residual-name", "bass"], "residual name 'bass' is a source"),
        ([str(tmp_path / "none")], "model directory not found"),
    ]
    for args, message in cases:
        split = [] if "--split" in args else ["--split", "valid"]
        assert eval_main(args + ["--shards", str(shard_set), "--quiet", "--workers", "1"] + split) == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert eval_main([str(vocals_model), "--shards", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no manifest here" in capsys.readouterr().err


def test_aggregation_matches_museval_evalstore():
    """Median over frames, then median over tracks, NaN frames left out: museval's EvalStore numbers."""
    museval = pytest.importorskip("museval")
    rng = np.random.default_rng(0)
    store, per_track = museval.EvalStore(), []
    for k in range(3):
        frames = {}
        for target in ("vocals", "accompaniment"):
            values = {m: list(rng.normal(5, 3, 7 + k)) for m in ("SDR", "SIR", "ISR", "SAR")}
            values["SDR"][k] = math.nan  # a silent frame
            frames[target] = values
        track = museval.TrackStore(track_name=f"t{k}", win=1, hop=1)
        for target, values in frames.items():
            track.add_target(target_name=target, values=values)
        store.add_track(track)
        per_track.append(median_over_frames(frames))
    ours = median_over_tracks(per_track)
    theirs = store.agg_frames_tracks_scores()
    for target in ("vocals", "accompaniment"):
        for metric in ("SDR", "SIR", "ISR", "SAR"):
            assert ours[target][metric] == pytest.approx(theirs[(target, metric)], abs=1e-4)


def test_track_files_are_musevals_format(tmp_path):
    """umx writes museval's per-track JSON itself (museval imports ffmpeg-bound stempeg): the same
    document as `museval.TrackStore.json`, read back by `museval.EvalStore` as museval's own files."""
    museval = pytest.importorskip("museval")
    rng = np.random.default_rng(1)
    frames = {}
    for target in ("vocals", "residual"):
        frames[target] = {m: list(rng.normal(5, 30, 6)) for m in ("SDR", "SIR", "ISR", "SAR")}
        frames[target]["SDR"][2] = math.nan
        frames[target]["SAR"][3] = math.inf
    store = museval.TrackStore(track_name="t0", win=1.0, hop=1.0)
    for target, values in frames.items():
        store.add_target(target_name=target, values=values)
    ours, theirs = json.loads(museval_track_json(frames)), json.loads(store.json)
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)  # NaN as NaN, values quantised
    folder = tmp_path / "test"
    folder.mkdir()
    (folder / "t0.json").write_text(museval_track_json(frames))
    loaded = museval.EvalStore()
    loaded.add_eval_dir(tmp_path)
    want = store.df.sort_values(["target", "metric", "time"]).reset_index(drop=True)
    got = loaded.df.sort_values(["target", "metric", "time"]).reset_index(drop=True)
    assert got[["target", "metric", "time", "track"]].equals(want[["target", "metric", "time", "track"]])
    np.testing.assert_array_equal(got["score"].to_numpy(float), want["score"].to_numpy(float))


def test_museval_metric_and_the_fast_one_agree(vocals_model, shard_set, tmp_path):
    """`--metric museval` is the table umx-eval always gave (museval itself); the fast BSSv4 gives the
    same per-track medians within 0.01 dB, and museval.EvalStore reads both sets of per-track files."""
    museval = pytest.importorskip("museval")
    res = evaluate(vocals_model, str(shard_set), "valid", workers=1, progress=False, niter=0,
                   metrics=("museval", "bssv4"), outdir=tmp_path)
    assert res["scores"] == res["by_metric"]["museval"]["scores"] and "usdr" not in res
    for t in res["tracks"]:
        for target, scores in t["by_metric"]["museval"]["scores"].items():
            for metric, value in scores.items():
                assert t["by_metric"]["bssv4"]["scores"][target][metric] == pytest.approx(value, abs=0.01)
    for metric in ("museval", "bssv4"):
        store = museval.EvalStore()
        for path in sorted((tmp_path / metric / "valid").glob("*.json")):
            store.add_track(museval.aggregate.json2df(json.loads(path.read_text()), path.stem))
        agg = store.agg_frames_tracks_scores()
        assert agg[("vocals", "SDR")] == pytest.approx(res["by_metric"][metric]["scores"]["vocals"]["SDR"], abs=1e-3)


def test_unknown_metric_refused(vocals_model, shard_set, capsys):
    from umx.errors import UmxError

    with pytest.raises(UmxError, match="--metric must be among"):
        evaluate(vocals_model, str(shard_set), "valid", metrics=("sisdr",), progress=False)
    assert eval_main([str(vocals_model), "--shards", str(shard_set), "--metric", "sisdr"]) == 2


def test_score_track_perfect_and_mixture():
    rng = np.random.default_rng(1)
    refs = {"a": rng.standard_normal((8000 * 2, 2)), "b": rng.standard_normal((8000 * 2, 2))}
    near = score_track(refs, {k: v + 1e-3 * rng.standard_normal(v.shape) for k, v in refs.items()}, 8000)
    assert len(near["a"]["SDR"]) == 2 and min(near["a"]["SDR"]) > 50
    exact = score_track(refs, refs, 8000)  # infinite scores are stored as NaN, as museval's TrackStore does
    assert all(math.isnan(x) for x in exact["a"]["SDR"])
    mix = refs["a"] + refs["b"]
    baseline = median_over_frames(score_track(refs, {"a": mix, "b": mix}, 8000))
    assert abs(baseline["a"]["SDR"]) < 1.0  # equal-power sources: about 0 dB


def test_folder_and_its_shard_set_score_the_same(vocals_model, shard_set, dataset, tmp_path):
    """`umx-eval --root` reads the dataset folder directly (as open-unmix's evaluate.py does) and gets
    exactly the scores of the shard set prepared from that folder, WebDataset or zarr."""
    from conftest import FIX_OPTS

    from umx.evaluate import folder_split

    common = dict(niter=0, workers=1, progress=False)
    from_shards = evaluate(vocals_model, str(shard_set), "valid", **common)
    from_folder = evaluate(vocals_model, folder_split("trackfolder_fix", dataset, "valid", FIX_OPTS), "valid",
                           **common)
    assert from_folder["n_tracks"] == from_shards["n_tracks"] == 2
    assert from_folder["scores"] == from_shards["scores"]
    assert from_folder["shards"] == str(dataset)
    from umx.prep import prepare  # and a zarr store of the same data (read through ShardReader)

    prepare("trackfolder_fix", dataset, tmp_path / "z", progress=False, format="zarr", **FIX_OPTS)
    assert evaluate(vocals_model, str(tmp_path / "z"), "valid", **common)["scores"] == from_shards["scores"]


def test_musdb_root_test_subset(vocals_model, tmp_path, capsys):
    """open-unmix's usual evaluation: the MUSDB18 test subset, from the root, against the real mixture."""
    from umx import synth

    root = synth.write_layout("musdb", tmp_path / "musdb", n_train=1, n_valid=1, duration=3.0, seed=2)
    assert eval_main([str(vocals_model), "--root", str(root), "--split", "test", "--outdir", str(tmp_path / "e"),
                      "--workers", "1", "--no-cuda", "--quiet", "--niter", "0"]) == 0
    res = json.loads((tmp_path / "e" / "eval_test.json").read_text())
    assert res["n_tracks"] >= 1 and res["split"] == "test" and math.isfinite(res["scores"]["vocals"]["SDR"])
    assert eval_main([str(vocals_model), "--root", str(root), "--shards", "x"]) == 2
    assert "one of the two" in capsys.readouterr().err
    assert eval_main([str(vocals_model), "--shards", str(root), "--is-wav"]) == 2
    assert "go with --root" in capsys.readouterr().err
