"""Verbose lines: one per save or deletion (the manager), per skipped save point (callbacks).

Keras-style, e.g.::

    Epoch 3: saved runs/best/ckpt-36, val_loss improved from 0.2154 to 0.1987
    Epoch 3: deleted runs/best/ckpt-24 (not among the 1 best by val_loss)
    Epoch 4: val_loss (0.2011) did not improve from 0.1987, nothing saved   (verbose=2 only)
    Step 500: saved runs/loop/ckpt-500 (loss=0.0123)                      (custom loops)

Pure functions of the policies and checkpoints; `_io.say` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_ckpt.info import CheckpointInfo
from keras_ckpt.policies import (
    KeepAll,
    KeepBest,
    KeepEveryNHours,
    KeepLast,
    KeepPolicy,
    resolve_mode,
)

_SHOWN_METRICS = 4  # a save line shows at most this many metrics


def _number(value: float) -> str:
    return f"{value:.4g}"


def _metrics(metrics: dict[str, float]) -> str:
    items = sorted(metrics.items())
    shown = ", ".join(f"{k}={_number(v)}" for k, v in items[:_SHOWN_METRICS])
    more = len(items) - _SHOWN_METRICS
    return shown + (f", +{more} more" if more > 0 else "")


def _best_policy(policies: Sequence[KeepPolicy]) -> KeepBest | None:
    return next((p for p in policies if isinstance(p, KeepBest)), None)


def saved_line(
    label: str,
    info: CheckpointInfo,
    policies: Sequence[KeepPolicy],
    before: Sequence[CheckpointInfo],
    start: float,
    background: bool,
) -> str:
    """`Epoch 3: saved runs/best/ckpt-36, val_loss improved from 0.2154 to 0.1987`."""
    where = "saved" + (" in the background" if background else "")
    best = _best_policy(policies)
    if best is not None and best.wants(info, before, start):
        previous = best.best(before)
        if previous is not None:
            old = _number(previous.metrics[best.monitor])
        else:  # like Keras: the best so far starts at inf (or -inf for a maximised metric)
            old = "-inf" if resolve_mode(best.monitor, best.mode) == "max" else "inf"
        new = _number(info.metrics[best.monitor])
        return f"{label}: {where} {info.path}, {best.monitor} improved from {old} to {new}"
    shown = _metrics(info.metrics)
    return f"{label}: {where} {info.path}" + (f" ({shown})" if shown else "")


def _protects(policy: KeepPolicy) -> str:
    if isinstance(policy, KeepLast):
        return f"the {policy.n} newest"
    if isinstance(policy, KeepBest):
        return f"the {policy.k} best by {policy.monitor}"
    if isinstance(policy, KeepEveryNHours):
        return f"one kept per {_duration(policy.h)}"
    if isinstance(policy, KeepAll):
        return "all"
    return repr(policy)


def _duration(hours: float) -> str:
    """`6 hours`, `30 minutes`, `1.5 seconds`."""
    for unit, size in (("hours", 1.0), ("minutes", 1 / 60), ("seconds", 1 / 3600)):
        if hours >= size or unit == "seconds":
            return f"{hours / size:g} {unit}"
    raise AssertionError("unreachable")


def deleted_line(label: str, gone: CheckpointInfo, policies: Sequence[KeepPolicy]) -> str:
    """`Epoch 3: deleted runs/last/ckpt-12 (not among the 3 newest)`."""
    why = " or ".join(_protects(p) for p in policies)
    return f"{label}: deleted {gone.path} (not among {why})"


def skipped_line(
    label: str,
    metrics: dict[str, float],
    policies: Sequence[KeepPolicy],
    before: Sequence[CheckpointInfo],
) -> str:
    """`Epoch 4: val_loss (0.2011) did not improve from 0.1987, nothing saved` (verbose=2)."""
    best = _best_policy(policies)
    if best is None:
        return f"{label}: no keep policy wanted this save point, nothing saved"
    previous = best.best(before)
    value = _number(float(metrics.get(best.monitor, float("nan"))))
    if previous is None:
        return f"{label}: {best.monitor} is {value}, not a finite value; nothing saved"
    old = _number(previous.metrics[best.monitor])
    return f"{label}: {best.monitor} ({value}) did not improve from {old}, nothing saved"


def same_step_line(label: str, step: int, latest: CheckpointInfo | None) -> str:
    """`Epoch 2: step 6 is saved already (...)`: the optimizer's step did not advance."""
    where = f" ({latest.path})" if latest is not None and latest.step == step else ""
    return (
        f"{label}: step {step} is saved already{where}: the optimizer's step did not advance "
        "since the last save point (gradient accumulation, or a step the loss scaler "
        "skipped), nothing saved"
    )
