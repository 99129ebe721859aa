"""The loop behind `evaluate_checkpoints`: one model, each checkpoint restored in turn.

Keras traces its evaluation function once per model, so restoring into one model (instead
of building one per checkpoint) saves a trace per checkpoint. Numpy `(x, y)` data is also
turned into a batched `tf.data.Dataset` once, as Keras would on every `evaluate` call (same
batches in the same order, floats cast to `floatx` as Keras does), which saves Keras'
per-call input pipeline.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_ckpt import _fs, _graph, _graph_import, _layout, _model_json
from keras_ckpt._layout import scan
from keras_ckpt._messages import skipped_warning
from keras_ckpt._reader import describe
from keras_ckpt._restore import restore_into
from keras_ckpt.errors import CheckpointCorruptError, CheckpointNotFoundError
from keras_ckpt.info import CheckpointInfo

_KERAS_DEFAULT_BATCH = 32


def split_data(data: Any, batch_size: int | None) -> tuple[Any, Any, Any]:
    """`(x, y, sample_weight)` of `data`; a dataset comes back as `(dataset, None, None)`."""
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive integer or None. Received: batch_size={batch_size!r}"
        )
    if isinstance(data, tf.data.Dataset):
        if batch_size is not None:
            raise ValueError(
                "`batch_size` must be None when `data` is a tf.data.Dataset (batch the "
                f"dataset instead). Received: batch_size={batch_size!r}"
            )
        return data, None, None
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return data[0], data[1], (data[2] if len(data) == 3 else None)
    raise ValueError(
        "`data` must be a tuple (x, y), (x, y, sample_weight) or a tf.data.Dataset. "
        f"Received: data of type {type(data).__name__}"
    )


def _batched_once(x: Any, y: Any, sample_weight: Any, batch_size: int | None) -> Any:
    """A dataset of the batches Keras would make from numpy arrays, or None to let Keras do it."""
    parts = [p for p in (x, y, sample_weight) if p is not None]
    if y is None or not all(isinstance(p, np.ndarray) and p.ndim > 0 for p in parts):
        return None
    if len({len(p) for p in parts}) != 1:
        return None  # Keras raises its own clear error about the lengths
    floatx = keras.config.floatx()
    parts = [p.astype(floatx) if p.dtype.kind == "f" and p.dtype != floatx else p for p in parts]
    return tf.data.Dataset.from_tensor_slices(tuple(parts)).batch(
        batch_size or _KERAS_DEFAULT_BATCH
    )


def evaluate_one(
    model: Any,
    info: CheckpointInfo,
    data: tuple[Any, Any, Any, int | None],
    stacklevel: int,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restores `info` into `model` (no optimizer state) and evaluates it: its row.

    `data`: as `prepare_data` returns it. `stacklevel`: of the restore's warnings, counted
    from this frame. `record`: the checkpoint's parsed record, if read already.

    Returns:
        `{"path", "step", "epoch", <each metric of model.evaluate>}`.
    """
    restore_into(
        model, info.path, strict=True, optimizer=False, stacklevel=stacklevel + 1, record=record
    )
    x, y, sample_weight, batch_size = data
    logs = model.evaluate(
        x, y, sample_weight=sample_weight, batch_size=batch_size, verbose=0, return_dict=True
    )
    row: dict[str, Any] = {"path": info.path, "step": info.step, "epoch": info.epoch}
    row.update((k, float(v)) for k, v in logs.items())
    return row


def evaluate_each(
    model: Any,
    kept: Sequence[CheckpointInfo],
    data: Any,
    batch_size: int | None,
    verbose: int,
    stacklevel: int = 3,
    records: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Evaluates each of `kept` in turn (`evaluate_one`); a damaged one is skipped, warned.

    `stacklevel`: of the warnings, for the user's frame (3: called by the public function).
    `records`: step -> parsed record, from the directory's `scan` (not read again).
    """
    prepared = prepare_data(data, batch_size)
    bar = None
    if verbose:
        bar = keras.utils.Progbar(len(kept), unit_name="checkpoint", stateful_metrics=["loss"])
    rows: list[dict[str, Any]] = []
    for n, info in enumerate(kept, 1):
        record = (records or {}).get(info.step)
        try:
            row = evaluate_one(model, info, prepared, stacklevel + 1, record)
        except CheckpointCorruptError as exc:
            warnings.warn(
                f"evaluate_checkpoints skipped {info.path}, which is damaged "
                f"({describe(info.path, exc)}).",
                stacklevel=stacklevel,
            )
            continue
        rows.append(row)
        if bar is not None:
            bar.update(n, values=[("loss", row["loss"])] if "loss" in row else None)
    return rows


def compiled_model(path: str, model: Any, who: str) -> Any:
    """`model`, or the directory's own (model.json, else graph/), checked to be compiled.

    Raises:
        ValueError: the model is not compiled (`who` names the caller), so it has no loss
            or metrics to report.
    """
    given = model is not None
    if model is None:
        model = _graph_import.build_model(path)
    if not getattr(model, "compiled", False):
        why = (
            "the `model` passed is not compiled"
            if given
            else f"{_model_json.model_json_path(path)} records no compile config (the model "
            "was not compiled when first saved)"
        )
        if not given and _graph.imported(model) is not None:
            why = f"{_graph.graph_dir(path)} records no loss (the model was not compiled)"
        raise ValueError(
            f"{who} needs a compiled model: {why}. Pass `model=` compiled with the loss and "
            "metrics to report."
        )
    return model


def evaluate_directory(
    path: str, data: Any, model: Any, batch_size: int | None, verbose: int
) -> list[dict[str, Any]]:
    """`loader.evaluate_checkpoints`: checks, builds or takes the model, evaluates each."""
    if not _fs.isdir(path):
        raise CheckpointNotFoundError(f"No checkpoint directory at {path}.", path=path)
    split_data(data, batch_size)  # bad arguments fail before any work
    found = scan(path)
    kept = _layout.kept(path, found)
    if found.damaged:
        instead = f"evaluating the {len(kept)} intact one(s)"
        message = skipped_warning(path, found.damaged, instead, "evaluate_checkpoints")
        warnings.warn(message, stacklevel=3)
    if not kept:
        return []
    original = None if model is None else _graph.get_weights(model)
    model = compiled_model(path, model, "evaluate_checkpoints")
    try:
        return evaluate_each(
            model, kept, data, batch_size, verbose, stacklevel=4, records=found.records
        )
    finally:
        if original is not None:
            _graph.set_weights(model, original)


def prepare_data(data: Any, batch_size: int | None) -> tuple[Any, Any, Any, int | None]:
    """`(x, y, sample_weight, batch_size)` for `model.evaluate`, numpy data batched once.

    Prepared once and passed to each `evaluate_one` (the same batches for every checkpoint).
    """
    x, y, sample_weight = split_data(data, batch_size)
    batches = _batched_once(x, y, sample_weight, batch_size)
    if batches is not None:
        return batches, None, None, None
    return x, y, sample_weight, batch_size
