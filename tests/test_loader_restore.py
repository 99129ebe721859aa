"""restore / latest_checkpoint: exact restores, mismatches, missing paths, fine-tuning."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from helpers.tiny import tiny_model, weights_equal
from helpers.trained_runs import N, assert_weights, data_file, train, truncate

from keras_ckpt import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    latest_checkpoint,
    restore,
)


@pytest.fixture(scope="module")
def run(trained_run):
    """Three epochs (ckpt-8, -16, -24) of a tiny model, trained once per session."""
    return trained_run.directory, trained_run.model, trained_run.per_epoch, trained_run.x


def test_restore_into_fresh_model_gives_identical_weights_predictions_and_optimizer(run):
    directory, trained, _, x = run
    fresh = tiny_model(seed=7)
    assert not weights_equal(fresh, trained)

    info = restore(fresh, str(directory))  # a directory means its latest checkpoint

    assert (info.step, info.epoch, info.path) == (24, 3, str(directory / "ckpt-24"))
    assert weights_equal(fresh, trained)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), trained.predict(x, verbose=0))
    assert int(fresh.optimizer.iterations) == 24
    assert len(fresh.optimizer.variables) == len(trained.optimizer.variables)
    for a, b in zip(fresh.optimizer.variables, trained.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # Adam slots and iterations


def test_restore_of_an_older_prefix_gives_that_epochs_weights(run):
    directory, _, per_epoch, _ = run
    fresh = tiny_model(seed=7)
    info = restore(fresh, directory / "ckpt-8")
    assert (info.step, info.epoch) == (8, 1)
    assert_weights(fresh, per_epoch[1])
    assert int(fresh.optimizer.iterations) == 8


def test_width_mismatch_raises_naming_both_shapes_and_leaves_model_unchanged(run):
    directory, _, _, _ = run
    wide = tiny_model(width=16, seed=3)
    wide.optimizer.build(wide.trainable_variables)
    before = wide.get_weights()
    slots_before = [v.numpy().copy() for v in wide.optimizer.variables]

    with pytest.raises(CheckpointMismatchError) as err:
        restore(wide, directory)

    message = str(err.value)
    assert "body/kernel" in message
    assert "(4, 8)" in message and "(4, 16)" in message  # checkpoint and model shapes
    assert "nothing was restored" in message
    assert_weights(wide, before)
    for v, old in zip(wide.optimizer.variables, slots_before, strict=True):
        np.testing.assert_array_equal(v.numpy(), old)


def test_missing_directory_or_prefix_gives_none_and_not_found(tmp_path, run):
    directory, _, _, _ = run
    model = tiny_model()
    assert latest_checkpoint(tmp_path / "nope") is None
    with pytest.raises(CheckpointNotFoundError, match="nope"):
        restore(model, tmp_path / "nope")
    with pytest.raises(CheckpointNotFoundError, match="ckpt-999"):
        restore(model, directory / "ckpt-999")
    (tmp_path / "empty").mkdir()
    assert latest_checkpoint(tmp_path / "empty") is None
    with pytest.raises(CheckpointNotFoundError, match="no complete checkpoint"):
        restore(model, tmp_path / "empty")


def test_fine_tuning_restores_body_under_new_head_with_a_warning(tmp_path):
    directory = tmp_path / "three"
    source, _, _, _ = train(directory, epochs=1, out=3)
    target = tiny_model(out=5, seed=9)
    head_before = target.get_layer("head").get_weights()

    with pytest.raises(CheckpointMismatchError, match="head/kernel"):
        restore(target, directory)  # strict by default
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = restore(target, directory, strict=False)

    assert info.step == N // 8
    body = zip(
        target.get_layer("body").get_weights(), source.get_layer("body").get_weights(), strict=True
    )
    for a, b in body:
        np.testing.assert_array_equal(a, b)
    for a, b in zip(target.get_layer("head").get_weights(), head_before, strict=True):
        np.testing.assert_array_equal(a, b)  # untouched
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # the skipped head, and the optimizer left fresh
    assert "skipped" in messages[0] and "head/kernel" in messages[0]
    assert "(8, 3)" in messages[0] and "(8, 5)" in messages[0]
    assert "optimizer state" in messages[1] and "head_kernel" in messages[1]


def test_directory_with_damaged_newest_restores_newest_intact_and_warns(tmp_path, trained_run):
    directory = tmp_path / "run"
    shutil.copytree(trained_run.directory, directory)
    per_epoch = trained_run.per_epoch
    truncate(data_file(directory / "ckpt-24"))
    model = tiny_model(seed=5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = restore(model, directory)

    assert info.step == 16
    assert_weights(model, per_epoch[2])
    assert any("ckpt-24" in str(w.message) and "damaged" in str(w.message) for w in caught)
