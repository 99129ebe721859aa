"""The trainer that `test_preemption.py` sends SIGTERM to.

Run as ``python preempt_worker.py '{json}'`` (the test forks it from the session's zygote,
`helpers.fresh`): trains on ``dir``: 3 epochs of 12 batches (numpy, shuffle=False),
``RotatingCheckpoint(dir, max_to_keep=2, save_freq=5, save_on_preemption=True,
async_save=...)`` (and ``resume=True`` if ``resume``), each batch slowed down by
``batch_seconds`` so that a signal sent at a random time lands mid-training. With
``slow_commit`` (seconds), every background write first prints ``writing N`` and sleeps
that long: a SIGTERM sent on that line arrives while the write of step N is in flight.
Before `fit` the trainer installs its own SIGTERM handler (it prints ``previous handler
called``), the one `fit` must give back. The trainer prints (flushed, one line each):
``training PID`` after its first batch, ``step N`` at the end of each batch (before the
checkpoint callback's hook), then, when `fit` returned, ``done {json}`` (``iterations``:
the optimizer's count, ``stop_training``, ``handler_restored``, ``returned_at``: when
`fit` returned, by `time.time()`) and saves its final weights to ``DIR.final.npz``; it
exits 0 only if `fit` returned.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers.zygote import say  # noqa: E402
from keras_ckpt import RotatingCheckpoint  # noqa: E402
from keras_ckpt.directory import CheckpointDirectory  # noqa: E402

BATCH, BATCHES_PER_EPOCH, EPOCHS = 8, 12, 3


def build_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, activation="relu", name="body"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((BATCH * BATCHES_PER_EPOCH, 4)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")


class Slow(keras.callbacks.Callback):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step == 1:
            say(f"training {os.getpid()}")
        say(f"step {step}")
        time.sleep(self.seconds)  # a signal sent on the line above arrives in this step


def slow_background_commits(seconds: float) -> None:
    """Test hook: a background write announces itself, then takes `seconds` longer."""
    commit = CheckpointDirectory.commit

    def slow_commit(self, info, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            say(f"writing {info.step}")
            time.sleep(seconds)
        return commit(self, info, *args, **kwargs)

    CheckpointDirectory.commit = slow_commit


def train(args: dict) -> None:
    def previous(signum, frame):
        say("previous handler called")

    signal.signal(signal.SIGTERM, previous)
    if args.get("slow_commit"):
        slow_background_commits(args["slow_commit"])
    model = build_model()
    x, y = data()
    checkpoint = RotatingCheckpoint(
        args["dir"],
        max_to_keep=2,
        save_freq=5,
        save_on_preemption=True,
        async_save=bool(args.get("async")),
        **({"resume": True} if args.get("resume") else {}),  # once `resume=True` exists
    )
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[Slow(args.get("batch_seconds", 0.03)), checkpoint],
    )
    returned = time.time()
    np.savez(args["dir"] + ".final.npz", *model.get_weights())
    done = {
        "returned_at": returned,
        "iterations": int(model.optimizer.iterations.numpy()),
        "stop_training": bool(model.stop_training),
        "handler_restored": signal.getsignal(signal.SIGTERM) is previous,
    }
    say("done " + json.dumps(done))


if __name__ == "__main__":
    train(json.loads(sys.argv[1]))
