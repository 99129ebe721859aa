"""Remote file systems: every file goes through tf.io.gfile.

TensorFlow's in-process `ram://` file system stands in for `gs://`. It matches paths by
string prefix (`listdir("ram://x/run")` also shows `ram://x/run-best`, `exists` is true for
any prefix of a file), so the directories here are named as prefixes of each other.
`tf.train.list_variables(prefix)` cannot read `ram://` (it takes the prefix for a
directory); these tests read the index with `tf.compat.v1.train.NewCheckpointReader`.
"""

from __future__ import annotations

import json
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny import SetLogs, tiny_data, tiny_model

from keras_ckpt import (
    BestCheckpoint,
    CheckpointManager,
    CheckpointNotFoundError,
    DirectoryLockedError,
    KeepBest,
    KeepLast,
    RotatingCheckpoint,
    best_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    restore,
)

gfile = tf.io.gfile


@pytest.fixture
def ram_root():
    root = f"ram://keras_ckpt_tests/{uuid.uuid4().hex}"
    yield root
    for top, _, files in gfile.walk(root):  # ram:// is process-wide: leave nothing behind
        for name in files:
            try:
                gfile.remove(f"{top}/{name}")
            except tf.errors.OpError:
                pass


def _names(directory: str) -> set[str]:
    """The entries directly inside `directory` (glob matches exactly, unlike listdir)."""
    return {p.rsplit("/", 1)[-1] for p in gfile.glob(f"{directory}/*")}


def _ckpt_files(*steps: int) -> set[str]:
    return {f"ckpt-{s}{ext}" for s in steps for ext in (".index", ".data-00000-of-00001", ".json")}


def _assert_weights(model: keras.Model, expected: list[np.ndarray]) -> None:
    for a, b in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(a, b)


class _WeightsByStep(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, list[np.ndarray]] = {}

    def on_epoch_end(self, epoch, logs=None):
        self.at[int(self.model.optimizer.iterations.numpy())] = self.model.get_weights()


def test_train_rotate_keep_best_list_and_restore_on_ram_fs(ram_root, data, tmp_path):
    x, y = data  # 32 samples, batch 8: 4 steps per epoch
    run, run_best = f"{ram_root}/run", f"{ram_root}/run-best"  # one a prefix of the other
    model = tiny_model()
    last = RotatingCheckpoint(run, max_to_keep=2)
    best = BestCheckpoint(run_best, monitor="val_loss", keep_best=2)
    weights = _WeightsByStep()
    scripted = SetLogs("val_loss", [0.5, 0.3, 0.9, 0.8, 0.95])
    model.fit(x, y, batch_size=8, epochs=5, callbacks=[scripted, last, best, weights], verbose=0)

    # rotation in `run` touched nothing of `run-best`, and no temp or lock file is left
    assert _names(run) == {"checkpoint", "model.json", "history.jsonl"} | _ckpt_files(16, 20)
    assert _names(run_best) == {"checkpoint", "model.json", "history.jsonl"} | _ckpt_files(4, 8)
    history = gfile.GFile(f"{run}/history.jsonl").read().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2, 3, 4, 5]

    assert [i.step for i in list_checkpoints(run)] == [16, 20]
    assert [(i.step, i.metrics["val_loss"]) for i in list_checkpoints(run_best)] == [
        (4, 0.5),
        (8, 0.3),
    ]
    assert latest_checkpoint(run) == tf.train.latest_checkpoint(run) == f"{run}/ckpt-20"
    assert best_checkpoint(run_best) == best.best_checkpoint == f"{run_best}/ckpt-8"
    assert best.best_value == 0.3
    # names that are mere string prefixes of real files are not checkpoints or directories
    assert list_checkpoints(f"{ram_root}/ru") == [] and latest_checkpoint(f"{run}-b") is None
    with pytest.raises(CheckpointNotFoundError):
        restore(tiny_model(seed=1), f"{run}/ckpt-2")  # only ckpt-20 exists

    fresh = tiny_model(seed=1)
    assert restore(fresh, run).step == 20
    _assert_weights(fresh, weights.at[20])
    assert int(fresh.optimizer.iterations.numpy()) == 20
    assert restore(fresh, best_checkpoint(run_best)).step == 8
    _assert_weights(fresh, weights.at[8])

    # TensorFlow's own reader sees the keys tf.train.Checkpoint(model=...) writes
    reader = tf.compat.v1.train.NewCheckpointReader(f"{run}/ckpt-20")
    local = tf.train.Checkpoint(model=model).write(str(tmp_path / "plain" / "ckpt"))
    assert reader.get_variable_to_shape_map() == dict(tf.train.list_variables(local))


def _train(model: keras.Model, steps: int) -> None:
    x, y = tiny_data(8)
    for _ in range(steps):
        model.train_on_batch(x, y)


def test_manager_on_ram_fs_locks_restarts_and_cleans_only_its_own_leftovers(ram_root):
    loop, sibling = f"{ram_root}/loop", f"{ram_root}/loop-2"
    model = tiny_model()
    keep = [KeepBest("loss"), KeepLast(2)]
    with CheckpointManager(loop, model, keep=keep) as mgr:
        assert gfile.exists(f"{loop}/.lock")  # held while the manager is open
        with pytest.raises(DirectoryLockedError, match="loop"):
            CheckpointManager(loop, tiny_model(), keep=keep)
        for loss in (0.4, 0.1, 0.7, 0.6):  # steps 1..4
            _train(model, 1)
            mgr.save(metrics={"loss": loss})
    assert [i.step for i in list_checkpoints(loop)] == [2, 3, 4]  # best (2) and last two
    assert ".lock" not in _names(loop)

    # leftovers of a save and a deletion killed midway, and a neighbour whose name extends ours
    record = gfile.GFile(f"{loop}/ckpt-4.json").read().replace('"step": 4', '"step": 1')
    planted = {
        f"{loop}/.tmp-ckpt-5-0123456789ab/ckpt-5.index": "x",  # save: files not renamed in
        f"{loop}/checkpoint.tmp-0123456789ab": "x",  # state file never replaced
        f"{loop}/ckpt-1.json": record,  # deletion: index gone, data and record not yet
        f"{loop}/ckpt-1.data-00000-of-00001": "x",
        f"{sibling}/ckpt-1.json": record,
        f"{sibling}/ckpt-1.data-00000-of-00001": "x",
        f"{sibling}/.tmp-ckpt-5-0123456789ab/ckpt-5.index": "x",
    }
    for path, text in planted.items():
        gfile.makedirs(path.rsplit("/", 1)[0])
        with gfile.GFile(path, "w") as f:
            f.write(text)

    _train(model, 1)  # step 5
    with CheckpointManager(loop, model, keep=keep) as again:
        assert [i.step for i in again.checkpoints] == [2, 3, 4]  # picked up from the files
        assert again.save(metrics={"loss": 0.05}).step == 5
    assert _names(loop) == {"checkpoint", "model.json"} | _ckpt_files(4, 5)
    assert [i.step for i in list_checkpoints(loop)] == [4, 5]
    for path in planted:
        if path.startswith(sibling):
            assert gfile.GFile(path).read() == planted[path]  # not ours: untouched
    fresh = tiny_model(seed=1)
    restore(fresh, loop)
    _assert_weights(fresh, model.get_weights())


def test_file_urls_are_local_paths(tmp_path, data):
    x, y = data
    model = tiny_model()
    cb = RotatingCheckpoint(f"file://{tmp_path}/run", max_to_keep=2)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[cb], verbose=0)

    assert {p.name for p in (tmp_path / "run").iterdir()} == {
        ".lock",
        "checkpoint",
        "model.json",
        "history.jsonl",
    } | _ckpt_files(8, 12)
    assert [i.path for i in list_checkpoints(f"file://{tmp_path}/run")] == [
        str(tmp_path / "run" / "ckpt-8"),
        str(tmp_path / "run" / "ckpt-12"),
    ]
    fresh = tiny_model(seed=1)
    assert restore(fresh, f"file://{tmp_path}/run").step == 12
    _assert_weights(fresh, model.get_weights())
