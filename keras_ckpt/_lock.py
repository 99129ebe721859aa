"""`DirectoryLock`: one writer per checkpoint directory, in this process and across processes.

Within a process a holder may be taken over only by a later `fit` on the same thread
(`Claim.superseded_by`): Keras calls no `on_train_end` when `fit` dies of an exception, so
the callback of a notebook cell that failed still holds its directory when the cell is run
again. In one thread two fits cannot run at once (short of a fit nested in a callback), so a
new fit there means the old one is gone; fits on other threads, managers outside `fit` and
other processes still get `DirectoryLockedError`.

The `.lock` file also records the run (for `keras_ckpt.watch` on any machine): its first line
names the holder (`host:pid`), its second the run, `run <token> started <time>` while a
writer has the directory open, rewritten to `run <token> ended <time>` when the writer closes
it. A killed run never rewrites it, so it still says `started` (a watcher cannot check a pid on
another machine, nor take the lock: it must not lock anything); a new run writes a new token.
Elsewhere than on a local disk `.lock` is removed at the end instead (`run_state`: "absent").
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import socket
import threading
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from keras_ckpt import _clock, _fs
from keras_ckpt.errors import DirectoryLockedError

logger = logging.getLogger(__name__)

__all__ = ["LOCK", "Claim", "DirectoryLock", "claiming", "run_state"]

LOCK = ".lock"
_RUN_RE = re.compile(r"^run ([0-9a-f]+) (started|ended) ")


@dataclass(frozen=True, eq=False)
class Claim:
    """Who takes a directory: the thread running a `fit`, and that `fit` (any object unique
    to it, held for the claim's life so that it is never confused with a later one)."""

    thread: int
    fit: object

    def superseded_by(self, other: Claim | None) -> bool:
        """True if `other` may take the directory over: a different fit on the same thread."""
        return other is not None and other.thread == self.thread and other.fit is not self.fit


_CLAIM: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("claim", default=None)


@contextlib.contextmanager
def claiming(claim: Claim | None) -> Iterator[None]:
    """Locks acquired inside this block are held under `claim` (see `Claim`)."""
    token = _CLAIM.set(claim)
    try:
        yield
    finally:
        _CLAIM.reset(token)


_HOLDERS: dict[str, weakref.ref[DirectoryLock]] = {}
_HOLDERS_GUARD = threading.RLock()  # release() re-enters from acquire()


def _lock_key(directory: str) -> str:
    return os.path.realpath(directory) if _fs.is_local(directory) else directory


class DirectoryLock:
    """Makes one writer (in this process and across processes) own a directory.

    Within a process a registry of live holders answers; across processes, on local disks,
    `flock` on `.lock` (released by the kernel when a process dies, so a killed run never
    leaves a stale lock); elsewhere a `.lock` file naming host and pid.
    """

    def __init__(self, directory: str, owner: object) -> None:
        self.directory = directory
        self.owner_name = type(owner).__name__  # for messages
        self._fd: int | None = None
        self._held = False
        self._claim: Claim | None = None
        self._run = ""  # this holder's run token, in `.lock` while held

    def acquire(self) -> None:
        """Takes the directory (under the current `claiming` claim, if any).

        Raises:
            DirectoryLockedError: Another holder in this process that the claim does not
                supersede, or another process, holds it.
        """
        if self._held:
            return
        key = _lock_key(self.directory)
        claim = _CLAIM.get()
        with _HOLDERS_GUARD:
            other = _HOLDERS.get(key)
            holder = other() if other else None
            if holder is not None and holder is not self:
                if not holder.superseded_by(claim):
                    raise DirectoryLockedError(
                        f"{self.directory} is already being written by another checkpoint "
                        f"callback or manager in this process ({holder.owner_name}). Give "
                        "each callback its own directory, or call .close() on the other one.",
                        path=self.directory,
                        reason=f"held by a {holder.owner_name} in this process",
                    )
                holder.release()  # its fit is gone
            self._acquire_file()
            _HOLDERS[key] = weakref.ref(self)
            self._claim = claim
            self._held = True

    def superseded_by(self, claim: Claim | None) -> bool:
        """True if a new holder under `claim` may take this lock over (see `Claim`)."""
        return self._held and self._claim is not None and self._claim.superseded_by(claim)

    def _acquire_file(self) -> None:
        path = _fs.join(self.directory, LOCK)
        me = f"{socket.gethostname()}:{os.getpid()}"
        self._run = uuid.uuid4().hex[:12]
        text = _lock_text(me, self._run, "started")
        if _fs.is_local(self.directory):
            import fcntl

            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise DirectoryLockedError(
                    f"{self.directory} is locked by another process (see {path}). Two runs "
                    "must not write one checkpoint directory; wait for the other run to end "
                    "or choose another directory.",
                    path=self.directory,
                    file=path,
                    reason="held by another process",
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, text.encode())
            self._fd = fd
            return
        if _fs.exists(path):
            owner = (_fs.read_text(path).strip().splitlines() or [""])[0]
            host, _, pid = owner.partition(":")
            if owner != me and host == socket.gethostname() and _pid_alive(pid):
                raise DirectoryLockedError(
                    f"{self.directory} is locked by process {pid} on this host (see {path}); "
                    "wait for it to end or choose another directory.",
                    path=self.directory,
                    file=path,
                    reason=f"held by process {pid}",
                )
            if owner != me and host != socket.gethostname():
                logger.warning("Taking over %s, left by %s", path, owner)
        _fs.write_atomic(path, text)

    def release(self, ended: bool = False) -> None:
        """Releases the directory; `ended`: the run closed it (recorded in `.lock`)."""
        if not self._held:
            return
        self._held = False
        with _HOLDERS_GUARD:
            key = _lock_key(self.directory)
            ref = _HOLDERS.get(key)
            if ref is not None and ref() is self:
                del _HOLDERS[key]
        if self._fd is not None:
            if ended:  # still under the flock: no new run can have written it meanwhile
                me = f"{socket.gethostname()}:{os.getpid()}"
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, _lock_text(me, self._run, "ended").encode(), 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        elif not _fs.is_local(self.directory):
            _fs.remove(_fs.join(self.directory, LOCK))

    @property
    def held(self) -> bool:
        return self._held


def _lock_text(holder: str, run: str, state: str) -> str:
    return f"{holder}\nrun {run} {state} {_clock.wall():.3f}\n"


def run_state(directory: str) -> tuple[str, str]:
    """What `.lock` of `directory` says about its run: `(state, token)` (read only).

    `state` is `"started"` (a writer opened it and has not closed it: running, or killed),
    `"ended"` (closed), `"absent"` (no `.lock`: never opened, or closed elsewhere than on a
    local disk) or `"unknown"` (a `.lock` of an older keras_ckpt, or one being rewritten).
    """
    path = _fs.join(directory, LOCK)
    try:
        text = _fs.read_text(path)
    except Exception:  # missing (or vanishing) lock file
        return ("absent", "") if not _fs.exists(path) else ("unknown", "")
    for line in text.splitlines()[1:2]:
        match = _RUN_RE.match(line)
        if match:
            return match.group(2), match.group(1)
    return "unknown", ""


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
