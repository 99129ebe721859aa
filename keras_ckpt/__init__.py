"""keras_ckpt: safe, fast checkpointing for Keras 3 training runs.

Callbacks (`BestCheckpoint`, `RotatingCheckpoint`, `TimedCheckpoint`) for `model.fit`, a
`CheckpointManager` for custom loops, composable save and keep policies, and a loader.

The names below load their module on first use (PEP 562), so that `import keras_ckpt` and
the `keras-ckpt list` command do not import TensorFlow; the errors, `CheckpointInfo` and
the policies need no TensorFlow and are imported at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from keras_ckpt.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    DirectoryLockedError,
    MonitorNotFoundError,
)
from keras_ckpt.info import CheckpointInfo
from keras_ckpt.policies import (
    EveryEpoch,
    EveryNSeconds,
    EveryNSteps,
    KeepBest,
    KeepEveryNHours,
    KeepLast,
)

if TYPE_CHECKING:
    from keras_ckpt._watch import watch
    from keras_ckpt.callbacks import (
        BestCheckpoint,
        CheckpointCallback,
        RotatingCheckpoint,
        TimedCheckpoint,
    )
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

__version__ = "0.1.0"

_LAZY = {
    "keras_ckpt.callbacks": (
        "BestCheckpoint",
        "CheckpointCallback",
        "RotatingCheckpoint",
        "TimedCheckpoint",
    ),
    "keras_ckpt.loader": (
        "best_checkpoint",
        "evaluate_checkpoints",
        "export_saved_model",
        "export_weights_h5",
        "latest_checkpoint",
        "list_checkpoints",
        "load_model",
        "load_saved_model",
        "restore",
        "resume",
        "verify",
    ),
    "keras_ckpt.manager": ("CheckpointManager",),
    "keras_ckpt._watch": ("watch",),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}
_SUBMODULES = {"callbacks", "loader", "manager", "cli", "plot", "directory"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


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
