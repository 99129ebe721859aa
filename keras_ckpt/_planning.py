"""`SavePlanner`: which saves happen, under which step, and what they replace. No file I/O.

The manager owns one; it holds what the manager knows of the directory (the kept
checkpoints, the newest step, when management started) and applies the keep policies to
it. Under `MultiWorkerMirroredStrategy` every worker adopts the chief's plan (`follow_chief`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from keras_ckpt import _clock, _dist
from keras_ckpt._layout import Scan
from keras_ckpt.errors import MonitorNotFoundError
from keras_ckpt.info import CheckpointInfo
from keras_ckpt.policies import KeepAny, KeepPolicy, best_by, judges_weights, monitors_of, ranking

logger = logging.getLogger(__name__)

__all__ = ["Plan", "SavePlanner", "check_monitors", "optimizer_step"]

# a save to make: the new checkpoint, the kept list after it, the checkpoints it replaces
Plan = tuple[CheckpointInfo, list[CheckpointInfo], list[CheckpointInfo]]


def weights_finite(model: Any) -> bool:
    """True if every floating-point trainable weight of `model` is finite (one reduction).

    Under `MultiWorkerMirroredStrategy` reading a variable may be a collective: every worker
    must call this at the same point (see `SavePlanner.follow_chief`).
    """
    checks = [
        tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(w)))
        for w in getattr(model, "trainable_weights", [])
        if tf.as_dtype(w.dtype).is_floating
    ]
    return bool(tf.reduce_all(checks)) if checks else True


def optimizer_step(model: Any) -> int | None:
    """The optimizer's step count (`optimizer.iterations`, what numbers the saves), or None."""
    iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
    if iterations is None:
        return None
    return int(iterations.numpy() if hasattr(iterations, "numpy") else iterations)


def check_monitors(
    policies: tuple[KeepPolicy, ...], metrics: dict[str, object], epoch_end: bool | None = None
) -> None:
    """Raises `MonitorNotFoundError` if a keep policy monitors a metric absent from `metrics`.

    `epoch_end`: None for `CheckpointManager.save(metrics=...)`; True or False for the logs of
    a callback's save point at an epoch end or inside an epoch (the hint differs).
    """
    for policy in policies:
        for monitor in monitors_of(policy):
            if monitor in metrics:
                continue
            names = ", ".join(sorted(metrics)) or "none"
            if epoch_end is None:
                raise MonitorNotFoundError(
                    f"{type(policy).__name__} monitors {monitor!r}, which is not among the "
                    f"metrics passed to save(): {names}. Pass it in `metrics=` or monitor one "
                    "of them.",
                    reason=f"{monitor!r} not in metrics",
                )
            raise MonitorNotFoundError(
                f"Monitored metric {monitor!r} is not in the logs; available metrics: "
                f"{names}.{_hint(monitor, epoch_end)}",
                reason=f"{monitor!r} not in logs",
            )


def _hint(monitor: str, epoch_end: bool) -> str:
    if not monitor.startswith("val_"):
        return ""
    if epoch_end:
        return (
            " Pass validation data to fit() (validation_data= or validation_split=), or "
            "validation_data= to this callback."
        )
    return (
        " Keras computes val_* metrics only at epoch end: pass validation_data=(x_val, y_val) "
        "to this callback to evaluate at every save point."
    )


class SavePlanner:
    """Applies keep policies to the kept checkpoints of one directory, and numbers steps.

    Args:
        model: The model being saved (its optimizer's iterations number the steps).
        policies: The keep policies (a union).
        directory: The directory, for messages.
        prefix: The checkpoint prefix of a step (`CheckpointDirectory.prefix`).
    """

    def __init__(
        self,
        model: Any,
        policies: tuple[KeepPolicy, ...],
        directory: str,
        prefix: Callable[[int], str],
    ) -> None:
        self.model = model
        self.policies = policies
        self._policy = KeepAny(policies)
        self.directory = directory
        self._prefix = prefix
        self.kept: list[CheckpointInfo] = []
        self.newest_step = -1
        self.start = _clock.wall()  # when the directory was first managed (KeepEveryNHours)
        self.offset: int | None = None  # added to the optimizer's step once a run renumbers
        self.pinned: int | None = None  # a preemption save: kept while it is the newest
        self._counter = 0  # steps of a model without an optimizer
        self._warned_diverged = False

    # -- what the planner knows of the directory ---------------------------------------------

    def load(self, found: Scan) -> None:
        """Adopts what a scan of the directory found: kept list, newest step, start, pin."""
        self.kept = found.kept
        self.newest_step = max(self.newest_step, found.newest_step)
        if found.start is not None:
            self.start = found.start
        elif found.kept:
            self.start = min(self.start, found.kept[0].saved_at)
        newest = found.kept[-1].step if found.kept else None
        self.pinned = newest if found.records.get(newest, {}).get("preempted") else None

    def taking(self, step: int, *, preempted: bool) -> None:
        """A save of `step` is under way: no later save may reuse its step (a preemption
        save stays pinned while it is the newest)."""
        self.newest_step = step
        self.pinned = step if preempted else None

    def pin(self, step: int) -> None:
        """Keeps checkpoint `step` whatever the keep policies say while it is the newest."""
        self.pinned = step

    def keep(self, kept: list[CheckpointInfo]) -> None:
        """The kept list once the planned save is in (what `plan` returned)."""
        self.kept = kept

    def best(self, monitor: str | None = None) -> CheckpointInfo | None:
        """The best kept checkpoint by the first policy ranking by a metric (or `monitor`)."""
        policy = ranking(self.policies, monitor)
        if policy is not None:
            return policy.best(self.kept)  # type: ignore[attr-defined]
        return best_by(monitor, self.kept) if monitor is not None else None

    # -- steps -----------------------------------------------------------------------------------

    def current_step(self) -> int:
        """The step training is at, numbered as a save would number it (no side effects)."""
        base = optimizer_step(self.model)
        if base is None:
            return self._counter
        if self.offset is not None:
            return base + self.offset
        return base + (self.newest_step if base < self.newest_step else 0)

    def auto_step(self) -> int:
        """The step of a save without `step=` (the first one fixes the numbering)."""
        base = optimizer_step(self.model)
        if base is None:
            self._counter += 1
            base = self._counter
        if self.offset is None:
            self.offset = 0
            if base < self.newest_step:
                self.offset = self.newest_step
                warnings.warn(
                    f"{self.directory} already holds checkpoints up to step "
                    f"{self.newest_step}, but this run starts at step {base}: it did not "
                    f"resume (call keras_ckpt.resume(model, {self.directory!r}) first to "
                    f"continue). New checkpoints are numbered from {self.newest_step} on.",
                    stacklevel=4,
                )
        return base + self.offset

    # -- decisions -------------------------------------------------------------------------------

    def check_monitors(self, metrics: dict[str, float]) -> None:
        check_monitors(self.policies, metrics)

    def plan(
        self,
        step: int,
        values: dict[str, float],
        epoch: int | None,
        finite: bool | None = None,
        force: bool = False,
    ) -> Plan | None:
        """The new checkpoint, what stays and what goes; None if no keep policy wants it.

        `finite`: whether the weights are finite, if already known (else read when needed).
        `force`: a preemption save, written and pinned whatever the keep policies say.
        """
        if step <= self.newest_step:
            if step != self.newest_step or not self.kept:
                logger.warning(
                    "Not saving step %d: %s holds step %d.",
                    step,
                    self.directory,
                    self.newest_step,
                )
            return None
        info = CheckpointInfo(
            path=self._prefix(step),
            step=int(step),
            epoch=None if epoch is None else int(epoch),
            metrics=values,
            saved_at=_clock.wall(),
        )
        if not force and not self._policy.wants(info, self.kept, self.start):
            return None
        kept = [*self.kept, info]
        protected = self.protected(kept, pinned=info.step if force else self.pinned)
        if info.step not in protected:
            return None
        if self._diverged(info, finite):
            return None
        doomed = [i for i in kept if i.step not in protected]
        return info, [i for i in kept if i.step in protected], doomed

    def protected(self, kept: list[CheckpointInfo], pinned: int | None) -> set[int]:
        """The steps of `kept` that stay.

        What a keep policy protects, and `pinned` (a preemption save) while it is the newest
        of `kept`: the relaunch resumes from it, so no rotation drops it before a newer one.
        """
        protected = self._policy.protected(kept, self.start)
        if kept and kept[-1].step == pinned:
            protected.add(pinned)
        return protected

    def replan(self, step: int, values: dict[str, float], epoch: int | None) -> Plan | None:
        """A new state for the newest kept checkpoint, under its step; None if `step` is not it.

        The plan's third item is the checkpoint replaced (to remove just before the new one
        is renamed in), not a deletion of the policies.
        """
        if not self.kept or self.kept[-1].step != step or step != self.newest_step:
            return None
        info = CheckpointInfo(self._prefix(step), int(step), epoch, values, _clock.wall())
        return info, [*self.kept[:-1], info], [self.kept[-1]]

    def follow_chief(
        self,
        strategy: tf.distribute.Strategy,
        is_chief: bool,
        step: int,
        values: dict[str, float],
        epoch: int | None,
        force: bool = False,
    ) -> Plan | None:
        """Multi-worker: the chief plans, every worker adopts its decision and step.

        The other workers' state (metrics, clock, what they know of the directory) may
        differ from the chief's, so they do not decide for themselves: if they did, one
        could join a collective read the chief never starts (see `_dist`). Their `kept`
        list mirrors the chief's saves in memory; the chief's files are the truth.
        """
        finite = weights_finite(self.model) if self._judges_weights() else None  # all read
        plan = self.plan(step, values, epoch, finite, force) if is_chief else None
        mine = [1, plan[0].step] if plan is not None else [0, 0]
        wanted, chief_step = _dist.from_chief(strategy, mine, is_chief)
        if is_chief:
            return plan
        if not wanted:
            return None
        info = CheckpointInfo(self._prefix(chief_step), chief_step, epoch, values, _clock.wall())
        kept = [*(i for i in self.kept if i.step < chief_step), info]
        protected = self._policy.protected(kept, self.start) | {chief_step}
        return info, [i for i in kept if i.step in protected], []

    def _judges_weights(self) -> bool:
        return judges_weights(self.policies)

    def _diverged(self, info: CheckpointInfo, finite: bool | None = None) -> bool:
        """True (and a warning) if a metric-monitoring manager would save non-finite weights.

        A diverged model can score a finite, even better metric (a NaN classifier predicts
        one class for everything), so the metric alone cannot keep it out; nor should it
        take a `KeepLast` slot next to a `KeepBest` policy. Checked only when a save is due,
        except under `MultiWorkerMirroredStrategy`, where every worker reads the weights at
        every save point (`finite`), so that the reads stay collective.
        """
        if not self._judges_weights():
            return False
        if finite is None:
            finite = weights_finite(self.model)
        if finite:
            return False
        message = (
            f"Not saving {info.path}: the model's weights are not finite (NaN or inf; "
            "training diverged). A diverged model never replaces a kept checkpoint."
        )
        if not self._warned_diverged:
            self._warned_diverged = True
            warnings.warn(message, stacklevel=5)
        else:
            logger.warning(message)
        return True
