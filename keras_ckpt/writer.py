"""The writers that run a save's write: now (`SyncWriter`) or on one background thread.

Snapshots are taken elsewhere (`_snapshot`, `_objgraph`). TensorFlow's built-in async
checkpointing fails on Keras 3 variables, so `AsyncWriter` is ours: the training thread takes
the snapshot (one copy of the values, in host memory), a background thread writes it; one
write in flight; its error is kept and re-raised by `check`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable


class SyncWriter:
    """Runs each write on the calling thread."""

    def submit(self, job: Callable[[], None]) -> None:
        job()

    def wait(self) -> None:
        pass

    def check(self) -> None:
        pass

    @property
    def busy(self) -> bool:
        return False


_BACKGROUND_NICE = 19


def lower_priority() -> None:
    """Lets the training threads have the CPU first: renices this thread (Linux only).

    On Linux every thread has its own nice value and the threads it starts inherit it, so
    the write, its copies and its flushing run on the cycles training leaves idle. Elsewhere
    `setpriority` would apply to the whole process, so nothing is done there.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)
    except OSError:  # not permitted in this sandbox: keep the default priority
        pass


class AsyncWriter:
    """Runs each write on a background thread; at most one in flight.

    `submit` first waits for the previous write. An exception in a write is kept and raised
    by the next `check` (the callers call it at every save point and at the end).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, job: Callable[[], None]) -> None:
        if _BACKGROUND_NICE:
            lower_priority()
        try:
            job()
        except BaseException as exc:  # re-raised on the training thread by check()
            self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self.check()
        self._thread = threading.Thread(
            target=self._run, args=(job,), name="keras_ckpt-writer", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def check(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
