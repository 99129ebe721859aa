"""The full user cycle on `keras.applications` architectures nobody here wrote.

Fit with `BestCheckpoint` + an asynchronous `RotatingCheckpoint`, then every route back:
`restore` into a fresh build, `load_model` (from model.json), `export_saved_model` +
`load_saved_model`, `evaluate_checkpoints`. The models output logits (no softmax: after two
steps the probabilities saturate to exact 0s and 1s, which any wrongly restored model would
predict too). Weights and logits are equal bit for bit after `restore` and `load_model`
(BatchNorm moving statistics included); the exported graph's logits to float rounding
(TensorFlow's graph optimizations reorder its arithmetic: 1 ulp here; a model with other
weights is off by 100 %). Tiny inputs (32x32, 2 classes, 8 images, one epoch of 2 steps)
and eager steps (Keras traces nothing but the export) keep the four architectures under two
minutes together on two shared cores.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_ckpt import (
    BestCheckpoint,
    RotatingCheckpoint,
    evaluate_checkpoints,
    export_saved_model,
    load_model,
    load_saved_model,
    restore,
)

ARCHITECTURES = ["MobileNetV3Small", "ResNet50V2", "EfficientNetV2B0", "DenseNet121"]


def _build(name: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    # Logits (no softmax): after two steps on random images the probabilities saturate to
    # exact 0s and 1s, which a wrongly restored model would predict just the same.
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(32, 32, 3), classes=2, classifier_activation=None
    )
    model.compile(
        keras.optimizers.SGD(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=True,  # no tracing of train/predict/evaluate steps: the time goes to the cycle
    )
    return model


def _assert_same_weights(got: keras.Model, want: keras.Model) -> None:
    """Every weight bit for bit, BatchNorm moving statistics included.

    The predictions alone prove little here: after two steps on 8 random images the
    inference-mode BatchNorm statistics barely moved, so most architectures give one
    constant row for every image, whatever most weights hold.
    """
    pairs = zip(got.get_weights(), want.get_weights(), strict=True)
    for i, (a, b) in enumerate(pairs):
        np.testing.assert_array_equal(a, b, err_msg=f"weight {i}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_application_full_cycle_predicts_equal_after_every_route(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 2
    best_dir, last_dir = str(tmp_path / "best"), str(tmp_path / "last")
    model = _build(name)
    best = BestCheckpoint(best_dir, monitor="loss")
    last = RotatingCheckpoint(last_dir, async_save=True)
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[best, last], verbose=0)
    expected = model.predict(x, verbose=0)  # eager: as the exported graph computes it

    fresh = _build(name)
    assert restore(fresh, best_dir).step == 2
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), expected)
    _assert_same_weights(fresh, model)

    loaded = load_model(last_dir)
    assert int(loaded.optimizer.iterations) == 2
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    _assert_same_weights(loaded, model)

    served = load_saved_model(export_saved_model(best_dir, str(tmp_path / "export")))
    np.testing.assert_allclose(served.predict(x, verbose=0), expected, rtol=1e-5, atol=0)

    (row,) = evaluate_checkpoints(last_dir, (x, y))
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert row["step"] == 2
    assert {k: row[k] for k in logs} == logs
