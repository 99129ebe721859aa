"""Reading checkpoints back: list, latest, best, restore, resume, load, export, evaluate, verify.

`restore` matches the checkpoint's variables to the model's through the object graph stored
in the checkpoint (never by guessing key names), compares every shape and dtype first, and
assigns only when all is well, so a failed restore leaves the model as it was.

This module holds the public functions; the work is done in private modules: `_layout`
(kept checkpoints, what a `checkpoint` argument means), `_reader` (one checkpoint's index and
values, TensorFlow's read errors translated), `_restore` (object-graph matching),
`_model_json` (rebuilding a model without running code from the file), `_export`
(SavedModel, `.weights.h5`), `_evaluate` and `_verify`.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_ckpt import (
    _evaluate,
    _export,
    _fs,
    _graph_import,
    _layout,
    _verify,
)
from keras_ckpt._layout import locate
from keras_ckpt._reader import CheckpointReader, check_sizes, describe  # noqa: F401
from keras_ckpt._restore import restore_into, restore_newest
from keras_ckpt.errors import CheckpointNotFoundError
from keras_ckpt.info import CheckpointInfo
from keras_ckpt.policies import best_by

__all__ = [
    "list_checkpoints",
    "latest_checkpoint",
    "best_checkpoint",
    "restore",
    "resume",
    "load_model",
    "export_saved_model",
    "load_saved_model",
    "evaluate_checkpoints",
    "export_weights_h5",
    "verify",
]


# -- listing ------------------------------------------------------------------------------------


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Lists the kept, complete checkpoints of `directory`, oldest first.

    Damaged checkpoints are left out (`verify` names them); a missing directory gives `[]`.

    Example:
        >>> [(i.step, i.metrics["val_loss"]) for i in list_checkpoints("runs/best")]
        [(400, 0.31), (800, 0.27)]
    """
    return _layout.kept(_fs.fspath(directory))


def latest_checkpoint(directory: str | os.PathLike[str]) -> str | None:
    """The path prefix of the newest kept checkpoint, or None if there is none."""
    kept = list_checkpoints(directory)
    return kept[-1].path if kept else None


def best_checkpoint(
    directory: str | os.PathLike[str], monitor: str = "val_loss", mode: str = "auto"
) -> str | None:
    """The path prefix of the kept checkpoint with the best finite `monitor`, or None.

    Ties go to the newer checkpoint; `mode="auto"` maximises accuracy-like names.
    """
    best = best_by(monitor, list_checkpoints(directory), mode)
    return best.path if best else None


def restore(
    model: Any, checkpoint: str | os.PathLike[str], *, strict: bool = True
) -> CheckpointInfo:
    """Loads a checkpoint into `model`, and into its optimizer if compiled.

    Adapted lookup vocabularies (`StringLookup`, `IntegerLookup`, `TextVectorization`),
    which are not variables, are kept once in the directory's `assets/` and loaded too; a
    lookup layer that was never adapted, with no vocabulary kept for it, is an error.

    Args:
        model: A built model with the saved architecture, or a SavedModel imported by
            `load_saved_model` (of an `export_saved_model` directory) or by `load_model`
            (through `graph/`): its variables are matched by Keras path, with the same checks.
        checkpoint: A prefix (`"runs/best/ckpt-1200"`) or a directory (its latest).
        strict: If True, any variable mismatch is an error and nothing changes. If False,
            every variable whose path and shape match is restored, the rest are left as
            they are, and one warning names what was skipped.

    Returns:
        The restored checkpoint's `CheckpointInfo`.

    Raises:
        CheckpointNotFoundError: no such checkpoint or no checkpoint in the directory.
        CheckpointMismatchError: `strict` and the variables differ (all listed).
        CheckpointCorruptError: a file of the checkpoint is truncated or altered.

    Example:
        >>> restore(build_model(), "runs/best").step
        1200
    """
    found = locate(checkpoint)  # a garbled record raises here, before any variable changes
    restore_into(model, found.prefix, strict=strict, record=found.record)
    return found.info


# -- resuming -----------------------------------------------------------------------------------


def resume(model: Any, directory: str | os.PathLike[str]) -> int:
    """Restores the newest intact checkpoint of `directory` and returns `initial_epoch`.

    The model's variables and, when `model` is compiled, its optimizer state (slots and
    iteration count) are restored, so `fit(..., initial_epoch=resume(model, d))` continues
    the interrupted run: with the same data order and deterministic ops it ends with the
    same weights as a run that was never interrupted.

    A damaged newest checkpoint (truncated, altered, unreadable) is skipped with a warning and
    the newest intact one is used; nothing on disk is changed. If no checkpoint is intact,
    a warning says so and 0 is returned (training starts over) rather than raising, so a
    restart script cannot fall into a crash loop.

    Args:
        model: The model to train, built (and compiled, to restore the optimizer too).
        directory: The checkpoint directory the interrupted run wrote.

    Returns:
        Epochs completed at the restored checkpoint (its `epoch`), to pass as
        `initial_epoch`; 0 for a missing or empty directory, or a checkpoint that records
        no epoch (saved by a custom loop without `epoch=`: continue from `info.step`).

    Raises:
        CheckpointMismatchError: the model does not match the checkpoints' architecture.

    Example:
        >>> cb = RotatingCheckpoint("runs/last")
        >>> model.fit(x, y, epochs=20, initial_epoch=resume(model, "runs/last"),
        ...           callbacks=[cb])
    """
    found = restore_newest(model, _fs.fspath(directory), who="resume", stacklevel=3)
    return int(found[0].epoch or 0) if found is not None else 0


# -- loading without the model code -------------------------------------------------------------


def load_model(
    checkpoint: str | os.PathLike[str], custom_objects: dict[str, Any] | None = None
) -> keras.Model:
    """Rebuilds the model from its directory's `model.json` and restores the checkpoint.

    No model-building code is needed, and no code from the directory runs: the config is
    checked before Keras sees it and deserialised in Keras safe mode. A `Lambda` layer
    holding Python bytecode, or any class or function outside Keras that is not in
    `custom_objects` (or registered with `keras.saving.register_keras_serializable`), is
    refused with a `ValueError` naming `model.json`; no module it names is imported.

    If the model was compiled when it was first saved, `model.json` carries its compile
    config: the model comes back compiled (optimizer, loss, metrics) with the optimizer state
    restored too, ready for `evaluate` or more `fit`. Otherwise it comes back uncompiled.

    When `model.json` cannot rebuild the model without code (a subclassed model, an
    unregistered custom class) or is missing, and the directory has `graph/` (trained with
    `save_graph=True`), the SavedModel in `graph/` is imported instead and the checkpoint
    restored into it. That model is for inference: `predict`, and `evaluate` (compiled with
    the loss and metrics recorded at training time, when Keras can rebuild them by name). It
    has no Keras weights and cannot be trained further; `restore(model, other_checkpoint)`
    loads any checkpoint of the same architecture into it. A SavedModel is a TensorFlow
    program: load only directories you trust.

    Args:
        checkpoint: A prefix (`"runs/best/ckpt-1200"`) or a directory (its latest).
        custom_objects: Classes and functions the architecture uses, by name.

    Returns:
        The rebuilt (or imported) model with the checkpoint's weights.

    Raises:
        CheckpointNotFoundError: no checkpoint, or neither `model.json` nor `graph/` beside it.
        ValueError: `model.json` would run code, or Keras cannot rebuild it, and there is no
            `graph/` (the message says which of the two to provide).
        CheckpointMismatchError: the checkpoint does not fit the rebuilt model.
        CheckpointCorruptError: a file (of the checkpoint or of `graph/`) is truncated or
            altered.

    Example:
        >>> model = load_model("runs/best")
        >>> model.predict(x)
    """
    found = locate(checkpoint, lenient=True)
    model = _graph_import.build_model(_fs.dirname(found.prefix), custom_objects)
    restore_into(model, found.prefix, strict=True, stacklevel=3, record=found.record)
    return model


def _prepare(checkpoint: str | os.PathLike[str], model: Any, *, optimizer: bool) -> Any:
    """The model with the checkpoint's state: `model`, or one rebuilt from model.json."""
    found = locate(checkpoint, stacklevel=4, lenient=True)
    return _export.model_to_export(found, model, optimizer=optimizer, stacklevel=5)


def export_saved_model(
    checkpoint: str | os.PathLike[str], export_dir: str | os.PathLike[str], model: Any = None
) -> str:
    """Exports a checkpoint as a TensorFlow SavedModel with a serving signature.

    Uses Keras' `model.export(export_dir, format="tf_saved_model")`: the SavedModel has a
    `serve` endpoint and a `serving_default` signature, for TF Serving, `tf.saved_model.load`
    or `load_saved_model`. It is written under a temporary name and renamed into place.

    Args:
        checkpoint: A prefix or a directory (its latest).
        export_dir: A new (or empty) directory; an existing non-empty one is refused.
        model: The architecture, for models `model.json` cannot describe (subclassed
            models). It receives the checkpoint's weights (not its optimizer state).
            Default: rebuilt from `model.json`, else imported from the directory's `graph/`
            (`save_graph=True`).

    Returns:
        `export_dir`.

    Raises:
        ValueError: `export_dir` is not empty, or `model.json` is refused.
        CheckpointNotFoundError, CheckpointMismatchError, CheckpointCorruptError: as `restore`.

    Example:
        >>> export_saved_model("runs/best", "exports/v1")
        'exports/v1'
    """
    target = _fs.fspath(export_dir)
    _export.check_export_dir(target)
    return _export.write_saved_model(_prepare(checkpoint, model, optimizer=False), target)


def load_saved_model(export_dir: str | os.PathLike[str]) -> keras.Model:
    """A Keras model over an exported SavedModel, for inference (`predict`).

    It wraps the SavedModel's `serve` endpoint (or its `serving_default` signature) in one
    Keras layer, so it needs none of the original model's code: its `predict` gives the
    original model's outputs. It cannot be trained further. A directory written by
    `export_saved_model` records how its variables map to the checkpoints' (by Keras path),
    so `restore(served, checkpoint)` loads any checkpoint of the same architecture into it
    (`import_meta_graph` once, then `saver.restore` per checkpoint, in TF2). A SavedModel is
    a TensorFlow program: load only directories you trust.

    Args:
        export_dir: A directory written by `export_saved_model` (or Keras' `model.export`).

    Raises:
        CheckpointNotFoundError: `export_dir` holds no `saved_model.pb`.

    Example:
        >>> load_saved_model("exports/v1").predict(x)
    """
    return _export.read_saved_model(_fs.fspath(export_dir))


def export_weights_h5(
    checkpoint: str | os.PathLike[str], path: str | os.PathLike[str], model: Any = None
) -> str:
    """Writes a checkpoint's model weights as a Keras `.weights.h5` file.

    The file is what `model.save_weights` would have written at that step, so
    `model.load_weights(path)` reads it into a model of the same architecture. As with Keras'
    own files, it includes the optimizer state when there is one (the model was compiled and
    the checkpoint holds it): a compiled model whose optimizer is not built yet loads the
    weights and Keras warns that it skipped the optimizer. The file is written beside `path`
    under a temporary name and renamed into place (an existing file at `path` is replaced
    only once the new one is complete).

    Args:
        checkpoint: A prefix or a directory (its latest).
        path: The file to write; must end in `.weights.h5`.
        model: The architecture, if `model.json` cannot describe it; it receives the
            checkpoint's weights (and optimizer state, if compiled). Default: rebuilt from
            `model.json`, compiled as recorded there.

    Returns:
        `path`.

    Example:
        >>> export_weights_h5("runs/best", "best.weights.h5")
        >>> build_model().load_weights("best.weights.h5")
    """
    target = _fs.fspath(path)
    _export.check_weights_path(target)  # before any work
    return _export.write_weights_h5(_prepare(checkpoint, model, optimizer=True), target)


# -- evaluating and verifying -------------------------------------------------------------------


def evaluate_checkpoints(
    directory: str | os.PathLike[str],
    data: Any,
    *,
    model: Any = None,
    batch_size: int | None = None,
    verbose: int = 0,
) -> list[dict[str, Any]]:
    """Evaluates every kept checkpoint of `directory` on `data`, building the model once.

    The model is built (or taken) once and each checkpoint's weights are restored into it in
    turn, so Keras traces its evaluation function once, and numpy data is batched once:
    several times faster than rebuilding a model per checkpoint
    (`benchmarks/evaluate_checkpoints.py`). Loss and metrics are the ones the model is
    compiled with: pass a compiled `model` to choose them; otherwise the model is rebuilt
    from `model.json` and compiled with the compile config Keras recorded there (the loss,
    metrics and optimizer of the training run). Damaged checkpoints are skipped with a
    warning.

    Args:
        directory: A checkpoint directory.
        data: `(x, y)`, `(x, y, sample_weight)` or a `tf.data.Dataset` of batches.
        model: A compiled model of the saved architecture. Its weights are put back as they
            were when the evaluation ends. Default: rebuilt from `model.json`, or, when that
            needs the model's code, `graph/` imported once (`save_graph=True`) with each
            checkpoint restored into it.
        batch_size: For `(x, y)` data (Keras' default: 32); None for a dataset.
        verbose: 1 shows a Keras progress bar over the checkpoints.

    Returns:
        One row per checkpoint, ordered by step:
        `{"path": ..., "step": ..., "epoch": ..., "loss": ..., <metric>: ...}`.

    Raises:
        CheckpointNotFoundError: `directory` does not exist, or has neither a usable
            `model.json` nor `graph/`, and no `model` was given.
        ValueError: bad `data`/`batch_size`; the model is not compiled (pass a compiled one).

    Example:
        >>> rows = evaluate_checkpoints("runs/last", (x_test, y_test))
        >>> min(rows, key=lambda r: r["loss"])["path"]
        'runs/last/ckpt-1600'
    """
    return _evaluate.evaluate_directory(_fs.fspath(directory), data, model, batch_size, verbose)


def verify(directory_or_checkpoint: str | os.PathLike[str]) -> list[str]:
    """Reads checkpoints end to end and lists every problem, one line per damaged file.

    For a checkpoint prefix, that checkpoint; for a directory, every checkpoint in it (kept
    or already known damaged), its `checkpoint` state file, `model.json` and `assets/`.
    Every tensor is read back, so TensorFlow's per-tensor checksums find altered bytes as
    well as truncated files. Each line reads `<file>: <what is wrong>`. Nothing is written. Leftovers of an
    interrupted save are not reported (they were never kept; the next run removes them).

    Args:
        directory_or_checkpoint: A checkpoint directory or a prefix.

    Returns:
        The problems found; `[]` when everything is intact.

    Raises:
        CheckpointNotFoundError: the path is neither a directory nor a checkpoint.

    Example:
        >>> verify("runs/best")
        ['runs/best/ckpt-1200.data-00000-of-00001: 1048576 bytes, expected 4800512 (truncated or altered)']
    """  # noqa: E501
    path = _fs.fspath(directory_or_checkpoint)
    target = _layout.classify(path)
    if target is None:
        path = path.removesuffix(".index")
        raise CheckpointNotFoundError(
            f"Nothing to verify at {path}: neither a checkpoint ({path}.index) nor a directory."
        )
    return _verify.verify_target(target)[0]
