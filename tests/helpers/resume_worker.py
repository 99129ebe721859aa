"""Trains 3 epochs of 12 batches with `RotatingCheckpoint(save_freq=5, resume=True)`.

Run as ``python resume_worker.py DIR OUT [--kill-after N] [--async] [--input numpy|tfdata]``:
with ``--kill-after N`` the process SIGKILLs itself at the end of step N (no `on_train_end`,
no cleanup: what an OOM kill or a node failure does); otherwise it trains to the end and
writes the final weights and optimizer iterations to OUT (`.npz`). The same command relaunched
continues the run. The test imports `build_model`, `data` and `train` for its reference run.
"""

from __future__ import annotations

import argparse
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ckpt import RotatingCheckpoint  # noqa: E402

EPOCHS, BATCHES, BATCH = 3, 12, 8


def build_model() -> keras.Model:
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.random((BATCHES * BATCH, 6)).astype("float32")
    return x, (x @ rng.random((6, 1))).astype("float32")


class KillAfter(keras.callbacks.Callback):
    """SIGKILLs this process at the end of training step `step` (or raises, in-process)."""

    def __init__(self, step: int, hard: bool = True) -> None:
        super().__init__()
        self.step, self.hard = step, hard

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            if self.hard:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"interrupted after step {self.step}")


def train(model, directory, callbacks=(), async_save=False, input="numpy", shuffle=False):
    cb = RotatingCheckpoint(directory, save_freq=5, resume=True, async_save=async_save)
    x, y = data()
    if input == "tfdata":
        args = (tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH),)
        kwargs = {"shuffle": False}  # the pipeline's order is the order (no reshuffle)
    else:
        args, kwargs = (x, y), {"batch_size": BATCH, "shuffle": shuffle}
    try:
        model.fit(*args, epochs=EPOCHS, callbacks=[cb, *callbacks], verbose=0, **kwargs)
    finally:
        cb.close()
    return cb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("out")
    parser.add_argument("--kill-after", type=int)
    parser.add_argument("--async", dest="async_save", action="store_true")
    parser.add_argument("--input", default="numpy")
    args = parser.parse_args()
    model = build_model()
    killer = [KillAfter(args.kill_after)] if args.kill_after else []
    train(model, args.directory, killer, async_save=args.async_save, input=args.input)
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    np.savez(args.out, iterations=int(model.optimizer.iterations), **weights)


if __name__ == "__main__":
    main()
