"""SavedModel imports as restore targets: `import_meta_graph` once, restore each checkpoint."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import (
    CheckpointMismatchError,
    RotatingCheckpoint,
    export_saved_model,
    list_checkpoints,
    load_model,
    load_saved_model,
    restore,
)


def _functional(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(16, activation="relu", name="body")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sm_restore")
    x, _ = tiny_data(64)
    y = np.stack([x.sum(1), x[:, 0] - x[:, 1]], axis=1).astype("float32")
    model = _functional()
    cb = RotatingCheckpoint(str(root / "run"), max_to_keep=3)
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, callbacks=[cb], verbose=0)
    kept = [info.path for info in list_checkpoints(root / "run")]
    assert len(kept) == 3
    export = export_saved_model(kept[0], str(root / "sm"))
    return root, x, kept, export


def test_imported_saved_model_restored_from_each_checkpoint_predicts_like_a_rebuilt_model(run):
    _, x, kept, export = run
    imported = load_saved_model(export)  # imported once
    before = imported.predict(x, verbose=0)
    for prefix in reversed(kept):  # the newest first: each restore really changes the outputs
        info = restore(imported, prefix)
        rebuilt = load_model(prefix)  # model.json rebuilt + the same checkpoint
        assert info.path == prefix
        expected = rebuilt.predict(x, verbose=0)
        np.testing.assert_allclose(imported.predict(x, verbose=0), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(imported.predict(x, verbose=0), before, rtol=0, atol=1e-6)
    assert not np.allclose(load_model(kept[-1]).predict(x, verbose=0), before, atol=1e-4)


def test_plain_tf_saved_model_load_sees_the_same_variables(run):
    _, x, kept, export = run
    imported = load_saved_model(export)
    restore(imported, kept[-1])
    # the SavedModel on disk is unchanged: a fresh import still has the exported weights
    fresh = tf.saved_model.load(export)
    expected = load_model(kept[0]).predict(x, verbose=0)
    np.testing.assert_allclose(fresh.serve(x).numpy(), expected, rtol=0, atol=1e-6)


def test_checkpoint_of_another_architecture_is_refused_and_nothing_changes(run, tmp_path):
    _, x, kept, export = run
    imported = load_saved_model(export)
    restore(imported, kept[1])
    before = imported.predict(x, verbose=0)

    other = tiny_model(width=5)  # Sequential body(5)/head(1): other paths and shapes
    xo, yo = tiny_data(16)
    other.fit(xo, yo, epochs=1, verbose=0, callbacks=[RotatingCheckpoint(str(tmp_path / "o"))])
    with pytest.raises(CheckpointMismatchError) as caught:
        restore(imported, str(tmp_path / "o"))
    message = str(caught.value)
    assert "nothing was restored" in message
    assert "missing in the checkpoint" in message and "norm/moving_mean" in message
    assert "(16,)" in message  # named by Keras path with its shape
    np.testing.assert_array_equal(imported.predict(x, verbose=0), before)


def test_shape_mismatch_names_both_shapes_and_changes_nothing(run, tmp_path):
    _, x, kept, export = run
    imported = load_saved_model(export)
    before = imported.predict(x, verbose=0)
    inputs = keras.Input((4,))  # the same layers, another width
    h = keras.layers.Dense(8, activation="relu", name="body")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    wider = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    wider.compile(optimizer="adam", loss="mse")
    wider.fit(x, x[:, :2], epochs=1, verbose=0, callbacks=[RotatingCheckpoint(str(tmp_path))])
    with pytest.raises(
        CheckpointMismatchError,
        match=r"shape mismatch: .*body/kernel: "
        r"checkpoint \(4, 8\) float32, model \(4, 16\) float32",
    ):
        restore(imported, str(tmp_path))
    np.testing.assert_array_equal(imported.predict(x, verbose=0), before)


def test_restore_into_a_keras_export_without_record_says_how_to_export(run, tmp_path):
    _, x, kept, _ = run
    model = load_model(kept[0])
    model.export(str(tmp_path / "plain"), format="tf_saved_model", verbose=False)
    imported = load_saved_model(str(tmp_path / "plain"))
    with pytest.raises(CheckpointMismatchError, match="export_saved_model"):
        restore(imported, kept[-1])


def test_bare_tf_saved_model_load_object_is_refused_with_the_way_to_do_it(run):
    _, _, kept, export = run
    with pytest.raises(CheckpointMismatchError, match=r"load_saved_model\(export_dir\)"):
        restore(tf.saved_model.load(export), kept[-1])


def test_strict_false_restores_what_matches_like_a_rebuilt_model(run, tmp_path):
    _, x, kept, export = run
    inputs = keras.Input((4,))  # the same body and norm, a head of 3 units
    h = keras.layers.Dense(16, activation="relu", name="body")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    three = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    three.compile(optimizer="adam", loss="mse")
    three.fit(x, x[:, :3], epochs=1, verbose=0, callbacks=[RotatingCheckpoint(str(tmp_path))])

    imported, rebuilt = load_saved_model(export), load_model(kept[0])
    for target in (imported, rebuilt):
        with pytest.warns(UserWarning, match=r"skipped: shape mismatch: .*head/kernel"):
            restore(target, str(tmp_path), strict=False)
    np.testing.assert_allclose(
        imported.predict(x, verbose=0), rebuilt.predict(x, verbose=0), rtol=0, atol=1e-6
    )
    untouched = load_model(kept[0]).predict(x, verbose=0)
    assert not np.allclose(imported.predict(x, verbose=0), untouched)  # body and norm changed
