"""`load_model`'s refusals say what works: for a subclassed model or a lambda, rebuilding in
code + `restore`, or `save_graph=True`; `custom_objects=` only where it can help."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers.tiny import tiny_data

from keras_ckpt import CheckpointManager, KeepLast, load_model, restore

ROUTES = ("keras_ckpt.restore(model, checkpoint)", "save_graph=True", "graph/")


class Regressor(keras.Model):
    """A subclassed model, not registered: model.json names it but cannot rebuild it."""

    def __init__(self, width=8, **kwargs):
        super().__init__(**kwargs)
        self.body = keras.layers.Dense(width, activation="relu")
        self.head = keras.layers.Dense(1)

    def call(self, x):
        return self.head(self.body(x))


class NoConfig(Regressor):
    """Its `get_config` leaves out a required argument: Keras cannot rebuild it."""

    def __init__(self, width, **kwargs):
        super().__init__(width, **kwargs)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable}


def _trained(tmp_path, model) -> tuple[str, np.ndarray]:
    x, y = tiny_data()
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    directory = str(tmp_path / "run")
    with CheckpointManager(directory, model, keep=[KeepLast(1)]) as manager:
        manager.save(epoch=1)
    return directory, x


def _assert_routes(message: str) -> None:
    for route in ROUTES:
        assert route in message, f"{route!r} missing from: {message}"


def test_subclassed_model_refusal_says_rebuild_and_restore_or_save_graph(tmp_path):
    model = Regressor()
    directory, x = _trained(tmp_path, model)
    with pytest.raises(ValueError) as err:
        load_model(directory)
    message = str(err.value)
    assert "Regressor is a subclassed model" in message
    _assert_routes(message)
    assert "works only if it rebuilds itself from its config" in message
    assert message.count("custom_objects") == 1  # only that condition: no plain advice

    rebuilt = Regressor()  # the advice works: build in code, then restore
    rebuilt(x[:1])
    rebuilt.compile(keras.optimizers.Adam(1e-2), "mse")
    assert restore(rebuilt, directory).step == 4
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0))


def test_subclassed_model_keras_cannot_rebuild_gets_the_same_routes(tmp_path):
    directory, _ = _trained(tmp_path, NoConfig(8))
    with pytest.raises(ValueError, match="could not be rebuilt by Keras") as err:
        load_model(directory, custom_objects={"NoConfig": NoConfig})
    message = str(err.value)
    _assert_routes(message)
    assert "pass them in `custom_objects=`" not in message  # it was passed: no help
    assert "compile_config" not in message  # Keras' dump of the whole config is left out


def test_lambda_refusal_says_custom_objects_cannot_help(tmp_path):
    twice = keras.layers.Lambda(lambda t: t * 2, name="twice")
    model = keras.Sequential([keras.Input((4,)), twice, keras.layers.Dense(1)])
    directory, _ = _trained(tmp_path, model)
    with pytest.raises(ValueError, match=r"lambda.*'twice'") as err:
        load_model(directory)
    message = str(err.value)
    assert "No `custom_objects=` can stand in for it" in message
    assert message.count("custom_objects") == 1
    _assert_routes(message)
    assert "register_keras_serializable" in message  # for new runs


def test_unknown_named_function_refusal_shows_the_custom_objects_that_works(tmp_path):
    def double(t):
        return t * 2

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(double, name="double"), keras.layers.Dense(1)]
    )
    directory, x = _trained(tmp_path, model)
    with pytest.raises(ValueError) as err:
        load_model(directory)
    message = str(err.value)
    assert "`custom_objects={'double': double}`" in message
    _assert_routes(message)
    loaded = load_model(directory, custom_objects={"double": double})  # as suggested
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
