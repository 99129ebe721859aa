"""Writing a restored model out: a SavedModel (Keras' export) or a Keras `.weights.h5`.

Both are written under a temporary name beside the target and renamed into place, so an
interrupted export never leaves a half-written artifact under the requested name, and an
existing non-empty export directory is never overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import keras

from keras_ckpt import _fs, _graph, _graph_import, _model_json
from keras_ckpt._layout import Located
from keras_ckpt._restore import restore_into

WEIGHTS_SUFFIX = ".weights.h5"


def model_to_export(found: Located, model: Any, *, optimizer: bool, stacklevel: int = 4) -> Any:
    """The model with the state of checkpoint `found`: `model`, else one rebuilt.

    Rebuilt from `model.json` (compiled as recorded, for a `.weights.h5` with optimizer
    state); for a SavedModel (`optimizer=False`) from `model.json`, else the directory's
    `graph/`. The record `found` carries is handed on: nothing is read twice.
    """
    directory = _fs.dirname(found.prefix)
    if model is None and optimizer:
        model = _model_json.build_model(directory, compile=optimizer)
    elif model is None:  # a SavedModel export: from graph/ when model.json cannot rebuild it
        model = _graph_import.build_model(directory, compile=False)
    restore_into(
        model,
        found.prefix,
        strict=True,
        optimizer=optimizer,
        stacklevel=stacklevel,
        record=found.record,
    )
    return model


def check_export_dir(export_dir: str) -> None:
    """Refuses an `export_dir` that already holds something."""
    if _fs.exists(export_dir) and (not _fs.isdir(export_dir) or _fs.list_dir(export_dir)):
        raise ValueError(
            f"`export_dir` already exists and is not empty: {export_dir}. Choose a new "
            "directory (nothing there was changed)."
        )


def write_saved_model(model: Any, export_dir: str) -> str:
    """Exports `model` (weights already restored) with Keras' `model.export`, plus the record
    that makes the export a restore target (`_graph`)."""
    return _graph.write_saved_model(model, export_dir)


def read_saved_model(export_dir: str) -> keras.Model:
    """A Keras model over the SavedModel's `serve` endpoint (or `serving_default`)."""
    return _graph_import.import_saved_model(export_dir)


def check_weights_path(path: str) -> None:
    if not path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(
            f"`path` must end in {WEIGHTS_SUFFIX!r} (Keras reads weights files by that "
            f"suffix). Received: path={path!r}"
        )
    if _fs.isdir(path):
        raise ValueError(f"`path` is a directory: {path}. Give a file name ending in .weights.h5.")


def write_weights_h5(model: Any, path: str) -> str:
    """Writes `model.save_weights` output to `path` atomically (temp file, then rename)."""
    if _fs.is_local(path):
        directory = os.path.abspath(_fs.dirname(path) or ".")
        os.makedirs(directory, exist_ok=True)
        scratch = None
    else:  # h5py writes local files only: write in a scratch folder, then copy over
        directory = scratch = tempfile.mkdtemp(prefix="keras_ckpt-export-")
    tmp = os.path.join(directory, _fs.temp_name(".export") + WEIGHTS_SUFFIX)
    try:
        model.save_weights(tmp)
        _fs.fsync_file(tmp)
        if scratch is None:
            os.replace(tmp, path)
            _fs.fsync_dir(directory)
        else:
            with open(tmp, "rb") as f:
                _fs.write_atomic(path, f.read())
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return path


def replace_saved_model(model: Any, export_dir: str) -> str:
    """Exports `model` to `export_dir`, replacing the SavedModel there (`keras_ckpt.watch`).

    The new one is written completely under a temporary name beside `export_dir`, then the
    old one is renamed away and the new one renamed in: a reader finds the old or the new
    model, never a mix (on a local disk two renames; elsewhere file by file). Leftovers of a
    replacement killed midway are put right first.
    """
    parent, base = _fs.dirname(export_dir), _fs.basename(export_dir)
    _recover(parent, base)
    token = _fs.temp_name("")[-12:]
    fresh = _fs.join(parent, f".{base}.tmp-{token}")
    old = _fs.join(parent, f".{base}.old-{token}")
    try:
        write_saved_model(model, fresh)
        if _fs.exists(export_dir):
            _move(export_dir, old)
        _move(fresh, export_dir)
    finally:
        _fs.rmtree(fresh)
    _fs.rmtree(old)
    return export_dir


def _move(src: str, dst: str) -> None:
    """Renames folder `src` to `dst` (absent): one rename on a local disk, else file by file.

    Object stores and `ram://` have no folders to rename: each file is renamed on its own.
    """
    if _fs.is_local(src):
        _fs.rename(src, dst)
        return
    _fs.makedirs(dst)
    for name in _fs.list_dir(src):
        path = _fs.join(src, name)
        if _fs.isdir(path):
            _move(path, _fs.join(dst, name))
        else:
            _fs.rename(path, _fs.join(dst, name))
    _fs.rmtree(src)


def _recover(parent: str, base: str) -> None:
    """Puts `base` back if a replacement was killed between its renames; drops temporaries."""
    olds = [n for n in _fs.list_dir(parent) if n.startswith(f".{base}.old-")]
    if olds and not _fs.exists(_fs.join(parent, base)):
        _move(_fs.join(parent, olds[0]), _fs.join(parent, base))
    for name in _fs.list_dir(parent):
        if name.startswith((f".{base}.tmp-", f".{base}.old-")):
            _fs.rmtree(_fs.join(parent, name))
