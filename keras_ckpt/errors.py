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
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointMismatchError",
    "CheckpointCorruptError",
    "MonitorNotFoundError",
    "DirectoryLockedError",
]


class CheckpointError(Exception):
    """Base class of every error keras_ckpt raises on purpose."""


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
