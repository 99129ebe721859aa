"""evaluate_checkpoints: one row per kept checkpoint, equal to a manual restore + evaluate."""

from __future__ import annotations

import shutil

import keras
import pytest
import tensorflow as tf
from helpers.tiny import tiny_data, tiny_model
from helpers.trained_runs import assert_weights, data_file, flip_weight, truncate

from keras_ckpt import CheckpointNotFoundError, evaluate_checkpoints, restore


@pytest.fixture(scope="module")
def source(trained_run):
    directory = trained_run.directory
    x, y = tiny_data(48, seed=1)  # held-out data
    return directory, x, y


def _manual(directory, steps, evaluate):
    """The reference: a fresh model per checkpoint, restored, evaluated by Keras."""
    rows = []
    for step in steps:
        model = tiny_model(seed=11)
        restore(model, directory / f"ckpt-{step}")
        rows.append(evaluate(model))
    return rows


def test_rows_equal_manual_restore_and_evaluate_for_arrays(source):
    directory, x, y = source
    rows = evaluate_checkpoints(directory, (x, y), batch_size=16)

    assert [(r["path"], r["step"], r["epoch"]) for r in rows] == [
        (str(directory / f"ckpt-{s}"), s, e) for s, e in ((8, 1), (16, 2), (24, 3))
    ]
    expected = _manual(
        directory,
        (8, 16, 24),
        lambda m: m.evaluate(x, y, batch_size=16, verbose=0, return_dict=True),
    )
    for row, want in zip(rows, expected, strict=True):
        assert set(row) == {"path", "step", "epoch", "loss", "mae"}
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-6)
        assert row["mae"] == pytest.approx(want["mae"], rel=1e-6)
    assert rows[0]["loss"] != rows[-1]["loss"]  # the weights really changed between rows


def test_rows_for_a_dataset_and_a_given_compiled_model(source):
    directory, x, y = source
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(12)
    model = tiny_model(seed=3)
    model.compile(optimizer="sgd", loss="mae", metrics=[keras.metrics.MeanSquaredError("mse")])
    before = model.get_weights()

    rows = evaluate_checkpoints(directory, dataset, model=model)

    assert [r["step"] for r in rows] == [8, 16, 24]
    assert set(rows[0]) == {"path", "step", "epoch", "loss", "mse"}  # the model's choice
    expected = _manual(directory, (8, 16, 24), lambda m: _evaluate_as(m, dataset))
    for row, want in zip(rows, expected, strict=True):
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-6)
        assert row["mse"] == pytest.approx(want["mse"], rel=1e-6)
    assert_weights(model, before)  # the caller's weights are put back


def _evaluate_as(model, dataset):
    model.compile(optimizer="sgd", loss="mae", metrics=[keras.metrics.MeanSquaredError("mse")])
    return model.evaluate(dataset, verbose=0, return_dict=True)


@pytest.mark.parametrize("damage", ["weight", "truncated"])
def test_damaged_checkpoint_is_skipped_with_a_warning(tmp_path, source, damage):
    directory = tmp_path / "run"
    shutil.copytree(source[0], directory)
    if damage == "weight":
        flip_weight(directory / "ckpt-16")  # found only when its value is read
    else:
        truncate(data_file(directory / "ckpt-16"))  # found by the size check
    with pytest.warns(UserWarning, match="ckpt-16"):
        rows = evaluate_checkpoints(directory, source[1:])
    assert [r["step"] for r in rows] == [8, 24]


def test_bad_arguments_are_named(tmp_path, source):
    directory, x, y = source
    with pytest.raises(CheckpointNotFoundError):
        evaluate_checkpoints(tmp_path / "missing", (x, y))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_checkpoints(directory, tf.data.Dataset.from_tensor_slices((x, y)), batch_size=4)
    with pytest.raises(ValueError, match="`data` must be"):
        evaluate_checkpoints(directory, x)
    with pytest.raises(ValueError, match="not compiled"):
        evaluate_checkpoints(directory, (x, y), model=tiny_model(compile=False))
    (tmp_path / "empty").mkdir()
    assert evaluate_checkpoints(tmp_path / "empty", (x, y)) == []
