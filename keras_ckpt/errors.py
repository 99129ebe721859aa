"""Errors raised by keras_ckpt.

One base class catches them all; each subclass says in a line when it is raised.
Lower-level TensorFlow errors are re-raised as one of these, `from` the original::

    CheckpointError
    ├── CheckpointNotFoundError      no such checkpoint or directory
    ├── CheckpointMismatchError      the checkpoint's variables do not fit the model
    ├── CheckpointCorruptError       a file is truncated, altered or unreadable
    ├── MonitorNotFoundError         a monitored metric is not in the logs (also a KeyError)
    └── DirectoryLockedError         another writer owns the directory

Bad arguments are plain `ValueError`s, raised at construction.

Each error carries its context as data, besides its message (as httpx's do): `path` (the
checkpoint prefix or directory concerned), `file` (the one file at fault, if known) and
`reason` (the short cause, e.g. TensorFlow's first line); None when not known::

    try:
        restore(model, "runs/best")
    except CheckpointCorruptError as exc:
        print(exc.file, exc.reason)
"""

from __future__ import annotations

import re

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointMismatchError",
    "CheckpointCorruptError",
    "MonitorNotFoundError",
    "DirectoryLockedError",
    "short_reason",
]


class CheckpointError(Exception):
    """Base class of every error keras_ckpt raises on purpose.

    Args:
        message: What went wrong, where, and what to do.
        path: The checkpoint prefix or directory concerned.
        file: The file at fault, if one is.
        reason: The short cause (see `short_reason`).
    """

    def __init__(
        self,
        message: str = "",
        *,
        path: str | None = None,
        file: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.file = file
        self.reason = reason


class CheckpointNotFoundError(CheckpointError):
    """The checkpoint, or the directory that should hold one, does not exist."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's variables do not match the model's (missing, unexpected, shapes)."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file is truncated, altered or unreadable."""


class MonitorNotFoundError(CheckpointError, KeyError):
    """The monitored metric is not among the logged metrics."""

    __str__ = Exception.__str__  # a KeyError would print its message in quotes


class DirectoryLockedError(CheckpointError):
    """Another callback, manager or process is writing to the same directory."""


def short_reason(exc: BaseException) -> str:
    """The first line of an error (TensorFlow's without its `{{node ...}}` noise), <= 300 chars."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = re.sub(r"\{\{.*?\}\}\s*", "", str(text)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
