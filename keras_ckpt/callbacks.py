"""Keras callbacks: `CheckpointCallback` (in `_callback`) decides *when*; a `CheckpointManager`
does the rest.

`BestCheckpoint`, `RotatingCheckpoint` and `TimedCheckpoint` are presets: arguments in,
policies out. Keras 3 does not call `on_train_end` when `fit` is interrupted by an exception
or `KeyboardInterrupt`: a background write then finishes on its own, but no final save is
made; call `cb.close()` to wait for it and release the directory (a later `fit` on the same thread,
e.g. a notebook cell run again, takes the directory over by itself: see `_lock.Claim`).
"""

from __future__ import annotations

import os
from typing import Any

from keras_ckpt._callback import CheckpointCallback
from keras_ckpt.policies import (
    EveryNSeconds,
    KeepAll,
    KeepBest,
    KeepEveryNHours,
    KeepLast,
    KeepPolicy,
    check_positive_number,
    save_every,
)

__all__ = ["CheckpointCallback", "BestCheckpoint", "RotatingCheckpoint", "TimedCheckpoint"]


class BestCheckpoint(CheckpointCallback):
    """Saves when `monitor` improves; keeps the `keep_best` best checkpoints.

    Args:
        directory: The directory this callback owns.
        monitor: The metric to watch, e.g. `"val_loss"` or `"val_accuracy"`.
        mode: `"min"`, `"max"` or `"auto"` (max for acc/auc/precision/recall/f1 names).
        min_delta: An improvement must beat the best by more than this.
        keep_best: How many of the best checkpoints stay.
        save_freq: `"epoch"` or every N training batches.
        validation_data: Evaluated at each save point, for `val_*` monitors with an integer
            `save_freq` ("evaluate every N iterations, keep the best").
        save_optimizer: Store the optimizer's state too.
        async_save: Write in the background.
        verbose: 1 prints one line per save and deletion; 2 also one per save point
            where the monitor did not improve.
        save_graph: Also write the model's computation as a SavedModel in `graph/`, once.

    Example:
        >>> cb = BestCheckpoint("runs/best", monitor="val_loss", keep_best=3)
        >>> model.fit(x, y, validation_split=0.2, epochs=20, callbacks=[cb])
        >>> cb.best_checkpoint, cb.best_value
        ('runs/best/ckpt-96', 0.0412)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        monitor: str = "val_loss",
        mode: str = "auto",
        min_delta: float = 0.0,
        keep_best: int = 1,
        save_freq: int | str = "epoch",
        validation_data: Any = None,
        save_optimizer: bool = True,
        async_save: bool = False,
        verbose: int = 0,
        save_graph: bool = False,
    ) -> None:
        try:
            self._best_policy = KeepBest(monitor, k=keep_best, mode=mode, min_delta=min_delta)
        except ValueError as exc:  # name the argument as the user spelled it
            message = str(exc).replace("`k`", "`keep_best`").replace(" k=", " keep_best=")
            raise ValueError(message) from None
        super().__init__(
            directory,
            save=save_every(save_freq),
            keep=[self._best_policy],
            validation_data=validation_data,
            save_on_train_end=False,
            save_optimizer=save_optimizer,
            async_save=async_save,
            verbose=verbose,
            save_graph=save_graph,
        )
        self.monitor = monitor

    @property
    def best_checkpoint(self) -> str | None:
        """The path prefix of the best kept checkpoint, or None."""
        best = self._best_policy.best(self.checkpoints)
        return best.path if best else None

    @property
    def best_value(self) -> float | None:
        """The monitored value of the best kept checkpoint, or None."""
        best = self._best_policy.best(self.checkpoints)
        return best.metrics[self.monitor] if best else None


class RotatingCheckpoint(CheckpointCallback):
    """Saves on a schedule and keeps the newest `max_to_keep` checkpoints.

    Args:
        directory: The directory this callback owns.
        max_to_keep: How many of the newest checkpoints stay.
        save_freq: `"epoch"` or every N training batches.
        keep_every_n_hours: Also keep one checkpoint per this many hours, for good.
        save_on_train_end: Also save the final step when training ends.
        save_optimizer: Store the optimizer's state too.
        async_save: Write in the background.
        verbose: 1 prints one line per save and deletion.
        resume: Restore the newest intact checkpoint in `on_train_begin` and continue `fit`
            from it, mid-epoch included (see `CheckpointCallback`).
        save_on_preemption: On SIGTERM, save the current step and stop `fit` cleanly.
        save_graph: Also write the model's computation as a SavedModel in `graph/`, once.

    Example:
        >>> model.fit(x, y, epochs=50, callbacks=[RotatingCheckpoint("runs/last", 3)])
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_to_keep: int = 5,
        save_freq: int | str = "epoch",
        keep_every_n_hours: float | None = None,
        save_on_train_end: bool = True,
        save_optimizer: bool = True,
        async_save: bool = False,
        verbose: int = 0,
        resume: bool = False,
        save_on_preemption: bool = False,
        save_graph: bool = False,
    ) -> None:
        keep = _rotation(_keep_last("max_to_keep", max_to_keep), keep_every_n_hours)
        super().__init__(
            directory,
            save=save_every(save_freq),
            keep=keep,
            save_on_train_end=save_on_train_end,
            save_optimizer=save_optimizer,
            async_save=async_save,
            verbose=verbose,
            resume=resume,
            save_on_preemption=save_on_preemption,
            save_graph=save_graph,
        )


class TimedCheckpoint(CheckpointCallback):
    """Saves once `every_seconds` of wall time passed (checked at batch ends).

    Args:
        directory: The directory this callback owns.
        every_seconds: Minimum wall time between saves.
        max_to_keep: How many of the newest checkpoints stay (`None`: all).
        keep_every_n_hours: Also keep one checkpoint per this many hours, for good.
        save_on_train_end: Also save the final step when training ends.
        save_optimizer: Store the optimizer's state too.
        async_save: Write in the background.
        verbose: 1 prints one line per save and deletion.
        resume: Restore the newest intact checkpoint in `on_train_begin` and continue `fit`
            from it, mid-epoch included (see `CheckpointCallback`).
        save_on_preemption: On SIGTERM, save the current step and stop `fit` cleanly.
        save_graph: Also write the model's computation as a SavedModel in `graph/`, once.

    Example:
        >>> cb = TimedCheckpoint("runs/timed", every_seconds=1800, max_to_keep=4)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every_seconds: float,
        max_to_keep: int | None = None,
        keep_every_n_hours: float | None = None,
        save_on_train_end: bool = True,
        save_optimizer: bool = True,
        async_save: bool = False,
        verbose: int = 0,
        resume: bool = False,
        save_on_preemption: bool = False,
        save_graph: bool = False,
    ) -> None:
        check_positive_number("every_seconds", every_seconds)
        newest = KeepAll() if max_to_keep is None else _keep_last("max_to_keep", max_to_keep)
        keep = _rotation(newest, keep_every_n_hours)
        super().__init__(
            directory,
            save=EveryNSeconds(every_seconds),
            keep=keep,
            save_on_train_end=save_on_train_end,
            save_optimizer=save_optimizer,
            async_save=async_save,
            verbose=verbose,
            resume=resume,
            save_on_preemption=save_on_preemption,
            save_graph=save_graph,
        )


def _rotation(newest: KeepPolicy, keep_every_n_hours: float | None) -> list[KeepPolicy]:
    """`newest`, plus one checkpoint per `keep_every_n_hours` kept for good."""
    keep = [newest]
    if keep_every_n_hours is not None:
        keep.append(_keep_hours(keep_every_n_hours))
    return keep


def _keep_last(name: str, value: Any) -> KeepLast:
    try:
        return KeepLast(value)
    except ValueError:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        ) from None


def _keep_hours(value: Any) -> KeepEveryNHours:
    try:
        return KeepEveryNHours(value)
    except ValueError:
        raise ValueError(
            f"`keep_every_n_hours` must be a positive number of hours. Received: "
            f"keep_every_n_hours={value!r}"
        ) from None
