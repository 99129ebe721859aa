"""export_saved_model / load_saved_model / export_weights_h5, and use in a fresh process."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny import tiny_model
from helpers.trained_runs import assert_weights, train

from keras_ckpt import (
    CheckpointNotFoundError,
    export_saved_model,
    export_weights_h5,
    load_saved_model,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    directory = tmp_path_factory.mktemp("export") / "run"
    model, per_epoch, x, _ = train(directory, epochs=2)
    return directory, model, per_epoch, x


def test_saved_model_has_a_serving_signature_and_matches_predictions(tmp_path, source):
    directory, trained, _, x = source
    out = export_saved_model(directory, tmp_path / "export")
    assert out == str(tmp_path / "export")
    assert (tmp_path / "export" / "saved_model.pb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary left behind

    loaded = tf.saved_model.load(out)
    serving = loaded.signatures["serving_default"]
    (output,) = serving(tf.constant(x)).values()
    np.testing.assert_allclose(output.numpy(), trained.predict(x, verbose=0), atol=1e-6)

    model = load_saved_model(out)
    assert isinstance(model, keras.Model)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6
    )


def test_export_of_an_older_checkpoint_with_a_given_model(tmp_path, source):
    directory, _, per_epoch, x = source
    model = tiny_model(seed=5)
    export_saved_model(directory / "ckpt-8", tmp_path / "e1", model=model)
    assert_weights(model, per_epoch[1])
    reference = tiny_model(seed=5)
    reference.set_weights(per_epoch[1])
    np.testing.assert_allclose(
        load_saved_model(tmp_path / "e1").predict(x, verbose=0),
        reference.predict(x, verbose=0),
        atol=1e-6,
    )


def test_export_refuses_a_non_empty_directory_and_leaves_it_alone(tmp_path, source):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="export_dir.*not empty"):
        export_saved_model(source[0], target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"


def test_load_saved_model_of_a_directory_without_one_says_so(tmp_path, source):
    with pytest.raises(CheckpointNotFoundError, match="saved_model.pb"):
        load_saved_model(source[0])  # a checkpoint directory is not a SavedModel
    with pytest.raises(CheckpointNotFoundError):
        load_saved_model(tmp_path / "missing")


def test_weights_h5_loads_with_keras_load_weights(tmp_path, source):
    directory, trained, _, _ = source
    path = export_weights_h5(directory, tmp_path / "best.weights.h5")
    assert path == str(tmp_path / "best.weights.h5")
    plain = tiny_model(compile=False, seed=8)
    plain.load_weights(path)
    assert_weights(plain, trained.get_weights())
    trained_again = tiny_model(seed=8)  # a compiled model with a built optimizer gets it too
    trained_again.optimizer.build(trained_again.trainable_variables)
    trained_again.load_weights(path)
    assert int(trained_again.optimizer.iterations) == 16
    for a, b in zip(trained_again.optimizer.variables, trained.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5"]


def test_weights_h5_refuses_a_wrong_suffix_before_doing_anything(tmp_path, source):
    with pytest.raises(ValueError, match=r"\.weights\.h5.*Received: path="):
        export_weights_h5(source[0], tmp_path / "best.h5")
    assert list(tmp_path.iterdir()) == []


FRESH = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import keras_ckpt

directory, export_dir, inputs = sys.argv[1:4]
x = np.load(inputs)
model = keras_ckpt.load_model(directory)
served = keras_ckpt.load_saved_model(export_dir)
np.save(inputs + ".model.npy", model.predict(x, verbose=0))
np.save(inputs + ".served.npy", served.predict(x, verbose=0))
print(json.dumps({"model": type(model).__name__, "served": type(served).__name__}))
"""


@pytest.mark.slow
def test_fresh_process_reproduces_predictions_without_model_code(tmp_path, source, fresh):
    """The subprocess sees only the package (PYTHONPATH=repo root, cwd=tmp_path): no
    conftest, no model-building function."""
    directory, trained, _, x = source
    export_dir = export_saved_model(directory, tmp_path / "export")
    inputs = str(tmp_path / "x.npy")
    np.save(inputs, x)
    script = tmp_path / "fresh.py"
    script.write_text(textwrap.dedent(FRESH))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = fresh.run(  # a new process (`helpers.fresh`) that never saw this module
        [str(script), str(directory), export_dir, inputs], env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"model": "Sequential", "served": "Functional"}
    expected = trained.predict(x, verbose=0)
    np.testing.assert_allclose(np.load(inputs + ".model.npy"), expected, atol=1e-6)
    np.testing.assert_allclose(np.load(inputs + ".served.npy"), expected, atol=1e-6)
