"""`resume=True`: the same script starts a run and continues it, exact to the batch."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import helpers.resume_worker as worker
import keras
import numpy as np
import pytest
from helpers.tiny import tiny_model

from keras_ckpt import (
    CheckpointCallback,
    EveryNSteps,
    KeepLast,
    RotatingCheckpoint,
    list_checkpoints,
)

WORKER = Path(__file__).parent / "helpers" / "resume_worker.py"


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run's final weights (numpy and tf.data give the same batches)."""
    model = worker.build_model()
    x, y = worker.data()
    model.fit(x, y, batch_size=worker.BATCH, epochs=worker.EPOCHS, shuffle=False, verbose=0)
    return model.get_weights()


def _assert_equal_weights(actual, expected):
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def _run(fresh, *args: str) -> subprocess.CompletedProcess:
    """The worker in a new process (forked from the session's zygote: `helpers.fresh`)."""
    return fresh.run([str(WORKER), *args], timeout=300, text=False)


@pytest.mark.parametrize(
    "async_flag", [[], pytest.param(["--async"], marks=pytest.mark.slow)], ids=["sync", "async"]
)
def test_sigkilled_run_relaunched_ends_as_the_uninterrupted_run(
    tmp_path, reference, async_flag, fresh
):
    directory, out = str(tmp_path / "run"), str(tmp_path / "final.npz")
    killed = _run(fresh, directory, out, "--kill-after", "17", *async_flag)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not os.path.exists(out)
    steps = [i.step for i in list_checkpoints(directory)]
    assert steps and steps[-1] in (10, 15)  # an async write of 15 may have been cut short

    relaunched = _run(fresh, directory, out, *async_flag)  # the very same command, minus the kill
    assert relaunched.returncode == 0, relaunched.stderr.decode()[-2000:]
    final = np.load(out)
    assert int(final["iterations"]) == 36
    _assert_equal_weights([final[f"w{i}"] for i in range(len(reference))], reference)
    assert [i.step for i in list_checkpoints(directory)][-1] == 36


def test_tf_data_input_resumes_exactly_and_a_finished_run_trains_nothing(tmp_path, reference):
    directory = tmp_path / "run"
    with pytest.raises(RuntimeError, match="interrupted"):
        killer = worker.KillAfter(17, hard=False)
        worker.train(worker.build_model(), directory, [killer], input="tfdata")
    assert list_checkpoints(directory)[-1].step == 15  # epoch 2, after its 3rd batch

    model = worker.build_model()
    worker.train(model, directory, input="tfdata")
    assert int(model.optimizer.iterations) == 36
    _assert_equal_weights(model.get_weights(), reference)

    again = worker.build_model()
    cb = worker.train(again, directory, input="tfdata")  # the job relaunched once more
    assert int(again.optimizer.iterations) == 36
    _assert_equal_weights(again.get_weights(), reference)
    assert [i.step for i in cb.checkpoints][-1] == 36


def test_history_and_save_schedule_continue_across_the_interruption(tmp_path):
    directory = tmp_path / "run"
    with pytest.raises(RuntimeError):
        worker.train(worker.build_model(), directory, [worker.KillAfter(17, hard=False)])
    model = worker.build_model()
    worker.train(model, directory)
    text = (directory / "history.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(r["epoch"], r["step"]) for r in lines] == [(1, 12), (2, 24), (3, 36)]
    infos = list_checkpoints(directory)
    assert [(i.step, i.epoch) for i in infos] == [(20, 1), (25, 2), (30, 2), (35, 2), (36, 3)]
    # nothing of the resume stays on the model: a later fit starts at its own epoch 0
    x, y = worker.data()
    model.fit(x, y, batch_size=worker.BATCH, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 48


def test_keras_shuffle_resumes_at_the_right_step(tmp_path):
    directory = tmp_path / "run"
    with pytest.raises(RuntimeError):
        killer = worker.KillAfter(17, hard=False)
        worker.train(worker.build_model(), directory, [killer], shuffle=True)
    steps = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(int(self.model.optimizer.iterations))

    model = worker.build_model()
    worker.train(model, directory, [Count()], shuffle=True)
    # epoch 2's first 3 batches are consumed untrained (their hooks see step 15), then
    # batches 4..12 and epoch 3 train: no step twice, none missing
    assert steps == [15, 15, 15, *range(16, 37)]
    assert [i.step for i in list_checkpoints(directory)][-1] == 36


def test_resume_with_steps_per_execution_skips_whole_executions(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((48, 4)).astype("float32")  # 12 batches an epoch
    y = x.sum(axis=1, keepdims=True)

    def model_k3():
        model = tiny_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", steps_per_execution=3)
        return model

    def fit(model, callbacks):
        cb = RotatingCheckpoint(tmp_path / "run", max_to_keep=50, save_freq=6, resume=True)
        try:
            model.fit(
                x, y, batch_size=4, epochs=2, shuffle=False, callbacks=[cb, *callbacks], verbose=0
            )
        finally:
            cb.close()

    ref = model_k3()
    ref.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    with pytest.raises(RuntimeError):
        fit(model_k3(), [worker.KillAfter(21, hard=False)])  # last save: 18, mid-epoch 2
    model = model_k3()
    fit(model, [])
    assert int(model.optimizer.iterations) == 24
    _assert_equal_weights(model.get_weights(), ref.get_weights())
    assert [i.step for i in list_checkpoints(tmp_path / "run")] == [6, 12, 18, 24]


def test_empty_or_missing_directory_starts_from_scratch(tmp_path):
    x, y = np.ones((8, 4), "float32"), np.ones((8, 1), "float32")
    (tmp_path / "empty").mkdir()
    for name in ("empty", "missing"):
        model = tiny_model(eager=True)
        cb = RotatingCheckpoint(tmp_path / name, resume=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.fit(x, y, batch_size=4, epochs=2, callbacks=[cb], verbose=0)
        assert int(model.optimizer.iterations) == 4
        assert [i.step for i in cb.checkpoints] == [2, 4]


def test_two_resuming_callbacks_in_one_fit_raise(tmp_path):
    x, y = np.ones((8, 4), "float32"), np.ones((8, 1), "float32")
    first = RotatingCheckpoint(tmp_path / "a", resume=True)
    second = CheckpointCallback(tmp_path / "b", save=EveryNSteps(1), keep=KeepLast(1), resume=True)
    model = tiny_model(eager=True)
    with pytest.raises(ValueError, match="resume=True"):
        model.fit(x, y, batch_size=4, callbacks=[first, second], verbose=0)
    first.close()
    second.close()
    # one resuming callback per fit is fine, also after the failed fit
    later = RotatingCheckpoint(tmp_path / "b", resume=True)
    model.fit(x, y, batch_size=4, callbacks=[later], verbose=0)


def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    directory = tmp_path / "run"
    with pytest.raises(RuntimeError):
        worker.train(worker.build_model(), directory, [worker.KillAfter(17, hard=False)])
    data = directory / "ckpt-15.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-8])  # truncated: the newest is unusable
    model = worker.build_model()
    cb = RotatingCheckpoint(directory, save_freq=5, resume=True, verbose=1)
    x, y = worker.data()
    keras.config.enable_interactive_logging()
    with pytest.warns(UserWarning, match="ckpt-15"):
        model.fit(
            x, y, batch_size=worker.BATCH, epochs=3, shuffle=False, callbacks=[cb], verbose=0
        )
    out = capsys.readouterr().out
    assert f"resumed {directory}/ckpt-10: epoch 1, batch 10" in out
    assert int(model.optimizer.iterations) == 36


def test_timed_checkpoint_resumes_mid_epoch_exactly(tmp_path, reference):
    from keras_ckpt import TimedCheckpoint

    x, y = worker.data()

    def fit(model, callbacks):
        cb = TimedCheckpoint(tmp_path / "run", every_seconds=1e-6, max_to_keep=2, resume=True)
        try:
            model.fit(
                x,
                y,
                batch_size=worker.BATCH,
                epochs=3,
                shuffle=False,
                callbacks=[cb, *callbacks],
                verbose=0,
            )
        finally:
            cb.close()

    with pytest.raises(RuntimeError):
        fit(worker.build_model(), [worker.KillAfter(19, hard=False)])  # saves at every batch
    assert list_checkpoints(tmp_path / "run")[-1].step == 19
    model = worker.build_model()
    fit(model, [])
    assert int(model.optimizer.iterations) == 36
    _assert_equal_weights(model.get_weights(), reference)
