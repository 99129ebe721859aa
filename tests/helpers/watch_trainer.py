"""A training run for the watch tests: `python watch_trainer.py '{json}'`.

Trains the tests' tiny regressor (`tiny_data(48)`, batch 8: 6 steps per epoch) with a
`RotatingCheckpoint` into `dir` (`save_freq`, `max_to_keep`; `resume`: first
`keras_ckpt.resume`, from the epoch of the latest checkpoint), sleeping `delay`
seconds after each batch, and prints `step N` (flushed) after each batch, once the callback's
save of that batch returned, then `done {name: mtime_ns}` when `fit` returned (the callback closed
the directory): every entry of `dir` then, with its modification time.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ckpt import RotatingCheckpoint, resume  # noqa: E402


def build_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name="body"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    return model


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x, y


class Report(keras.callbacks.Callback):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def on_train_batch_end(self, batch, logs=None):
        print(f"step {int(self.model.optimizer.iterations.numpy())}", flush=True)
        time.sleep(self.delay)


def main() -> None:
    args = json.loads(sys.argv[1])
    model = build_model()
    x, y = data(48, seed=0)
    initial_epoch = resume(model, args["dir"]) if args.get("resume") else 0
    checkpoints = RotatingCheckpoint(
        args["dir"], max_to_keep=args.get("max_to_keep", 50), save_freq=args.get("save_freq", 2)
    )
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=args.get("epochs", 4),
        initial_epoch=initial_epoch,
        shuffle=False,
        callbacks=[checkpoints, Report(args.get("delay", 0.0))],
        verbose=0,
    )
    names = {e.name: e.stat().st_mtime_ns for e in os.scandir(args["dir"])}
    print("done " + json.dumps(names), flush=True)


if __name__ == "__main__":
    main()
