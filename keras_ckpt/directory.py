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
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt import _fs
from keras_ckpt._lock import LOCK
from keras_ckpt.info import CheckpointInfo, from_json, prefix_name, step_of, to_json

logger = logging.getLogger(__name__)

STATE = "checkpoint"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = TMP_PREFIX + "trash-"
_RECORD_RE = re.compile(r"^(ckpt-\d+)\.json$")
_INDEX_RE = re.compile(r"^(ckpt-\d+)\.index$")
_STATE_LINE_RE = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")


@dataclass
class Scan:
    """What a directory holds: kept (complete, ours) checkpoints oldest first, and problems."""

    kept: list[CheckpointInfo] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # prefix name -> why
    partial: list[str] = field(default_factory=list)  # prefix names of interrupted saves
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> sidecar record
    newest_step: int = -1  # over everything on disk, damaged included
    start: float | None = None  # keep_every_n_hours counts from here


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_state(names: list[str], timestamps: list[float], start: float) -> str:
    """A `checkpoint` file as `tf.train.CheckpointManager` writes it (relative paths)."""
    lines = []
    if names:
        lines.append(f"model_checkpoint_path: {_quote(names[-1])}")
    lines += [f"all_model_checkpoint_paths: {_quote(n)}" for n in names]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in timestamps]
    lines.append(f"last_preserved_timestamp: {start!r}")
    return "\n".join(lines) + "\n"


def parse_state(text: str) -> dict[str, list[str]]:
    """Parses a `checkpoint` file into field -> values.

    Raises:
        ValueError: a line is not of the `key: value` form.
    """
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _STATE_LINE_RE.match(line)
        if not match:
            raise ValueError(f"unreadable line {line[:60]!r}")
        key, value = match.groups()
        if value.startswith('"'):
            if not value.endswith('"') or len(value) < 2:
                raise ValueError(f"unterminated string in line {line[:60]!r}")
            value = value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        out.setdefault(key, []).append(value)
    return out


def scan(directory: str) -> Scan:
    """Reads the records of `directory` (no writes). Damaged checkpoints are reported, not kept."""
    result = Scan()
    names = _fs.list_dir(directory)
    present = set(names)
    for name in names:  # a record without index is a leftover: its step was never taken
        match = _INDEX_RE.match(name)
        if match:
            step = step_of(match.group(1))
            if step is not None:
                result.newest_step = max(result.newest_step, step)
    for name in names:
        match = _RECORD_RE.match(name)
        if not match:
            continue
        prefix = match.group(1)
        path = _fs.join(directory, prefix)
        try:
            info, record = from_json(_fs.read_text(_fs.join(directory, name)), path)
        except (ValueError, KeyError, TypeError) as exc:
            result.damaged[prefix] = f"{name} is not a valid record ({exc})"
            continue
        if prefix_name(info.step) != prefix:
            result.damaged[prefix] = f"{name} records step {info.step}, not {prefix}"
            continue
        if f"{prefix}.index" not in present:
            result.partial.append(prefix)
            continue
        problem = _check_files(directory, record, present)
        if problem:
            result.damaged[prefix] = problem
            continue
        result.kept.append(info)
        result.records[info.step] = record
    result.kept.sort(key=lambda i: i.step)
    result.start = _state_start(directory, present)
    return result


def _check_files(directory: str, record: dict[str, Any], present: set[str]) -> str | None:
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "its record lists no files"
    for fname, expected in files.items():
        if fname not in present:
            return f"{fname} is missing"
        actual = _fs.size(_fs.join(directory, fname))
        if actual != expected:
            return f"{fname} is {actual} bytes, expected {expected} (truncated or altered)"
    return None


def _state_start(directory: str, present: set[str]) -> float | None:
    if STATE not in present:
        return None
    try:
        fields = parse_state(_fs.read_text(_fs.join(directory, STATE)))
        return float(fields["last_preserved_timestamp"][-1])
    except (ValueError, KeyError, IndexError, UnicodeDecodeError):
        return None


_DATA_RE = re.compile(r"^(ckpt-\d+)\.data-\d{5}-of-\d{5}$")


def _owned_files(prefix: str, names: list[str]) -> list[str]:
    """The files of our checkpoint `prefix` among `names`: index first, record last."""
    data = [n for n in names if (m := _DATA_RE.match(n)) and m.group(1) == prefix]
    return [f"{prefix}.index", *data, f"{prefix}.json"]


# Exactly the names `commit` and `_fs.write_atomic` give their temporaries (12 hex digits),
# so that a user's `.tmp-scratch/` or `checkpoint.tmp-backup` is never taken for one.
_TMP_DIR_RE = re.compile(r"^\.tmp-(ckpt-\d+|trash|graph)-[0-9a-f]{12}$")
_TMP_FILE_RE = re.compile(r"^(.+)\.tmp-[0-9a-f]{12}$")


def _is_temp_dir(name: str) -> bool:
    """`.tmp-ckpt-N-<token>` (a save in progress), `.tmp-trash-<token>` (a deletion),
    `.tmp-graph-<token>` (`graph/` being written)."""
    return bool(_TMP_DIR_RE.match(name))


def _is_temp_file(name: str) -> bool:
    """`checkpoint.tmp-*`, `ckpt-N.json.tmp-*`, `model.json.tmp-*`: our atomic-write temps."""
    match = _TMP_FILE_RE.match(name)
    if not match:
        return False
    base = match.group(1)
    return base in (STATE, "model.json", "history.jsonl", LOCK) or bool(_RECORD_RE.match(base))


# -- the directory --------------------------------------------------------------------------------


def _unlink_trash(trash: str) -> None:
    """Unlinks a folder of deleted checkpoints (a background thread: errors are logged)."""
    try:
        _fs.rmtree(trash)
    except Exception as exc:  # the next cleanup() tries again
        logger.warning("Could not remove %s (%s); the next run removes it.", trash, exc)


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
            if _is_temp_dir(name) and _fs.isdir(full):
                _fs.rmtree(full)
                removed.append(name)
            elif _is_temp_file(name):
                _fs.remove(full)
                removed.append(name)
        names = _fs.list_dir(self.path)
        for prefix in found.partial:
            for fname in _owned_files(prefix, names):
                if _fs.remove(_fs.join(self.path, fname)):
                    removed.append(fname)
        if removed:
            logger.info("Removed leftovers of interrupted saves in %s: %s", self.path, removed)
        return removed

    def commit(
        self,
        info: CheckpointInfo,
        write: Callable[[str], None],
        extra: dict[str, Any] | None = None,
        flush_early: bool = True,
        before_publish: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Writes one checkpoint atomically (all files complete, or none visible as kept).

        Args:
            info: The checkpoint to write; `info.step` names it.
            write: Writes TF checkpoint files at the prefix it is given; may return more
                fields for the record (which files hold data shared with other checkpoints).
            extra: More fields for the JSON record.
            flush_early: Flush the files while `write` writes them, so that the `fsync`
                after it waits only for the tail (what a save on the training thread
                wants); False leaves the flushing to that `fsync`, using less CPU while
                `write` runs (what a background save next to training wants).
            before_publish: Called once the files are complete, just before they are renamed
                in (a replacement removes the checkpoint it replaces there).

        Returns:
            The JSON record written.
        """
        name = prefix_name(info.step)
        tmpdir = _fs.join(self.path, f"{TMP_PREFIX}{name}-{_fs.temp_name('x')[-12:]}")
        moved: list[str] = []  # renamed into the directory so far
        _fs.makedirs(tmpdir)
        try:
            with _fs.flushing(tmpdir) if flush_early else contextlib.nullcontext():
                more = write(_fs.join(tmpdir, name))
            files = {}
            for fname in _fs.list_dir(tmpdir):
                if fname == f"{name}.index" or fname.startswith(f"{name}.data-"):
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
            if before_publish is not None:
                before_publish()
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
        self._discard(_owned_files(info.name, _fs.list_dir(self.path)))

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
        files = [f for info in doomed for f in _owned_files(info.name, names)]
        trash = None  # elsewhere than on a local disk: removed here, one by one
        if _fs.is_local(self.path):
            trash = _fs.join(self.path, f"{TRASH_PREFIX}{_fs.temp_name('x')[-12:]}")
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
            thread.join()

    def write_model_json(self, text: str) -> None:
        path = _fs.join(self.path, "model.json")
        if not _fs.exists(path):
            _fs.write_atomic(path, text)

    def append_history(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=float) + "\n"
        _fs.append_text(_fs.join(self.path, "history.jsonl"), line)


def _state_text(kept: list[CheckpointInfo], start: float) -> str:
    kept = sorted(kept, key=lambda i: i.step)
    return format_state([i.name for i in kept], [i.saved_at for i in kept], start)


def now() -> float:
    return time.time()
