"""`PreemptionWatch`: notices SIGTERM (what Kubernetes, Slurm and spot VMs send before a stop).

The handler only sets a flag; the training loop (a callback's batch end, or a custom loop
reading `CheckpointManager.preempted`) saves and stops at its next safe point. Saving inside
the handler would run in the middle of a training step, between two bytecodes of the main
thread, while variables are half updated.

One process-wide handler serves every open watch: it is installed when the first one starts
and the handler found then is put back when the last one stops, so two managers with
`save_on_preemption=True` never restore each other's handler. Python only lets the main
thread install signal handlers; elsewhere a watch warns when started and never fires.
"""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["PreemptionWatch"]

_SIGNAL = signal.SIGTERM
_GUARD = threading.Lock()
_WATCHES: list[PreemptionWatch] = []  # open watches, in start order
_previous: Any = None  # the handler found when the first watch started


def _handler(signum: int, frame: Any) -> None:
    """Marks every active watch preempted. Runs in the main thread between two bytecodes."""
    watches = [w for w in tuple(_WATCHES) if w.active()]
    if watches:
        for watch in watches:  # nothing more here: no I/O, no locks (it interrupts anything)
            watch.preempted = True
        return
    # Every watch belongs to a training run that ended without closing its manager (`fit`
    # raised): nobody will save, so the signal does what it did before we were installed.
    _uninstall()
    previous = signal.getsignal(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.raise_signal(signum)  # terminates the process, as SIGTERM did before


def _uninstall() -> None:
    """Puts the previous handler back (unless someone replaced ours since)."""
    global _previous
    previous, _previous = _previous, None
    _WATCHES.clear()
    if signal.getsignal(_SIGNAL) is not _handler:
        logger.debug("SIGTERM handler replaced by someone else: not restoring the previous one")
        return
    # None: a handler installed outside Python, which cannot be put back; the default is
    # the closest.
    signal.signal(_SIGNAL, signal.SIG_DFL if previous is None else previous)


class PreemptionWatch:
    """Sets `preempted` when the process receives SIGTERM, while it is started.

    Args:
        active: Whether the owner can still act on the flag (its training run is alive).
            When SIGTERM arrives and no started watch is active, the previous handler gets
            the signal instead, so a crashed run never makes the process immune to SIGTERM.

    Example:
        >>> watch = PreemptionWatch()
        >>> watch.start()          # installs the handler (main thread only)
        >>> ...                    # train; check `watch.preempted` at each step
        >>> watch.stop()           # the previous handler is back
    """

    def __init__(self, active: Callable[[], bool] | None = None) -> None:
        self.preempted = False
        self._active = active
        self.started = False

    def active(self) -> bool:
        try:
            return self._active() if self._active is not None else True
        except Exception:  # a check that fails must not lose the signal
            return True

    def start(self) -> bool:
        """Installs the handler if this is the first started watch; False outside main."""
        global _previous
        if self.started:
            return True
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "save_on_preemption=True: a SIGTERM handler can only be installed from the "
                f"main thread, and this manager was created in "
                f"{threading.current_thread().name!r}; preemption will not be noticed. Create "
                "the callback or manager (call `fit`) in the main thread.",
                stacklevel=3,
            )
            return False
        with _GUARD:
            _WATCHES.append(self)  # first: a signal arriving meanwhile finds it
            self.started = True
            current = signal.getsignal(_SIGNAL)
            if current is not _handler:  # (still ours if the last stop was not in main)
                _previous = current
                signal.signal(_SIGNAL, _handler)
        return True

    def stop(self) -> None:
        """Stops watching; the last started watch to stop restores the previous handler."""
        if not self.started:
            return
        with _GUARD:
            self.started = False
            if self in _WATCHES:
                _WATCHES.remove(self)
                if not _WATCHES:
                    if threading.current_thread() is threading.main_thread():
                        _uninstall()
                    # elsewhere the handler stays; with no watch it passes the signal on
