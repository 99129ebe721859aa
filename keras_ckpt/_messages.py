"""Verbose lines: one per save or deletion (the manager), per skipped save point (callbacks).

Keras-style, e.g.::

    Epoch 3: saved runs/best/ckpt-36, val_loss improved from 0.2154 to 0.1987
    Epoch 3: deleted runs/best/ckpt-24 (not among the 1 best by val_loss)
    Epoch 4: val_loss (0.2011) did not improve from 0.1987, nothing saved   (verbose=2 only)
    Step 500: saved runs/loop/ckpt-500 (loss=0.0123)                      (custom loops)

Pure functions of the policies and checkpoints; `say` prints them (the one place that
prints, like Keras' `io_utils.print_msg`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from keras_ckpt.info import CheckpointInfo
from keras_ckpt.policies import KeepAny, KeepPolicy, describe, monitors_of, ranking, resolve_mode

_SHOWN_METRICS = 4  # a save line shows at most this many metrics

logger = logging.getLogger("keras_ckpt")


def say(message: str) -> None:
    """Prints `message` to stdout when Keras logs interactively, else to the logger."""
    import keras  # loaded already by whoever saves; not by `keras-ckpt list`

    if keras.config.is_interactive_logging_enabled():
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    else:
        logger.info(message)


def damaged_list(damaged: dict[str, str]) -> str:
    """`ckpt-8: ckpt-8.index is missing; ckpt-9: ...`: the damaged checkpoints skipped."""
    return "; ".join(f"{name}: {why}" for name, why in sorted(damaged.items()))


def skipped_warning(directory: str, skipped: dict[str, str], instead: str, who: str = "") -> str:
    """The one warning that damaged checkpoints were skipped: which, why, what instead.

    `[<who>: s]kipped damaged checkpoint(s) in <directory> (ckpt-24: <why>; ...); <instead,
    e.g. "using runs/ckpt-16">. Run `keras-ckpt verify <directory>`.`
    """
    start = f"{who}: skipped" if who else "Skipped"
    return (
        f"{start} damaged checkpoint(s) in {directory} ({damaged_list(skipped)}); "
        f"{instead}. Run `keras-ckpt verify {directory}`."
    )


def _number(value: float) -> str:
    return f"{value:.4g}"


def _metrics(metrics: dict[str, float]) -> str:
    items = sorted(metrics.items())
    shown = ", ".join(f"{k}={_number(v)}" for k, v in items[:_SHOWN_METRICS])
    more = len(items) - _SHOWN_METRICS
    return shown + (f", +{more} more" if more > 0 else "")


def _start(policy: KeepPolicy, monitor: str) -> str:
    """Like Keras: the best so far starts at inf (or -inf for a maximised metric)."""
    mode = getattr(policy, "mode", "auto")
    return "-inf" if resolve_mode(monitor, mode) == "max" else "inf"


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
    best = ranking(policies)
    if best is not None and best.wants(info, before, start):
        monitor = monitors_of(best)[0]
        previous = best.best(before)  # type: ignore[attr-defined]
        old = _start(best, monitor) if previous is None else _number(previous.metrics[monitor])
        new = _number(info.metrics[monitor])
        return f"{label}: {where} {info.path}, {monitor} improved from {old} to {new}"
    shown = _metrics(info.metrics)
    return f"{label}: {where} {info.path}" + (f" ({shown})" if shown else "")


def deleted_line(label: str, gone: CheckpointInfo, policies: Sequence[KeepPolicy]) -> str:
    """`Epoch 3: deleted runs/last/ckpt-12 (not among the 3 newest)`."""
    why = describe(KeepAny(tuple(policies)))
    return f"{label}: deleted {gone.path} (not among {why})"


def save_lines(
    label: str,
    info: CheckpointInfo,
    planner: Any,
    doomed: Sequence[CheckpointInfo],
    preempted: bool,
    background: bool,
) -> list[str]:
    """The verbose lines of one save (`SavePlanner` state before it): saved, then deleted."""
    if preempted:
        saved = f"{label}: saved {info.path} on preemption (SIGTERM)"
    else:
        saved = saved_line(label, info, planner.policies, planner.kept, planner.start, background)
    return [saved, *(deleted_line(label, gone, planner.policies) for gone in doomed)]


def check_verbose(verbose: object) -> int:
    """`verbose` if it is 0, 1 or 2 (or more); else a `ValueError` naming it."""
    if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
        raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    return verbose


def skipped_line(
    label: str,
    metrics: dict[str, float],
    policies: Sequence[KeepPolicy],
    before: Sequence[CheckpointInfo],
) -> str:
    """`Epoch 4: val_loss (0.2011) did not improve from 0.1987, nothing saved` (verbose=2)."""
    best = ranking(policies)
    if best is None:
        return f"{label}: no keep policy wanted this save point, nothing saved"
    monitor = monitors_of(best)[0]
    previous = best.best(before)  # type: ignore[attr-defined]
    value = _number(float(metrics.get(monitor, float("nan"))))
    if previous is None:
        return f"{label}: {monitor} is {value}, not a finite value; nothing saved"
    old = _number(previous.metrics[monitor])
    return f"{label}: {monitor} ({value}) did not improve from {old}, nothing saved"


def same_step_line(label: str, step: int, latest: CheckpointInfo | None) -> str:
    """`Epoch 2: step 6 is saved already (...)`: the optimizer's step did not advance."""
    where = f" ({latest.path})" if latest is not None and latest.step == step else ""
    return (
        f"{label}: step {step} is saved already{where}: the optimizer's step did not advance "
        "since the last save point (gradient accumulation, or a step the loss scaler "
        "skipped), nothing saved"
    )
