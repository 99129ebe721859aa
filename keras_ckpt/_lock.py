"""`DirectoryLock`: one writer per checkpoint directory, in this process and across processes."""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref

from keras_ckpt import _fs
from keras_ckpt.errors import DirectoryLockedError

logger = logging.getLogger(__name__)

__all__ = ["LOCK", "DirectoryLock"]

LOCK = ".lock"

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
            os.write(fd, me.encode())
            self._fd = fd
            return
        if _fs.exists(path):
            owner = _fs.read_text(path).strip()
            host, _, pid = owner.partition(":")
            if owner != me and host == socket.gethostname() and _pid_alive(pid):
                raise DirectoryLockedError(
                    f"{self.directory} is locked by process {pid} on this host (see {path}); "
                    "wait for it to end or choose another directory."
                )
            if owner != me and host != socket.gethostname():
                logger.warning("Taking over %s, left by %s", path, owner)
        _fs.write_atomic(path, me)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        with _HOLDERS_GUARD:
            key = _lock_key(self.directory)
            if _HOLDERS.get(key) is self._owner:
                del _HOLDERS[key]
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        elif not _fs.is_local(self.directory):
            _fs.remove(_fs.join(self.directory, LOCK))

    @property
    def held(self) -> bool:
        return self._held


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
