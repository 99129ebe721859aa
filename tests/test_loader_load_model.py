"""load_model: rebuild from model.json with no user code, and never run code from the file."""

from __future__ import annotations

import json
import shutil
import sys

import keras
import numpy as np
import pytest
from helpers.tiny import tiny_data, tiny_model
from helpers.trained_runs import assert_weights, train

from keras_ckpt import CheckpointManager, CheckpointNotFoundError, KeepLast, load_model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    directory = tmp_path_factory.mktemp("load") / "run"
    model, _, x, _ = train(directory, epochs=2)
    return directory, model, x


def test_load_model_rebuilds_compiled_model_with_weights_and_optimizer(source):
    directory, trained, x = source
    model = load_model(directory)
    assert model is not trained
    assert_weights(model, trained.get_weights())
    np.testing.assert_array_equal(model.predict(x, verbose=0), trained.predict(x, verbose=0))
    assert model.compiled and model.loss == "mse"
    assert int(model.optimizer.iterations) == 16
    older = load_model(directory / "ckpt-8")
    assert int(older.optimizer.iterations) == 8


def test_load_model_without_model_json_says_what_to_do(tmp_path, source):
    directory = tmp_path / "run"
    shutil.copytree(source[0], directory)
    (directory / "model.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="model.json.*restore"):
        load_model(directory)


def _save_with(tmp_path, model) -> str:
    """A directory holding one checkpoint of `model` (its model.json written by the manager)."""
    directory = str(tmp_path / "run")
    with CheckpointManager(directory, model, keep=[KeepLast(1)]) as manager:
        manager.save(step=1, epoch=1)
    return directory


def test_lambda_layer_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "lambda-ran"
    touch = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(eval(touch), name="evil"), keras.layers.Dense(1)]
    )
    directory = _save_with(tmp_path, model)
    marker.unlink()  # building the model above called the lambda once
    config = json.loads((tmp_path / "run" / "model.json").read_text())

    with pytest.raises(ValueError, match=r"model\.json.*lambda.*'evil'") as err:
        load_model(directory)
    assert "custom_objects" in str(err.value)
    assert not marker.exists()

    # The test can fail: deserialising the same file unsafely does run the stored code.
    keras.saving.deserialize_keras_object(config, safe_mode=False)
    assert marker.exists()


def test_unknown_class_is_refused_and_its_module_never_imported(tmp_path, source):
    marker = tmp_path / "import-ran"
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "evil_layers.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport keras\nclass Evil(keras.layers.Layer): pass\n"
    )
    directory = tmp_path / "run"
    shutil.copytree(source[0], directory)
    config = json.loads((directory / "model.json").read_text())
    layer = config["config"]["layers"][1]
    layer.update(module="evil_layers", class_name="Evil", registered_name="Evil")
    (directory / "model.json").write_text(json.dumps(config))
    sys.path.insert(0, str(package))
    try:
        with pytest.raises(ValueError, match=r"model\.json.*unknown class 'Evil'.*evil_layers"):
            load_model(directory)
    finally:
        sys.path.remove(str(package))
    assert not marker.exists()
    assert "evil_layers" not in sys.modules


def test_unknown_class_in_compile_config_gives_uncompiled_model_and_a_warning(tmp_path, source):
    directory = tmp_path / "run"
    shutil.copytree(source[0], directory)
    config = json.loads((directory / "model.json").read_text())
    config["compile_config"]["loss"] = {
        "module": "evil_losses",
        "class_name": "EvilLoss",
        "config": {},
        "registered_name": "EvilLoss",
    }
    (directory / "model.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"unknown class 'EvilLoss'.*uncompiled"):
        model = load_model(directory)
    assert not model.compiled
    assert_weights(model, source[1].get_weights())
    assert "evil_losses" not in sys.modules


def test_named_function_lambda_loads_when_user_supplies_it(tmp_path):
    def double(x):
        return x * 2

    x, y = tiny_data()
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(double, name="double"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    directory = _save_with(tmp_path, model)

    with pytest.raises(ValueError, match="unknown function 'double'"):
        load_model(directory)
    loaded = load_model(directory, custom_objects={"double": double})
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_uncompiled_model_loads_uncompiled(tmp_path):
    model = tiny_model(compile=False, seed=2)
    directory = _save_with(tmp_path, model)
    loaded = load_model(directory)
    assert not loaded.compiled
    assert_weights(loaded, model.get_weights())
