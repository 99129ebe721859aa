"""MirroredStrategy on one host (two logical CPUs): the callbacks in `model.fit`.

The strategy runs in a new process (`helpers/mirrored_worker.py`, forked from the session's
zygote: `helpers.cluster.run_all`), because logical devices can only be configured before
TensorFlow initialises them; this process restores what it saved into plain models.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers.cluster import read_json, run_all, script, worker_env
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import best_checkpoint, list_checkpoints, restore

pytestmark = pytest.mark.slow

TIMEOUT = 180


def _weights(path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def _assert_all_equal(actual, expected) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory, fresh):
    work = tmp_path_factory.mktemp("mirrored")
    commands = [(script("helpers/mirrored_worker.py", str(work)), worker_env(work / "tmp"))]
    (result,) = run_all(fresh, commands, work / "logs", TIMEOUT)
    if result.returncode != 0:
        pytest.fail(
            f"the MirroredStrategy run failed (exit {result.returncode}):\n{result.tail()}"
        )
    return work, read_json(work / "result.json")


def test_mirrored_fit_checkpoints_restore_into_a_plain_model(mirrored):
    work, result = mirrored
    assert result["replicas"] == 2 and result["variable_type"] == "MirroredVariable"
    assert result["last"] == [8, 12] and result["step"] == 12

    plain = tiny_model(seed=1)  # no strategy here
    assert restore(plain, str(work / "run" / "ckpt-12")).step == 12
    _assert_all_equal(plain.get_weights(), _weights(work / "weights.npz"))
    optimizer = [v.numpy() for v in plain.optimizer.variables]
    _assert_all_equal(optimizer, _weights(work / "optimizer.npz"))

    by_tf = tiny_model(seed=2, compile=False)
    tf.train.Checkpoint(model=by_tf).read(str(work / "run" / "ckpt-12")).expect_partial()
    _assert_all_equal(by_tf.get_weights(), _weights(work / "weights.npz"))


def test_mirrored_checkpoint_restores_into_a_mirrored_model_that_trains_on(mirrored):
    work, result = mirrored
    # a compiled model built under the strategy, optimizer not built yet: `restore` builds
    # its slots under the same strategy and loads them
    _assert_all_equal(_weights(work / "restored-mirrored.npz"), _weights(work / "weights.npz"))
    _assert_all_equal(
        _weights(work / "restored-mirrored-optimizer.npz"), _weights(work / "optimizer.npz")
    )
    # then fit(initial_epoch=3) went on in the same directory: 4 more steps, rotation
    run = work / "run"
    ckpt = {f"ckpt-{s}{e}" for s in (12, 16) for e in (".index", ".data-00000-of-00001", ".json")}
    names = {".lock", "checkpoint", "model.json", "history.jsonl"}
    assert {p.name for p in run.iterdir()} == names | ckpt
    assert result["resumed"] == [i.step for i in list_checkpoints(run)] == [12, 16]
    assert [json.loads(line)["epoch"] for line in (run / "history.jsonl").open()] == [1, 2, 3, 4]
    plain = tiny_model(seed=1)
    assert restore(plain, str(run)).step == 16
    _assert_all_equal(plain.get_weights(), _weights(work / "weights-resumed.npz"))


def test_mirrored_best_checkpoint_holds_the_weights_it_was_scored_with(mirrored):
    # BestCheckpoint evaluated the mirrored model every 2 batches; the checkpoint it kept,
    # restored without a strategy, must score exactly the val_loss recorded for it.
    work, result = mirrored
    best = best_checkpoint(work / "run-best")
    assert best == result["best"] and best is not None
    plain = tiny_model(seed=1)
    info = restore(plain, best)
    assert info.step % 2 == 0 and info.metrics["val_loss"] == result["best_value"]
    x_val, y_val = tiny_data(32, seed=1)
    loss = plain.evaluate(x_val, y_val, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(result["best_value"], rel=1e-5)


def test_mirrored_dropout_generator_state_is_recorded_and_restored(mirrored):
    _, result = mirrored
    assert result["dropout_recorded"] == result["dropout_trained"]
    assert result["dropout_trained"][0][1] == 4  # 4 steps drew 4 masks
    assert result["dropout_restored"] == result["dropout_trained"] != result["dropout_fresh"]
