"""The library's background threads: their low priority, and waiting for them.

Writes, copies, flushing and deletions that may run beside training run on threads named
``keras_ckpt-*`` at nice 19 (Linux: a nice value per thread, inherited by the threads they
start), so that training gets the CPU first. A thread waited for must not stay there: the
waiter would wait behind every busy process of the machine (priority inversion). So
`wait_for` gives them the waiter's priority back, and `lower_priority` lowers nothing
where that is not permitted.
"""

from __future__ import annotations

import functools
import os
import sys
import threading

_BACKGROUND_NICE = 19
_PREFIX = "keras_ckpt-"  # the names of the library's threads (`wait_for` finds them by it)


def lower_priority() -> None:
    """Lets the training threads have the CPU first: renices this thread (Linux only).

    On Linux every thread has its own nice value and the threads it starts inherit it, so
    the write, its copies and its flushing run on the cycles training leaves idle. Elsewhere
    `setpriority` would apply to the whole process, so nothing is done there.

    Only where the priority can be given back (`wait_for`): as root, with CAP_SYS_NICE or an
    RLIMIT_NICE that allows it (`may_raise_priority`). Elsewhere a thread that training
    waits for would run at nice 19 behind every busy process of the machine, and training
    would stall for as long (priority inversion): the thread keeps the default priority.
    """
    if not sys.platform.startswith("linux") or not may_raise_priority():
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)
    except OSError:  # not permitted in this sandbox: keep the default priority
        pass


@functools.cache
def may_raise_priority() -> bool:
    """Whether this process may lower a thread's nice value again (probed once, on a thread
    of its own)."""
    permitted: list[bool] = []

    def probe() -> None:
        tid = threading.get_native_id()
        base = os.getpriority(os.PRIO_PROCESS, tid)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(base + 1, _BACKGROUND_NICE))
            os.setpriority(os.PRIO_PROCESS, tid, base)
            permitted.append(True)
        except OSError:
            permitted.append(False)

    thread = threading.Thread(target=probe, name=_PREFIX + "probe", daemon=True)
    thread.start()
    thread.join()
    return permitted[0]


def wait_for(thread: threading.Thread) -> None:
    """`thread.join()`, giving the library's background threads the caller's priority first.

    The caller waits anyway, so their low priority no longer spares it anything; kept, it
    would let every busy process of the machine run before them while the caller waits. Done
    again while waiting, for threads that start (or lower themselves) meanwhile.
    """
    while thread.is_alive():
        _give_back_priority()
        thread.join(0.1)
    thread.join()


def _give_back_priority() -> None:
    if not sys.platform.startswith("linux"):
        return
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for other in threading.enumerate():
        if not other.name.startswith(_PREFIX) or other.native_id is None:
            continue
        try:
            if os.getpriority(os.PRIO_PROCESS, other.native_id) > mine:
                os.setpriority(os.PRIO_PROCESS, other.native_id, mine)
        except OSError:  # it ended meanwhile, or this is not permitted
            pass
