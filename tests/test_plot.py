"""Loss-curve PNG: plot_history, lr_drops, umx-plot."""

import json

import numpy as np
import pytest

from umx.plot import draw_history, lr_drops, main as plot_main, plot_history
from umx.train import TrainConfig, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _results(epochs=6):
    train_loss = [10.0, 6.0, 4.0, 3.5, 3.4, 3.3, 3.0, 2.9][:epochs]
    valid_loss = [9.0, 6.5, 5.0, 5.2, 4.8, 5.1, 4.7, 4.9][:epochs]
    lrs = [1e-3, 1e-3, 1e-3, 3e-4, 3e-4, 9e-5, 9e-5, 9e-5][:epochs]
    best = int(np.argmin(valid_loss)) + 1
    return {"args": {"lr": 1e-3, "dataset": "trackfolder_fix"}, "train_loss_history": train_loss,
            "valid_loss_history": valid_loss, "lr_history": lrs, "best_epoch": best, "epochs_trained": epochs}


def _write(folder, results, target="vocals"):
    (folder / f"{target}.json").write_text(json.dumps(results))


def _assert_png(path):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = imread(path)
    assert image.shape[:2] == (450, 800)


def test_lr_drops():
    assert lr_drops([]) == []
    assert lr_drops([1e-3, 1e-3, 3e-4, 3e-4, 9e-5]) == [3, 5]
    assert lr_drops([1e-3, 3e-4], initial_lr=1e-3) == [2]
    assert lr_drops([3e-4, 3e-4], initial_lr=1e-3) == [1]  # reduced after the very first epoch
    assert lr_drops([1e-3, 2e-3, 1e-3]) == [3]  # an increase is not a drop


def test_best_epoch_and_lr_drops_are_marked():
    fig = draw_history(_results(), "vocals")
    ax = fig.axes[0]
    vertical = sorted(line.get_xdata()[0] for line in ax.lines if len(set(line.get_xdata())) == 1
                      and len(line.get_xdata()) == 2)
    assert vertical == [4.5, 5, 6.5]  # LR reduced after epochs 4 and 6, best epoch 5
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["train loss", "validation loss", "LR reduced", "best epoch 5 (4.8)"]
    star = [line for line in ax.lines if line.get_marker() == "*"][0]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (5, 4.8)


def test_plot_history_writes_and_redraws(tmp_path):
    _write(tmp_path, _results(6))
    path = plot_history(tmp_path, "vocals")
    assert path == tmp_path / "vocals_loss.png"
    _assert_png(path)
    first = path.read_bytes()
    _write(tmp_path, _results(8))  # two more epochs: redraw in place
    assert plot_history(tmp_path, "vocals") == path
    _assert_png(path)
    assert path.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocals.json", "vocals_loss.png"]  # no temp files


def test_openunmix_json_and_first_epoch(tmp_path):
    res = _results(1)
    del res["lr_history"]  # open-unmix's json has no learning-rate history
    _write(tmp_path, res, "bass")
    _assert_png(plot_history(tmp_path, "bass"))


def test_cli_on_a_training_run(shard_set, tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(shards=str(shard_set), output=str(out), epochs=2, hidden_size=8, seq_dur=1.0, batch_size=4,
                      nfft=2048, nhop=512, quiet=True))
    assert plot_main([str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "vocals_loss.png")
    _assert_png(out / "vocals_loss.png")
    assert plot_main([str(out), "--target", "vocals"]) == 0
    capsys.readouterr()
    for args, message in [([str(out), "--target", "piano"], "piano.json: not found"),
                          ([str(tmp_path / "none")], "none: directory not found"),
                          ([str(tmp_path)], "no <target>.json with a loss history")]:
        assert plot_main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_bad_json_is_a_clear_error(tmp_path, content, capsys):
    (tmp_path / "vocals.json").write_text(content)
    assert plot_main([str(tmp_path), "--target", "vocals"]) == 2
    assert "vocals.json" in capsys.readouterr().err
