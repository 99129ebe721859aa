"""When to save, and what stays: small, pure, composable policies.

Save policies say *when* a callback considers a save:

- `EveryEpoch()`: at every epoch end.
- `EveryNSteps(n)`: every `n` training batches.
- `EveryNSeconds(s)`: once `s` seconds of wall time passed since the last save point
  (checked at every batch end, so it also saves inside a long epoch).

Keep policies say *what stays* in the directory. Each has two methods:
`wants(new, kept, start)` (is a new checkpoint worth writing?) and `protected(kept, start)`
(which kept steps must stay?); `start` is when the directory was first managed. Several
compose as a union (`KeepAny`): a checkpoint any policy protects is never deleted, and a
checkpoint no policy wants is never written.

- `KeepLast(n)`: the newest `n`.
- `KeepBest(monitor, k, mode, min_delta)`: the `k` with the best finite `monitor` value;
  wants a new checkpoint only if it beats the best by more than `min_delta`.
- `KeepEveryNHours(h)`: one checkpoint per `h` hours of wall time, kept for good, with the
  meaning of `tf.train.CheckpointManager(keep_checkpoint_every_n_hours=h)`.

Policies read no clock: times come in as arguments.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from keras_ckpt.info import CheckpointInfo

__all__ = [
    "EveryEpoch",
    "EveryNSteps",
    "EveryNSeconds",
    "KeepLast",
    "KeepBest",
    "KeepEveryNHours",
    "KeepAll",
    "KeepAny",
    "SavePolicy",
    "KeepPolicy",
    "resolve_mode",
    "save_every",
]

_MAX_NAMES = ("acc", "auc", "precision", "recall", "f1")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def _check_positive_number(name: str, value: object) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


def _check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        choices = ", ".join(map(repr, allowed))
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def resolve_mode(monitor: str, mode: str) -> Literal["min", "max"]:
    """`"auto"` means max for accuracy-like names (acc, auc, precision, recall, f1), else min."""
    if mode in ("min", "max"):
        return mode  # type: ignore[return-value]
    name = monitor.lower()
    return "max" if any(key in name for key in _MAX_NAMES) else "min"


def _score(info: CheckpointInfo, monitor: str, mode: str) -> float:
    """Lower is better; NaN when the metric is absent or not finite."""
    value = info.metrics.get(monitor, math.nan)
    if not math.isfinite(value):
        return math.nan
    return -value if resolve_mode(monitor, mode) == "max" else value


# -- save policies: when ----------------------------------------------------------------------


@runtime_checkable
class SavePolicy(Protocol):
    """Says whether a save point is due; the caller counts batches and seconds since the last."""

    def at_batch(self, batches: int, seconds: float) -> bool: ...

    def at_epoch(self, seconds: float) -> bool: ...


@dataclass(frozen=True)
class EveryEpoch:
    """A save point at every epoch end."""

    def at_batch(self, batches: int, seconds: float) -> bool:
        return False

    def at_epoch(self, seconds: float) -> bool:
        return True


@dataclass(frozen=True)
class EveryNSteps:
    """A save point every `n` training batches."""

    n: int

    def __post_init__(self) -> None:
        _check_positive_int("n", self.n)

    def at_batch(self, batches: int, seconds: float) -> bool:
        return batches >= self.n

    def at_epoch(self, seconds: float) -> bool:
        return False


@dataclass(frozen=True)
class EveryNSeconds:
    """A save point once `s` seconds passed since the last one (checked at batch/epoch ends)."""

    s: float

    def __post_init__(self) -> None:
        _check_positive_number("s", self.s)

    def at_batch(self, batches: int, seconds: float) -> bool:
        return seconds >= self.s

    def at_epoch(self, seconds: float) -> bool:
        return seconds >= self.s


def save_every(save_freq: int | str) -> SavePolicy:
    """Maps Keras' `save_freq` (`"epoch"` or a positive int of batches) to a save policy."""
    if save_freq == "epoch":
        return EveryEpoch()
    if isinstance(save_freq, numbers.Integral) and not isinstance(save_freq, bool):
        if save_freq > 0:
            return EveryNSteps(int(save_freq))
    raise ValueError(
        "`save_freq` must be 'epoch' or a positive integer (a number of batches). "
        f"Received: save_freq={save_freq!r}"
    )


# -- keep policies: what stays ----------------------------------------------------------------


@runtime_checkable
class KeepPolicy(Protocol):
    """Decides which checkpoints are worth writing and which must stay."""

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool: ...

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]: ...


@dataclass(frozen=True)
class KeepLast:
    """Keeps the newest `n` checkpoints."""

    n: int = 5

    def __post_init__(self) -> None:
        _check_positive_int("n", self.n)

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool:
        return True

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]:
        return {i.step for i in sorted(kept, key=lambda i: i.step)[-self.n :]}


@dataclass(frozen=True)
class KeepAll:
    """Keeps every checkpoint (`TimedCheckpoint(max_to_keep=None)`)."""

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool:
        return True

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]:
        return {i.step for i in kept}


@dataclass(frozen=True)
class KeepBest:
    """Keeps the `k` checkpoints with the best finite `monitor` value (ties: the newer wins)."""

    monitor: str = "val_loss"
    k: int = 1
    mode: Literal["auto", "min", "max"] = "auto"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(
                f"`monitor` must be a metric name such as 'val_loss'. Received: "
                f"monitor={self.monitor!r}"
            )
        _check_positive_int("k", self.k)
        _check_choice("mode", self.mode, ("auto", "min", "max"))
        if not isinstance(self.min_delta, numbers.Real) or not math.isfinite(self.min_delta):
            raise ValueError(
                f"`min_delta` must be a finite number. Received: min_delta={self.min_delta!r}"
            )

    def score(self, info: CheckpointInfo) -> float:
        """Lower is better; NaN when absent or not finite."""
        return _score(info, self.monitor, self.mode)

    def best(self, kept: Sequence[CheckpointInfo]) -> CheckpointInfo | None:
        """The best kept checkpoint (newest among equals), or None."""
        ok = [i for i in kept if math.isfinite(self.score(i))]
        return min(ok, key=lambda i: (self.score(i), -i.step), default=None)

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool:
        value = self.score(new)
        best = min((self.score(i) for i in kept if math.isfinite(self.score(i))), default=math.inf)
        return math.isfinite(value) and value < best - abs(self.min_delta)

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]:
        ok = [i for i in kept if math.isfinite(self.score(i))]
        ok.sort(key=lambda i: (self.score(i), -i.step))
        return {i.step for i in ok[: self.k]}


@dataclass(frozen=True)
class KeepEveryNHours:
    """Keeps one checkpoint per `h` hours of wall time for good.

    As in `tf.train.CheckpointManager`: counting from `start` (when the directory was first
    managed), the first checkpoint saved at least `h` hours after the previous preserved one
    (or `start`) is preserved, and so on. Fractions of an hour are fine.
    """

    h: float

    def __post_init__(self) -> None:
        _check_positive_number("h", self.h)

    def _preserved(self, kept: Iterable[CheckpointInfo], start: float) -> set[int]:
        anchor, out = start, set()
        for info in sorted(kept, key=lambda i: (i.saved_at, i.step)):
            if info.saved_at - self.h * 3600.0 >= anchor:
                out.add(info.step)
                anchor = info.saved_at
        return out

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool:
        return new.step in self._preserved([*kept, new], start)

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]:
        return self._preserved(kept, start)


@dataclass(frozen=True)
class KeepAny:
    """Keeps what any of `policies` keeps; wants what any of them wants."""

    policies: tuple[KeepPolicy, ...]

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool:
        return any(p.wants(new, kept, start) for p in self.policies)

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]:
        return set().union(*(p.protected(kept, start) for p in self.policies))


def as_policies(keep: KeepPolicy | Sequence[KeepPolicy] | None, default: KeepPolicy) -> tuple:
    """Normalises a `keep=` argument to a non-empty tuple of keep policies."""
    if keep is None:
        return (default,)
    items = (keep,) if isinstance(keep, KeepPolicy) else tuple(keep)
    if not items:
        raise ValueError("`keep` must name at least one keep policy. Received: keep=[]")
    for item in items:
        if not isinstance(item, KeepPolicy):
            raise ValueError(
                "`keep` items must be keep policies such as KeepLast(3) or KeepBest(). "
                f"Received: {item!r}"
            )
    return items
