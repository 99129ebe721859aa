"""Keras state that TensorFlow checkpoints leave out, kept in the `ckpt-N.json` record.

Keras 3 lists the state of every `SeedGenerator` (`Dropout`, `GaussianNoise`, random
augmentation layers) in `model.variables`, but TensorFlow's object graph never reaches it,
so `tf.train.Checkpoint` does not save it. A resumed run would then start its generators
from their initial seeds and draw other dropout masks than the uninterrupted run: other
weights. These few integers go into the record; `restore` and `resume` put them back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import tensorflow as tf

from keras_ckpt import _fs
from keras_ckpt._restore import saveable_variables

logger = logging.getLogger(__name__)

__all__ = ["RECORD_KEY", "UntrackedState", "put_back", "restore_recorded"]

RECORD_KEY = "untracked_variables"
_MAX_ELEMENTS = 64  # a seed state has 2; bigger state does not belong in a JSON record


def _path(variable: Any) -> str:
    return str(getattr(variable, "path", None) or getattr(variable, "name", ""))


def _recordable(variable: Any) -> bool:
    try:
        dtype = tf.as_dtype(variable.dtype)
        count = variable.shape.num_elements()
    except (AttributeError, TypeError, ValueError):
        return False
    return (dtype.is_integer or dtype.is_bool) and count is not None and count <= _MAX_ELEMENTS


def untracked_variables(model: Any) -> list[Any]:
    """The small integer variables of `model.variables` that TF's object graph misses."""
    variables = list(getattr(model, "variables", None) or [])
    if not variables:
        return []
    reached = saveable_variables(model)
    out = [v for v in variables if id(v) not in reached]
    skipped = [_path(v) for v in out if not _recordable(v)]
    if skipped:
        logger.info("keras_ckpt: not saved (not in TF's object graph): %s", ", ".join(skipped))
    return [v for v in out if _recordable(v)]


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

        A variable that cannot be read is left out (logged): it never fails a save.
        """
        signature = list(getattr(self.model, "variables", None) or [])
        if (
            self._signature is None
            or len(signature) != len(self._signature)
            or any(a is not b for a, b in zip(signature, self._signature, strict=True))
        ):
            self._variables = untracked_variables(self.model)
            self._signature = signature
        out = []
        for variable in self._variables:
            try:
                value = np.asarray(variable).tolist()
            except Exception as exc:  # never fail a save over random-number state
                logger.info("keras_ckpt: %s not recorded (%s)", _path(variable), exc)
                continue
            dtype = tf.as_dtype(variable.dtype).name
            out.append({"path": _path(variable), "dtype": dtype, "value": value})
        return out


def put_back(model: Any, records: Any) -> int:
    """Assigns recorded untracked state to `model`'s matching variables; returns how many.

    A generator's name comes from a process-wide counter (`seed_generator_3`), so paths
    differ between runs of one script: the variables are paired in `model.variables`
    order when the counts agree (the same architecture), else by path. A pair whose
    dtype or shape differs is skipped: this is random-number state, never weights.
    """
    if not isinstance(records, list) or not records:
        return 0
    live = untracked_variables(model)
    if len(live) == len(records):
        pairs = list(zip(live, records, strict=True))
    else:
        by_path = {_path(v): v for v in live}
        pairs = [
            (by_path[entry["path"]], entry)
            for entry in records
            if isinstance(entry, dict) and entry.get("path") in by_path
        ]
    done = 0
    for variable, entry in pairs:
        try:
            dtype = tf.as_dtype(variable.dtype)
            value = np.asarray(entry["value"], dtype=dtype.as_numpy_dtype)
            if dtype.name != entry.get("dtype") or tuple(value.shape) != tuple(variable.shape):
                continue
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            continue
        variable.assign(value)
        done += 1
    return done


def restore_recorded(model: Any, prefix: str) -> int:
    """`put_back` the untracked state recorded in `prefix`'s `ckpt-N.json`, if any."""
    path = prefix + ".json"
    try:
        record = json.loads(_fs.read_text(path)) if _fs.exists(path) else None
    except (OSError, ValueError, tf.errors.OpError) as exc:  # the record was read before
        logger.info("keras_ckpt: no untracked state from %s (%s)", path, exc)
        return 0
    return put_back(model, record.get(RECORD_KEY) if isinstance(record, dict) else None)
