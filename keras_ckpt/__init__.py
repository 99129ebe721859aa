"""keras_ckpt: safe, fast checkpointing for Keras 3 training runs.

Callbacks (`BestCheckpoint`, `RotatingCheckpoint`, `TimedCheckpoint`) for `model.fit`, a
`CheckpointManager` for custom loops, composable save and keep policies, and a loader.
"""

from __future__ import annotations

from keras_ckpt.callbacks import (
    BestCheckpoint,
    CheckpointCallback,
    RotatingCheckpoint,
    TimedCheckpoint,
)
from keras_ckpt.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    DirectoryLockedError,
    MonitorNotFoundError,
)
from keras_ckpt.info import CheckpointInfo
from keras_ckpt.loader import (
    best_checkpoint,
    evaluate_checkpoints,
    export_saved_model,
    export_weights_h5,
    latest_checkpoint,
    list_checkpoints,
    load_model,
    load_saved_model,
    restore,
    resume,
    verify,
)
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import (
    EveryEpoch,
    EveryNSeconds,
    EveryNSteps,
    KeepBest,
    KeepEveryNHours,
    KeepLast,
)
from keras_ckpt.watch import watch

__version__ = "0.1.0"

__all__ = [
    "BestCheckpoint",
    "RotatingCheckpoint",
    "TimedCheckpoint",
    "CheckpointCallback",
    "CheckpointManager",
    "CheckpointInfo",
    "EveryEpoch",
    "EveryNSteps",
    "EveryNSeconds",
    "KeepLast",
    "KeepBest",
    "KeepEveryNHours",
    "list_checkpoints",
    "latest_checkpoint",
    "best_checkpoint",
    "restore",
    "resume",
    "load_model",
    "export_saved_model",
    "load_saved_model",
    "evaluate_checkpoints",
    "export_weights_h5",
    "verify",
    "watch",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointMismatchError",
    "CheckpointCorruptError",
    "MonitorNotFoundError",
    "DirectoryLockedError",
]
