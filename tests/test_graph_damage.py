"""Damage to `graph/`: `verify` names the file; `load_model` uses model.json or refuses."""

from __future__ import annotations

import glob
import os
import shutil

import keras
import numpy as np
import pytest
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import CheckpointCorruptError, RotatingCheckpoint, load_model, verify


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.body = keras.layers.Dense(4, activation="relu")
        self.head = keras.layers.Dense(1)

    def call(self, x):
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph_damage")
    x, y = tiny_data(32)
    functional = tiny_model()
    functional.fit(
        x, y, epochs=2, verbose=0, callbacks=[RotatingCheckpoint(str(root / "f"), save_graph=True)]
    )
    net = Net()
    net.compile(optimizer="adam", loss="mse")
    cb = RotatingCheckpoint(str(root / "s"), save_graph=True)
    net.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert verify(root / "f") == [] and verify(root / "s") == []
    return root, x


def _copy(runs, name, tmp_path):
    root, _ = runs
    return shutil.copytree(root / name, tmp_path / name)


def _truncate(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_truncated_graph_file_is_reported_and_load_model_uses_model_json(runs, tmp_path):
    run = _copy(runs, "f", tmp_path)
    (data,) = glob.glob(str(run / "graph" / "variables" / "variables.data-*"))
    _truncate(data)
    problems = verify(run)
    assert len(problems) == 1 and problems[0].startswith(data)
    assert "truncated or altered" in problems[0]
    model = load_model(run)  # model.json rebuilds it: graph/ is not needed
    reference = load_model(runs[0] / "f")
    x = runs[1]
    np.testing.assert_array_equal(model.predict(x, verbose=0), reference.predict(x, verbose=0))


def test_missing_graph_file_is_reported_and_subclassed_load_model_raises(runs, tmp_path):
    run = _copy(runs, "s", tmp_path)
    os.remove(run / "graph" / "saved_model.pb")
    problems = verify(run)
    assert problems == [
        f"{run / 'graph' / 'saved_model.pb'}: missing (listed in keras_ckpt.json): delete "
        f"{run / 'graph'} (a run with save_graph=True writes it again)"
    ]
    with pytest.raises(CheckpointCorruptError, match="saved_model.pb"):
        load_model(run)  # model.json names the class Net, which it cannot rebuild without code


def test_truncated_graph_of_subclassed_model_raises_naming_the_file(runs, tmp_path):
    run = _copy(runs, "s", tmp_path)
    (data,) = glob.glob(str(run / "graph" / "variables" / "variables.data-*"))
    _truncate(data)
    assert [p.split(":")[0] for p in verify(run)] == [data]
    with pytest.raises(CheckpointCorruptError, match="variables.data-"):
        load_model(run)


def test_without_graph_the_error_says_which_of_the_two_to_use(runs, tmp_path):
    run = _copy(runs, "s", tmp_path)
    shutil.rmtree(run / "graph")
    with pytest.raises(ValueError) as caught:
        load_model(run)
    message = str(caught.value)
    assert "model.json" in message and "custom_objects" in message
    assert "save_graph=True" in message
