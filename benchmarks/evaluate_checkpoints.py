"""Benchmark: `evaluate_checkpoints` against the rebuild-the-model-per-checkpoint loop.

Tutorials evaluate a directory of checkpoints by building and compiling a new model for each
one, restoring it with `tf.train.Checkpoint(model=model).read(path)` and calling `evaluate`,
so Keras traces its evaluation function once per checkpoint. `evaluate_checkpoints` builds
the model once (from `model.json`) and restores each checkpoint into it.

With `--graph`, the model is subclassed (`model.json` cannot rebuild it without its code)
and trained with `save_graph=True`: `evaluate_checkpoints` imports `graph/` once and restores
each checkpoint into it. The loop it is measured against is what a user without that writes:
one SavedModel exported per checkpoint during training, and per checkpoint
`load_saved_model(export)` (`tf.saved_model.load` + a Keras wrapper), `compile`, `evaluate`.

Run: python benchmarks/evaluate_checkpoints.py [--checkpoints 10] [--repeats 3] [--graph]
Prints one JSON object (times in seconds; `speedup` = loop time / evaluate_checkpoints time,
best of `--repeats` for each). Both are checked to report the same metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ckpt import (  # noqa: E402
    RotatingCheckpoint,
    evaluate_checkpoints,
    list_checkpoints,
    load_saved_model,
)

FEATURES, CLASSES = 32, 10


def build_model() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(256, activation="relu", name="hidden1"),
            keras.layers.Dense(256, activation="relu", name="hidden2"),
            keras.layers.Dense(CLASSES, activation="softmax", name="head"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Subclassed(keras.Model):
    """The same layers as `build_model`, in a class `model.json` cannot rebuild without code."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden1 = keras.layers.Dense(256, activation="relu")
        self.hidden2 = keras.layers.Dense(256, activation="relu")
        self.head = keras.layers.Dense(CLASSES, activation="softmax")

    def call(self, x):
        return self.head(self.hidden2(self.hidden1(x)))


def build_subclassed() -> keras.Model:
    model = Subclassed()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class ExportEachEpoch(keras.callbacks.Callback):
    """The user's way to keep a loadable model per checkpoint: one SavedModel per epoch."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.model.export(os.path.join(self.root, str(step)), verbose=False)


def import_loop(exports: str, x, y, batch_size: int) -> list[dict]:
    """The user's loop over per-checkpoint SavedModels: import, compile, evaluate each."""
    rows = []
    for step in sorted(int(n) for n in os.listdir(exports)):
        model = load_saved_model(os.path.join(exports, str(step)))
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        logs = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        rows.append({"step": step, **{k: float(v) for k, v in logs.items()}})
    return rows


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = (x[:, :CLASSES] + 0.5 * rng.normal(size=(n, CLASSES))).argmax(axis=1)
    return x, y.astype("int32")


def rebuild_loop(directory: str, x, y, batch_size: int) -> list[dict]:
    """The tutorial way: a new model per checkpoint."""
    rows = []
    for info in list_checkpoints(directory):
        model = build_model()
        tf.train.Checkpoint(model=model).read(info.path).expect_partial()
        logs = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        rows.append({"step": info.step, **{k: float(v) for k, v in logs.items()}})
    return rows


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)

    parser.add_argument("--graph", action="store_true", help="subclassed model, via graph/")
    parser.add_argument("--dir", default=None, help="work here instead of a temporary dir")
    args = parser.parse_args()

    x_train, y_train = data(1024, seed=0)
    x_test, y_test = data(args.eval_samples, seed=1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = os.path.join(tmp, "run")
        exports = os.path.join(tmp, "exports")
        model = build_subclassed() if args.graph else build_model()
        cb = RotatingCheckpoint(directory, max_to_keep=args.checkpoints, save_graph=args.graph)
        callbacks = [cb, ExportEachEpoch(exports)] if args.graph else [cb]
        model.fit(
            x_train, y_train, batch_size=128, epochs=args.checkpoints, callbacks=callbacks,
            verbose=0,
        )  # fmt: skip
        model.evaluate(x_test, y_test, verbose=0)  # warm TensorFlow up for both contenders

        ours_s, ours = best_time(
            lambda: evaluate_checkpoints(directory, (x_test, y_test), batch_size=args.batch_size),
            args.repeats,
        )
        if args.graph:
            contender = "import-a-SavedModel-per-checkpoint loop"
            loop_s, loop = best_time(
                lambda: import_loop(exports, x_test, y_test, args.batch_size), args.repeats
            )
        else:
            contender = "rebuild-per-checkpoint loop"
            loop_s, loop = best_time(
                lambda: rebuild_loop(directory, x_test, y_test, args.batch_size), args.repeats
            )

    assert [r["step"] for r in ours] == [r["step"] for r in loop]
    metrics = [k for k in loop[0] if k != "step"]
    diff = max(abs(a[k] - b[k]) for a, b in zip(ours, loop, strict=True) for k in metrics)
    print(
        json.dumps(
            {
                "benchmark": f"evaluate_checkpoints vs {contender}",
                "through_graph": args.graph,
                "checkpoints": len(ours),
                "eval_samples": args.eval_samples,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "evaluate_checkpoints_s": round(ours_s, 3),
                ("import_loop_s" if args.graph else "rebuild_loop_s"): round(loop_s, 3),
                "speedup": round(loop_s / ours_s, 2),
                "metrics": metrics,
                "max_abs_metric_diff": diff,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
