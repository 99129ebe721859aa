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

The library uses keep policies only through their protocol (`KeepPolicy`), so a keep
policy a user writes gets the same treatment as these: a missing monitored metric is an
error, a model with non-finite weights is never saved while a policy monitors a metric, and
verbose lines describe it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

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
    "monitors_of",
    "describe",
    "ranking",
    "judges_weights",
    "best_by",
    "default_monitor",
]

_MAX_NAMES = ("acc", "auc", "precision", "recall", "f1")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def check_positive_number(name: str, value: object) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


def check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        choices = ", ".join(map(repr, allowed))
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def resolve_mode(monitor: str, mode: str) -> Literal["min", "max"]:
    """`"auto"` means max for accuracy-like names (acc, auc, precision, recall, f1), else min."""
    if mode in ("min", "max"):
        return mode  # type: ignore[return-value]
    name = monitor.lower()
    return "max" if any(key in name for key in _MAX_NAMES) else "min"


def score(value: object, monitor: str, mode: str) -> float:
    """`monitor`'s `value` as a rank: lower is better; NaN when not a finite number."""
    try:
        finite = math.isfinite(value)  # type: ignore[arg-type]
    except TypeError:  # None, a string: never best
        return math.nan
    if not finite:
        return math.nan
    number = float(value)  # type: ignore[arg-type]
    return -number if resolve_mode(monitor, mode) == "max" else number


def _duration(hours: float) -> str:
    """`6 hours`, `30 minutes`, `1.5 seconds`."""
    for unit, size in (("hours", 1.0), ("minutes", 1 / 60)):
        if hours >= size:
            return f"{hours / size:g} {unit}"
    return f"{hours * 3600:g} seconds"


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
        check_positive_number("s", self.s)

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
    """Decides which checkpoints are worth writing and which must stay.

    Required: `wants(new, kept, start)` and `protected(kept, start)`. Optional members, read
    with a default when absent:

    - `monitors`: the metric names the policy reads (default `()`). A save without one of
      them raises `MonitorNotFoundError`; while any policy monitors a metric, a model whose
      weights are not finite is never saved (a diverged model can score a good metric).
    - `describe()`: what the policy protects, for verbose lines (`"the 3 newest"`).
    - `best(kept)`: for a policy ranking by its first monitor, the best kept checkpoint;
      with `mode` (`"min"`/`"max"`/`"auto"`) verbose lines then say "improved from ... to".
    """

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool: ...

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]: ...


def monitors_of(policy: KeepPolicy) -> tuple[str, ...]:
    """The metric names `policy` reads (its optional `monitors` member; `()` without one)."""
    return tuple(getattr(policy, "monitors", ()))


def describe(policy: KeepPolicy) -> str:
    """What `policy` protects, e.g. `"the 3 newest"` (its `describe()`, else its repr)."""
    method = getattr(policy, "describe", None)
    return str(method()) if callable(method) else repr(policy)


def ranking(policies: Sequence[KeepPolicy], monitor: str | None = None) -> KeepPolicy | None:
    """The first policy ranking checkpoints by a metric (by `monitor`, if given), or None."""
    for policy in policies:
        names = monitors_of(policy)
        if names and callable(getattr(policy, "best", None)) and monitor in (None, names[0]):
            return policy
    return None


def judges_weights(policies: Sequence[KeepPolicy]) -> bool:
    """True if a policy monitors a metric: then non-finite weights are never saved."""
    return any(monitors_of(p) for p in policies)


def default_monitor(kept: Sequence[CheckpointInfo]) -> str | None:
    """`val_loss` if the checkpoints recorded it, else `loss`, else None."""
    for name in ("val_loss", "loss"):
        if any(name in i.metrics for i in kept):
            return name
    return None


def best_by(
    monitor: str | None, kept: Sequence[CheckpointInfo], mode: str = "auto"
) -> CheckpointInfo | None:
    """The best of `kept` by `monitor` (finite values only; newest among equals), or None.

    `monitor=None` means the default monitor (`default_monitor`); None if there is none.
    """
    monitor = monitor or default_monitor(kept)
    return KeepBest(monitor, mode=mode).best(kept) if monitor else None  # type: ignore[arg-type]


@dataclass(frozen=True)
class KeepLast:
    """Keeps the newest `n` checkpoints."""

    n: int = 5
    monitors: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        _check_positive_int("n", self.n)

    def describe(self) -> str:
        return f"the {self.n} newest"

    def wants(self, new: CheckpointInfo, kept: Sequence[CheckpointInfo], start: float) -> bool:
        return True

    def protected(self, kept: Sequence[CheckpointInfo], start: float) -> set[int]:
        return {i.step for i in sorted(kept, key=lambda i: i.step)[-self.n :]}


@dataclass(frozen=True)
class KeepAll:
    """Keeps every checkpoint (`TimedCheckpoint(max_to_keep=None)`)."""

    monitors: ClassVar[tuple[str, ...]] = ()

    def describe(self) -> str:
        return "all"

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
        check_choice("mode", self.mode, ("auto", "min", "max"))
        if not isinstance(self.min_delta, numbers.Real) or not math.isfinite(self.min_delta):
            raise ValueError(
                f"`min_delta` must be a finite number. Received: min_delta={self.min_delta!r}"
            )

    @property
    def monitors(self) -> tuple[str, ...]:
        return (self.monitor,)

    def describe(self) -> str:
        return f"the {self.k} best by {self.monitor}"

    def score(self, info: CheckpointInfo) -> float:
        """Lower is better; NaN when absent or not finite."""
        return score(info.metrics.get(self.monitor), self.monitor, self.mode)

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
    monitors: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_positive_number("h", self.h)

    def describe(self) -> str:
        return f"one kept per {_duration(self.h)}"

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

    @property
    def monitors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for p in self.policies for m in monitors_of(p)))

    def describe(self) -> str:
        return " or ".join(describe(p) for p in self.policies)

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
