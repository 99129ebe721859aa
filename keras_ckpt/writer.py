"""The writers that run a save's write: now (`SyncWriter`) or on one background thread.

Snapshots are taken elsewhere (`_snapshot`, `_objgraph`). TensorFlow's built-in async
checkpointing fails on Keras 3 variables, so `AsyncWriter` is ours: the training thread takes
the snapshot (one copy of the values, in host memory), a background thread writes it; one
write in flight; its error is kept and re-raised by `check`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from keras_ckpt._threads import lower_priority, wait_for


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


class AsyncWriter:
    """Runs each write on a background thread; at most one in flight.

    `submit` first waits for the previous write. An exception in a write is kept and raised
    by the next `check` (the callers call it at every save point and at the end).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, job: Callable[[], None]) -> None:
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
            wait_for(thread)

    def check(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
