"""`DirectoryLock`: one writer per checkpoint directory, in this process and across processes.

The `.lock` file also records the run (for `keras_ckpt.watch` on any machine): its first line
names the holder (`host:pid`), its second the run, `run <token> started <time>` while a
writer has the directory open, rewritten to `run <token> ended <time>` when the writer closes
it. A killed run never rewrites it, so it still says `started` (a watcher cannot check a pid on
another machine, nor take the lock: it must not lock anything); a new run writes a new token.
Elsewhere than on a local disk `.lock` is removed at the end instead (`run_state`: "absent").
"""

from __future__ import annotations

import logging
import os
import socket
import re
import threading
import time
import uuid
import weakref

from keras_ckpt import _fs
from keras_ckpt.errors import DirectoryLockedError

logger = logging.getLogger(__name__)

__all__ = ["LOCK", "DirectoryLock", "run_state"]

LOCK = ".lock"
_RUN_RE = re.compile(r"^run ([0-9a-f]+) (started|ended) ")

_HOLDERS: dict[str, weakref.ref] = {}
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
        self._owner = weakref.ref(owner)
        self._fd: int | None = None
        self._held = False
        self._run = ""  # this holder's run token, in `.lock` while held

    def acquire(self) -> None:
        if self._held:
            return
        key = _lock_key(self.directory)
        with _HOLDERS_GUARD:
            other = _HOLDERS.get(key)
            holder = other() if other else None
            if holder is not None and holder is not self._owner() and _is_active(holder):
                raise DirectoryLockedError(
                    f"{self.directory} is already being written by another checkpoint "
                    f"callback or manager in this process ({type(holder).__name__}). Give "
                    "each callback its own directory, or call .close() on the other one."
                )
            if holder is not None and holder is not self._owner():
                release = getattr(holder, "_release_lock", None)
                if release:
                    release()
            self._acquire_file()
            _HOLDERS[key] = self._owner
            self._held = True

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
                    "or choose another directory."
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
                    "wait for it to end or choose another directory."
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
            if _HOLDERS.get(key) is self._owner:
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
    return f"{holder}\nrun {run} {state} {time.time():.3f}\n"


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


def _is_active(holder: object) -> bool:
    check = getattr(holder, "_lock_active", None)
    return bool(check()) if callable(check) else True


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
