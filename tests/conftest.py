"""Shared helpers: tiny real models, real files, real TensorFlow (no mocks)."""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def tiny_model(width: int = 8, out: int = 1, compile: bool = True, seed: int = 0) -> keras.Model:
    """A small dense regressor with named layers `body` and `head`."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, activation="relu", name="body"),
            keras.layers.Dense(out, name="head"),
        ]
    )
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    return model


def tiny_data(n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x, y


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


@pytest.fixture
def data():
    return tiny_data()


@dataclass(frozen=True)
class TrainedRun:
    """`loader_helpers.train(directory, epochs=3)`: ckpt-8, -16, -24 of `tiny_model`."""

    directory: object  # a pathlib.Path
    model: keras.Model
    per_epoch: list  # the weights after each epoch (index 0: before training)
    x: np.ndarray
    y: np.ndarray


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """One training directory shared by the loader tests: READ ONLY (copy it to damage it).

    Trained once per session instead of once per test module.
    """
    from loader_helpers import train  # it imports this module

    directory = tmp_path_factory.mktemp("trained") / "run"
    model, per_epoch, x, y = train(directory, epochs=3)
    return TrainedRun(directory, model, per_epoch, x, y)


class FakeClock:
    """A clock that moves only when told (`advance`): time-based policies without sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock():
    """Installs a `FakeClock` as the library's clock for one test."""
    from keras_ckpt import _clock

    with _clock.use(FakeClock()) as clock:
        yield clock
