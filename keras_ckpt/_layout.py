"""What a checkpoint directory holds, read only: the one owner of the read side.

Names (`ckpt-N.*`, `model.json`, `history.jsonl`, temporaries; the state file's: `_statefile`),
`scan` (each record parsed once and checked by `check`, as `verify` does), `read_record`,
`read_history`, the kept list (`kept`; `foreign`: a plain `tf.train.CheckpointManager`'s),
`newest_intact`, and what an argument means (`locate`, `classify`). No TensorFlow:
`keras-ckpt list` reads through this module alone. `directory` is the one writer.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt import _fs
from keras_ckpt._lock import LOCK
from keras_ckpt._messages import skipped_warning
from keras_ckpt._statefile import STATE, parse_state
from keras_ckpt.errors import CheckpointCorruptError, CheckpointNotFoundError
from keras_ckpt.info import CheckpointInfo, from_json, prefix_name, step_of

TMP_PREFIX = ".tmp-"
MODEL_JSON = "model.json"  # the architecture (`_model_json`), written once
HISTORY = "history.jsonl"  # one line of logs per epoch
_RECORD_RE = re.compile(r"^(ckpt-\d+)\.json$")
_INDEX_RE = re.compile(r"^(ckpt-\d+)\.index$")


@dataclass
class Scan:
    """What a directory holds: kept (complete, ours) checkpoints oldest first, and problems."""

    kept: list[CheckpointInfo] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # prefix name -> why
    partial: list[str] = field(default_factory=list)  # prefix names of interrupted saves
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> kept's record
    checked: dict[str, Checked] = field(default_factory=dict)  # prefix name -> `check`
    names: set[str] = field(default_factory=set)  # the directory's listing
    newest_step: int = -1  # over everything on disk, damaged included
    start: float | None = None  # keep_every_n_hours counts from here


def scan(directory: str) -> Scan:
    """Reads the records of `directory` (no writes). Damaged checkpoints are reported, not kept."""
    result = Scan()
    names = _fs.list_dir(directory)
    present = result.names = set(names)
    # a record without index is a leftover: its step was never taken
    steps = [step_of(m.group(1)) for n in names if (m := _INDEX_RE.match(n))]
    result.newest_step = max((s for s in steps if s is not None), default=-1)
    for name in names:
        match = _RECORD_RE.match(name)
        if not match:
            continue
        prefix = match.group(1)
        checked = result.checked[prefix] = check(directory, prefix, present)
        if checked.partial:
            result.partial.append(prefix)
        elif checked.problems:
            result.damaged[prefix] = checked.why
        else:
            assert checked.info is not None and checked.record is not None
            result.kept.append(checked.info)
            result.records[checked.info.step] = checked.record
    result.kept.sort(key=lambda i: i.step)
    result.start = _state_start(directory, present)
    return result


@dataclass
class Checked:
    """One checkpoint against its record (`check`): what `scan` keeps and `verify` reports.

    `problems`: `(file name, what is wrong)` in the order found, e.g. `("ckpt-8.index",
    "100 bytes, expected 4096 (truncated or altered)")`.
    """

    info: CheckpointInfo | None = None  # None: no record, or a garbled one
    record: dict[str, Any] | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    has_index: bool = True
    sizes_ok: bool = True  # every file the record lists has its recorded size
    step_ok: bool = True  # the record names the checkpoint's own step

    @property
    def partial(self) -> bool:
        """An interrupted save: a valid record of its own step, no index (never kept)."""
        return self.info is not None and self.step_ok and not self.has_index

    @property
    def why(self) -> str:
        """The first problem, `<file> is <what is wrong>` (`scan`'s damaged reason)."""
        fname, what = self.problems[0]
        return f"{fname} is {what}"


def check(directory: str, name: str, present: set[str] | None = None) -> Checked:
    """The one check of checkpoint `name` (`ckpt-8`) of `directory` against its record: a
    valid record of its own step, listing files that all have the recorded size. The record
    is read once; the data is not (`_verify` does). `present`: the names, if listed already.
    """

    def exists(fname: str) -> bool:
        return fname in present if present is not None else _fs.exists(_fs.join(directory, fname))

    out = Checked(has_index=exists(f"{name}.index"))
    record_name = f"{name}.json"
    if not exists(record_name):
        return out
    try:
        out.info, out.record = _parse_record(_fs.join(directory, name))
    except CheckpointCorruptError as exc:
        out.problems.append((record_name, f"not a valid checkpoint record ({exc.reason})"))
        return out
    if step_of(name) is not None and prefix_name(out.info.step) != name:
        out.step_ok = False
        out.problems.append((record_name, f"a record of step {out.info.step}, not of {name}"))
    files = out.record.get("files")
    if not isinstance(files, dict) or not files:
        out.problems.append((record_name, "a record listing no files"))
        return out
    for fname, actual, expected in size_mismatches(directory, files, present):
        out.sizes_ok = False
        if actual is None:
            out.problems.append((fname, f"missing (listed in {record_name})"))
        else:
            out.problems.append(
                (fname, f"{actual} bytes, expected {expected} (truncated or altered)")
            )
    return out


def size_mismatches(
    directory: str, files: dict[str, int], present: set[str] | None = None
) -> Iterator[tuple[str, int | None, int]]:
    """`(name, size on disk or None if missing, recorded size)` of each file that differs.

    The one comparison of a checkpoint's files with its record (`check`, `_reader`);
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


def _state_start(directory: str, present: set[str]) -> float | None:
    if STATE not in present:
        return None
    try:
        fields = parse_state(_fs.read_text(_fs.join(directory, STATE)))
        return float(fields["last_preserved_timestamp"][-1])
    except (ValueError, KeyError, IndexError, UnicodeDecodeError):
        return None


_DATA_RE = r"\.data-\d{5}-of-\d{5}"


def checkpoint_files(name: str, names: Sequence[str]) -> list[str]:
    """The `.index` and `.data-*` shards of checkpoint `name` (`ckpt-8`) among `names`, sorted.

    The one rule for which files are a checkpoint's own (size, deletion, blame).
    """
    shard = re.compile(re.escape(name) + _DATA_RE + "$")
    return sorted(n for n in names if n == f"{name}.index" or shard.match(n))


def owned_files(prefix: str, names: list[str]) -> list[str]:
    """The files of our checkpoint `prefix` among `names`: index first, record last."""
    data = [n for n in checkpoint_files(prefix, names) if n != f"{prefix}.index"]
    return [f"{prefix}.index", *data, f"{prefix}.json"]


# Exactly the names `commit` and `_fs.write_atomic` give their temporaries (12 hex digits),
# so that a user's `.tmp-scratch/` or `checkpoint.tmp-backup` is never taken for one.
_TMP_DIR_RE = re.compile(r"^\.tmp-(ckpt-\d+|trash|graph)-[0-9a-f]{12}$")
_TMP_FILE_RE = re.compile(r"^(.+)\.tmp-[0-9a-f]{12}$")


def temp_dir_name(kind: str) -> str:
    """A new `.tmp-<kind>-<token>` name (`kind`: `ckpt-N`, `trash` or `graph`): `is_temp_dir`
    knows it, so the cleanup of a later run removes it if it is left over."""
    return f"{TMP_PREFIX}{kind}-{_fs.temp_name('')[-12:]}"


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
    return base in (STATE, MODEL_JSON, HISTORY, LOCK) or bool(_RECORD_RE.match(base))


# -- finding checkpoints ---------------------------------------------------------------------


def foreign(directory: str, present: set[str] | None = None) -> list[CheckpointInfo]:
    """Checkpoints a plain `tf.train.CheckpointManager` recorded (no records of ours).

    Only names inside `directory` are considered; absolute paths and `..` are ignored.
    `present`: the directory's names, if listed already.
    """
    try:
        fields = parse_state(_fs.read_text(_fs.join(directory, STATE)))
    except Exception:  # no state file, or one we cannot read: nothing foreign to list
        return []
    names = fields.get("all_model_checkpoint_paths", [])
    stamps = fields.get("all_model_checkpoint_timestamps", [])
    present = set(_fs.list_dir(directory)) if present is None else present
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
    return foreign(directory, found.names)


def newest_intact(directory: str, found: Scan) -> tuple[list[CheckpointInfo], dict[str, str]]:
    """The kept checkpoints of `directory` (the newest intact one last) and the damaged ones
    newer than it, skipped (prefix name -> why). The one home of "the newest intact
    checkpoint" (`locate`, `_restore.restore_newest`); `found`: the directory's `scan`.
    """
    listed = kept(directory, found)
    newest = listed[-1].step if listed else -1
    return listed, {n: why for n, why in found.damaged.items() if (step_of(n) or -1) > newest}


def classify(path: str) -> tuple[str, str] | None:
    """What a `verify` target is: `("prefix", prefix)` (a trailing `.index` dropped; an
    index or a record exists), `("directory", path)`, or None (nothing there)."""
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if _fs.exists(path + ".index") or _fs.exists(path + ".json"):
        return "prefix", path
    if _fs.isdir(path):
        return "directory", path
    return None


@dataclass(frozen=True)
class Located:
    """A `checkpoint` argument resolved once: its prefix, `CheckpointInfo` and record.

    `record`: the parsed `ckpt-N.json`, handed on so that nothing reads it again; None when
    there is none (plain TensorFlow) or, with `lenient`, when it is garbled.
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

    A directory is listed once (`scan` parses every record; the chosen one is handed on); a
    prefix's record is read once. Damaged checkpoints newer than the newest intact one are
    skipped with a warning (`newest_intact`).

    Args:
        checkpoint: A prefix (`.index` may be appended) or a directory.
        stacklevel: Of the warning, for the user's frame.
        lenient: A prefix's garbled record does not raise: `info` from the prefix's name.
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
            return Located(path, *read_record(path))
        except CheckpointCorruptError:
            if not lenient:
                raise
            return Located(path, _info_from_name(path))
    if _fs.isdir(path):
        found = scan(path)
        listed, skipped = newest_intact(path, found)
        if not listed:
            raise CheckpointNotFoundError(
                f"{path} holds no complete checkpoint. Train with a keras_ckpt callback into "
                "it first, or run `keras-ckpt verify` on it to see what is there.",
                path=path,
                reason="no complete checkpoint",
            )
        latest = listed[-1]
        if skipped and warn:
            warnings.warn(
                skipped_warning(path, skipped, f"using {latest.path}"), stacklevel=stacklevel
            )
        record = found.records.get(latest.step)
        if record is None:  # a plain TensorFlow checkpoint: no record of ours
            return Located(latest.path, read_record(latest.path)[0])
        return Located(latest.path, latest, record)
    raise CheckpointNotFoundError(
        f"No checkpoint at {path}: neither {path}.index nor a directory of checkpoints exists.",
        path=path,
        reason="does not exist",
    )


def read_record(prefix: str) -> tuple[CheckpointInfo, dict[str, Any] | None]:
    """The `CheckpointInfo` and parsed record (`ckpt-N.json`) of a prefix, in one read (the
    one reader of a record besides `check`). Without a record: info from the name, None.

    Raises:
        CheckpointCorruptError: the record is garbled (`file` names it, `reason` says why).
    """
    if not _fs.exists(prefix + ".json"):
        return _info_from_name(prefix), None
    return _parse_record(prefix)


def _parse_record(prefix: str) -> tuple[CheckpointInfo, dict[str, Any]]:
    record = prefix + ".json"
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


def read_history(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The epoch lines of `directory/history.jsonl`, ordered by step.

    A line for a step already seen (a run resumed from an earlier checkpoint trains those
    steps again) replaces the earlier one; a torn last line (a crash while appending) is
    skipped. A missing file gives `[]`.
    """
    path = _fs.join(_fs.fspath(directory), HISTORY)
    if not _fs.exists(path):
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in _fs.read_text(path).splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        by_step[step] = record
    return [by_step[s] for s in sorted(by_step)]
