"""Shared data: a save writes what changed; unchanged values are shared, never stale.

A transfer-learning model (a frozen backbone of ~2 MB, a small trainable head) is saved
repeatedly. Every checkpoint must be a complete, plain TensorFlow checkpoint holding exactly
the model's values at its step, whatever happened between saves (an `assign`, unfreezing,
moving BatchNormalization statistics, a `restore`), whichever older checkpoint rotation
deleted, on a local disk (hard links) and on `ram://` or a disk without links (copies).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny import poison
from test_reliability_diskfull import NO_SPACE, FullDisk, _assert_only, _digest

from keras_ckpt import CheckpointError, CheckpointManager, KeepLast, _fs, cli, restore, verify

gfile = tf.io.gfile

# Training runs eagerly: tracing the train step cost ~1.2 s a model, the few eager steps a
# test takes cost far less, and the checkpoints hold the same variables either way.
EAGER = True


def transfer_model(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """A frozen ~2.2 MB backbone (Dense + BatchNormalization) under a small head with BN."""
    keras.utils.set_random_seed(seed)
    base = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(512, activation="relu", name="b1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(512, activation="relu", name="b2"),
            keras.layers.Dense(512, activation="relu", name="b3"),
        ],
        name="base",
    )
    base.trainable = False
    model = keras.Sequential(
        [
            base,
            keras.layers.Dense(16, name="h1"),
            keras.layers.BatchNormalization(name="head_bn"),
            keras.layers.Dense(1, name="h2"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", run_eagerly=EAGER)
    return model, base


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((16, 32)).astype("float32")
    return x, x[:, :1] * 2.0


def values(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.variables]


@functools.cache
def _reader() -> keras.Model:
    """The model `assert_plain_read` reads into, built once: the tests read ~170 times and a
    build costs more than the read itself."""
    return transfer_model(seed=99)[0]


def assert_plain_read(prefix: str, expected: list[np.ndarray]) -> None:
    """`tf.train.Checkpoint(model=reader).read(prefix)` gives exactly `expected`."""
    reader = _reader()
    assert len(reader.variables) == len(expected)
    poison(reader)  # reused: a value the read misses stays NaN and fails the comparison below
    tf.train.Checkpoint(model=reader).read(prefix).expect_partial()
    for got, want in zip(values(reader), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def record(prefix: str) -> dict:
    return json.loads(_fs.read_text(prefix + ".json"))


def how_shared(prefix: str) -> set[str]:
    return {e["how"] for e in record(prefix).get("shared", {}).values()}


@pytest.fixture(params=["local", "ram"])
def where(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "run")
        return
    root = f"ram://keras_ckpt_tests/{uuid.uuid4().hex}"
    yield f"{root}/run"
    for top, _, files in gfile.walk(root):  # ram:// is process-wide: leave nothing behind
        for name in files:
            gfile.remove(f"{top}/{name}")


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_every_checkpoint_of_a_transfer_run_reads_back_exactly_after_rotation(where, async_save):
    model, _ = transfer_model()
    x, y = batch()
    at: dict[int, list[np.ndarray]] = {}
    with CheckpointManager(where, model, keep=KeepLast(3), async_save=async_save) as mgr:
        for step in range(1, 8):
            model.train_on_batch(x, y)
            at[step] = values(model)
            info = mgr.save()
            assert info is not None and info.step == step
            mgr.wait()
            for kept in mgr.checkpoints:  # every kept one, also after its writer was deleted
                assert_plain_read(kept.path, at[kept.step])
    kept = [i.step for i in mgr.checkpoints]
    assert kept == [5, 6, 7]
    expected = "link" if where.startswith("/") else "copy"
    for step in kept:
        prefix = f"{where}/ckpt-{step}"
        assert how_shared(prefix) == {expected}
        # ckpt-1 wrote the backbone's shard; rotation deleted it
        assert {e["first"] for e in record(prefix)["shared"].values()} == {"ckpt-1"}
        names = {k for k, _ in tf.compat.v1.train.NewCheckpointReader(prefix)
                 .get_variable_to_shape_map().items()}  # fmt: skip
        assert len(names) == 1 + len(model.variables) + len(model.optimizer.variables)
    assert tf.train.latest_checkpoint(where) == f"{where}/ckpt-7"
    assert verify(where) == []
    fresh, _ = transfer_model(seed=5)
    assert restore(fresh, where).step == 7  # keras_ckpt's own reader too
    for a, b in zip(values(fresh), at[7], strict=True):
        np.testing.assert_array_equal(a, b)
    if where.startswith("/"):
        assert tf.train.list_variables(f"{where}/ckpt-5")
        inodes = {os.stat(f"{where}/ckpt-{s}.data-00000-of-00002").st_ino for s in kept}
        assert len(inodes) == 1  # one copy of the backbone on disk for the three


def _saves(directory: str, model: keras.Model, change) -> tuple[str, list[np.ndarray]]:
    """Saves twice unchanged (the second shares), applies `change`, saves: the last prefix."""
    x, y = batch()
    with CheckpointManager(directory, model, keep=KeepLast(5)) as mgr:
        model.train_on_batch(x, y)
        mgr.save()
        first = mgr.save(step=100)
        assert how_shared(first.path) == {"link"}  # nothing changed: the backbone is shared
        change(model, mgr)
        last = mgr.save(step=200)
    return last.path, values(model)


def _assign(model, mgr=None):
    kernel = model.get_layer("base").get_layer("b2").kernel
    kernel.assign(kernel + 1.0)


def _unfreeze(model, mgr):
    model.get_layer("base").trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", run_eagerly=EAGER)
    model.train_on_batch(*batch(1))


def _move_bn(model, mgr):
    """Shares the head's BatchNormalization statistics, then training moves them."""
    _assign(model)  # the shared shard is out of date: the next save writes a new one, of
    info = mgr.save(step=150)  # every non-trainable value unchanged since the last save
    changed = model.get_layer("base").get_layer("b2").kernel.numpy().nbytes  # not shared
    frozen = sum(v.numpy().nbytes for v in model.get_layer("base").variables) - changed
    stats = model.get_layer("head_bn")
    moving = stats.moving_mean.numpy().nbytes + stats.moving_variance.numpy().nbytes
    assert how_shared(info.path) == {"written"}
    assert os.path.getsize(info.path + ".data-00000-of-00002") == frozen + moving
    model.train_on_batch(*batch(2))  # moves them


def _restore_other(model, mgr, other_dir):
    other, _ = transfer_model(seed=7)
    other.train_on_batch(*batch(3))
    with CheckpointManager(other_dir, other) as mgr:
        mgr.save()
    restore(model, other_dir)


@pytest.mark.parametrize("way", ["assign", "unfreeze", "moving_bn", "restore"])
def test_a_frozen_value_that_changed_is_written_never_shared_stale(tmp_path, way):
    model, base = transfer_model()
    watched = {
        "assign": base.get_layer("b2").kernel,
        "unfreeze": base.get_layer("b1").kernel,
        "moving_bn": model.get_layer("head_bn").moving_mean,
        "restore": base.get_layer("b3").kernel,
    }[way]
    change = {
        "assign": _assign,
        "unfreeze": _unfreeze,
        "moving_bn": _move_bn,
        "restore": lambda m, mgr: _restore_other(m, mgr, str(tmp_path / "other")),
    }[way]
    before = watched.numpy().copy()
    prefix, now = _saves(str(tmp_path / "run"), model, change)
    assert not np.array_equal(watched.numpy(), before)  # the change happened
    assert_plain_read(prefix, now)  # ... and the checkpoint after it holds it


def test_damage_to_shared_data_is_reported_for_every_checkpoint_holding_it(tmp_path, capsys):
    model, _ = transfer_model()
    directory = tmp_path / "run"
    with CheckpointManager(directory, model, keep=KeepLast(3)) as mgr:
        for _ in range(3):
            model.train_on_batch(*batch())
            mgr.save()
    assert cli.main(["list", str(directory)]) == 0
    out = capsys.readouterr().out
    assert " own " in out.splitlines()[1] and "disk used:" in out
    assert cli.main(["inspect", str(directory / "ckpt-3")]) == 0
    assert "shared with ckpt-1, ckpt-2" in capsys.readouterr().out
    with open(directory / "ckpt-1.data-00000-of-00002", "r+b") as f:  # one flipped byte
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x10]))
    problems = verify(str(directory))
    for step in (1, 2, 3):  # hard links: the same bytes are damaged in all three
        lines = [p for p in problems if f"ckpt-{step}.data-00000-of-00002" in p.split(":")[0]]
        assert len(lines) == 1 and "shared data, also held by" in lines[0], problems


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/io")
def test_a_save_writes_the_head_and_optimizer_not_the_frozen_backbone(tmp_path):
    def written() -> int:
        with open("/proc/self/io") as f:  # bytes this process passed to write()
            return int(next(line for line in f if line.startswith("wchar:")).split()[1])

    model, base = transfer_model()
    model.train_on_batch(*batch())  # builds the optimizer
    frozen = {id(v) for v in base.variables}
    head = sum(v.numpy().nbytes for v in model.variables if id(v) not in frozen)
    slots = sum(v.numpy().nbytes for v in model.optimizer.variables)
    full = sum(v.numpy().nbytes for v in model.variables) + slots
    per_save = []
    with CheckpointManager(tmp_path / "run", model, keep=KeepLast(2)) as mgr:
        for _ in range(4):
            model.train_on_batch(*batch())
            start = written()
            mgr.save()
            per_save.append(written() - start)
    assert per_save[0] > full  # the first save writes everything
    for nbytes in per_save[1:]:
        assert head + slots <= nbytes <= 2 * (head + slots) + 16 * 1024, (per_save, head, full)
        assert nbytes < full / 10


class LinkingDisk(FullDisk):
    """The fault-injecting layer; linking or copying shared data is one more operation."""

    def __init__(self, monkeypatch, links: bool) -> None:
        super().__init__(monkeypatch)
        real = _fs.link_or_copy

        def link_or_copy(src, dst):
            if self._op(f"link {os.path.basename(dst)}"):
                raise self._error("link")
            return real(src, dst)

        monkeypatch.setattr(_fs, "link_or_copy", link_or_copy)
        if not links:  # a disk without hard links: copies

            def no_link(src, dst, **kwargs):
                raise OSError(errno.EPERM, "Operation not permitted")

            monkeypatch.setattr(os, "link", no_link)


@pytest.mark.slow
@pytest.mark.parametrize("links", [True, False], ids=["link", "copy"])
def test_a_failure_at_any_operation_of_a_shared_save_loses_nothing(tmp_path, monkeypatch, links):
    disk = LinkingDisk(monkeypatch, links)
    model, _ = transfer_model()
    model.train_on_batch(*batch())
    expected = values(model)

    def open_run(directory: Path) -> CheckpointManager:
        mgr = CheckpointManager(directory, model, keep=KeepLast(2))
        mgr.save(step=1)
        mgr.save(step=2)  # shares ckpt-1's shard
        return mgr

    with open_run(tmp_path / "count") as mgr:
        disk.arm(None)
        mgr.save(step=3)
        disk.disarm()
    points = disk.calls[: disk.calls.index("rename checkpoint") + 1]
    assert any(p.startswith("link ") for p in points), points
    assert how_shared(str(tmp_path / "count" / "ckpt-3")) == {"link" if links else "copy"}

    for k, point in enumerate(points, start=1):
        directory = tmp_path / f"fault-{k}"
        mgr = open_run(directory)
        before = _digest(directory, [1, 2])
        disk.arm(k)
        with pytest.raises(CheckpointError) as caught:
            mgr.save(step=3)
        disk.disarm()
        assert disk.failed == point and NO_SPACE in str(caught.value), point
        _assert_only(directory, [1, 2])
        assert _digest(directory, [1, 2]) == before, f"earlier files changed ({point})"
        info = mgr.save(step=4)  # the next save works, shares again and rotates ckpt-1 out
        mgr.close()
        assert info is not None
        _assert_only(directory, [2, 4])
        assert_plain_read(str(directory / "ckpt-4"), expected)
        assert_plain_read(str(directory / "ckpt-2"), expected)
        shutil.rmtree(directory)


class _CheckEveryKept(keras.callbacks.Callback):
    """After the checkpoint callback: records the weights at each step, and reads back every
    kept checkpoint whenever a new one appears."""

    def __init__(self, ckpt) -> None:
        super().__init__()
        self.ckpt, self.at, self.checked = ckpt, {}, set()

    def on_train_batch_end(self, batch, logs=None):
        self.at[int(self.model.optimizer.iterations.numpy())] = values(self.model)
        kept = self.ckpt.checkpoints
        if kept and kept[-1].step not in self.checked:
            for info in kept:
                assert_plain_read(info.path, self.at[info.step])
            self.checked.add(kept[-1].step)


def test_a_fit_with_rotating_checkpoint_keeps_every_checkpoint_exact(tmp_path):
    from keras_ckpt import RotatingCheckpoint

    model, _ = transfer_model()
    x, y = batch()
    ckpt = RotatingCheckpoint(tmp_path / "run", max_to_keep=2, save_freq=2)
    check = _CheckEveryKept(ckpt)
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[ckpt, check])  # 12 steps
    assert sorted(check.checked) == [2, 4, 6, 8, 10, 12]
    assert [i.step for i in ckpt.checkpoints] == [10, 12]
    assert how_shared(str(tmp_path / "run" / "ckpt-12")) == {"link"}
    assert_plain_read(str(tmp_path / "run" / "ckpt-10"), check.at[10])


def test_a_restarted_manager_writes_a_new_shard_and_leaves_the_old_checkpoints_intact(tmp_path):
    model, base = transfer_model()
    directory = tmp_path / "run"
    model.train_on_batch(*batch())
    with CheckpointManager(directory, model, keep=KeepLast(4)) as mgr:
        first = mgr.save(step=1)
        mgr.save(step=2)
    before = values(model)
    _assign(model)  # between the runs: the restarted run must not share the old backbone
    with CheckpointManager(directory, model, keep=KeepLast(4)) as mgr:
        third = mgr.save(step=3)
        fourth = mgr.save(step=4)
    assert how_shared(third.path) == {"written"} and how_shared(fourth.path) == {"link"}
    assert_plain_read(first.path, before)
    assert_plain_read(str(directory / "ckpt-2"), before)
    assert_plain_read(third.path, values(model))
    assert verify(str(directory)) == []
