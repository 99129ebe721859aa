"""Background I/O: files are flushed while they are written; writes yield the CPU to training."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from keras_ckpt import _fs
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_background_writes_run_at_a_lower_priority_than_training():
    seen = []

    def job():
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer = AsyncWriter()
    writer.submit(job)
    writer.wait()
    writer.check()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
