"""The fast snapshot path: exact values at its step, the same files as TF, a cached plan."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import CheckpointManager, KeepLast, RotatingCheckpoint
from keras_ckpt._objgraph import take_snapshot
from keras_ckpt._snapshot import Snapshotter

_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _contents(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _varied_model(jit_compile: bool | str = "auto") -> keras.Model:
    """Dense, BatchNorm (non-trainable updated state), Dropout (seed state), Adam, a metric."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(16, name="body")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    h = keras.layers.Dropout(0.2)(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(h))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"], jit_compile=jit_compile)
    return model


def _state(model: keras.Model) -> list[tuple[str, np.ndarray]]:
    """The model's and optimizer's (path, value) in order (copies)."""
    variables = list(model.variables) + list(model.optimizer.variables)
    return [(v.path, np.array(v.numpy(), copy=True)) for v in variables]


def test_fast_path_writes_exactly_what_tf_checkpoint_writes(tmp_path):
    model = _varied_model()
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)

    snapshots = Snapshotter(model)
    assert snapshots.plan() is not None  # the fast path is active on this TensorFlow
    snapshots.take().write(str(tmp_path / "fast"))
    tf.train.Checkpoint(model=model).write(str(tmp_path / "tf"))

    fast, reference = _contents(str(tmp_path / "fast")), _contents(str(tmp_path / "tf"))
    assert sorted(fast) == sorted(reference)
    assert fast[_GRAPH] == reference[_GRAPH]  # byte-identical object graph
    for key, value in reference.items():
        np.testing.assert_array_equal(fast[key], value, err_msg=key)
    assert sorted(p.name for p in tmp_path.glob("fast*")) == [
        "fast.data-00000-of-00001",
        "fast.index",
    ]


def test_fast_path_without_optimizer_matches_the_generic_path(tmp_path):
    model = tiny_model()
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    Snapshotter(model, save_optimizer=False).take().write(str(tmp_path / "fast"))
    take_snapshot(model, save_optimizer=False).write(str(tmp_path / "generic"))
    fast, generic = _contents(str(tmp_path / "fast")), _contents(str(tmp_path / "generic"))
    assert sorted(fast) == sorted(generic)
    assert not any("optimizer" in key for key in fast)
    assert fast[_GRAPH] == generic[_GRAPH]


@pytest.mark.parametrize("copy", [False, True])
def test_snapshot_keeps_its_values_while_training_updates_the_variables(tmp_path, copy):
    # No thread here: the snapshot is held while the variables change, then written.
    model = _varied_model()
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    before = _contents_of_model(model, tmp_path / "before")

    snapshot = Snapshotter(model).take(copy=copy)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)  # in-place updates of every variable
    for variable in model.variables:
        variable.assign(variable + 1.0)  # and assignments outside of fit
    snapshot.write(str(tmp_path / "snap"))

    held = _contents(str(tmp_path / "snap"))
    assert sorted(held) == sorted(before)
    for key, value in before.items():
        np.testing.assert_array_equal(held[key], value, err_msg=key)
    now = _contents_of_model(model, tmp_path / "now")
    changed = [k for k in now if k != _GRAPH and not np.array_equal(now[k], before[k])]
    assert len(changed) >= len(model.trainable_variables)  # training really moved on


def _contents_of_model(model: keras.Model, prefix) -> dict[str, np.ndarray]:
    tf.train.Checkpoint(model=model).write(str(prefix))
    return _contents(str(prefix))


class _Record(keras.callbacks.Callback):
    """Keeps a copy of every variable after each training step, by optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.by_step: dict[int, dict[str, np.ndarray]] = {}

    def on_train_batch_end(self, batch, logs=None):
        self.by_step[int(self.model.optimizer.iterations.numpy())] = _state(self.model)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_async_checkpoint_holds_exactly_the_weights_of_its_step(tmp_path, jit_compile):
    # Every step saves in the background while the next steps update the variables in place.
    model = _varied_model(jit_compile=jit_compile)
    x, y = tiny_data(n=64)
    record = _Record()
    cb = RotatingCheckpoint(tmp_path / "run", max_to_keep=100, save_freq=1, async_save=True)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[record, cb], verbose=0)

    assert [i.step for i in cb.checkpoints] == list(range(1, 25))
    fresh = _varied_model(jit_compile=jit_compile)
    fresh.optimizer.build(fresh.trainable_variables)
    reader = tf.train.Checkpoint(model=fresh)  # one for the 24 reads: a read restores all
    for info in cb.checkpoints:
        reader.read(info.path).assert_existing_objects_matched()
        expected = record.by_step[info.step]
        got = _state(fresh)
        assert len(got) == len(expected)
        for (path, value), (_, want) in zip(got, expected, strict=True):
            if "seed_generator" in path:
                continue  # Keras does not checkpoint seed states
            np.testing.assert_array_equal(value, want, err_msg=f"{info.path}: {path}")


def test_manager_reuses_the_plan_and_rebuilds_it_when_the_graph_changes(tmp_path):
    model = tiny_model(compile=False)
    mgr = CheckpointManager(tmp_path / "run", model, keep=[KeepLast(5)])
    mgr.save(step=1)
    first = mgr._snapshots.plan()
    mgr.save(step=2)
    assert mgr._snapshots.plan() is first  # nothing changed: same plan

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # an optimizer with its variables
    mgr.save(step=10)
    assert mgr._snapshots.plan() is not first
    mgr.close()
    keys = set(
        tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-10")).get_variable_to_shape_map()
    )
    assert any(k.startswith("model/optimizer/") for k in keys)
    reference = _contents_of_model(model, tmp_path / "reference")
    assert keys == set(reference)


class _WithExtra(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_a_variable_keras_does_not_list_is_followed_when_it_is_replaced(tmp_path):
    # A raw tf.Variable attribute is checkpointed by TF but absent from model.variables, so
    # the cheap "same variables" check cannot vouch for it: the graph is walked each save.
    model = _WithExtra()
    model(np.ones((1, 3), "float32"))
    model.extra = tf.Variable(1.0)
    snapshots = Snapshotter(model, save_optimizer=False)
    snapshots.take().write(str(tmp_path / "a"))
    model.extra = tf.Variable(5.0)
    snapshots.take().write(str(tmp_path / "b"))
    key = "model/extra/.ATTRIBUTES/VARIABLE_VALUE"
    assert _contents(str(tmp_path / "a"))[key] == 1.0
    assert _contents(str(tmp_path / "b"))[key] == 5.0


def test_under_a_distribution_strategy_the_generic_path_writes_the_same_values(tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tiny_model()
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with CheckpointManager(tmp_path / "run", model, async_save=True) as mgr:
        info = mgr.save()
        assert mgr._snapshots.plan() is None  # TensorFlow's saver does the collective reads
    saved = _contents(info.path)
    reference = _contents_of_model(model, tmp_path / "reference")
    assert sorted(saved) == sorted(reference)
    for key, value in reference.items():
        if key != _GRAPH:
            np.testing.assert_array_equal(saved[key], value, err_msg=key)


def _buffer_addresses(snapshots: Snapshotter) -> list[int]:
    return [slot[0].ctypes.data for slot in snapshots._buffers.slots if slot is not None]


def test_async_saves_copy_into_the_same_host_buffers_and_close_frees_them(tmp_path):
    model = _varied_model()
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with CheckpointManager(tmp_path / "sync", model) as mgr:
        mgr.save(step=1)
        assert mgr._snapshots._buffers is None  # a synchronous save copies nothing
    mgr = CheckpointManager(tmp_path / "async", model, async_save=True, keep=[KeepLast(5)])
    mgr.save(step=1)
    first = _buffer_addresses(mgr._snapshots)
    slots = mgr._snapshots._buffers.slots
    assert len(first) == len(slots) >= 20  # every weight, slot and counter has its buffer
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    mgr.save(step=2)
    assert _buffer_addresses(mgr._snapshots) == first  # reused, not allocated again
    mgr.close()
    assert mgr._snapshots._buffers is None
    for step in (1, 2):
        assert _contents(str(tmp_path / "async" / f"ckpt-{step}"))  # both written, readable


def test_a_snapshot_not_yet_written_is_never_overwritten_by_the_next_one(tmp_path):
    model = _varied_model()
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    snapshots = Snapshotter(model)
    expected_1 = _contents_of_model(model, tmp_path / "ref1")
    first = snapshots.take(copy=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    expected_2 = _contents_of_model(model, tmp_path / "ref2")
    second = snapshots.take(copy=True)  # the first is still unwritten: new buffers
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    first.write(str(tmp_path / "one"))
    second.write(str(tmp_path / "two"))
    for prefix, expected in (("one", expected_1), ("two", expected_2)):
        got = _contents(str(tmp_path / prefix))
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{prefix}: {key}")
    moved = [k for k in expected_1 if not np.array_equal(expected_1[k], expected_2[k])]
    assert len(moved) >= len(model.trainable_variables)  # training moved in between


def test_values_that_cannot_share_a_host_buffer_are_copied_on_their_own(tmp_path):
    model = _WithExtra()
    model(np.ones((1, 3), "float32"))
    model.flag = tf.Variable(True)  # bool: no shared host buffer, a copy of its own
    model.empty = tf.Variable(tf.zeros((0, 4)))  # no bytes at all
    snapshots = Snapshotter(model, save_optimizer=False)
    snapshot = snapshots.take(copy=True)
    slots = dict(zip(snapshots.plan().keys, snapshots._buffers.slots))
    assert slots["model/flag/.ATTRIBUTES/VARIABLE_VALUE"] is None
    assert slots["model/empty/.ATTRIBUTES/VARIABLE_VALUE"] is None
    model.flag.assign(False)
    model.dense.kernel.assign(model.dense.kernel + 1.0)
    snapshot.write(str(tmp_path / "snap"))
    held = _contents(str(tmp_path / "snap"))
    assert held["model/flag/.ATTRIBUTES/VARIABLE_VALUE"]  # still True, as when taken
    assert held["model/empty/.ATTRIBUTES/VARIABLE_VALUE"].shape == (0, 4)
    kernel = next(k for k in held if "kernel" in k)
    np.testing.assert_array_equal(held[kernel], model.dense.kernel.numpy() - 1.0)


class _Spy(keras.callbacks.Callback):
    """Notes the async callback's host buffers after the first batch and the first save."""

    def __init__(self, cb: RotatingCheckpoint) -> None:
        super().__init__()
        self.cb = cb
        self.at_first_batch: list[int] | None = None
        self.after_first_save: list[int] | None = None

    def on_train_batch_end(self, batch, logs=None):
        if self.at_first_batch is None:
            self.at_first_batch = _buffer_addresses(self.cb.manager._snapshots)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.after_first_save = _buffer_addresses(self.cb.manager._snapshots)


def test_the_callback_maps_the_async_buffers_after_the_first_batch_for_the_first_save(tmp_path):
    model = _varied_model()
    x, y = tiny_data()
    cb = RotatingCheckpoint(tmp_path / "run", async_save=True)
    spy = _Spy(cb)  # after cb: sees its first batch and its first save
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[cb, spy], verbose=0)
    assert spy.at_first_batch and spy.at_first_batch == spy.after_first_save  # one arena
    assert [i.step for i in cb.checkpoints] == [4, 8]
    fresh = _varied_model()
    fresh.optimizer.build(fresh.trainable_variables)
    tf.train.Checkpoint(model=fresh).read(cb.checkpoints[0].path).assert_existing_objects_matched()


def test_a_resumed_fit_has_the_async_buffers_mapped_from_train_begin(tmp_path):
    model = _varied_model()
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the optimizer is built now
    cb = RotatingCheckpoint(tmp_path / "run", async_save=True)
    cb.set_model(model)
    cb.on_train_begin()
    before = _buffer_addresses(cb.manager._snapshots)
    assert len(before) >= 20  # weights, slots and counters: the whole plan
    cb.on_train_batch_end(0)
    assert _buffer_addresses(cb.manager._snapshots) == before  # not mapped twice
    cb.close()
