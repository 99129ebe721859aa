"""Finding checkpoints: the kept ones of a directory, and what a `checkpoint` argument means.

Our directories are read through their records (`directory.scan`); a directory that only a
plain `tf.train.CheckpointManager` wrote is read through its `checkpoint` state file.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

from keras_ckpt import _fs
from keras_ckpt._messages import damaged_list
from keras_ckpt.directory import STATE, Scan, parse_state, scan
from keras_ckpt.errors import CheckpointCorruptError, CheckpointNotFoundError
from keras_ckpt.info import CheckpointInfo, from_json, step_of


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

    A directory is listed once (`directory.scan` parses every record, and the chosen one is
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
