"""One worker of a two-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1.

Usage: python mwms_worker.py INDEX PORT0,PORT1 WORKDIR. Every worker runs the same script
with the same WORKDIR (as a user's job would) and writes WORKDIR/result-INDEX.json and
WORKDIR/weights-INDEX.npz. The tests in test_distributed_multiworker.py read them.

Phase 1 trains 8 steps with a custom loop (strategy.run in a tf.function; Keras 3's fit does
not work under this strategy) and saves every 2 steps into two managers; phase 2 restarts
them on the same directories and trains 4 more steps. Last, it probes `model.fit` and, if
Keras supports it, trains with the callbacks.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import keras
import numpy as np
import tensorflow as tf

# The scores KeepBest sees. The workers disagree on purpose: only the chief's count.
CHIEF_SCORES = [3.0, 1.0, 2.0, 0.5, 0.7, 0.2]  # saves at steps 2, 4, 6, 8 | 10, 12
OTHER_SCORES = [1.0, 2.0, 3.0, 4.0, 0.1, 0.05]


class Count(keras.layers.Layer):
    """Counts training examples in a sync-on-read variable: reading it is a collective op."""

    def build(self, input_shape):
        self.seen = keras.Variable(
            0.0, trainable=False, synchronization="on_read", aggregation="mean", name="seen"
        )

    def call(self, x, training=False):
        if training:
            self.seen.assign_add(tf.cast(tf.shape(x)[0], "float32"))
        return x


def build_model() -> keras.Model:
    """The workers' model; also built (without a strategy) by the tests to restore into."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            Count(name="count"),
            keras.layers.Dense(8, activation="relu", name="body"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x, y


def _train_steps(strategy, model):
    x, y = data()

    def dataset_fn(context):
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        return ds.batch(context.get_per_replica_batch_size(16)).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    @tf.function
    def step():
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(xb, training=True) - yb) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        xb, yb = next(iterator)
        losses = strategy.run(replica_step, args=(xb, yb))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    return step


def _custom_loop(strategy, workdir: str, index: int, result: dict) -> keras.Model:
    from keras_ckpt import CheckpointManager, KeepBest, KeepLast

    with strategy.scope():
        model = build_model()
    step = _train_steps(strategy, model)
    scores = CHIEF_SCORES if index == 0 else OTHER_SCORES
    saved: dict[str, list] = {"last": [], "best": []}
    chief = []
    for phase, steps in (("first", range(1, 9)), ("restart", range(9, 13))):
        # A restart: new managers on the same directories (the chief reloads them).
        last = CheckpointManager(
            os.path.join(workdir, "run"), model, keep=[KeepLast(2)], async_save=True
        )
        best = CheckpointManager(os.path.join(workdir, "run-best"), model, keep=KeepBest("score"))
        chief.append([last.is_chief, best.is_chief])
        for i in steps:
            loss = float(step())
            if i % 2 == 0:
                info = last.save(metrics={"loss": loss})
                saved["last"].append(info and info.step)
                info = best.save(metrics={"score": scores[i // 2 - 1]})
                saved["best"].append(info and info.step)
            if i % 4 == 0:
                last.log_epoch(i // 4, {"loss": loss})
        last.close()
        best.close()
        result[f"kept_{phase}"] = {
            "last": [i.step for i in last.checkpoints],
            "best": [i.step for i in best.checkpoints],
        }
    result["is_chief"] = chief
    result["saved"] = saved
    result["step"] = int(model.optimizer.iterations.numpy())
    result["seen"] = float(model.get_layer("count").seen.numpy())
    np.savez(os.path.join(workdir, f"weights-{index}.npz"), *model.get_weights())
    return model


def _fit(strategy, workdir: str, index: int, result: dict) -> None:
    """Probes Keras' own fit under this strategy; if it works, trains with the callbacks."""
    from keras_ckpt import BestCheckpoint, RotatingCheckpoint

    x, y = data()
    with strategy.scope():
        probe = build_model()
    try:
        probe.fit(x, y, batch_size=16, epochs=1, verbose=0)
    except Exception as exc:  # Keras' own failure, reported to the test (which skips)
        text = f"{type(exc).__name__}: {exc}"
        result["fit_error"] = text if len(text) < 600 else f"{text[:300]} ... {text[-300:]}"
        return
    with strategy.scope():
        model = build_model()
    last = RotatingCheckpoint(os.path.join(workdir, "fit"), max_to_keep=2)
    best = BestCheckpoint(os.path.join(workdir, "fit-best"), monitor="val_loss")
    history = model.fit(
        x, y, batch_size=16, epochs=3, validation_split=0.25, callbacks=[last, best], verbose=0
    )
    result["fit"] = {
        "last": [i.step for i in last.checkpoints],
        "best": best.best_checkpoint,
        "val_loss": [float(v) for v in history.history["val_loss"]],
        "step": int(model.optimizer.iterations.numpy()),
    }
    np.savez(os.path.join(workdir, f"fit-weights-{index}.npz"), *model.get_weights())


def main(index: int, ports: str, workdir: str) -> None:
    workers = [f"127.0.0.1:{p}" for p in ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    result: dict = {"replicas": strategy.num_replicas_in_sync}
    out = os.path.join(workdir, f"result-{index}.json")
    try:
        _custom_loop(strategy, workdir, index, result)
        _fit(strategy, workdir, index, result)
    except BaseException:
        result["error"] = traceback.format_exc()
        raise
    finally:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
