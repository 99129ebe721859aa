"""Fixtures: tiny data, one trained directory per session, a fake clock (see tests/helpers)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

# Nothing here imports TensorFlow at module level: pytest-xdist's controller process loads
# this file before it starts the workers, and has no use for TensorFlow (its import is
# about 3.5 s of one core before any worker starts). Fixtures import what they need.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if TYPE_CHECKING:
    import keras
    import numpy as np


@pytest.fixture
def data():
    from helpers.tiny import tiny_data

    return tiny_data()


@dataclass(frozen=True)
class TrainedRun:
    """`helpers.trained_runs.train(directory, epochs=3)`: ckpt-8, -16, -24 of `tiny_model`."""

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
    from helpers.trained_runs import train

    directory = tmp_path_factory.mktemp("trained") / "run"
    model, per_epoch, x, y = train(directory, epochs=3)
    return TrainedRun(directory, model, per_epoch, x, y)


@pytest.fixture(scope="session")
def fresh():
    """Starts fresh Python processes quickly (`helpers.fresh.Zygote.run`), one zygote a session."""
    from helpers.fresh import Zygote

    zygote = Zygote()
    yield zygote
    zygote.close()


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


def pytest_collection_modifyitems(config, items):
    """Test files with a `slow` test run first, in their order, then the rest.

    With several workers (`-n 2`, the README's test command) the long tests start early and
    the short ones fill the end, instead of one worker finishing a notebook alone. A file's
    tests stay together, so its module-scoped fixtures are built once per worker.
    """
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)
