"""Keras state that TensorFlow checkpoints leave out, kept in the `ckpt-N.json` record.

Keras 3 lists the state of every `SeedGenerator` (`Dropout`, `GaussianNoise`, random
augmentation layers) in `model.variables`, but TensorFlow's object graph never reaches it,
so `tf.train.Checkpoint` does not save it. A resumed run would then start its generators
from their initial seeds and draw other dropout masks than the uninterrupted run: other
weights. These few integers go into the record; `restore` and `resume` put them back.

A generator's name comes from a process-wide counter (`seed_generator_3`), so names differ
between two runs of one script: entries are paired with the model's variables by position
in `model.variables`, and only into a model whose checkpointed variables all matched.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import tensorflow as tf

from keras_ckpt._layout import read_record
from keras_ckpt._objgraph import walk
from keras_ckpt._snapshot import same_objects
from keras_ckpt.errors import CheckpointCorruptError

logger = logging.getLogger(__name__)

__all__ = ["RECORD_KEY", "UntrackedState", "put_back", "read_recorded", "saveable_variables"]

RECORD_KEY = "untracked_variables"
_MAX_ELEMENTS = 64  # a seed state has 2; bigger state does not belong in a JSON record


def _path(variable: Any) -> str:
    return str(getattr(variable, "path", None) or getattr(variable, "name", ""))


def _recordable(variable: Any) -> bool:
    """Small integer state whose read is local (never a collective under a strategy)."""
    try:
        dtype = tf.as_dtype(variable.dtype)
        count = variable.shape.num_elements()
    except (AttributeError, TypeError, ValueError):
        return False
    for v in (variable, getattr(variable, "value", None)):
        if getattr(v, "synchronization", None) == tf.VariableSynchronization.ON_READ:
            return False
    return (dtype.is_integer or dtype.is_bool) and count is not None and count <= _MAX_ELEMENTS


def saveable_variables(model: Any) -> dict[int, Any]:
    """The model's variables that a checkpoint can hold: those its object graph reaches.

    Some Keras 3 state is in `model.variables` but not tracked for checkpoints (the seed of
    a `Dropout` layer's SeedGenerator): TensorFlow never saves it, so it is never "missing".
    """
    reached = {id(obj) for obj in walk(model, optimizer=False, tolerant=True).objects}
    return {id(v): v for v in model.variables if id(v) in reached}


def untracked_variables(model: Any) -> list[Any]:
    """The small integer variables of `model.variables` that TF's object graph misses."""
    variables = list(getattr(model, "variables", None) or [])
    if not variables:
        return []
    reached = saveable_variables(model)
    return [v for v in variables if id(v) not in reached and _recordable(v)]


def _read_all(variables: list[Any]) -> list[list[Any]]:
    """The values of `variables` as nested lists: one stacked read per dtype and shape.

    (~15 us per variable; `.numpy()` on each costs ~100 us.)
    """
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, v in enumerate(variables):
        groups.setdefault((tf.as_dtype(v.dtype).name, tuple(v.shape)), []).append(i)
    out: list[Any] = [None] * len(variables)
    for members in groups.values():
        stacked = tf.stack([getattr(variables[i], "value", variables[i]) for i in members])
        for i, value in zip(members, stacked.numpy().tolist(), strict=True):
            out[i] = value
    return out


class UntrackedState:
    """Reads a model's untracked state at each save; the object-graph walk is cached.

    The walk is redone only when the list of `model.variables` changes (compared by
    identity; the list is held so that ids cannot be reused).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._signature: list[Any] | None = None
        self._variables: list[Any] = []

    def record(self) -> list[dict[str, Any]]:
        """`[{"path", "dtype", "value"}, ...]` for the record (empty for most models).

        State that cannot be read is recorded with `value` None (logged): it never fails a
        save, and the positions of the other entries stay right.
        """
        signature = list(getattr(self.model, "variables", None) or [])
        if self._signature is None or not same_objects(signature, self._signature):
            self._variables = untracked_variables(self.model)
            self._signature = signature
        try:
            values: list[Any] = _read_all(self._variables)
        except Exception as exc:  # never fail a save over random-number state
            logger.info("keras_ckpt: random-number state not recorded (%s)", exc)
            values = [None] * len(self._variables)
        return [
            {"path": _path(v), "dtype": tf.as_dtype(v.dtype).name, "value": value}
            for v, value in zip(self._variables, values, strict=True)
        ]


def _is_int_list(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_int_list(v) for v in value)
    return isinstance(value, int)  # bool is an int; JSON floats and strings are not


def _well_formed(entry: Any) -> bool:
    """A dict with a dtype name and nested ints (or None: the state was unreadable at save)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    value = entry.get("value")
    return value is None or _is_int_list(value)


def read_recorded(
    prefix: str, stacklevel: int = 3, record: dict[str, Any] | None = None
) -> list[dict[str, Any] | None] | None:
    """The untracked-state entries of `prefix`'s record; None if it has none.

    A malformed entry becomes None (its position still counts), with one warning: the
    weights restore all the same, only those generators restart from their seeds.
    `record`: the parsed `ckpt-N.json`, if the caller has read it (no second read).
    """
    path = prefix + ".json"
    if record is None:
        try:
            record = read_record(prefix)[1]
        except CheckpointCorruptError as exc:  # the record was read and checked before: skip
            logger.info("keras_ckpt: no random-number state from %s (%s)", path, exc.reason)
            return None
    entries = record.get(RECORD_KEY) if isinstance(record, dict) else None
    if entries is None:
        return None
    good = [e if _well_formed(e) else None for e in entries] if isinstance(entries, list) else None
    if good is None or None in good:
        warnings.warn(
            f"{path}: {RECORD_KEY} is malformed; the weights are restored, but random "
            "layers (Dropout, noise, augmentation) restart from their seeds.",
            stacklevel=stacklevel,
        )
    return good


def put_back(model: Any, entries: list[dict[str, Any] | None] | None) -> int:
    """Assigns recorded untracked state to `model`'s untracked variables; returns how many.

    Paired by position, and only when the counts agree; a pair whose dtype or shape
    differs is skipped: this is random-number state, never weights.
    """
    if not entries:
        return 0
    live = untracked_variables(model)
    if len(live) != len(entries):
        logger.info(
            "keras_ckpt: %d random-number states recorded, %d in the model: none restored",
            len(entries),
            len(live),
        )
        return 0
    done = 0
    for variable, entry in zip(live, entries, strict=True):
        if entry is None or entry.get("value") is None:
            continue
        dtype = tf.as_dtype(variable.dtype)
        try:
            value = np.asarray(entry["value"], dtype=dtype.as_numpy_dtype)
        except (TypeError, ValueError, OverflowError):
            continue
        if dtype.name != entry["dtype"] or tuple(value.shape) != tuple(variable.shape):
            continue
        variable.assign(value)
        done += 1
    return done
