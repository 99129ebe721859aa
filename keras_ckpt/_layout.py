"""What a checkpoint directory holds, read only: the one owner of the read side.

Names (`ckpt-N.index`, `ckpt-N.data-*`, `ckpt-N.json`, the `checkpoint` state file, the
temporaries of interrupted writes), the state file's codec (`format_state`, `parse_state`),
`scan` (every record parsed once, each checkpoint's files checked against its record:
`check_files`), the kept list (`kept`, with directories a plain `tf.train.CheckpointManager`
wrote: `foreign`), and what a `checkpoint` argument means (`locate`: a prefix, or a
directory's newest intact checkpoint, with its record, from one listing). No TensorFlow:
`keras-ckpt list` reads directories through this module alone.

`directory.CheckpointDirectory` is the one writer; it uses these names and `scan`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt import _fs
from keras_ckpt._lock import LOCK
from keras_ckpt._messages import damaged_list
from keras_ckpt.errors import CheckpointCorruptError, CheckpointNotFoundError
from keras_ckpt.info import CheckpointInfo, from_json, prefix_name, step_of

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
        problem = check_files(directory, record, present)
        if problem:
            result.damaged[prefix] = problem
            continue
        result.kept.append(info)
        result.records[info.step] = record
    result.kept.sort(key=lambda i: i.step)
    result.start = _state_start(directory, present)
    return result


def size_mismatches(
    directory: str, files: dict[str, int], present: set[str] | None = None
) -> Iterator[tuple[str, int | None, int]]:
    """`(name, size on disk or None if missing, recorded size)` of each file that differs.

    The one check of a checkpoint's files against its record (`scan`, `_reader`, `_verify`);
    `present`: the directory's names, if listed already (else each file is looked up).
    """
    for fname, expected in sorted(files.items()):
        path = _fs.join(directory, fname)
        if (fname not in present) if present is not None else not _fs.exists(path):
            yield fname, None, expected
            continue
        actual = _fs.size(path)
        if actual != expected:
            yield fname, actual, expected


def check_files(directory: str, record: dict[str, Any], present: set[str]) -> str | None:
    """Why a checkpoint's files do not match its record (the first problem), or None."""
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "its record lists no files"
    for fname, actual, expected in size_mismatches(directory, files, present):
        if actual is None:
            return f"{fname} is missing"
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


def owned_files(prefix: str, names: list[str]) -> list[str]:
    """The files of our checkpoint `prefix` among `names`: index first, record last."""
    data = [n for n in names if (m := _DATA_RE.match(n)) and m.group(1) == prefix]
    return [f"{prefix}.index", *data, f"{prefix}.json"]


# Exactly the names `commit` and `_fs.write_atomic` give their temporaries (12 hex digits),
# so that a user's `.tmp-scratch/` or `checkpoint.tmp-backup` is never taken for one.
_TMP_DIR_RE = re.compile(r"^\.tmp-(ckpt-\d+|trash|graph)-[0-9a-f]{12}$")
_TMP_FILE_RE = re.compile(r"^(.+)\.tmp-[0-9a-f]{12}$")


def is_temp_dir(name: str) -> bool:
    """`.tmp-ckpt-N-<token>` (a save in progress), `.tmp-trash-<token>` (a deletion),
    `.tmp-graph-<token>` (`graph/` being written)."""
    return bool(_TMP_DIR_RE.match(name))


def is_temp_file(name: str) -> bool:
    """`checkpoint.tmp-*`, `ckpt-N.json.tmp-*`, `model.json.tmp-*`: our atomic-write temps."""
    match = _TMP_FILE_RE.match(name)
    if not match:
        return False
    base = match.group(1)
    return base in (STATE, "model.json", "history.jsonl", LOCK) or bool(_RECORD_RE.match(base))


# -- finding checkpoints ---------------------------------------------------------------------


def foreign(directory: str) -> list[CheckpointInfo]:
    """Checkpoints a plain `tf.train.CheckpointManager` recorded (no records of ours).

    Only names inside `directory` are considered; absolute paths and `..` are ignored.
    """
    try:
        fields = parse_state(_fs.read_text(_fs.join(directory, STATE)))
    except Exception:  # no state file, or one we cannot read: nothing foreign to list
        return []
    names = fields.get("all_model_checkpoint_paths", [])
    stamps = fields.get("all_model_checkpoint_timestamps", [])
    present = set(_fs.list_dir(directory))
    out = []
    for i, name in enumerate(names):
        if "/" in name or "\\" in name or name.startswith(".") or f"{name}.index" not in present:
            continue
        match = re.search(r"-(\d+)$", name)
        saved = float(stamps[i]) if i < len(stamps) else 0.0
        out.append(
            CheckpointInfo(
                _fs.join(directory, name), int(match.group(1)) if match else i, None, {}, saved
            )
        )
    return sorted(out, key=lambda i: i.step)


def kept(directory: str, found: Scan | None = None) -> list[CheckpointInfo]:
    """The kept, complete checkpoints of `directory`, oldest first (`[]` if it is missing).

    `found`: the directory's `scan`, if the caller has it already (no second listing).
    """
    if found is None:
        if not _fs.isdir(directory):
            return []
        found = scan(directory)
    if found.kept or found.damaged or found.partial:
        return found.kept
    return foreign(directory)


def newer_damaged(directory: str, step: int, found: Scan | None = None) -> dict[str, str]:
    """Damaged checkpoints of `directory` newer than `step`: prefix name -> why."""
    damaged = (found or scan(directory)).damaged
    return {n: why for n, why in damaged.items() if (step_of(n) or -1) > step}


@dataclass(frozen=True)
class Located:
    """A `checkpoint` argument resolved once: its prefix, `CheckpointInfo` and record.

    `record` is the parsed `ckpt-N.json`, to hand on to `_restore.restore_into` and the
    readers so that nothing reads it again; None when there is none (a plain TensorFlow
    checkpoint) or, with `lenient`, when it is garbled (the readers then read it themselves).
    """

    prefix: str
    info: CheckpointInfo
    record: dict[str, Any] | None = None


def locate(
    checkpoint: str | os.PathLike[str],
    stacklevel: int = 3,
    *,
    lenient: bool = False,
    warn: bool = True,
) -> Located:
    """A prefix for a prefix, the newest intact checkpoint for a directory, with its record.

    A directory is listed once (`_layout.scan` parses every record, and the chosen one is
    handed on); a prefix's record is read once. A directory whose newest checkpoints are
    damaged resolves to the newest intact one, with a warning naming what was skipped.

    Args:
        checkpoint: A prefix (`.index` may be appended) or a directory.
        stacklevel: Of the warning, for the user's frame.
        lenient: A prefix's garbled record does not raise: `info` is then taken from the
            prefix's name and `record` is None (for callers that never used the record).
        warn: Warn about skipped damaged checkpoints (the CLI does not: `verify` names them).

    Raises:
        CheckpointNotFoundError: no such checkpoint, or no complete one in the directory.
        CheckpointCorruptError: (unless `lenient`) a prefix's record is garbled.
    """
    path = _fs.fspath(checkpoint)
    if path.endswith(".index") and _fs.exists(path):
        path = path[: -len(".index")]
    if _fs.exists(path + ".index"):
        try:
            return Located(path, *_read_record(path))
        except CheckpointCorruptError:
            if not lenient:
                raise
            return Located(path, _info_from_name(path))
    if _fs.isdir(path):
        found = scan(path)
        listed = kept(path, found)
        if not listed:
            raise CheckpointNotFoundError(
                f"{path} holds no complete checkpoint. Train with a keras_ckpt callback into "
                "it first, or run `keras-ckpt verify` on it to see what is there.",
                path=path,
                reason="no complete checkpoint",
            )
        latest = listed[-1]
        skipped = newer_damaged(path, latest.step, found)
        if skipped and warn:
            warnings.warn(
                f"The newest checkpoint(s) in {path} are damaged and were skipped ("
                + damaged_list(skipped)
                + f"); using {latest.path}. Run `keras-ckpt verify {path}`.",
                stacklevel=stacklevel,
            )
        record = found.records.get(latest.step)
        if record is None:  # a plain TensorFlow checkpoint: no record of ours
            return Located(latest.path, info_of(latest.path))
        return Located(latest.path, latest, record)
    raise CheckpointNotFoundError(
        f"No checkpoint at {path}: neither {path}.index nor a directory of checkpoints exists.",
        path=path,
        reason="does not exist",
    )


def resolve(checkpoint: str | os.PathLike[str], stacklevel: int = 3) -> str:
    """A prefix for a prefix, the latest prefix for a directory (`locate(...).prefix`)."""
    return locate(checkpoint, stacklevel + 1, lenient=True).prefix


def _read_record(prefix: str) -> tuple[CheckpointInfo, dict[str, Any] | None]:
    """The `CheckpointInfo` and parsed record of a prefix (one read; None: it has none)."""
    record = prefix + ".json"
    if not _fs.exists(record):
        return _info_from_name(prefix), None
    try:
        return from_json(_fs.read_text(record), prefix)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorruptError(
            f"{record} is not a valid checkpoint record ({exc}): run "
            f"`keras-ckpt verify {_fs.dirname(prefix)}`",
            path=prefix,
            file=record,
            reason=str(exc),
        ) from exc


def _info_from_name(prefix: str) -> CheckpointInfo:
    step = step_of(_fs.basename(prefix))
    saved = _fs.mtime(prefix + ".index") if _fs.exists(prefix + ".index") else 0.0
    return CheckpointInfo(prefix, step if step is not None else 0, None, {}, saved)


def info_of(prefix: str) -> CheckpointInfo:
    """The `CheckpointInfo` of a prefix, from its record when there is one."""
    return _read_record(prefix)[0]
