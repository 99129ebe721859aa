"""Disk full or a failing write during a save: a clear error, nothing lost, nothing left over.

Two ways to make writes fail:

- a fault-injecting file layer (always runs): one failure with ENOSPC, at each file
  operation a save performs in turn (creating the temporary folder, TensorFlow's write,
  each fsync, each file written, each rename, the state file), found by running the save
  once per operation until a save runs to the end without reaching the fault;
- a real, small tmpfs that a test fills up during `fit` (needs `mount`, i.e. root or
  CAP_SYS_ADMIN; skipped where it is not allowed).

After each failure: the error is a `CheckpointError` that says "No space left on device"
(with `async_save=True`, raised on the training thread at the next save point or at the end
of training), the earlier checkpoints are byte for byte intact and still named by the state
file, no file of the failed save remains, and the next save works.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import keras
import pytest
import tensorflow as tf
from helpers.tiny import poison, tiny_data, tiny_model, weights_equal

from keras_ckpt import (
    CheckpointError,
    CheckpointManager,
    KeepLast,
    RotatingCheckpoint,
    _fs,
    _objgraph,
    _snapshot,
    list_checkpoints,
    restore,
)

SIDECARS = {"checkpoint", ".lock", "model.json", "history.jsonl"}
NO_SPACE = "No space left on device"


def _name(path: str) -> str:
    """A file's name, its random temporary token replaced by `*`."""
    return re.sub(r"[0-9a-f]{12}$", "*", os.path.basename(path))


class FullDisk:
    """A fault-injecting layer over keras_ckpt's file operations (and TensorFlow's write).

    Once armed, the `fail_at`-th operation fails with ENOSPC, as a full disk fails it: a
    file write leaves half the bytes behind, TensorFlow's write leaves its partial files.
    Everything else runs for real.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = self.persistent = False
        self.fail_at: int | None = None
        self.calls: list[str] = []
        self.failed: str | None = None
        real_gfile = _fs.gfile
        layer = self

        class Gfile:  # every rename of _fs goes through _fs.gfile
            def __getattr__(self, name):
                return getattr(real_gfile, name)

            def rename(self, src, dst, overwrite=False):
                layer._op(f"rename {_name(dst)}")
                return real_gfile.rename(src, dst, overwrite=overwrite)

        def wrap(owner, name, describe, partial=None):
            real = getattr(owner, name)

            def op(*args, **kwargs):
                if self._op(describe(*args)) and partial is not None:
                    partial(real, *args)
                    raise self._error(describe(*args))
                return real(*args, **kwargs)

            monkeypatch.setattr(owner, name, op)

        def half_file(real, path, data):
            real(path, data[: len(data) // 2])

        def partial_tf_write(real, snapshot, prefix):
            real(snapshot, prefix)
            for name in os.listdir(os.path.dirname(prefix)):
                full = os.path.join(os.path.dirname(prefix), name)
                if name.endswith(".index") and os.path.isfile(full):
                    os.truncate(full, os.path.getsize(full) // 2)

        monkeypatch.setattr(_fs, "gfile", Gfile())
        wrap(_fs, "makedirs", lambda d: f"makedirs {_name(d)}")
        wrap(_objgraph.Snapshot, "write", lambda s, p: "tf write", partial_tf_write)  # generic
        wrap(_snapshot._FastSnapshot, "write", lambda s, p: "tf write", partial_tf_write)
        wrap(_fs, "fsync_file", lambda p: f"fsync {_name(p)}")
        wrap(_fs, "write_bytes", lambda p, d: f"write {_name(p)}", half_file)
        wrap(_fs, "append_text", lambda p, t: f"append {_name(p)}")

    def _error(self, what: str) -> OSError:
        return OSError(errno.ENOSPC, f"{NO_SPACE} ({what})")

    def _op(self, what: str) -> bool:
        """Counts one operation; raises (or returns True: fail after a partial write)."""
        if not self.armed:
            return False
        self.calls.append(what)
        if len(self.calls) != self.fail_at:
            return False
        self.failed = self.failed or what
        if not self.persistent:
            self.fail_at = None  # fails once
        else:
            self.fail_at += 1  # a full disk: every later write fails too
        if what.startswith(("write ", "tf write")):
            return True
        raise self._error(what)

    def arm(self, fail_at: int | None, persistent: bool = False) -> None:
        """Counts operations from now on; the `fail_at`-th fails (None: none, just count).

        `persistent`: that one and every later operation fail, as on a full disk.
        """
        self.armed, self.fail_at, self.calls, self.failed = True, fail_at, [], None
        self.persistent = persistent

    def disarm(self) -> None:
        self.armed, self.fail_at = False, None


def _digest(directory: Path, steps) -> dict[str, str]:
    names = [n for n in os.listdir(directory) if n.split(".")[0] in {f"ckpt-{s}" for s in steps}]
    return {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in names}


def _assert_only(directory: Path, steps) -> None:
    """The directory holds the checkpoints `steps`, complete, its sidecars and nothing else."""
    names = set(os.listdir(directory))
    ours = {n for n in names if n.split(".")[0] in {f"ckpt-{s}" for s in steps}}
    assert names - ours <= SIDECARS, f"left over: {sorted(names - ours - SIDECARS)}"
    assert [i.step for i in list_checkpoints(directory)] == list(steps)
    if steps:
        assert tf.train.latest_checkpoint(str(directory)) == str(directory / f"ckpt-{steps[-1]}")


def _open(directory: Path, model, async_save: bool, earlier) -> CheckpointManager:
    mgr = CheckpointManager(directory, model, keep=[KeepLast(2)], async_save=async_save)
    for step in earlier:
        mgr.save(step=step)
    mgr.wait()
    return mgr


@pytest.fixture(scope="module")
def trained_model() -> keras.Model:
    """`tiny_model` after one epoch, trained once: the tests below only save and read it."""
    model = tiny_model()
    model.fit(*tiny_data(), batch_size=8, epochs=1, verbose=0)
    return model


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("earlier", [(), (1, 2)], ids=["first-save", "rotating-save"])
def test_a_failure_at_any_file_operation_of_a_save_loses_nothing_and_leaves_nothing(
    tmp_path, monkeypatch, async_save, earlier, trained_model
):
    disk = FullDisk(monkeypatch)
    model = trained_model

    # One save without a fault, counting the operations a save performs.
    with _open(tmp_path / "count", model, async_save, earlier) as mgr:
        disk.arm(None)
        mgr.save(step=3)
        mgr.wait()
        disk.disarm()
    points = list(disk.calls)
    kinds = {p.split()[0] for p in points}
    assert {"makedirs", "tf", "fsync", "write", "rename"} <= kinds, points
    assert sum(p.startswith("rename ckpt-3") for p in points) == 3, points  # record, data, index
    assert "rename checkpoint" in points, points  # the state file, last
    assert ("write model.json" in " ".join(points)) == (not earlier), points
    # The save ends at the commit point; the rotation after it is tested below.
    points = points[: points.index("rename checkpoint") + 1]

    probe = tiny_model(seed=4)  # restored into after each fault (built once, see `poison`)
    for k, point in enumerate(points, start=1):
        directory = tmp_path / f"fault-{k}"
        mgr = _open(directory, model, async_save, earlier)
        before = _digest(directory, earlier)
        disk.arm(k)
        if async_save and "model.json" not in point:  # model.json: on the training thread
            assert mgr.save(step=3) is not None  # submitted; it fails in the background
            with pytest.raises(CheckpointError) as caught:
                mgr.save(step=4)  # ... and the error surfaces at the next save point
        else:
            with pytest.raises(CheckpointError) as caught:
                mgr.save(step=3)
        disk.disarm()
        assert disk.failed == point
        assert "ckpt-3" in str(caught.value) and NO_SPACE in str(caught.value), point
        assert "{{" not in str(caught.value)  # no TensorFlow op noise
        assert [i.step for i in mgr.checkpoints] == list(earlier), point
        _assert_only(directory, earlier)
        assert _digest(directory, earlier) == before, f"earlier files changed ({point})"

        info = mgr.save(step=5)  # the next save works (and rotates)
        mgr.close()
        assert info is not None and info.step == 5
        _assert_only(directory, [*earlier, 5][-2:])
        assert (directory / "model.json").exists(), f"model.json lost ({point})"
        poison(probe)
        restore(probe, directory)
        assert weights_equal(probe, model)
        shutil.rmtree(directory)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("failing", ["makedirs .tmp-trash-*", "rename ckpt-1.index"])
def test_a_failure_while_rotating_out_still_deletes_the_old_and_keeps_the_new(
    tmp_path, monkeypatch, async_save, failing
):
    # Deletion moves files into a trash folder; if the disk refuses that, they are unlinked
    # on the spot (which frees space: what a full disk needs), and the save stands.
    disk = FullDisk(monkeypatch)
    model = tiny_model()
    with _open(tmp_path / "count", model, async_save, (1, 2)) as mgr:
        disk.arm(None)
        mgr.save(step=3)
        mgr.wait()
        disk.disarm()
    k = disk.calls.index(failing) + 1
    assert k > disk.calls.index("rename checkpoint") + 1  # after the commit point

    directory = tmp_path / "fault"
    mgr = _open(directory, model, async_save, (1, 2))
    disk.arm(k)
    mgr.save(step=3)
    mgr.wait()
    disk.disarm()
    assert disk.failed == failing
    assert [i.step for i in mgr.checkpoints] == [2, 3]
    mgr.close()
    _assert_only(directory, (2, 3))


# -- a disk that fills up during fit ----------------------------------------------------------


class Tmpfs:
    """A real 2 MB tmpfs, filled up by a file; skipped where mounting is not allowed."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "disk"
        self.root.mkdir()
        try:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(self.root)],
                capture_output=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")

    def fill(self) -> None:
        """Fills the file system up to the last byte."""
        with open(self.root / "filler", "wb", buffering=0) as f:
            for chunk in (1 << 16, 1 << 12, 1 << 8, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        assert shutil.disk_usage(self.root).free < 4096

    def free(self) -> None:
        (self.root / "filler").unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True, timeout=20)


class InjectedFull:
    """The fault-injecting layer, failing every write from `fill()` to `free()`."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp_path
        self.layer = FullDisk(monkeypatch)

    def fill(self) -> None:
        self.layer.arm(1, persistent=True)

    def free(self) -> None:
        self.layer.disarm()

    def close(self) -> None:
        self.layer.disarm()


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, monkeypatch):
    disk = Tmpfs(tmp_path) if request.param == "tmpfs" else InjectedFull(tmp_path, monkeypatch)
    try:
        yield disk
    finally:
        disk.close()


class FillAt(keras.callbacks.Callback):
    """Before the checkpoint callback: fills the disk before the save of batch `at`."""

    def __init__(self, disk, ckpt: RotatingCheckpoint, at: int) -> None:
        super().__init__()
        self.disk, self.ckpt, self.at = disk, ckpt, at

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at:
            self.ckpt.manager.wait()  # the write in flight (async) completes first
            self.disk.fill()


class CountBatches(keras.callbacks.Callback):
    """After the checkpoint callback: the batches whose save point passed without error."""

    def __init__(self) -> None:
        super().__init__()
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1


@pytest.mark.parametrize(
    "async_save, fill_at, raised_after",
    [(False, 4, 4), (True, 4, 5), (True, 7, 8)],
    ids=["sync", "async-next-save-point", "async-end-of-training"],
)
def test_disk_full_during_fit_raises_clearly_and_keeps_earlier_checkpoints(
    disk, async_save, fill_at, raised_after
):
    x, y = tiny_data()  # 32 samples: 8 batches of 4
    model = tiny_model(width=256)
    run = disk.root / "run"
    ckpt = RotatingCheckpoint(run, max_to_keep=2, save_freq=1, async_save=async_save)
    count = CountBatches()

    with pytest.raises(CheckpointError, match=NO_SPACE) as caught:
        model.fit(
            x,
            y,
            batch_size=4,
            epochs=1,
            callbacks=[FillAt(disk, ckpt, fill_at), ckpt, count],
            verbose=0,
        )

    # sync: at the failing save; async: at the next save point, or at the end of training
    assert count.done == raised_after, str(caught.value)
    assert f"ckpt-{fill_at + 1}" in str(caught.value)
    disk.free()
    _assert_only(run, [fill_at - 1, fill_at])
    fresh = tiny_model(width=256, seed=3)
    assert restore(fresh, run).step == fill_at

    ckpt.close()  # space again: the same callback goes on saving
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[ckpt], verbose=0)
    steps = [i.step for i in list_checkpoints(run)]
    assert len(steps) == 2 and steps[-1] == int(model.optimizer.iterations.numpy())
    _assert_only(run, steps)


class Interrupt(keras.callbacks.Callback):
    """Stops `fit` with an unrelated error at batch `at` (Keras then skips on_train_end)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at:
            raise RuntimeError("the data pipeline broke")


def test_a_failed_background_save_is_raised_by_close_when_fit_stopped_for_another_reason(
    tmp_path, monkeypatch
):
    disk = InjectedFull(tmp_path, monkeypatch)
    x, y = tiny_data()
    model = tiny_model()
    ckpt = RotatingCheckpoint(tmp_path / "run", max_to_keep=2, save_freq=1, async_save=True)
    callbacks = [FillAt(disk, ckpt, 5), ckpt, Interrupt(at=5)]

    with pytest.raises(RuntimeError, match="pipeline"):
        model.fit(x, y, batch_size=4, epochs=1, callbacks=callbacks, verbose=0)
    with pytest.raises(CheckpointError, match=NO_SPACE) as caught:
        ckpt.close()  # the failed save of step 6 is not swallowed

    assert "ckpt-6" in str(caught.value)
    disk.free()
    _assert_only(tmp_path / "run", [4, 5])
