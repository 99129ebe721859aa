"""Reading checkpoints back: list, latest, best, restore.

`restore` matches the checkpoint's variables to the model's through the object graph stored
in the checkpoint (never by guessing key names), compares every shape and dtype first, and
assigns only when all is well, so a failed restore leaves the model as it was.

The work is done in private modules: `_reader` (one checkpoint's index and values, with
TensorFlow's read errors translated) and `_restore` (object-graph matching).
"""

from __future__ import annotations

import os
import re
from typing import Any

from keras_ckpt import _fs
from keras_ckpt._reader import CheckpointReader, check_sizes  # noqa: F401  (used by cli)
from keras_ckpt._restore import restore_into
from keras_ckpt.directory import STATE, parse_state, scan
from keras_ckpt.errors import CheckpointCorruptError, CheckpointNotFoundError
from keras_ckpt.info import CheckpointInfo, from_json, step_of
from keras_ckpt.policies import KeepBest

__all__ = ["list_checkpoints", "latest_checkpoint", "best_checkpoint", "restore"]


# -- listing ------------------------------------------------------------------------------------


def _foreign(directory: str) -> list[CheckpointInfo]:
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


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Lists the kept, complete checkpoints of `directory`, oldest first.

    Damaged checkpoints are left out (`verify` names them); a missing directory gives `[]`.

    Example:
        >>> [(i.step, i.metrics["val_loss"]) for i in list_checkpoints("runs/best")]
        [(400, 0.31), (800, 0.27)]
    """
    path = _fs.fspath(directory)
    if not _fs.isdir(path):
        return []
    found = scan(path)
    if found.kept or found.damaged or found.partial:
        return found.kept
    return _foreign(path)


def latest_checkpoint(directory: str | os.PathLike[str]) -> str | None:
    """The path prefix of the newest kept checkpoint, or None if there is none."""
    kept = list_checkpoints(directory)
    return kept[-1].path if kept else None


def best_checkpoint(
    directory: str | os.PathLike[str], monitor: str = "val_loss", mode: str = "auto"
) -> str | None:
    """The path prefix of the kept checkpoint with the best finite `monitor`, or None.

    Ties go to the newer checkpoint; `mode="auto"` maximises accuracy-like names.
    """
    best = KeepBest(monitor=monitor, mode=mode).best(list_checkpoints(directory))  # type: ignore[arg-type]
    return best.path if best else None


def _resolve(checkpoint: str | os.PathLike[str]) -> str:
    """A prefix for a prefix, the latest prefix for a directory."""
    path = _fs.fspath(checkpoint)
    if _fs.exists(path + ".index"):
        return path
    if _fs.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointNotFoundError(
                f"{path} holds no complete checkpoint. Train with a keras_ckpt callback into "
                "it first, or run `keras-ckpt verify` on it to see what is there."
            )
        return latest
    raise CheckpointNotFoundError(
        f"No checkpoint at {path}: neither {path}.index nor a directory of checkpoints exists."
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
                f"`keras-ckpt verify {_fs.dirname(prefix)}`"
            ) from exc
    step = step_of(_fs.basename(prefix))
    saved = _fs.mtime(prefix + ".index") if _fs.exists(prefix + ".index") else 0.0
    return CheckpointInfo(prefix, step if step is not None else 0, None, {}, saved)


def restore(
    model: Any, checkpoint: str | os.PathLike[str], *, strict: bool = True
) -> CheckpointInfo:
    """Loads a checkpoint into `model`, and into its optimizer if compiled.

    Args:
        model: A built model with the saved architecture.
        checkpoint: A prefix (`"runs/best/ckpt-1200"`) or a directory (its latest).
        strict: If True, any variable mismatch is an error and nothing changes. If False,
            every variable whose path and shape match is restored, the rest are left as
            they are, and one warning names what was skipped.

    Returns:
        The restored checkpoint's `CheckpointInfo`.

    Raises:
        CheckpointNotFoundError: no such checkpoint or no checkpoint in the directory.
        CheckpointMismatchError: `strict` and the variables differ (all listed).
        CheckpointCorruptError: a file of the checkpoint is truncated or altered.

    Example:
        >>> restore(build_model(), "runs/best").step
        1200
    """
    prefix = _resolve(checkpoint)
    restore_into(model, prefix, strict=strict)
    return info_of(prefix)
