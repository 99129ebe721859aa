"""`save_freq=N` counts batches as Keras' `ModelCheckpoint` does under `steps_per_execution`."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from keras_ckpt import CheckpointCallback, EveryNSteps, KeepLast, RotatingCheckpoint

FREQS = (4, 6, 8)


def _model(k: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=k)
    return model


class _KerasSaves(keras.callbacks.Callback):
    """Records the optimizer step whenever a ModelCheckpoint wrote a new file."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder, self.steps, self._seen = folder, [], 0

    def on_train_batch_end(self, batch, logs=None):
        count = len(os.listdir(self.folder)) if os.path.isdir(self.folder) else 0
        if count > self._seen:
            self._seen = count
            self.steps.append(int(self.model.optimizer.iterations))


def _steps(directory) -> list[int]:
    return sorted(int(p.name[5:-6]) for p in directory.glob("ckpt-*.index"))


def test_saved_steps_equal_model_checkpoint_for_each_steps_per_execution(tmp_path):
    # 3 epochs of 10 batches: k=3 and k=4 do not divide the epoch, nor do 4, 6, 8 all.
    x = np.random.default_rng(0).random((30, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    for k in (1, 3, 4):
        model = _model(k)
        callbacks, spies, ours = [], [], []
        for n in FREQS:
            folder = str(tmp_path / f"keras-{k}-{n}")
            spy = _KerasSaves(folder)
            reference = keras.callbacks.ModelCheckpoint(
                os.path.join(folder, "{epoch}-{batch}.weights.h5"),
                save_weights_only=True,
                save_freq=n,
            )
            mine = CheckpointCallback(
                tmp_path / f"ours-{k}-{n}", save=EveryNSteps(n), keep=KeepLast(100)
            )
            callbacks += [reference, spy, mine]
            spies.append(spy)
            ours.append(tmp_path / f"ours-{k}-{n}")
        model.fit(x, y, batch_size=3, epochs=3, shuffle=False, callbacks=callbacks, verbose=0)
        for n, spy, directory in zip(FREQS, spies, ours, strict=True):
            assert spy.steps, (k, n)
            assert _steps(directory) == spy.steps, (k, n)


def test_save_freq_6_with_steps_per_execution_3_saves_every_6_steps(tmp_path):
    x = np.random.default_rng(1).random((24, 3)).astype("float32")
    cb = CheckpointCallback(tmp_path / "run", save=EveryNSteps(6), keep=KeepLast(100))
    _model(3).fit(x, x[:, :1], batch_size=1, epochs=1, callbacks=[cb], verbose=0)
    assert _steps(tmp_path / "run") == [6, 12, 18, 24]


def test_rotating_save_freq_8_with_steps_per_execution_4(tmp_path):
    x = np.random.default_rng(2).random((32, 3)).astype("float32")
    cb = RotatingCheckpoint(tmp_path / "run", max_to_keep=10, save_freq=8)
    _model(4).fit(x, x[:, :1], batch_size=1, epochs=1, callbacks=[cb], verbose=0)
    assert _steps(tmp_path / "run") == [8, 16, 24, 32]


def test_step_level_validation_runs_at_the_same_save_points(tmp_path):
    x = np.random.default_rng(3).random((24, 3)).astype("float32")
    y = x[:, :1]
    cb = CheckpointCallback(
        tmp_path / "run", save=EveryNSteps(6), keep=KeepLast(100), validation_data=(x, y)
    )
    model = _model(3)
    model.fit(x, y, batch_size=1, epochs=1, callbacks=[cb], verbose=0)
    assert [i.step for i in cb.checkpoints] == [6, 12, 18, 24]
    assert all("val_loss" in i.metrics for i in cb.checkpoints)
    # the last one was evaluated with the final weights
    expected = model.evaluate(x, y, verbose=0)
    assert cb.checkpoints[-1].metrics["val_loss"] == pytest.approx(expected, rel=1e-6)


def test_timed_saves_are_checked_at_each_execution(tmp_path):
    from keras_ckpt import TimedCheckpoint

    x = np.random.default_rng(4).random((12, 3)).astype("float32")
    cb = TimedCheckpoint(tmp_path / "run", every_seconds=1e-6, save_on_train_end=False)
    _model(4).fit(x, x[:, :1], batch_size=1, epochs=1, callbacks=[cb], verbose=0)
    assert _steps(tmp_path / "run") == [4, 8, 12]  # one hook per 4 batches, each one due
