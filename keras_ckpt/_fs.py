"""The file layer: the only module that touches `tf.io.gfile`.

Everything goes through `tf.io.gfile`, so any file system TensorFlow knows (local, `gs://`,
`ram://`, ...) works. Local paths additionally get `fsync` of files and directories, so a
commit is durable before the state file names it. TensorFlow is imported on first use by a
function that needs it: reading a local directory (`keras-ckpt list`) goes through `os`
and never loads it. `ram://` matches paths by string prefix
(`listdir("ram://x/run")` also shows `ram://x/run-best`), so listings are filtered here.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import threading
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any


def _tf() -> ModuleType:
    import tensorflow as tf  # first use only: a cheap lookup afterwards

    return tf


def _gfile() -> Any:
    bound = globals().get("gfile")  # a test may wrap the file layer: `_fs.gfile = ...`
    return bound if bound is not None else _tf().io.gfile


def __getattr__(name: str) -> Any:  # `_fs.gfile`, loaded on first use
    if name == "gfile":
        return _gfile()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fspath(path: str | os.PathLike[str]) -> str:
    """Returns `path` as a string without a trailing separator (`file://` URLs as plain paths)."""
    text = os.fspath(path)
    if text.startswith("file://"):  # TensorFlow's local file system: same files, and we
        text = text[len("file://") :] or "/"  # keep fsync and flock for them
    if "://" in text:
        scheme, rest = text.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else text
    return text.rstrip(os.sep) or text


def is_local(path: str) -> bool:
    """True for plain paths of the local file system (where fsync and flock work)."""
    return "://" not in path


def join(directory: str, *names: str) -> str:
    if is_local(directory):
        return os.path.join(directory, *names)
    return posixpath.join(directory, *names)


def basename(path: str) -> str:
    return posixpath.basename(path) if not is_local(path) else os.path.basename(path)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if not is_local(path) else os.path.dirname(path)


def temp_name(name: str) -> str:
    """A name beside `name` that no other writer picks."""
    return f"{name}.tmp-{uuid.uuid4().hex[:12]}"


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(path)
    if not _gfile().exists(path):
        return False
    parent = dirname(path)
    return basename(path) in list_dir(parent) if parent and parent != path else True


def isdir(path: str) -> bool:
    if is_local(path):
        return os.path.isdir(path)
    return exists(path) and _gfile().isdir(path)


def list_dir(directory: str) -> list[str]:
    """Names directly inside `directory` (none of a sibling that shares its prefix)."""
    if is_local(directory):
        try:
            return sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
    if not _gfile().exists(directory):
        return []
    names = []
    for entry in _gfile().listdir(directory):
        name = entry.rstrip("/")
        if name and "/" not in name and _gfile().exists(posixpath.join(directory, name)):
            names.append(name)
    return sorted(set(names))


def walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`(directory, subdirectories, files)` for `root` and every directory below it."""
    if is_local(root):
        yield from os.walk(root)
    else:
        yield from _gfile().walk(root)


def makedirs(directory: str, durable: bool = False) -> None:
    """Creates `directory` and missing parents; `durable`: fsyncs each new entry's parent."""
    missing = []
    if durable and is_local(directory):
        path = os.path.abspath(directory)
        while not os.path.isdir(path) and os.path.dirname(path) != path:
            missing.append(path)
            path = os.path.dirname(path)
    _gfile().makedirs(directory)
    for path in reversed(missing):
        fsync_dir(os.path.dirname(path))


def size(path: str) -> int:
    if is_local(path):
        return os.path.getsize(path)
    return int(_gfile().stat(path).length)


def mtime(path: str) -> float:
    if is_local(path):
        return os.path.getmtime(path)
    return _gfile().stat(path).mtime_nsec / 1e9


def read_bytes(path: str) -> bytes:
    if is_local(path):
        with open(path, "rb") as f:
            return f.read()
    with _gfile().GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes, durable: bool = True) -> None:
    """Writes `path` in place (not atomic: for files no reader looks at yet).

    `durable=False` skips the `fsync`: for a temporary file that is read and deleted again.
    """
    with _gfile().GFile(path, "wb") as f:
        f.write(data)
    if durable:
        fsync_file(path)


def write_atomic(path: str, data: bytes | str) -> None:
    """Replaces `path` with `data` so that readers see the old or the new file, never half."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = temp_name(path)
    try:
        write_bytes(tmp, data)
        _gfile().rename(tmp, path, overwrite=True)
    except BaseException:
        remove(tmp)
        raise
    fsync_dir(dirname(path))


def append_text(path: str, text: str) -> None:
    if is_local(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = read_text(path) if exists(path) else ""
    write_atomic(path, old + text)


def rename(src: str, dst: str, overwrite: bool = False) -> None:
    _gfile().rename(src, dst, overwrite=overwrite)


def move(src: str, dst: str) -> bool:
    """Renames one file if it is there; True if it was."""
    try:
        _gfile().rename(src, dst)
        return True
    except _tf().errors.NotFoundError:
        return False


def link_or_copy(src: str, dst: str) -> bool:
    """Makes `dst` a file with `src`'s bytes: a hard link where the disk allows, else a copy.

    Local disks get a hard link (no bytes written; both names share one inode, so renaming
    or deleting either leaves the other intact). File systems without links (`gs://`,
    `ram://`), or a local one that refuses (another device, too many links), get a copy:
    server-side where the file system does that (`gs://`).

    Returns:
        True if `dst` is a hard link, False if it is a copy.
    """
    if is_local(src):
        try:
            os.link(src, dst)
            return True
        except OSError:  # EXDEV, EMLINK, EPERM, a file system without links: copy
            pass
    _gfile().copy(src, dst, overwrite=True)
    return False


def remove(path: str) -> bool:
    """Deletes one file if it is there; True if it was."""
    try:
        if is_local(path):
            os.remove(path)
        else:
            _gfile().remove(path)
        return True
    except (FileNotFoundError, _tf().errors.NotFoundError):
        return False


def rmtree(path: str) -> None:
    try:
        _gfile().rmtree(path)
    except _tf().errors.NotFoundError:
        pass


def fsync_file(path: str) -> None:
    """Flushes a local file to stable storage (no-op elsewhere)."""
    if not is_local(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """Makes renames inside a local directory durable (no-op where unsupported)."""
    if not is_local(directory):
        return
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flush_tree(directory: str) -> None:
    """Starts writing every file under `directory` to disk and waits for it."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _flush_tree(entry.path)
                continue
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:  # renamed or removed meanwhile
            continue
        try:
            getattr(os, "fdatasync", os.fsync)(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def flushing(directory: str, every: float = 0.05) -> Iterator[None]:
    """While the block writes files into `directory`, a helper thread flushes them to disk.

    The disk then works while the data is still being produced, so the `fsync` after the
    block waits only for the tail instead of for every byte (a 1.2 GB checkpoint: about the
    disk's time instead of write time + disk time). Durability still comes from that
    `fsync`; this only starts it early. No-op for non-local paths.
    """
    if not is_local(directory):
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            _flush_tree(directory)

    thread = threading.Thread(target=run, name="keras_ckpt-flush", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
