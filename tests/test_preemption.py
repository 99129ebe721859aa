"""`save_on_preemption=True`: SIGTERM saves the current step, keeps it, and stops cleanly."""

from __future__ import annotations

import inspect
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.fresh import Lines
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import (
    CheckpointCallback,
    CheckpointManager,
    EveryNSteps,
    KeepBest,
    RotatingCheckpoint,
    TimedCheckpoint,
    list_checkpoints,
    restore,
)

HERE = Path(__file__).parent
_LATENCIES: list[float] = []  # seconds from SIGTERM sent to `fit` returned, printed with -s


def _record(directory: Path, step: int) -> dict:
    return json.loads((directory / f"ckpt-{step}.json").read_text())


def _steps(directory: Path) -> list[int]:
    return [i.step for i in list_checkpoints(str(directory))]


class _Previous:
    """A user's own SIGTERM handler, installed for the test and put back after it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, signum, frame) -> None:
        self.calls += 1


@pytest.fixture
def previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    handler = _Previous()
    signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, before)


class _HandlerDuringFit(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(signal.getsignal(signal.SIGTERM))


# -- handler lifecycle --------------------------------------------------------------------------


def test_no_handler_is_installed_without_the_flag(tmp_path, previous_handler):
    x, y = tiny_data()
    model = tiny_model(eager=True)
    spy = _HandlerDuringFit()
    for cb in (
        RotatingCheckpoint(tmp_path / "rot", save_freq=2),
        TimedCheckpoint(tmp_path / "timed", every_seconds=60),
    ):
        model.fit(x, y, batch_size=8, epochs=1, callbacks=[spy, cb], verbose=0)
    with CheckpointManager(tmp_path / "loop", model) as mgr:
        assert signal.getsignal(signal.SIGTERM) is previous_handler
        mgr.save()
        assert not mgr.preempted
    assert spy.seen and all(h is previous_handler for h in spy.seen)
    assert signal.getsignal(signal.SIGTERM) is previous_handler


@pytest.mark.parametrize("preset", ["rotating", "timed", "general"])
def test_fit_with_the_flag_gives_the_previous_handler_back(tmp_path, previous_handler, preset):
    x, y = tiny_data()
    model = tiny_model(eager=True)
    spy = _HandlerDuringFit()
    run = tmp_path / "run"
    cb = {
        "rotating": lambda: RotatingCheckpoint(run, save_freq=2, save_on_preemption=True),
        "timed": lambda: TimedCheckpoint(run, every_seconds=3600, save_on_preemption=True),
        "general": lambda: CheckpointCallback(
            run, save=EveryNSteps(2), save_on_train_end=True, save_on_preemption=True
        ),
    }[preset]()
    history = model.fit(x, y, batch_size=8, epochs=2, callbacks=[spy, cb], verbose=0)

    assert all(h is not previous_handler for h in spy.seen)  # ours, while fit runs
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    assert len(history.history["loss"]) == 2 and not cb.manager.preempted
    assert _steps(run)[-1] == 8
    assert "preempted" not in _record(run, 8)
    assert previous_handler.calls == 0


def test_two_managers_restore_the_first_handler_whatever_the_closing_order(
    tmp_path, previous_handler
):
    model = tiny_model()
    a = CheckpointManager(tmp_path / "a", model, save_on_preemption=True)
    b = CheckpointManager(tmp_path / "b", model, save_on_preemption=True)
    a.close()
    assert signal.getsignal(signal.SIGTERM) is not previous_handler  # b still watches
    os.kill(os.getpid(), signal.SIGTERM)
    assert b.preempted and previous_handler.calls == 0
    b.close()
    assert signal.getsignal(signal.SIGTERM) is previous_handler


def test_a_manager_outside_the_main_thread_warns_and_installs_nothing(tmp_path, previous_handler):
    model = tiny_model()
    made = []

    def create():
        with pytest.warns(UserWarning, match="main thread") as record:
            made.append(CheckpointManager(tmp_path / "t", model, save_on_preemption=True))
        made.append(str(record[0].message))

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    mgr, message = made
    assert "SIGTERM" in message and "preemption will not be noticed" in message
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    os.kill(os.getpid(), signal.SIGTERM)
    assert previous_handler.calls == 1 and not mgr.preempted
    mgr.close()
    assert signal.getsignal(signal.SIGTERM) is previous_handler


def test_sigterm_after_a_crashed_fit_reaches_the_previous_handler(tmp_path, previous_handler):
    """A `fit` that raised never calls on_train_end: `cb.close()` (what the docs tell users
    to call then) gives SIGTERM back to the previous handler."""
    x, y = tiny_data()
    model = tiny_model(eager=True)

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("boom")

    cb = RotatingCheckpoint(tmp_path / "run", save_on_preemption=True)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, batch_size=8, epochs=1, callbacks=[cb, Boom()], verbose=0)
    cb.close()
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    os.kill(os.getpid(), signal.SIGTERM)
    assert previous_handler.calls == 1


# -- custom loops (acceptance 6) ----------------------------------------------------------------


def _train_step(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return float(loss)


def test_custom_loop_saves_on_sigterm_and_the_save_stays_until_a_newer_one(
    tmp_path, previous_handler
):
    x, y = tiny_data()
    run = tmp_path / "loop"
    model = tiny_model()
    scripted_val = {2: 0.5, 4: 0.3, 6: 0.4}  # step 4 is the best; 6 is not wanted
    with CheckpointManager(
        run, model, keep=[KeepBest("val_loss")], save_on_preemption=True
    ) as mgr:
        for step in range(1, 100):
            _train_step(model, x[:8], y[:8])
            if step == 7:
                os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends
            if step in scripted_val:
                mgr.save(metrics={"val_loss": scripted_val[step]})
            if mgr.preempted:
                info = mgr.save(metrics={"val_loss": 9.0})  # worse than any: kept anyway
                break
        assert step == 7 and info.step == 7
        assert [i.step for i in mgr.checkpoints] == [4, 7]
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    assert previous_handler.calls == 0
    assert _steps(run) == [4, 7]
    assert _record(run, 7)["preempted"] is True
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-7")
    saved = np.asarray(model.get_weights()[0])

    # The relaunch resumes from step 7; a save no policy wants leaves it alone ...
    model2 = tiny_model()
    assert restore(model2, str(run)).step == 7
    np.testing.assert_array_equal(model2.get_weights()[0], saved)
    with CheckpointManager(run, model2, keep=[KeepBest("val_loss")]) as mgr:
        _train_step(model2, x[:8], y[:8])
        assert mgr.save(metrics={"val_loss": 0.35}) is None  # not better than 0.3
        assert _steps(run) == [4, 7]
        # ... and a newer kept checkpoint unpins it: it goes as the keep policies say.
        _train_step(model2, x[:8], y[:8])
        assert mgr.save(metrics={"val_loss": 0.1}).step == 9
    assert _steps(run) == [9]


def test_preemption_save_of_a_step_already_saved_returns_it(tmp_path):
    model = tiny_model()
    x, y = tiny_data()
    with CheckpointManager(run := tmp_path / "r", model, save_on_preemption=True) as mgr:
        _train_step(model, x[:8], y[:8])
        first = mgr.save()
        os.kill(os.getpid(), signal.SIGTERM)
        assert mgr.preempted
        assert mgr.save() == first
    assert _steps(run) == [1]


# -- fit: a SIGTERM in the last batch, on verbose ------------------------------------------------


def test_sigterm_in_the_last_batch_is_saved_at_train_end_with_one_line(
    tmp_path, previous_handler, capsys
):
    """The final save is the preemption save; no keep policy would keep it (KeepBest)."""
    x, y = tiny_data()
    model = tiny_model(eager=True)

    class TermAfterLastBatch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    cb = CheckpointCallback(
        tmp_path / "run",
        save=EveryNSteps(3),
        keep=[KeepBest("val_loss")],
        validation_data=(x, y),
        verbose=1,
        save_on_preemption=True,
    )
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[TermAfterLastBatch(), cb], verbose=0)
    out = capsys.readouterr().out
    assert int(model.optimizer.iterations.numpy()) == 8
    assert _steps(tmp_path / "run")[-1] == 8
    assert _record(tmp_path / "run", 8)["preempted"] is True
    lines = [line for line in out.splitlines() if "preemption" in line or "SIGTERM" in line]
    assert len(lines) == 1 and "ckpt-8" in lines[0], out
    assert signal.getsignal(signal.SIGTERM) is previous_handler


def test_sigterm_mid_epoch_in_a_keep_best_directory_saves_without_evaluating(tmp_path):
    """No `val_loss` at that batch, no time to evaluate: saved and kept all the same."""
    x, y = tiny_data()
    model = tiny_model(eager=True)

    class Term(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 5:
                os.kill(os.getpid(), signal.SIGTERM)

    cb = CheckpointCallback(
        tmp_path / "run",
        save=EveryNSteps(3),
        keep=[KeepBest("val_loss")],
        validation_data=(x, y),
        save_on_preemption=True,
    )
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[Term(), cb], verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 5
    assert _steps(tmp_path / "run") == [3, 5]
    record = _record(tmp_path / "run", 5)
    assert record["preempted"] is True and "val_loss" not in record["metrics"]
    assert "loss" in record["metrics"]  # the batch's logs
    assert "val_loss" in _record(tmp_path / "run", 3)["metrics"]  # evaluated at its save point


def test_sigterm_during_validation_saves_at_the_epoch_end_and_stops(tmp_path):
    x, y = tiny_data()
    model = tiny_model(eager=True)

    class TermInValidation(keras.callbacks.Callback):
        def on_test_batch_end(self, batch, logs=None):
            os.kill(os.getpid(), signal.SIGTERM)

    cb = RotatingCheckpoint(tmp_path / "run", save_freq=100, save_on_preemption=True)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        validation_data=(x, y),
        verbose=0,
        callbacks=[TermInValidation(), cb],
    )
    assert len(history.history["loss"]) == 1  # no batch of epoch 2 ran
    assert _steps(tmp_path / "run") == [4]
    record = _record(tmp_path / "run", 4)
    assert record["preempted"] is True and record["epoch"] == 1
    assert "val_loss" in record["metrics"]  # Keras' validation had run


# -- a subprocess trainer (acceptance 3) ---------------------------------------------------------


def _start_trainer(fresh, args: dict, log: Path) -> Lines:
    """A trainer (`helpers/preempt_worker.py`) forked from the session's zygote."""
    return fresh.start_worker(HERE / "helpers" / "preempt_worker.py", args, log)


@pytest.fixture
def trainers(fresh, tmp_path):
    """Starts trainers (`trainers(args)`); ends those a failed test left running."""
    started: list[Lines] = []

    def start(args: dict) -> Lines:
        started.append(_start_trainer(fresh, args, tmp_path / f"trainer-{len(started)}.log"))
        return started[-1]

    yield start
    for trainer in started:
        trainer.child.kill()  # nothing if it ended
        trainer.child.wait()


def _said(trainer: Lines, prefix: str) -> str:
    """What follows `prefix` on the trainer's next line that starts with it."""
    return trainer.expect(prefix)[1][len(prefix) :].strip()


def _check_preempted_run(run: Path, trainer: Lines, sent_at: float) -> int:
    done = json.loads(_said(trainer, "done"))
    assert done["returned_at"] - sent_at < 10  # well within a 30 s grace period
    _LATENCIES.append(done["returned_at"] - sent_at)
    assert trainer.finish()[0] == 0  # fit returned normally
    step = done["iterations"]
    assert done["stop_training"] and done["handler_restored"]
    assert 0 < step < 36  # stopped early, at the batch the signal arrived in
    steps = _steps(run)
    assert steps[-1] == step  # the step it stopped at is the newest checkpoint
    assert _record(run, step)["step"] == step
    if step % 5:  # else the scheduled save of that step came first: it is the newest anyway
        assert _record(run, step)["preempted"] is True
    assert steps == sorted({(step - 1) // 5 * 5, step} - {0})[-2:]  # KeepLast(2) + the pin
    sys.path.insert(0, str(HERE))
    from helpers.preempt_worker import build_model

    model = build_model()
    assert restore(model, str(run)).step == step
    assert int(model.optimizer.iterations.numpy()) == step
    final = np.load(str(run) + ".final.npz")
    for i, weight in enumerate(model.get_weights()):
        np.testing.assert_array_equal(weight, final[f"arr_{i}"])
    return step


@pytest.mark.slow
def test_sigterm_at_random_times_saves_the_step_and_fit_returns(tmp_path, trainers):
    rng = random.Random(os.environ.get("PREEMPT_SEED"))
    stopped = []
    # three signals between save points (a random step, at a random moment of its end)
    # and one at any random time (it often falls in a save, the slowest step)
    targets = [rng.choice([s for s in range(1, 36) if s % 5]) for _ in range(3)] + [None]
    for round_, target in enumerate(targets):
        run = tmp_path / f"run{round_}"
        trainer = trainers({"dir": str(run), "batch_seconds": 0.03})
        pid = int(_said(trainer, "training"))
        if target is None:
            time.sleep(rng.uniform(0.0, 0.8))
        else:
            trainer.expect(f"step {target}")
            time.sleep(rng.uniform(0.0, 0.01))
        sent_at = time.time()
        os.kill(pid, signal.SIGTERM)
        step = _check_preempted_run(run, trainer, sent_at)
        assert target is None or target <= step <= target + 1
        stopped.append(step)

    # during a background write: the preemption save waits for it, then saves its step
    run = tmp_path / "async"
    args = {"dir": str(run), "async": True, "slow_commit": 1.0, "batch_seconds": 0.03}
    trainer = trainers(args)
    pid = int(_said(trainer, "training"))
    assert _said(trainer, "writing") == "5"  # in flight for a second from now
    if "step 6" not in trainer.seen:
        trainer.expect("step 6")
    sent_at = time.time()
    os.kill(pid, signal.SIGTERM)
    step = _check_preempted_run(run, trainer, sent_at)
    assert 5 < step < 10 and _steps(run) == [5, step]
    assert "preempted" not in _record(run, 5)
    print("targets", targets, "preempted at steps", stopped, "and", step, "(async)")
    print("SIGTERM to fit returned, s:", [round(t, 3) for t in _LATENCIES])


_HAS_RESUME = "resume" in inspect.signature(RotatingCheckpoint).parameters


@pytest.fixture(scope="module")
def uninterrupted(fresh, tmp_path_factory) -> Path:
    """The final weights of the run no signal interrupts (the same for both relaunch tests)."""
    reference = tmp_path_factory.mktemp("preemption") / "reference"
    args = {"dir": str(reference), "batch_seconds": 0}
    trainer = _start_trainer(fresh, args, reference.with_name("trainer.log"))
    assert json.loads(_said(trainer, "done"))["iterations"] == 36
    assert trainer.finish()[0] == 0
    return Path(str(reference) + ".final.npz")


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_RESUME, reason="needs RotatingCheckpoint(resume=True)")
@pytest.mark.parametrize("async_save", [False, True])
def test_relaunch_after_sigterm_ends_like_the_uninterrupted_run(
    tmp_path, async_save, trainers, uninterrupted
):
    """The same command starts the run, is stopped by SIGTERM, and continues it exactly."""
    rng = random.Random(os.environ.get("PREEMPT_SEED"))
    run = tmp_path / "run"
    command = {"dir": str(run), "resume": True, "async": async_save, "batch_seconds": 0.03}
    trainer = trainers(command)
    target = rng.choice([s for s in range(2, 36) if s % 5])  # between save points
    trainer.expect(f"step {target}")
    trainer.child.terminate()  # SIGTERM
    stopped = _check_preempted_run(run, trainer, time.time())

    trainer = trainers(command)  # the relaunch: the same command
    assert json.loads(_said(trainer, "done"))["iterations"] == 36
    assert trainer.finish()[0] == 0
    final = np.load(str(run) + ".final.npz")
    expected = np.load(uninterrupted)
    for name in expected.files:
        np.testing.assert_allclose(final[name], expected[name], rtol=0, atol=1e-6)
    assert _steps(run)[-1] == 36 and stopped < 36
