"""Plots of a real run: curves from history.jsonl, kept checkpoints ringed, deletions marked."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers.digits_run import train_digits  # noqa: E402
from helpers.tiny import tiny_model  # noqa: E402

from keras_ckpt import BestCheckpoint, CheckpointNotFoundError, list_checkpoints  # noqa: E402
from keras_ckpt.plot import history_figure, plot_history, read_history  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    train_digits(root, epochs=6)
    return root


def _by_gid(ax):
    return {line.get_gid(): line for line in ax.get_lines()}


def test_plot_history_draws_curves_and_marks_checkpoints_on_an_axis(run):
    history = [json.loads(s) for s in (run / "last" / "history.jsonl").read_text().splitlines()]
    kept = list_checkpoints(run / "last")
    fig, ax = plt.subplots()
    assert plot_history(run / "last", ax=ax) is ax

    lines = _by_gid(ax)
    assert [r["step"] for r in history] == [12 * e for e in range(1, 7)]
    np.testing.assert_array_equal(lines["loss"].get_xdata(), [r["step"] for r in history])
    np.testing.assert_array_equal(lines["val_loss"].get_ydata(), [r["val_loss"] for r in history])
    np.testing.assert_array_equal(lines["kept:val_loss"].get_xdata(), [i.step for i in kept])
    np.testing.assert_array_equal(
        lines["kept:val_loss"].get_ydata(), [i.metrics["val_loss"] for i in kept]
    )
    assert len(kept) == 3
    np.testing.assert_array_equal(lines["kept"].get_xdata(), [i.step for i in kept])
    np.testing.assert_array_equal(lines["deleted"].get_xdata(), [12, 24, 36])  # rotated out
    best = min(kept, key=lambda i: i.metrics["val_loss"])
    assert list(lines["best"].get_xdata()) == [best.step]
    assert list(lines["best"].get_ydata()) == [best.metrics["val_loss"]]
    plt.close(fig)


def test_plot_history_accepts_chosen_metrics_and_monitor(run):
    fig, ax = plt.subplots()
    plot_history(run / "best", ["accuracy", "val_accuracy"], ax=ax, monitor="val_accuracy")
    lines = _by_gid(ax)
    assert {"accuracy", "val_accuracy", "kept:val_accuracy", "best"} <= set(lines)
    kept = list_checkpoints(run / "best")
    best = max(kept, key=lambda i: (i.metrics["val_accuracy"], i.step))
    assert list(lines["best"].get_xdata()) == [best.step]
    plt.close(fig)


def test_history_figure_has_one_panel_per_metric_family_and_saves_a_real_png(run, tmp_path):
    fig = history_figure(run / "last")
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    out = tmp_path / "run.png"
    fig.savefig(out, dpi=60)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # curves drawn, not a blank canvas


def test_a_metric_only_the_checkpoints_recorded_is_drawn_from_them(tmp_path, data):
    # BestCheckpoint's own validation_data: val_loss exists at save points, not per epoch.
    x, y = data
    cb = BestCheckpoint(tmp_path / "b", save_freq=2, keep_best=2, validation_data=(x, y))
    tiny_model().fit(x, y, batch_size=8, epochs=2, callbacks=[cb], verbose=0)
    kept = list_checkpoints(tmp_path / "b")
    assert all("val_loss" not in r for r in read_history(tmp_path / "b"))

    fig, ax = plt.subplots()
    lines = _by_gid(plot_history(tmp_path / "b", ["loss", "val_loss"], ax=ax))
    np.testing.assert_array_equal(lines["val_loss"].get_xdata(), [i.step for i in kept])
    np.testing.assert_array_equal(
        lines["val_loss"].get_ydata(), [i.metrics["val_loss"] for i in kept]
    )
    assert len(lines["loss"].get_xdata()) == 2  # one point per epoch, from history.jsonl
    plt.close(fig)


def test_unknown_metric_names_the_logged_ones(run):
    with pytest.raises(ValueError, match="'val_auc' not logged .* accuracy, loss, val_accuracy"):
        history_figure(run / "last", ["val_auc"])


def test_missing_directory_raises_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="No such checkpoint directory"):
        plot_history(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="nothing to plot"):
        plot_history(tmp_path / "empty")


def test_read_history_keeps_the_latest_line_per_step_and_skips_a_torn_line(tmp_path):
    # A run interrupted after epoch 3 and resumed from its epoch-2 checkpoint trains
    # steps 30..40 again; the torn tail is what a crash in mid-append leaves.
    lines = [
        {"epoch": 1, "step": 10, "loss": 1.0},
        {"epoch": 2, "step": 20, "loss": 0.8},
        {"epoch": 3, "step": 30, "loss": 0.7},
        {"epoch": 3, "step": 30, "loss": 0.65},
        {"epoch": 4, "step": 40, "loss": 0.6},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 5, "st'
    (tmp_path / "history.jsonl").write_text(text)
    assert read_history(tmp_path) == [lines[0], lines[1], lines[3], lines[4]]
