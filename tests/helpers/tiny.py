"""Tiny real models and data for the tests, and a callback that scripts metric values."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def tiny_model(
    width: int = 8, out: int = 1, compile: bool = True, seed: int = 0, eager: bool = False
) -> keras.Model:
    """A small dense regressor with named layers `body` and `head`.

    `eager`: `fit` steps without tracing the train step, for tests that fit a few batches once
    (tracing costs more than those steps); the checkpoints hold the same variables either way.
    """
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, activation="relu", name="body"),
            keras.layers.Dense(out, name="head"),
        ]
    )
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"], run_eagerly=eager
        )
    return model


def tiny_data(n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x, y


def poison(model: keras.Model) -> None:
    """Sets every weight of `model` to NaN.

    Building a model for each restore costs more than the restore itself; reusing one is as
    strict only if a restore that reads nothing (or only some weights) cannot pass because
    of what the previous restore left behind. After this, it cannot: NaN equals nothing.
    """
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])


def weights_equal(a: keras.Model, b: keras.Model) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


class SetLogs(keras.callbacks.Callback):
    """Placed before a checkpoint callback: overwrites `logs[name]` with scripted values."""

    def __init__(self, name: str, values: list[float], per: str = "epoch") -> None:
        super().__init__()
        self.name, self.values, self.per, self.i = name, list(values), per, 0

    def _next(self, logs):
        if logs is not None and self.i < len(self.values):
            logs[self.name] = self.values[self.i]
        self.i += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.per == "epoch":
            self._next(logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.per == "batch":
            self._next(logs)
