"""Adapted lookup vocabularies (StringLookup, IntegerLookup, TextVectorization) survive
every route: they are kept once per directory in `assets/` and loaded into rebuilt layers.

The routes run in a fresh process (`helpers/fresh_loader_worker.py`) that never saw the model code,
as a user's serving or evaluation script would.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ckpt import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    RotatingCheckpoint,
    evaluate_checkpoints,
    load_model,
    restore,
    resume,
    verify,
)

WORDS = np.array(["red", "green", "blue", "cyan", "pink", "gold", "grey", "teal"])
WORKER = os.path.join(os.path.dirname(__file__), "helpers/fresh_loader_worker.py")


def _string_data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.choice(WORDS, size=(n, 3))
    return x, np.isin(x[:, 0], WORDS[:3]).astype("float32")


def _string_model(adapt_on: np.ndarray | None) -> keras.Model:
    keras.utils.set_random_seed(0)
    lookup = keras.layers.StringLookup(name="lookup")
    if adapt_on is not None:
        lookup.adapt(adapt_on)
    inputs = keras.Input((3,), dtype="string")
    h = keras.layers.Embedding(len(WORDS) + 1, 4, name="embed")(lookup(inputs))
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    return model


def _text_data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    words = rng.choice(WORDS, size=(n, 5))
    x = np.array([" ".join(row) for row in words])
    return x, np.array(["gold" in row for row in words], dtype="float32")


def _text_model(adapt_on: np.ndarray | None) -> keras.Model:
    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(
        max_tokens=12, output_sequence_length=5, name="vectorize"
    )
    if adapt_on is not None:
        vectorize.adapt(adapt_on)
    inputs = keras.Input((), dtype="string")
    h = keras.layers.Embedding(12, 8, name="embed")(vectorize(inputs))
    h = keras.layers.GRU(8, name="gru")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    return model


def _dataset(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((tf.constant(x), y)).batch(16)


def _train(directory, make, data, epochs: int = 2) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    x, y = data
    model = make(x)
    model.fit(_dataset(x, y), epochs=epochs, callbacks=[RotatingCheckpoint(directory)], verbose=0)
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "inputs.npy"), x)
    np.save(os.path.join(directory, "labels.npy"), y)
    return model, x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lookup")
    runs = {}
    for name, make, data in [
        ("string", _string_model, _string_data()),
        ("text", _text_model, _text_data()),
    ]:
        directory = str(root / name)
        model, x, y = _train(directory, make, data)
        runs[name] = (directory, model, x, y)
    return runs


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> str:
    """A directory of one epoch of `_string_model`, trained once: READ ONLY (see `_copy`)."""
    directory = str(tmp_path_factory.mktemp("one_epoch") / "run")
    _train(directory, _string_model, _string_data(), epochs=1)
    return directory


def _copy(one_epoch: str, tmp_path) -> str:
    """A copy of the `one_epoch` directory, as the finished run left it, to change."""
    directory = str(tmp_path / "run")
    shutil.copytree(one_epoch, directory)
    return directory


def _predict(model, x) -> np.ndarray:
    return model.predict(tf.constant(x), verbose=0)


def test_vocabulary_is_kept_once_in_the_directory_assets(trained):
    directory, model, _, _ = trained["string"]
    index = json.loads(open(os.path.join(directory, "assets", "index.json")).read())
    assert list(index["layers"]) == ["lookup"]
    with open(os.path.join(directory, "assets", "lookup", "vocabulary.txt")) as f:
        saved = f.read().splitlines()
    assert saved == [str(w) for w in model.get_layer("lookup").get_vocabulary()]
    assert sorted(saved[1:]) == sorted(WORDS)  # [UNK] first, then the adapted words

    text_dir = trained["text"][0]
    text_index = json.loads(open(os.path.join(text_dir, "assets", "index.json")).read())
    assert list(text_index["layers"]) == ["vectorize"]


def test_fresh_process_load_export_and_evaluate_match_the_trained_model(trained, tmp_path, fresh):
    out = str(tmp_path / "fresh.npz")
    dirs = [trained["string"][0], trained["text"][0]]
    done = fresh.run([WORKER, out, *dirs], timeout=300)  # a new process (`helpers.fresh`)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    for i, name in enumerate(["string", "text"]):
        _, model, x, y = trained[name]
        expected = _predict(model, x)
        np.testing.assert_array_equal(got[f"{i}/load_model"], expected)
        np.testing.assert_array_equal(got[f"{i}/saved_model"], expected)
        logs = model.evaluate(_dataset(x, y), verbose=0, return_dict=True)
        np.testing.assert_array_equal(got[f"{i}/evaluate"], [logs[k] for k in sorted(logs)])


@pytest.mark.parametrize("name", ["string", "text"])
def test_restore_into_a_never_adapted_model_restores_the_vocabulary(trained, name):
    directory, model, x, _ = trained[name]
    fresh = (_string_model if name == "string" else _text_model)(None)
    restore(fresh, directory)
    np.testing.assert_array_equal(_predict(fresh, x), _predict(model, x))


def test_restore_replaces_another_vocabulary_even_after_predict(trained):
    directory, model, x, _ = trained["string"]
    other = _string_model(WORDS[::-1])  # same words, other indices
    before = _predict(other, x)  # traces predict with the other table
    restore(other, directory)
    after = _predict(other, x)
    np.testing.assert_array_equal(after, _predict(model, x))
    assert not np.array_equal(before, after)


def test_resume_into_a_never_adapted_model_continues_with_the_vocabulary(trained):
    directory, model, x, _ = trained["string"]
    fresh = _string_model(None)
    assert resume(fresh, directory) == 2
    np.testing.assert_array_equal(_predict(fresh, x), _predict(model, x))


def test_without_kept_assets_a_never_adapted_layer_is_a_clear_error(one_epoch, tmp_path):
    directory = _copy(one_epoch, tmp_path)
    os.remove(os.path.join(directory, "assets", "index.json"))  # as a directory of old

    fresh = _string_model(None)
    before = fresh.get_weights()
    with pytest.raises(CheckpointMismatchError, match=r"lookup \(StringLookup\).*never adapted"):
        restore(fresh, directory)
    assert all(np.array_equal(a, b) for a, b in zip(before, fresh.get_weights()))
    with pytest.raises(CheckpointMismatchError, match="Adapt it"):
        load_model(directory)
    with pytest.warns(UserWarning, match="restored no vocabulary"):
        restore(fresh, directory, strict=False)

    adapted = _string_model(_string_data()[0])  # adapted in code as in training: fine
    restore(adapted, directory)


def test_integer_lookup_vocabulary_survives_load_model(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(2).integers(100, 110, size=(32, 2))
    y = (x[:, :1] > 104).astype("float32")
    lookup = keras.layers.IntegerLookup(name="ids")
    lookup.adapt(x)
    inputs = keras.Input((2,), dtype="int64")
    h = keras.layers.Flatten()(keras.layers.Embedding(11, 3)(lookup(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile("adam", "mse")
    directory = str(tmp_path / "ids")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[RotatingCheckpoint(directory)])
    loaded = load_model(directory)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    rows = evaluate_checkpoints(directory, (x, y))
    assert rows[-1]["loss"] == model.evaluate(x, y, verbose=0)


def test_vocabulary_on_a_remote_file_system(tmp_path):
    directory = f"ram://keras_ckpt_tests/{uuid.uuid4().hex}/run"
    x, y = _string_data()
    model = _string_model(x)
    model.fit(_dataset(x, y), epochs=1, callbacks=[RotatingCheckpoint(directory)], verbose=0)
    assert tf.io.gfile.exists(directory + "/assets/lookup/vocabulary.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(directory)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(model, x))


def test_assets_written_once_and_replaced_by_a_run_with_another_vocabulary(one_epoch, tmp_path):
    directory = _copy(one_epoch, tmp_path)
    x, y = _string_data()
    index = os.path.join(directory, "assets", "index.json")
    first = os.stat(index).st_mtime_ns

    # new runs, not resumed: each saves only past the directory's newest step (4, then 8)
    again = _string_model(x)  # the same vocabulary: nothing rewritten
    again.fit(_dataset(x, y), epochs=2, callbacks=[RotatingCheckpoint(directory)], verbose=0)
    assert os.path.exists(os.path.join(directory, "ckpt-8.index"))
    assert os.stat(index).st_mtime_ns == first

    other = _string_model(WORDS[::-1])  # adapted anew: its vocabulary replaces the kept one
    other.fit(_dataset(x, y), epochs=3, callbacks=[RotatingCheckpoint(directory)], verbose=0)
    assert os.path.exists(os.path.join(directory, "ckpt-12.index"))
    with open(os.path.join(directory, "assets", "lookup", "vocabulary.txt")) as f:
        kept = f.read().splitlines()
    assert kept == [str(w) for w in other.get_layer("lookup").get_vocabulary()]
    np.testing.assert_array_equal(_predict(load_model(directory), x), _predict(other, x))


def test_verify_names_a_damaged_vocabulary_and_restore_refuses_it(one_epoch, tmp_path):
    directory = _copy(one_epoch, tmp_path)
    assert verify(directory) == []
    with open(os.path.join(directory, "assets", "lookup", "vocabulary.txt"), "a") as f:
        f.write("\nextra")

    (line,) = verify(directory)
    assert line.startswith(os.path.join(directory, "assets") + ": ")
    assert "lookup/vocabulary.txt" in line
    with pytest.raises(CheckpointCorruptError, match="lookup vocabularies"):
        restore(_string_model(None), directory)
