"""Finding checkpoints: the kept ones of a directory, and what a `checkpoint` argument means.

Our directories are read through their records (`directory.scan`); a directory that only a
plain `tf.train.CheckpointManager` wrote is read through its `checkpoint` state file.
"""

from __future__ import annotations

import os
import re
import warnings

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


def resolve(checkpoint: str | os.PathLike[str], stacklevel: int = 3) -> str:
    """A prefix for a prefix, the latest prefix for a directory.

    A directory whose newest checkpoints are damaged resolves to the newest intact one, with
    a warning naming what was skipped.
    """
    path = _fs.fspath(checkpoint)
    if path.endswith(".index") and _fs.exists(path):
        path = path[: -len(".index")]
    if _fs.exists(path + ".index"):
        return path
    if _fs.isdir(path):
        found = kept(path)
        if not found:
            raise CheckpointNotFoundError(
                f"{path} holds no complete checkpoint. Train with a keras_ckpt callback into "
                "it first, or run `keras-ckpt verify` on it to see what is there.",
                path=path,
                reason="no complete checkpoint",
            )
        latest = found[-1].path
        skipped = newer_damaged(path, found[-1].step)
        if skipped:
            warnings.warn(
                f"The newest checkpoint(s) in {path} are damaged and were skipped ("
                + damaged_list(skipped)
                + f"); using {latest}. Run `keras-ckpt verify {path}`.",
                stacklevel=stacklevel,
            )
        return latest
    raise CheckpointNotFoundError(
        f"No checkpoint at {path}: neither {path}.index nor a directory of checkpoints exists.",
        path=path,
        reason="does not exist",
    )


def info_of(prefix: str) -> CheckpointInfo:
    """The `CheckpointInfo` of a prefix, from its record when there is one."""
    record = prefix + ".json"
    if _fs.exists(record):
        try:
            return from_json(_fs.read_text(record), prefix)[0]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorruptError(
                f"{record} is not a valid checkpoint record ({exc}): run "
                f"`keras-ckpt verify {_fs.dirname(prefix)}`",
                path=prefix,
                file=record,
                reason=str(exc),
            ) from exc
    step = step_of(_fs.basename(prefix))
    saved = _fs.mtime(prefix + ".index") if _fs.exists(prefix + ".index") else 0.0
    return CheckpointInfo(prefix, step if step is not None else 0, None, {}, saved)
