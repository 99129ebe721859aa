"""Background I/O: flushing while writing, writes that yield the CPU, deletion off the hot path."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from helpers.tiny import tiny_model

from keras_ckpt import CheckpointManager, KeepLast, _fs, _threads
from keras_ckpt.writer import AsyncWriter


def test_flushing_survives_files_that_come_and_go_and_stops_its_thread(tmp_path):
    before = {t.ident for t in threading.enumerate()}
    with _fs.flushing(str(tmp_path)):
        deadline = time.monotonic() + 0.3
        i = 0
        while time.monotonic() < deadline:
            path = tmp_path / f"f{i % 3}"
            path.write_bytes(b"x" * 4096)
            path.rename(tmp_path / f"g{i % 3}")
            (tmp_path / f"g{i % 3}").unlink()
            i += 1
        (tmp_path / "kept").write_bytes(b"y" * 100)
    assert (tmp_path / "kept").read_bytes() == b"y" * 100
    leftover = [
        t for t in threading.enumerate() if t.ident not in before and t.name == "keras_ckpt-flush"
    ]
    assert leftover == []


LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice: Linux")
PERMITTED = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _threads.may_raise_priority(),
    reason="this process may not raise a thread's priority again (RLIMIT_NICE)",
)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@PERMITTED
def test_background_writes_run_at_a_lower_priority_than_training():
    seen = []
    before = _nice()
    writer = AsyncWriter()
    writer.submit(lambda: seen.append(_nice()))
    writer.wait()
    writer.check()
    assert seen == [19]
    assert _nice() == before


@PERMITTED
def test_a_write_waited_for_runs_at_the_waiters_priority():
    """Priority inversion: at nice 19 a write the training thread waits for would run only
    when every other busy process of the machine lets it (measured: seconds)."""
    seen = []

    def job():
        seen.append(_nice())
        deadline = time.monotonic() + 10
        while _nice() == 19 and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(_nice())

    before = _nice()
    writer = AsyncWriter()
    writer.submit(job)
    writer.wait()  # the waiter: it gives the write its own priority
    writer.check()
    assert seen == [19, before]


@LINUX
def test_where_priority_cannot_be_raised_again_background_writes_keep_it(monkeypatch):
    monkeypatch.setattr(_threads, "may_raise_priority", lambda: False)
    seen = []
    before = _nice()
    writer = AsyncWriter()
    writer.submit(lambda: seen.append(_nice()))
    writer.wait()
    assert seen == [before]


def test_deleted_checkpoints_vanish_at_once_and_their_unlinking_finishes_by_close(tmp_path):
    model = tiny_model()
    mgr = CheckpointManager(tmp_path / "run", model, keep=[KeepLast(1)])
    mgr.save(step=1)
    mgr.save(step=2)  # rotates ckpt-1 out
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert [n for n in names if n.startswith("ckpt-")] == [
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
        "ckpt-2.json",
    ]
    mgr.close()
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".tmp-")]


def test_a_trash_folder_left_by_a_crash_is_removed_by_the_next_manager(tmp_path):
    run = tmp_path / "run"
    with CheckpointManager(run, tiny_model()) as mgr:
        mgr.save(step=1)
    trash = run / ".tmp-trash-0123456789ab"
    trash.mkdir()
    (trash / "ckpt-0.data-00000-of-00001").write_bytes(b"x" * 1000)
    with CheckpointManager(run, tiny_model()) as mgr:
        assert [i.step for i in mgr.checkpoints] == [1]
    assert not trash.exists()
