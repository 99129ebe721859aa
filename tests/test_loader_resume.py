"""resume: interrupted training continues exactly; damaged checkpoints are skipped, not fatal."""

from __future__ import annotations

import shutil
import warnings

import keras
import pytest
from helpers.tiny import tiny_data, tiny_model
from helpers.trained_runs import BATCH, N, assert_weights, data_file, flip_byte, truncate

from keras_ckpt import RotatingCheckpoint, list_checkpoints, resume


class Interrupt(keras.callbacks.Callback):
    """Raises after `epochs` epochs, like a crash (Keras then calls no on_train_end)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise RuntimeError("simulated crash")


def _fit(model, callbacks, epochs, initial_epoch=0):
    x, y = tiny_data(N)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        callbacks=callbacks,
        verbose=0,
    )


def _crash_after_two_epochs(model, directory: str, epochs: int) -> None:
    """Trains with a RotatingCheckpoint (2 kept) until a simulated crash after epoch 2."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(model, [RotatingCheckpoint(directory, max_to_keep=2), Interrupt(2)], epochs=epochs)


def test_two_epochs_then_resume_for_three_equals_five_uninterrupted(tmp_path):
    keras.utils.set_random_seed(0)
    reference = tiny_model(seed=0)
    _fit(reference, [], epochs=5)

    directory = str(tmp_path / "run")
    _crash_after_two_epochs(tiny_model(seed=0), directory, epochs=5)
    assert [i.step for i in list_checkpoints(directory)] == [8, 16]

    second = tiny_model(seed=1)  # a new process would start from other random weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        initial_epoch = resume(second, directory)
        assert initial_epoch == 2
        assert int(second.optimizer.iterations) == 16
        _fit(second, [RotatingCheckpoint(directory, max_to_keep=2)], 5, initial_epoch)

    assert_weights(second, reference.get_weights(), atol=1e-6)
    assert not [w for w in caught if "did not resume" in str(w.message)]
    assert [(i.step, i.epoch) for i in list_checkpoints(directory)] == [(32, 4), (40, 5)]


@pytest.fixture(scope="module")
def three_epochs(trained_run):
    """ckpt-8, -16, -24 and the weights after each epoch, trained once per session."""
    return trained_run.directory, trained_run.per_epoch


@pytest.mark.parametrize("damage", [flip_byte, truncate], ids=["flipped-byte", "truncated"])
def test_damaged_latest_warns_and_falls_back_to_newest_intact(tmp_path, three_epochs, damage):
    source, per_epoch = three_epochs
    directory = tmp_path / "run"
    shutil.copytree(source, directory)
    damaged = data_file(directory / "ckpt-24")
    damage(damaged)
    before = open(damaged, "rb").read()

    model = tiny_model(seed=4)
    for _ in range(2):  # a restart loop gets the same answer each time, never an exception
        with pytest.warns(UserWarning, match="ckpt-24") as caught:
            assert resume(model, directory) == 2
        assert any("damaged" in str(w.message) for w in caught)
        assert_weights(model, per_epoch[2])
        assert int(model.optimizer.iterations) == 16
    assert open(damaged, "rb").read() == before  # resume changed nothing on disk


def test_resume_after_fallback_continues_to_the_uninterrupted_result(tmp_path, three_epochs):
    source, _ = three_epochs
    directory = tmp_path / "run"
    shutil.copytree(source, directory)
    flip_byte(data_file(directory / "ckpt-24"))
    reference = tiny_model(seed=0)
    _fit(reference, [], epochs=5)

    model = tiny_model(seed=2)
    with pytest.warns(UserWarning, match="ckpt-24"):
        initial_epoch = resume(model, directory)
    _fit(model, [], 5, initial_epoch)
    assert_weights(model, reference.get_weights(), atol=1e-6)


def test_every_checkpoint_damaged_returns_zero_with_a_warning(tmp_path, three_epochs):
    source, _ = three_epochs
    directory = tmp_path / "run"
    shutil.copytree(source, directory)
    for step in (8, 16, 24):
        flip_byte(data_file(directory / f"ckpt-{step}"))
    model = tiny_model(seed=4)
    before = model.get_weights()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resume(model, directory) == 0
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4, messages  # newest first, then the verdict
    for message, step in zip(messages, (24, 16, 8, None), strict=True):
        assert (f"ckpt-{step} is damaged" if step else "no intact checkpoint") in message
    assert_weights(model, before)


def test_missing_or_empty_directory_returns_zero(tmp_path):
    model = tiny_model()
    before = model.get_weights()
    assert resume(model, tmp_path / "missing") == 0
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        assert resume(model, tmp_path / "empty") == 0
    assert_weights(model, before)
    assert not (tmp_path / "missing").exists()


def test_resume_into_uncompiled_model_warns_that_optimizer_state_is_not_restored(
    tmp_path, three_epochs
):
    source, per_epoch = three_epochs
    model = tiny_model(compile=False, seed=3)
    with pytest.warns(UserWarning, match="uncompiled"):
        assert resume(model, source) == 3
    assert_weights(model, per_epoch[3])


def _dropout_model(seed: int) -> keras.Model:
    """A regressor with Dropout and a random augmentation layer (SeedGenerator state)."""
    keras.utils.set_random_seed(seed)  # also picks the SeedGenerators' initial seeds
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.GaussianNoise(0.1, name="noise"),
            keras.layers.Dense(16, activation="relu", name="body"),
            keras.layers.Dropout(0.5, name="drop"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def _seed_states(model) -> list:
    return [v.numpy().tolist() for v in model.variables if "seed_generator" in v.path]


def test_resume_with_dropout_continues_the_random_masks_exactly(tmp_path):
    reference = _dropout_model(seed=0)
    _fit(reference, [], epochs=4)

    directory = str(tmp_path / "run")
    first = _dropout_model(seed=0)
    _crash_after_two_epochs(first, directory, epochs=4)
    at_crash = _seed_states(first)
    assert len(at_crash) == 2 and at_crash != _seed_states(_dropout_model(seed=1))

    second = _dropout_model(seed=1)  # a new process: other weights and other seeds
    initial_epoch = resume(second, directory)
    assert initial_epoch == 2
    assert _seed_states(second) == at_crash  # the masks continue where the run stopped
    _fit(second, [], 4, initial_epoch)

    assert_weights(second, reference.get_weights(), atol=1e-6)
    assert _seed_states(second) == _seed_states(reference)
