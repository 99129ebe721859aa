"""Importing a SavedModel (`graph/` or an export) as a Keras model for inference.

The model is one layer (`_graph.ServeLayer`) calling the SavedModel's `serve` endpoint (or
its `serving_default` signature) on `keras.Input`s shaped like its input signature, so it
needs none of the original code. It has no Keras weights: `restore` assigns the imported
variables through the SavedModel's record (`_graph.ImportedGraph`). With `compile=True` it is
compiled with the loss and metrics recorded at export time, when Keras can rebuild them by
name in safe mode (checked first like `model.json`).
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import tensorflow as tf

from keras_ckpt import _fs, _model_json
from keras_ckpt._graph import RECORD, ImportedGraph, ServeLayer, graph_dir, problems, read_record
from keras_ckpt._reader import TF_READ_ERRORS, short
from keras_ckpt.errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError

__all__ = ["import_saved_model", "load_directory"]


def _inputs_like(spec: Any, name: str | None = None) -> Any:
    """A structure of `keras.Input`s matching a structure of `tf.TensorSpec`s."""
    if isinstance(spec, dict):
        return {k: _inputs_like(v, str(k)) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [_inputs_like(v) for v in spec]
    return keras.Input(batch_shape=tuple(spec.shape), dtype=spec.dtype.name, name=name)


def _endpoint(loaded: Any, export_dir: str) -> tuple[Any, Any, str, bool]:
    """The function to call, its input structure, how to pass inputs, unwrap dict outputs."""
    serve = getattr(loaded, "serve", None)
    functions = getattr(serve, "concrete_functions", None)
    if functions:
        args, kwargs = functions[0].structured_input_signature
        if kwargs and not args:
            return serve, kwargs, "kwargs", False
        if len(args) == 1:
            return serve, args[0], "one", False
        return serve, list(args), "args", False
    if "serving_default" in loaded.signatures:
        signature = loaded.signatures["serving_default"]
        return signature, signature.structured_input_signature[1], "kwargs", True
    raise ValueError(
        f"{export_dir} has neither a `serve` endpoint nor a `serving_default` signature; "
        "load it with tf.saved_model.load."
    )


def _compile(model: keras.Model, config: dict[str, Any] | None, where: str) -> None:
    if not config:
        return
    why = _model_json.refusal(config, None, where)
    try:
        if why:
            raise ValueError(why)
        kwargs = keras.saving.deserialize_keras_object(config, safe_mode=True)
        model.compile(jit_compile=False, **{k: v for k, v in kwargs.items() if v is not None})
    except Exception as exc:  # the model still predicts; evaluate needs a compile
        warnings.warn(
            f"The loss and metrics recorded in {where} could not be rebuilt ({short(exc)}); "
            "the model is returned uncompiled: compile it with the loss and metrics to report.",
            stacklevel=4,
        )


def import_saved_model(export_dir: str, *, compile: bool = False) -> keras.Model:
    """A Keras model over the SavedModel in `export_dir` (inference only; a restore target).

    Raises:
        CheckpointNotFoundError: no `saved_model.pb` in `export_dir`.
        CheckpointCorruptError: a file listed in the record is missing or has another size,
            or TensorFlow cannot read the SavedModel.
    """
    record = read_record(export_dir)
    if record is not None:
        damaged = problems(export_dir)
        if damaged:
            raise CheckpointCorruptError(damaged[0])
    if not _fs.exists(_fs.join(export_dir, "saved_model.pb")):
        raise CheckpointNotFoundError(
            f"{export_dir} is not a SavedModel directory (no saved_model.pb). Write one with "
            "keras_ckpt.export_saved_model(checkpoint, export_dir)."
        )
    try:
        loaded = tf.saved_model.load(export_dir)
    except (*TF_READ_ERRORS, OSError) as exc:
        raise CheckpointCorruptError(
            f"{export_dir} could not be read as a SavedModel ({short(exc)})."
        ) from exc
    variables = list(getattr(loaded, "variables", None) or [])
    if record is not None:
        entries = record["variables"]
        described = [(tuple(e.get("shape", ())), e.get("dtype")) for e in entries]
        actual = [(tuple(v.shape), tf.as_dtype(v.dtype).name) for v in variables]
        if described != actual:
            raise CheckpointCorruptError(
                f"{_fs.join(export_dir, RECORD)} does not describe the variables of "
                f"{export_dir} ({len(entries)} recorded, {len(variables)} found, or other "
                "shapes): the directory was altered."
            )
    graph = ImportedGraph(loaded, variables, record, export_dir)
    function, structure, style, unwrap = _endpoint(loaded, export_dir)
    inputs = _inputs_like(structure)
    outputs = ServeLayer(graph, function, style, unwrap)(inputs)
    model = keras.Model(inputs, outputs, name="saved_model")
    if compile and record is not None:
        _compile(model, record.get("compile"), _fs.join(export_dir, RECORD))
    return model


def load_directory(directory: str, cause: Exception) -> keras.Model:
    """The model of `directory` from `graph/`, when `model.json` failed with `cause`.

    Raises:
        The `cause` (same type, message extended) when there is no `graph/`.
    """
    target = graph_dir(directory)
    if not _fs.isdir(target):
        message = (  # `cause` already says what works (model.json's refusals do)
            f"{cause} There is no {target} either (written by training with save_graph=True)."
        )
        try:
            error = type(cause)(message)
        except Exception:
            error = CheckpointError(message)
        raise error from cause
    return import_saved_model(target, compile=True)


_NOT_REBUILDABLE = (ValueError, CheckpointNotFoundError, CheckpointCorruptError)


def build_model(directory: str, custom_objects: Any = None, *, compile: bool = True) -> Any:
    """The model of `directory` from `model.json`, else imported from `graph/` (inference)."""
    try:
        return _model_json.build_model(directory, custom_objects, compile=compile)
    except _NOT_REBUILDABLE as exc:  # needs code (subclassed, unregistered), or no model.json
        return load_directory(directory, exc)
