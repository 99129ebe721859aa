"""NaN divergence: a diverged model never replaces a good best checkpoint.

A classifier on imbalanced data (8% positives) first predicts mostly positives (accuracy
about 0.08); then a learning-rate spike makes training diverge: loss NaN, every weight NaN.
A NaN model predicts "negative" for everything, so its accuracy jumps to about 0.92, a
finite and much better value. Whatever the monitor (the NaN loss or the finite accuracy),
the best checkpoint must stay the good one, and every kept checkpoint must hold finite
weights.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from helpers.tiny import poison

from keras_ckpt import BestCheckpoint, CheckpointCallback, KeepBest, KeepLast, restore
from keras_ckpt.policies import EveryEpoch


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (rng.random(64) < 0.1).astype("float32")
    return x, y


def _classifier(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(
                1, activation="sigmoid", bias_initializer=keras.initializers.Constant(3.0)
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss="binary_crossentropy",
        metrics=["binary_accuracy"],
    )
    return model


class Spike(keras.callbacks.Callback):
    """Diverges training at the start of epoch `at` (a learning rate of 1e38)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            self.model.optimizer.learning_rate.assign(1e38)


def _finite(model: keras.Model) -> bool:
    return all(np.isfinite(w).all() for w in model.get_weights())


def _fit(model, callback, **fit_args):
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            y,
            validation_data=(x, y),
            batch_size=16,
            epochs=4,
            callbacks=[Spike(at=2), callback],
            verbose=0,
            **fit_args,
        )
    assert not _finite(model) and np.isnan(history.history["loss"][-1])  # it did diverge
    return history, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "monitor, save_freq",
    [("val_loss", "epoch"), ("val_binary_accuracy", "epoch"), ("val_binary_accuracy", 2)],
)
def test_best_checkpoint_never_replaces_a_good_model_with_a_diverged_one(
    tmp_path, monitor, save_freq
):
    model = _classifier()
    x, y = _data()
    extra = {"validation_data": (x, y)} if save_freq != "epoch" else {}
    cb = BestCheckpoint(tmp_path / "best", monitor=monitor, save_freq=save_freq, **extra)
    history, messages = _fit(model, cb)

    if monitor == "val_binary_accuracy" and save_freq == "epoch":  # the diverged model scores
        assert max(history.history[monitor]) > 0.9 > history.history[monitor][0]  # better
    assert cb.checkpoints, "the good model was saved before the divergence"
    probe = _classifier(seed=3)  # one model for every restore, poisoned (NaN) before each
    for info in cb.checkpoints:
        poison(probe)
        restore(probe, info.path)
        assert _finite(probe), f"{info.path} holds a diverged model"
    assert np.isfinite(cb.best_value)
    if "acc" in monitor:
        assert cb.best_value < 0.5  # the good model's, not the diverged model's 0.92
    if monitor == "val_binary_accuracy":
        assert any("not finite" in m for m in messages), messages


def test_a_keep_best_union_never_keeps_a_diverged_model_either(tmp_path):
    model = _classifier()
    cb = CheckpointCallback(
        tmp_path / "mix",
        save=EveryEpoch(),
        keep=[KeepBest("val_binary_accuracy"), KeepLast(2)],
    )
    _fit(model, cb)

    assert [i.step for i in cb.checkpoints] == [4, 8]  # epochs 1-2; 3-4 diverged
    probe = _classifier(seed=3)
    for info in cb.checkpoints:
        poison(probe)
        restore(probe, info.path)
        assert _finite(probe)
