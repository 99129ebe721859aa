"""A `mixed_float16` run loads in a fresh process whose dtype policy is the default.

Keras wraps the compiled optimizer in a `LossScaleOptimizer` under `mixed_float16`, but its
compile config records the optimizer as given; `model.json` records the wrapper, so a
process with the default policy rebuilds it and the checkpoint's state fits it.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ckpt import RotatingCheckpoint

WORKER = os.path.join(os.path.dirname(__file__), "helpers/fresh_loader_worker.py")


def _flat(values) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype="float64").ravel() for v in values])


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_directory_loads_with_its_loss_scale_optimizer_in_a_fresh_process(
    mixed_float16, tmp_path, fresh
):
    directory = str(tmp_path / "run")
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]])).astype("float32")
    inputs = keras.Input((4,))
    h = keras.layers.Dense(16, activation="relu", name="body")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32", name="head")(h))
    model.compile(keras.optimizers.Adam(1e-2), "mse", metrics=["mae"])
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model.fit(data, epochs=2, callbacks=[RotatingCheckpoint(directory)], verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    np.save(os.path.join(directory, "inputs.npy"), x)
    np.save(os.path.join(directory, "labels.npy"), y)
    recorded = json.loads(open(os.path.join(directory, "model.json")).read())
    assert recorded["compile_config"]["optimizer"]["class_name"] == "LossScaleOptimizer"

    out = str(tmp_path / "fresh.npz")
    # A new process (`helpers.fresh`: Keras' default configuration, no keras.json of the user)
    done = fresh.run([WORKER, "--fit", out, directory], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)

    assert str(got["policy"]) == "float32"  # the process's policy is the default one
    assert list(got["0/warnings"]) == [""]  # no "does not fit" warning, nor any other
    assert str(got["0/optimizer"]) == "LossScaleOptimizer"
    assert int(got["0/iterations"]) == int(model.optimizer.iterations) > 0
    np.testing.assert_array_equal(got["0/optimizer_variables"], _flat(model.optimizer.variables))
    expected = model.predict(x, verbose=0)
    np.testing.assert_array_equal(got["0/load_model"], expected)
    np.testing.assert_array_equal(got["0/saved_model"], expected)
    logs = model.evaluate(data, verbose=0, return_dict=True)
    np.testing.assert_array_equal(got["0/evaluate"], [logs[k] for k in sorted(logs)])

    model.fit(data, epochs=1, verbose=0)  # training goes on as it would have here
    np.testing.assert_array_equal(got["0/after_fit"], _flat(model.get_weights()))
