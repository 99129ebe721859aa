"""With `use_ema=True` the latest checkpoint holds the model `fit` returns (EMA swapped in)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_ckpt import RotatingCheckpoint, list_checkpoints, restore, resume


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((64, 5)).astype("float32")
    return x, (x @ rng.random((5, 1))).astype("float32")


def _model(optimizer: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    if optimizer == "adamw":
        opt = keras.optimizers.AdamW(0.05, use_ema=True, ema_momentum=0.9)
    else:
        opt = keras.optimizers.SGD(0.1, momentum=0.5, use_ema=True, ema_momentum=0.9)
    model.compile(optimizer=opt, loss="mse")
    return model


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("save_freq", ["epoch", 4])
def test_latest_checkpoint_predicts_what_fit_returns_and_resume_continues(
    tmp_path, optimizer, save_freq
):
    x, y = _data()  # 4 batches an epoch
    directory = tmp_path / "run"
    model = _model(optimizer)
    cb = RotatingCheckpoint(directory, max_to_keep=3, save_freq=save_freq)
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, callbacks=[cb], verbose=0)
    assert [i.step for i in list_checkpoints(directory)] == [4, 8, 12]
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]

    fresh = _model(optimizer)
    assert restore(fresh, str(directory)).step == 12
    np.testing.assert_allclose(
        fresh.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-6
    )

    resumed = _model(optimizer)
    assert resume(resumed, directory) == 3
    resumed.fit(x, y, batch_size=16, epochs=4, initial_epoch=3, shuffle=False, verbose=0)
    model.fit(x, y, batch_size=16, epochs=4, initial_epoch=3, shuffle=False, verbose=0)
    for a, b in zip(resumed.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("async_save", [False, True])
def test_manager_replaces_the_newest_checkpoint_in_place(tmp_path, async_save):
    import tensorflow as tf

    from keras_ckpt import CheckpointManager, KeepLast, verify

    model = _model("sgd")
    model.optimizer.build(model.trainable_variables)
    directory = tmp_path / "loop"
    with CheckpointManager(directory, model, keep=KeepLast(2), async_save=async_save) as mgr:
        mgr.save(step=4, metrics={"loss": 2.0})
        mgr.save(step=5, metrics={"loss": 1.0})
        model.layers[0].kernel.assign(tf.ones_like(model.layers[0].kernel))
        assert mgr.save(step=5, metrics={"loss": 0.5}) is None  # on disk: not again
        info = mgr.save(step=5, metrics={"loss": 0.5}, replace=True)
        assert info is not None and info.step == 5
    assert [(i.step, i.metrics["loss"]) for i in list_checkpoints(directory)] == [
        (4, 2.0),
        (5, 0.5),
    ]
    assert verify(str(directory)) == []
    assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-5")
    fresh = _model("sgd")
    restore(fresh, str(directory))
    np.testing.assert_array_equal(fresh.layers[0].kernel.numpy(), 1.0)
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]
