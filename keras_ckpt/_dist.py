"""tf.distribute helpers: which worker commits, and agreeing on the chief's save decisions.

Under `MultiWorkerMirroredStrategy` every worker runs the same script and calls `save` at
the same points, because reading some variables (sync-on-read ones) is a collective op that
every worker must join, in the same order. Only the chief commits files. Whether a save
happens depends on metrics, wall-clock time and the directory's state, which may differ
between workers, so each save first agrees on the chief's decision (one tiny all-reduce);
otherwise a worker could join a collective read the chief never starts and training would
fail or hang.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf


def multi_worker_strategy(model: Any) -> tf.distribute.Strategy | None:
    """The model's strategy if it spans several workers, else None."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    in_multi_worker_mode = getattr(extended, "_in_multi_worker_mode", None)
    if callable(in_multi_worker_mode) and in_multi_worker_mode():
        return strategy
    return None


def strategy_scope(model: Any) -> contextlib.AbstractContextManager:
    """The scope of the strategy `model` was built under, to create variables beside its own.

    A no-op inside any strategy scope already, or for models built without a strategy.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or tf.distribute.has_strategy():
        return contextlib.nullcontext()
    return strategy.scope()


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """True unless `strategy` says this worker must not checkpoint (a non-chief worker)."""
    if strategy is None:
        return True
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def from_chief(strategy: tf.distribute.Strategy, values: Sequence[int], chief: bool) -> list[int]:
    """Returns the chief's `values` on every worker (a collective: all workers must call it).

    Each of the chief's local replicas contributes `values` and a count of 1, everyone else
    zeros; the sum divided by the count is the chief's `values`, whatever the replica layout.
    """
    row = np.array([*values, 1] if chief else [0] * (len(values) + 1), dtype=np.int64)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _context: tf.constant(row)
    )
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
    count = int(total[-1])
    if count < 1:
        raise RuntimeError(
            "No chief worker took part in the checkpoint decision; check TF_CONFIG: exactly "
            "one task must be the chief (task type 'chief', or worker 0 without one)."
        )
    return [int(v) // count for v in total[:-1]]
