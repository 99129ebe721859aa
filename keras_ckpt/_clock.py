"""The clocks the library reads: wall time (records, `KeepEveryNHours`) and a monotonic
clock (`EveryNSeconds`). Policies read none: callers pass times in.

Reading them through here makes them replaceable: a test installs a fake clock with
`use(clock)` and advances it instead of sleeping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Clock", "wall", "monotonic", "use"]


class Clock(Protocol):
    def wall(self) -> float: ...

    def monotonic(self) -> float: ...


class _SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


_clock: Clock = _SystemClock()


def wall() -> float:
    """Seconds since the epoch (`time.time()` unless a test installed a clock)."""
    return _clock.wall()


def monotonic() -> float:
    """A monotonic clock in seconds (`time.monotonic()` unless a test installed a clock)."""
    return _clock.monotonic()


@contextlib.contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Within the block, the library reads `clock` (one process-wide clock)."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield clock
    finally:
        _clock = previous
