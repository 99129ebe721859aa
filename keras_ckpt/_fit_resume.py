"""`resume=True`: restore the newest intact checkpoint in `on_train_begin`, continue `fit` there.

Each save made by a callback records where `fit` stood (`Position`, in the record's
`fit_position` field): epochs complete, batches of the next epoch already trained, and batches
since the last save point (the save schedule's counter). Resuming restores the model, the
optimizer and the random-generator state (`_restore.restore_into`, as `loader.resume` does),
then makes `fit` continue from that position the way Keras' `BackupAndRestore` does for
epochs (`model._initial_epoch`, read by `fit` right after `on_train_begin`), and for the
batches already trained inside the interrupted epoch by consuming them from the input
iterator without training on them: Keras looks `model.train_function` up at every step, so
`SkipBatches` stands in for it for the first calls, then puts the original back.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from keras_ckpt._messages import say
from keras_ckpt._restore import restore_newest
from keras_ckpt.info import CheckpointInfo

__all__ = ["POSITION_KEY", "Position", "Resumption"]

POSITION_KEY = "fit_position"


@dataclass(frozen=True)
class Position:
    """Where `fit` stood at a save: what a resumed `fit` continues from.

    Attributes:
        epochs: Epochs complete (the `initial_epoch` to continue with).
        batches: Batches of the next epoch already trained (0 at an epoch boundary).
        since_save: Batches counted since the last save point (`EveryNSteps`' counter).
    """

    epochs: int
    batches: int = 0
    since_save: int = 0

    def record(self) -> dict[str, Any]:
        """The record field a save stores (`CheckpointManager.save(extra=...)`)."""
        fields = {"epochs": self.epochs, "batches": self.batches, "since_save": self.since_save}
        return {POSITION_KEY: fields}

    @classmethod
    def of(cls, info: CheckpointInfo, record: dict[str, Any]) -> Position:
        """The position recorded with a checkpoint; its epoch alone if it records none."""
        fields = record.get(POSITION_KEY)
        if isinstance(fields, dict):
            try:
                return cls(
                    int(fields["epochs"]), int(fields["batches"]), int(fields["since_save"])
                )
            except (KeyError, TypeError, ValueError):
                pass
        return cls(int(info.epoch or 0))


class SkipBatches:
    """Stands in for `model.train_function`: consumes `calls` executions' batches, no training.

    Each call takes `per_call` batches (`steps_per_execution`) from the iterator Keras passes
    and returns empty logs; after the last one the original train function is back.
    """

    def __init__(self, model: Any, calls: int, per_call: int) -> None:
        self.model = model
        self.original = model.train_function
        self.left = calls
        self.per_call = per_call

    def __call__(self, iterator: Any) -> dict[str, Any]:
        for _ in range(self.per_call):
            next(iterator)  # StopIteration ends the epoch, as it would in Keras' own function
        self.left -= 1
        if self.left <= 0:
            self.uninstall()
        return {}

    def uninstall(self) -> None:
        if self.model.train_function is self:
            self.model.train_function = self.original


# model -> (the `params` dict of the fit that claimed it, the claiming callback): Keras makes
# one `params` dict per `fit` and hands the same object to all its callbacks.
_claims: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


class Resumption:
    """The resume of one `resume=True` callback in one `fit`.

    Args:
        owner: The callback (its `model`, `params`, `directory` and `verbose` are read).
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.model = owner.model
        self.position: Position | None = None
        self._skip_through: int | None = None  # hooks up to this batch are skipped ones
        self._skipper: SkipBatches | None = None

    def begin(self) -> Position | None:
        """Claims the model, restores the newest intact checkpoint, sets up the continuation.

        Returns:
            The restored position, or None (nothing to resume: start from scratch).

        Raises:
            ValueError: another callback of this `fit` has `resume=True` too.
        """
        self._claim()
        found = restore_newest(self.model, self.owner.directory, who="resume=True", stacklevel=5)
        if found is None:
            return None
        info, position = found[0], Position.of(*found)
        self.position = position
        self.model._initial_epoch = position.epochs  # read by fit() after on_train_begin
        if position.batches:
            self._skip_batches(position.batches)
        if self.owner.verbose:
            say(f"resumed {info.path}: epoch {position.epochs + 1}, batch {position.batches}")
        return position

    def skipped(self, batch: int) -> bool:
        """True for a batch hook of the batches consumed without training."""
        if self._skip_through is not None and batch <= self._skip_through:
            return True
        self._skip_through = None
        return False

    def epoch_begins(self) -> None:
        """`fit` has read `_initial_epoch`: a later `fit` of this model must not see it."""
        if self.position is not None:
            self.model._initial_epoch = None

    def epoch_ends(self) -> None:
        self._skip_through = None
        if self._skipper is not None:
            self._skipper.uninstall()

    def end(self) -> None:
        """Training ended: nothing of the resume stays on the model."""
        self.epoch_begins()
        self.epoch_ends()
        claim = _claims.get(self.model)
        if claim is not None and claim[1] is self.owner:
            del _claims[self.model]

    def _claim(self) -> None:
        claim = _claims.get(self.model)
        params = self.owner.params
        if claim is not None and claim[0] is params and claim[1] is not self.owner:
            raise ValueError(
                f"Two callbacks of this fit() have resume=True ({claim[1].directory} and "
                f"{self.owner.directory}); at most one may restore the model. Keep "
                "resume=True on the callback whose directory training continues from."
            )
        _claims[self.model] = (params, self.owner)

    def _skip_batches(self, batches: int) -> None:
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
        calls, rest = divmod(batches, per_call)
        if rest:
            warnings.warn(
                f"The checkpoint was taken after {batches} batches of its epoch, not a "
                f"multiple of steps_per_execution={per_call}: the last {rest} of them are "
                "trained again.",
                stacklevel=4,
            )
        if calls:
            self._skipper = SkipBatches(self.model, calls, per_call)
            self.model.train_function = self._skipper
            self._skip_through = calls * per_call - 1
