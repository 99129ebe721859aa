"""`CheckpointDirectory`: one directory of checkpoints, its records and its state file.

Layout::

    checkpoint                     TF CheckpointState text (relative paths): the commit point
    ckpt-N.index, ckpt-N.data-*    TF format (two data shards when unchanged data is shared:
                                   `_sharing`; a shared shard is a hard link or a copy)
    ckpt-N.json                    our record: step, epoch, metrics, saved_at, file sizes
    model.json, history.jsonl      architecture (once) and one line of logs per epoch
    .lock                          held by the one writer (`_lock.DirectoryLock`)
    .tmp-ckpt-N-<token>/           a save in progress (removed by the next writer if left over)
    .tmp-trash-<token>/            deleted checkpoints being unlinked in the background

A checkpoint is *ours* when its `ckpt-N.json` record exists; only ours are ever deleted, and
only the files that record names, inside this directory. A commit writes into a temporary
folder, then renames in the record, the data and the index (last), then replaces `checkpoint`.
A deletion goes the other way (state file, index, data, record), so a crash at any instant
leaves complete checkpoints or leftovers that `cleanup` recognises (a record without index).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from keras_ckpt import _fs
from keras_ckpt._layout import (
    HISTORY,
    MODEL_JSON,
    Scan,
    checkpoint_files,
    is_temp_dir,
    is_temp_file,
    owned_files,
    scan,
    temp_dir_name,
)
from keras_ckpt._statefile import STATE, format_state
from keras_ckpt._threads import wait_for
from keras_ckpt.info import CheckpointInfo, prefix_name, to_json

logger = logging.getLogger(__name__)


# -- the directory --------------------------------------------------------------------------------


def _unlink_trash(trash: str) -> None:
    """Unlinks a folder of deleted checkpoints (a background thread: errors are logged)."""
    try:
        _fs.rmtree(trash)
    except Exception as exc:  # the next cleanup() tries again
        logger.warning("Could not remove %s (%s); the next run removes it.", trash, exc)


class DeletionError(OSError):
    """A save was committed, but deleting the checkpoints it replaced failed."""


class CheckpointDirectory:
    """Owns one directory: commits, deletes, the state file and the sidecar files."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = _fs.fspath(directory)
        self._deleting: threading.Thread | None = None

    def prefix(self, step: int) -> str:
        return _fs.join(self.path, prefix_name(step))

    def scan(self) -> Scan:
        return scan(self.path)

    def cleanup(self, found: Scan) -> list[str]:
        """Removes leftovers of interrupted saves (ours, known by name); returns what went."""
        removed = []
        for name in _fs.list_dir(self.path):
            full = _fs.join(self.path, name)
            if is_temp_dir(name) and _fs.isdir(full):
                _fs.rmtree(full)
                removed.append(name)
            elif is_temp_file(name):
                _fs.remove(full)
                removed.append(name)
        names = _fs.list_dir(self.path)
        for prefix in found.partial:
            for fname in owned_files(prefix, names):
                if _fs.remove(_fs.join(self.path, fname)):
                    removed.append(fname)
        if removed:
            logger.info("Removed leftovers of interrupted saves in %s: %s", self.path, removed)
        return removed

    def commit(
        self,
        info: CheckpointInfo,
        write: Callable[[str], Any],
        extra: dict[str, Any] | None = None,
        *,
        kept: list[CheckpointInfo],
        start: float,
        doomed: Sequence[CheckpointInfo] = (),
        replaced: Sequence[CheckpointInfo] = (),
        flush_early: bool = True,
        published: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """One save, as a transaction: all of it, or nothing of it, is ever named.

        1. The files are written under a temporary folder (`write`), fsynced, the record
           added, then renamed in: record, data, `.index` last.
        2. The state file is replaced to name exactly `kept`: the commit point. A failure
           before it removes every file of this save (earlier checkpoints are untouched).
        3. `published(name)` learns of the commit (shared data); `doomed` are deleted.

        Args:
            info: The checkpoint to write; `info.step` names it.
            write: Writes TF checkpoint files at the prefix it is given; may return more
                fields for the record (which files hold data shared with other checkpoints).
            extra: More fields for the JSON record.
            kept: What the state file names once this save is in (it included).
            start: When the directory was first managed (the state file records it).
            doomed: Checkpoints this save replaces in the kept list: deleted after the commit.
            replaced: A checkpoint of the same step this one replaces: un-named, then removed
                once the new files are complete, just before they are renamed in.
            flush_early: Flush the files while `write` writes them, so that the `fsync`
                after it waits only for the tail (what a save on the training thread
                wants); False leaves the flushing to that `fsync`, using less CPU while
                `write` runs (what a background save next to training wants).
            published: Called with the checkpoint's name once the state file names it.

        Returns:
            The JSON record written.

        Raises:
            DeletionError: the save is committed, but deleting `doomed` failed.
            Exception: whatever failed before the commit point (nothing of the save remains).
        """
        record = self._write_files(info, write, extra, flush_early, kept, start, replaced)
        try:
            self.write_state(kept, start)
        except BaseException:
            self.discard(info)  # never named by the state file: not saved
            raise
        if published is not None:
            published(info.name)
        try:
            self.delete(list(doomed))
        except Exception as exc:
            raise DeletionError(str(exc)) from exc
        return record

    def _write_files(
        self,
        info: CheckpointInfo,
        write: Callable[[str], Any],
        extra: dict[str, Any] | None,
        flush_early: bool,
        kept: list[CheckpointInfo],
        start: float,
        replaced: Sequence[CheckpointInfo],
    ) -> dict[str, Any]:
        """Step 1 of `commit`: the checkpoint's files, complete, renamed into the directory."""
        name = prefix_name(info.step)
        tmpdir = _fs.join(self.path, temp_dir_name(name))
        moved: list[str] = []  # renamed into the directory so far
        _fs.makedirs(tmpdir)
        try:
            with _fs.flushing(tmpdir) if flush_early else contextlib.nullcontext():
                more = write(_fs.join(tmpdir, name))
            files = {}
            for fname in checkpoint_files(name, _fs.list_dir(tmpdir)):
                full = _fs.join(tmpdir, fname)
                _fs.fsync_file(full)
                files[fname] = _fs.size(full)
            if f"{name}.index" not in files:
                raise OSError(f"TensorFlow wrote no {name}.index in {tmpdir}")
            record_extra = {**(extra or {}), **(more or {})}
            record_extra["files"] = files
            text = to_json(info, record_extra)
            _fs.write_bytes(_fs.join(tmpdir, f"{name}.json"), text.encode())
            data = sorted(f for f in files if f != f"{name}.index")
            if replaced:  # the state file names complete checkpoints only
                self.write_state([i for i in kept if i.step != info.step], start)
                self.delete(list(replaced))
            for fname in [f"{name}.json", *data, f"{name}.index"]:
                _fs.rename(_fs.join(tmpdir, fname), _fs.join(self.path, fname), overwrite=True)
                moved.append(fname)
            _fs.fsync_dir(self.path)
        except BaseException:
            self._discard(reversed(moved))  # index first, record last, as in `delete`
            raise
        finally:
            _fs.rmtree(tmpdir)
        return json.loads(text)

    def discard(self, info: CheckpointInfo) -> None:
        """Removes a just-committed checkpoint that the state file never named (a failed save)."""
        self._discard(owned_files(info.name, _fs.list_dir(self.path)))

    def _discard(self, names: Any) -> None:
        """Best-effort removal on an error path: the error being raised is the one to report."""
        for fname in names:
            try:
                _fs.remove(_fs.join(self.path, fname))
            except Exception as exc:  # the next writer's cleanup removes what is left
                logger.warning("Could not remove %s: %s", _fs.join(self.path, fname), exc)

    def write_state(self, kept: list[CheckpointInfo], start: float) -> None:
        """Atomically replaces `checkpoint` so that it names exactly `kept` (relative paths)."""
        _fs.write_atomic(_fs.join(self.path, STATE), _state_text(kept, start))

    def sync_state(self, kept: list[CheckpointInfo], start: float) -> bool:
        """Rewrites `checkpoint` unless it already names exactly `kept`; True if it did.

        A crash between a commit and its state write leaves a complete checkpoint the state
        file does not name yet (or, during a rotation, names no more); a garbled state file
        names nothing. The next writer calls this so that `tf.train.latest_checkpoint` names
        the newest kept checkpoint again. With nothing of ours kept it changes nothing (the
        state file may belong to plain TensorFlow checkpoints).
        """
        if not kept:
            return False
        text = _state_text(kept, start)
        try:
            if _fs.read_text(_fs.join(self.path, STATE)) == text:
                return False
        except Exception:  # missing or unreadable: rewrite it
            pass
        _fs.write_atomic(_fs.join(self.path, STATE), text)
        return True

    def delete(self, doomed: list[CheckpointInfo]) -> None:
        """Deletes the files of our checkpoints `doomed` (each: index first, record last).

        On a local disk the files are renamed into a `.tmp-trash-*` folder (instant, in the
        same order) and unlinked by a background thread: unlinking a large file that
        reached the disk can take most of a second (ext4 mounted with `discard`: 0.7 s
        for 1.2 GB here), which a synchronous save would otherwise spend on the training
        thread. A folder left by a crash is removed by the next `cleanup`.
        """
        if not doomed:
            return
        names = _fs.list_dir(self.path)
        files = [f for info in doomed for f in owned_files(info.name, names)]
        trash = None  # elsewhere than on a local disk: removed here, one by one
        if _fs.is_local(self.path):
            trash = _fs.join(self.path, temp_dir_name("trash"))
            try:
                _fs.makedirs(trash)
            except Exception:  # a full disk may refuse even a folder: unlink here, freeing space
                trash = None
        for fname in files:
            path = _fs.join(self.path, fname)
            try:
                if trash is not None and _fs.move(path, _fs.join(trash, fname)):
                    continue
            except Exception:  # as above: unlink it here
                pass
            _fs.remove(path)
        if trash is None:
            return
        self.wait()  # one background deletion at a time
        self._deleting = threading.Thread(
            target=_unlink_trash, args=(trash,), name="keras_ckpt-delete", daemon=True
        )
        self._deleting.start()

    def wait(self) -> None:
        """Waits for the background deletion of `delete`, if one is running."""
        thread, self._deleting = self._deleting, None
        if thread is not None:
            wait_for(thread)

    def write_model_json(self, text: str) -> None:
        path = _fs.join(self.path, MODEL_JSON)
        if not _fs.exists(path):
            _fs.write_atomic(path, text)

    def append_history(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=float) + "\n"
        _fs.append_text(_fs.join(self.path, HISTORY), line)


def _state_text(kept: list[CheckpointInfo], start: float) -> str:
    kept = sorted(kept, key=lambda i: i.step)
    return format_state([i.name for i in kept], [i.saved_at for i in kept], start)
