"""CheckpointManager in custom loops, argument checks, the directory lock (issue 3, 7 and 9)."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny import tiny_data, tiny_model, weights_equal

from keras_ckpt import (
    BestCheckpoint,
    CheckpointManager,
    DirectoryLockedError,
    EveryNSeconds,
    EveryNSteps,
    KeepBest,
    KeepEveryNHours,
    KeepLast,
    MonitorNotFoundError,
    RotatingCheckpoint,
    TimedCheckpoint,
    list_checkpoints,
    restore,
)
from keras_ckpt.callbacks import CheckpointCallback


def _tape_step(model, optimizer, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return float(loss)


def test_gradient_tape_loop_keeps_the_union_of_best_two_and_last_two(tmp_path):
    x, y = tiny_data()
    model = tiny_model(compile=False)
    optimizer = keras.optimizers.SGD(0.01)
    scripted = [0.9, 0.5, 0.7, 0.4, 0.8, 0.85, 0.6, 0.95]
    returned = []
    with CheckpointManager(tmp_path / "loop", model, keep=[KeepBest(k=2), KeepLast(2)]) as mgr:
        for value in scripted:
            _tape_step(model, optimizer, x, y)
            returned.append(mgr.save(step=len(returned) + 1, metrics={"val_loss": value}))
        # best two: 0.5 (step 2), 0.4 (step 4); last two: steps 7, 8
        assert [i.step for i in mgr.checkpoints] == [2, 4, 7, 8]
    on_disk = sorted(
        int(p.name.split("-")[1].split(".")[0]) for p in (tmp_path / "loop").glob("ckpt-*.data-*")
    )
    assert on_disk == [2, 4, 7, 8]
    assert all(r is not None for r in returned)  # KeepLast wants every step
    assert mgr.latest is None or mgr.latest.step == 8


def test_save_returns_none_and_writes_nothing_when_no_policy_wants_it(tmp_path):
    model = tiny_model(compile=False)
    with CheckpointManager(tmp_path / "best", model, keep=KeepBest(k=1)) as mgr:
        first = mgr.save(step=1, metrics={"val_loss": 0.5})
        worse = mgr.save(step=2, metrics={"val_loss": 0.7})
        nan = mgr.save(step=3, metrics={"val_loss": float("nan")})
        better = mgr.save(step=4, metrics={"val_loss": 0.1})
    assert first.step == 1 and worse is None and nan is None and better.step == 4
    assert sorted(p.name for p in (tmp_path / "best").glob("ckpt-*")) == [
        "ckpt-4.data-00000-of-00001",
        "ckpt-4.index",
        "ckpt-4.json",
    ]


def test_manager_steps_follow_the_optimizer_and_restore_exactly(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    with CheckpointManager(tmp_path / "m", model, keep=[KeepLast(3)]) as mgr:
        for _ in range(4):
            model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 2 steps each
            mgr.save(metrics={"loss": 1.0}, epoch=None)
        assert [i.step for i in mgr.checkpoints] == [4, 6, 8]
    fresh = tiny_model(seed=2)
    assert restore(fresh, tmp_path / "m").step == 8
    assert weights_equal(fresh, model) and int(fresh.optimizer.iterations) == 8


def test_async_manager_wait_then_files_are_complete(tmp_path):
    model = tiny_model(compile=False)
    mgr = CheckpointManager(tmp_path / "a", model, keep=KeepLast(2), async_save=True)
    for step in (1, 2, 3):
        mgr.save(step=step)
    mgr.wait()
    assert [i.step for i in list_checkpoints(tmp_path / "a")] == [2, 3]
    mgr.close()
    assert not list((tmp_path / "a").glob(".tmp-*"))


def test_explicit_steps_must_grow(tmp_path):
    model = tiny_model(compile=False)
    with CheckpointManager(tmp_path / "s", model) as mgr:
        mgr.save(step=5)
        assert mgr.save(step=3) is None  # never reuses or goes behind a step on disk
        assert mgr.save(step=5) is None
        with pytest.raises(ValueError, match="step"):
            mgr.save(step=-1)
    assert [i.step for i in list_checkpoints(tmp_path / "s")] == [5]


def test_manager_missing_monitor_lists_metrics(tmp_path):
    with CheckpointManager(tmp_path / "m", tiny_model(compile=False), keep=KeepBest()) as mgr:
        with pytest.raises(MonitorNotFoundError, match="val_loss.*loss, mae"):
            mgr.save(step=1, metrics={"loss": 1.0, "mae": 2.0})
    assert not list((tmp_path / "m").glob("ckpt-*"))


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda d: RotatingCheckpoint(d, max_to_keep=0), "max_to_keep"),
        (lambda d: RotatingCheckpoint(d, max_to_keep=-2), "max_to_keep"),
        (lambda d: RotatingCheckpoint(d, save_freq="daily"), "save_freq"),
        (lambda d: RotatingCheckpoint(d, save_freq=0), "save_freq"),
        (lambda d: RotatingCheckpoint(d, keep_every_n_hours=-1), "keep_every_n_hours"),
        (lambda d: TimedCheckpoint(d, every_seconds=-5), "every_seconds"),
        (lambda d: TimedCheckpoint(d, every_seconds=0), "every_seconds"),
        (lambda d: TimedCheckpoint(d, every_seconds=10, max_to_keep=0), "max_to_keep"),
        (lambda d: BestCheckpoint(d, mode="bigger"), "mode"),
        (lambda d: BestCheckpoint(d, keep_best=0), "keep_best"),
        (lambda d: BestCheckpoint(d, save_freq="sometimes"), "save_freq"),
        (lambda d: BestCheckpoint(d, validation_data="val.csv"), "validation_data"),
        (lambda d: BestCheckpoint(d, verbose=-1), "verbose"),
        (lambda d: CheckpointCallback(d, save="epoch"), "save"),
        (lambda d: CheckpointCallback(d, keep=[]), "keep"),
        (lambda d: CheckpointManager(d, None, keep=["last"]), "keep"),
        (lambda d: KeepLast(0), "n"),
        (lambda d: EveryNSteps(0), "n"),
        (lambda d: EveryNSeconds(-1.0), "s"),
        (lambda d: KeepEveryNHours(0), "h"),
        (lambda d: KeepBest(mode="up"), "mode"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(tmp_path, make, argument):
    with pytest.raises(ValueError) as caught:
        make(tmp_path / "never")
    assert f"`{argument}`" in str(caught.value) and "Received" in str(caught.value)
    assert not (tmp_path / "never").exists()  # nothing created on bad input


def test_mode_error_lists_the_accepted_values():
    with pytest.raises(ValueError, match="'auto', 'min', 'max'.*mode='bigger'"):
        BestCheckpoint("unused", mode="bigger")


def test_two_managers_on_one_directory(tmp_path):
    model = tiny_model(compile=False)
    first = CheckpointManager(tmp_path / "d", model)
    first.save(step=1)
    with pytest.raises(DirectoryLockedError, match=str(tmp_path / "d")):
        CheckpointManager(tmp_path / "d", model)
    first.close()
    with CheckpointManager(tmp_path / "d", model) as again:  # released on close
        again.save(step=2)
    assert [i.step for i in list_checkpoints(tmp_path / "d")] == [1, 2]


def test_two_callbacks_on_one_directory_in_one_fit(tmp_path):
    x, y = tiny_data()
    a = RotatingCheckpoint(tmp_path / "d")
    b = RotatingCheckpoint(tmp_path / "d")
    with pytest.raises(DirectoryLockedError):
        tiny_model().fit(x, y, epochs=1, callbacks=[a, b], verbose=0)
    a.close()


def test_second_process_gets_directory_locked_error(tmp_path, fresh):
    model = tiny_model(compile=False)
    with CheckpointManager(tmp_path / "d", model) as mgr:
        mgr.save(step=1)
        code = textwrap.dedent(f"""
            import keras_ckpt, keras
            m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            try:
                keras_ckpt.CheckpointManager({str(tmp_path / "d")!r}, m)
            except keras_ckpt.DirectoryLockedError as e:
                print("LOCKED", e)
        """)
        out = fresh.run(["-c", code], timeout=120)  # another process (`helpers.fresh`)
        assert "LOCKED" in out.stdout and "another process" in out.stdout
    assert [i.step for i in list_checkpoints(tmp_path / "d")] == [1]


def test_a_new_callback_takes_over_after_fit_died_with_an_exception(tmp_path):
    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom")

    x, y = tiny_data()
    model = tiny_model()
    crashed = RotatingCheckpoint(tmp_path / "d")
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, batch_size=8, epochs=5, callbacks=[crashed, Boom()], verbose=0)
    # Keras called no on_train_end; `crashed` is still referenced, yet its fit is gone
    again = RotatingCheckpoint(tmp_path / "d")
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[again], verbose=0)
    assert [i.step for i in again.checkpoints] == [4, 8, 12]


def test_validation_data_as_dataset(tmp_path):
    x, y = tiny_data()
    val = tf.data.Dataset.from_tensor_slices(tiny_data(16, seed=3)).batch(8)
    cb = BestCheckpoint(tmp_path / "b", save_freq=2, validation_data=val)
    model = tiny_model()
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[cb], verbose=0)
    assert cb.best_value is not None and np.isfinite(cb.best_value)


def test_an_interrupted_save_does_not_use_up_its_step(tmp_path):
    model = tiny_model(compile=False)
    with CheckpointManager(tmp_path / "d", model, keep=KeepLast(5)) as mgr:
        mgr.save(step=1)
        mgr.save(step=2)
    # what a kill between the record and the index rename leaves: the record, some data
    (tmp_path / "d" / "ckpt-2.index").unlink()
    with CheckpointManager(tmp_path / "d", model, keep=KeepLast(5)) as mgr:
        assert [i.step for i in mgr.checkpoints] == [1]
        assert not (tmp_path / "d" / "ckpt-2.json").exists()  # leftover cleaned up
        assert not list((tmp_path / "d").glob("ckpt-2.*"))
        assert mgr.save(step=2).step == 2
    assert [i.step for i in list_checkpoints(tmp_path / "d")] == [1, 2]
