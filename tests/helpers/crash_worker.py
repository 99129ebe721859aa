"""The worker the kill test SIGKILLs: trains a >100 MB model, checkpointing every batch.

Run as ``python crash_worker.py '{json}'`` (the test forks it from the session's zygote,
`helpers.fresh`): trains on ``dir`` (``mode``: ``"sync"`` or ``"async"`` saves; ``clean``:
train one epoch and exit; ``small``: a small model; ``crash_at``: SIGKILL itself at that
point of its third save, see `CRASH_POINTS`) and prints (flushed, one line each, in one
`write`, so a SIGKILL never splits one):

- ``begin {json}``: training began and the callback has opened DIR (lock, cleanup of
  leftovers). The JSON: ``names`` (every entry of DIR then), ``kept`` (the callback's kept
  steps), ``tf_latest`` (what ``tf.train.latest_checkpoint`` said), ``resumed`` (the step
  restored from, or null).
- ``saving``: a batch ended; the checkpoint callback's save point starts now.
- ``committed N``: after a batch, step N, saved by this worker, is committed (named by the
  state file): with ``sync`` the save just returned; with ``async`` the previous write, which
  every save waits for. Step N, or a newer one, must survive any later kill.
- ``done``: training ended normally (``clean``: one epoch, then exit 0).

The model has 9.44 M float32 parameters; with Adam's two slots a checkpoint is 113 MB. Each
worker resumes from the newest checkpoint, so steps continue across kills.
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers.zygote import say  # noqa: E402
from keras_ckpt import RotatingCheckpoint, _fs, _objgraph, _snapshot, resume  # noqa: E402
from keras_ckpt.directory import CheckpointDirectory  # noqa: E402

WIDTH_IN, WIDTH_HIDDEN = 1152, 4096  # 2 x 1152 x 4096 + biases = 9.44 M parameters
BATCHES_PER_EPOCH = 8
BATCH = 8


def build_model(small: bool = False) -> keras.Model:
    """The kill test's model: also built by the test to restore what the workers saved."""
    hidden = 16 if small else WIDTH_HIDDEN
    model = keras.Sequential(
        [
            keras.Input((WIDTH_IN,)),
            keras.layers.Dense(hidden, name="wide"),
            keras.layers.Dense(WIDTH_IN, name="narrow"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    # The small model's worker takes three steps: tracing its train step would cost more than
    # running them eagerly. (The big model's worker is killed at a moment, not at a step, and
    # its tracing is small beside its saves: it keeps the traced step users run.)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="mse", run_eagerly=small)
    return model


class Announce(keras.callbacks.Callback):
    """Placed before the checkpoint callback: a save point begins."""

    def on_train_batch_end(self, batch, logs=None):
        say("saving")


class Progress(keras.callbacks.Callback):
    """Placed after the checkpoint callback: reports what it has committed."""

    def __init__(self, ckpt: RotatingCheckpoint, resumed: int | None) -> None:
        super().__init__()
        self.ckpt, self.resumed = ckpt, resumed

    def on_train_begin(self, logs=None):
        directory = self.ckpt.directory
        state = {
            "names": sorted(os.listdir(directory)),
            "kept": [i.step for i in self.ckpt.checkpoints],
            "tf_latest": tf.train.latest_checkpoint(directory),
            "resumed": self.resumed,
        }
        say("begin " + json.dumps(state))

    def on_train_batch_end(self, batch, logs=None):
        kept = self.ckpt.checkpoints
        done = kept if not self.ckpt.async_save else kept[:-1]  # the newest may be in flight
        if done and (self.resumed is None or done[-1].step > self.resumed):
            say(f"committed {done[-1].step}")


# Where a worker SIGKILLs itself during its third save (a rotation: max_to_keep=2), to hit
# each window of a commit deterministically: (function wrapped, which call, before/after).
CRASH_POINTS = {
    "after-tf-write": ("write", 1, "after"),  # TF files complete in the temporary folder
    "before-data-rename": ("rename", 2, "before"),  # record renamed in, data not yet
    "before-index-rename": ("rename", 3, "before"),  # record and data in, no index
    "before-state": ("state", 1, "before"),  # checkpoint complete, state file not updated
    "state-temp-written": ("write_bytes", 2, "after"),  # (1: the record) checkpoint.tmp-*
    "mid-rotation": ("move", 2, "before"),  # oldest: index moved to the trash, the rest not
}


def _arm(point: str) -> callable:
    """Wraps one file operation so that the process kills itself at `point` once armed."""
    target, nth, when = CRASH_POINTS[point]
    calls = {"n": 0, "armed": False}

    def wrap(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if calls["armed"]:
                calls["n"] += 1
                if calls["n"] == nth and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
            out = real(*args, **kwargs)
            if calls["armed"] and calls["n"] == nth and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        setattr(owner, name, wrapper)

    if target == "write":
        wrap(_objgraph.Snapshot, "write")  # the generic path
        wrap(_snapshot._FastSnapshot, "write")  # the planned path (what a Keras model takes)
    elif target == "state":
        wrap(CheckpointDirectory, "write_state")
    else:
        wrap(_fs, target)

    def arm():
        calls["armed"] = True

    return arm


class ArmAt(keras.callbacks.Callback):
    def __init__(self, batch: int, arm) -> None:
        super().__init__()
        self.batch, self.arm = batch, arm

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            self.arm()


def train(directory: str, mode: str, clean: bool, small: bool, crash_at: str | None) -> None:
    model = build_model(small)
    initial_epoch = resume(model, directory)  # 0 and nothing restored on a fresh directory
    resumed = int(model.optimizer.iterations.numpy()) or None
    rng = np.random.default_rng(initial_epoch)
    x = rng.random((BATCH * BATCHES_PER_EPOCH, WIDTH_IN), dtype=np.float32)
    ckpt = RotatingCheckpoint(directory, max_to_keep=2, save_freq=1, async_save=mode == "async")
    model.fit(
        x,
        x[:, :1] * 2.0,
        batch_size=BATCH,
        epochs=initial_epoch + (1 if clean else 10_000),
        initial_epoch=initial_epoch,
        shuffle=False,
        callbacks=[Announce(), ckpt, Progress(ckpt, resumed)]
        + ([ArmAt(2, _arm(crash_at))] if crash_at else []),
        verbose=0,
    )
    say("done")


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    train(job["dir"], job["mode"], job["clean"], job["small"], job["crash_at"])
