"""MirroredStrategy over two logical CPUs in a process of its own; `model.fit` with callbacks.

Usage: python mirrored_worker.py WORKDIR. The logical devices must be configured before
TensorFlow initialises its devices, so this runs first thing, in a fresh process. Writes
WORKDIR/result.json and weights files; test_distributed_mirrored.py checks them.
"""

from __future__ import annotations

import os
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import json  # noqa: E402

import numpy as np  # noqa: E402

from helpers.tiny import tiny_data, tiny_model  # noqa: E402
from keras_ckpt import BestCheckpoint, RotatingCheckpoint, restore  # noqa: E402


def _save(path: str, arrays: list) -> None:
    np.savez(path, *[np.asarray(a) for a in arrays])


def main(workdir: str) -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = tiny_data(64)
    x_val, y_val = tiny_data(32, seed=1)
    with strategy.scope():
        model = tiny_model()
    last = RotatingCheckpoint(os.path.join(workdir, "run"), max_to_keep=2, async_save=True)
    best = BestCheckpoint(
        os.path.join(workdir, "run-best"),
        monitor="val_loss",
        save_freq=2,  # evaluate on (x_val, y_val) every 2 batches, keep the best
        validation_data=(x_val, y_val),
    )
    model.fit(x, y, batch_size=16, epochs=3, callbacks=[last, best], verbose=0)
    _save(os.path.join(workdir, "weights.npz"), model.get_weights())
    _save(os.path.join(workdir, "optimizer.npz"), [v.numpy() for v in model.optimizer.variables])

    with strategy.scope():  # and back into a mirrored model (its optimizer not built yet)
        again = tiny_model(seed=1)
    restore(again, os.path.join(workdir, "run"))
    _save(os.path.join(workdir, "restored-mirrored.npz"), again.get_weights())
    _save(
        os.path.join(workdir, "restored-mirrored-optimizer.npz"),
        [v.numpy() for v in again.optimizer.variables],
    )

    # the restarted job goes on where the checkpoint left off, into the same directory
    resumed = RotatingCheckpoint(os.path.join(workdir, "run"), max_to_keep=2)
    again.fit(x, y, batch_size=16, epochs=4, initial_epoch=3, callbacks=[resumed], verbose=0)
    _save(os.path.join(workdir, "weights-resumed.npz"), again.get_weights())

    result = {
        "replicas": strategy.num_replicas_in_sync,
        "variable_type": type(model.get_layer("head").kernel.value).__name__,
        "step": int(model.optimizer.iterations.numpy()),
        "last": [i.step for i in last.checkpoints],
        "resumed": [i.step for i in resumed.checkpoints],
        "best": best.best_checkpoint,
        "best_value": best.best_value,
    }
    result.update(_dropout_states(strategy, workdir, x, y))
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f)


def _dropout_states(strategy, workdir: str, x, y) -> dict:
    """A mirrored model with Dropout: its generator state is recorded and restored."""
    import keras

    def build(seed: int):
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            model = keras.Sequential(
                [keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
            )
            model.compile(optimizer="adam", loss="mse")
        return model

    def states(model) -> list:
        return [v.numpy().tolist() for v in model.variables if "seed_generator" in v.path]

    model = build(0)
    directory = os.path.join(workdir, "run-dropout")
    callback = RotatingCheckpoint(directory, max_to_keep=1, async_save=True)
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)
    with open(callback.checkpoints[-1].path + ".json") as f:
        recorded = [e["value"] for e in json.load(f)["untracked_variables"]]
    again = build(1)
    restore(again, directory)
    return {
        "dropout_trained": states(model),
        "dropout_recorded": recorded,
        "dropout_restored": states(again),
        "dropout_fresh": states(build(1)),
    }


if __name__ == "__main__":
    main(sys.argv[1])
