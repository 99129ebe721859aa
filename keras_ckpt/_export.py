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

from keras_ckpt import _fs, _graph, _graph_import

WEIGHTS_SUFFIX = ".weights.h5"


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
