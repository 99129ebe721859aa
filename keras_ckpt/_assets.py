"""Layer assets (adapted lookup vocabularies) kept beside the checkpoints of a directory.

A `StringLookup`, `IntegerLookup` or `TextVectorization` adapted before training holds its
vocabulary in a lookup table: not a variable, so not in a TF checkpoint, and not in
`model.json` either. Keras' `.keras` format keeps it as an *asset*: layers with
`save_assets(dir)` / `load_assets(dir)` write and read plain files (`vocabulary.txt`).
Training never changes them (`fit` does not adapt), so a directory keeps them once::

    assets/
      <layer path>/vocabulary.txt     what the layer's `save_assets` wrote
      index.json                      written last: {layer path: {file: size}}; the commit

A layer's path is its name under the model (`inner/lookup` for a lookup layer in a nested
model `inner`), or the attribute name inside a non-model layer. The folder counts only once
`index.json` is there, so a crash while writing leaves no half-kept assets. Every restore
into a model with such layers (`restore`, `resume`, `load_model`, exports, evaluations) loads
them, and a layer that was never adapted is never restored silently without them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any

import keras
import tensorflow as tf

from keras_ckpt import _fs
from keras_ckpt.errors import CheckpointCorruptError, CheckpointMismatchError

logger = logging.getLogger(__name__)

ASSETS = "assets"
INDEX = "index.json"

Files = dict[str, bytes]  # path inside the layer's asset folder -> content


def asset_layers(model: Any) -> dict[str, Any]:
    """The layers of `model` with `save_assets`/`load_assets`, by path."""
    found: dict[str, Any] = {}
    seen = {id(model)}

    def visit(obj: Any, path: str) -> None:
        if isinstance(obj, keras.Model):
            children = {layer.name: layer for layer in obj.layers}
        else:
            try:
                children = tf.train.TrackableView(obj).children(obj)
            except Exception:  # an object TF cannot list holds no layers we can name
                return
        for name, child in children.items():
            if id(child) in seen or isinstance(child, keras.optimizers.Optimizer):
                continue
            seen.add(id(child))
            if isinstance(child, keras.layers.Layer):
                here = f"{path}/{name}" if path else name
                if callable(getattr(child, "save_assets", None)) and callable(
                    getattr(child, "load_assets", None)
                ):
                    found[here] = child
                else:
                    visit(child, here)
            elif not isinstance(child, tf.Variable):
                visit(child, path)  # a list or dict of layers: no name of its own

    visit(model, "")
    return found


def _read_tree(root: str) -> Files:
    files: Files = {}
    for base, _, names in os.walk(root):
        for name in names:
            full = os.path.join(base, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, root).replace(os.sep, "/")] = f.read()
    return files


def _live(layer: Any) -> Files:
    """What `layer.save_assets` writes now (Keras writes with `open`: a local scratch dir)."""
    scratch = tempfile.mkdtemp(prefix="keras_ckpt-assets-")
    try:
        layer.save_assets(scratch)
        return _read_tree(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def live_assets(model: Any) -> dict[str, Files]:
    """The assets `model`'s layers would save, by layer path (layers that save none left out)."""
    assets = {path: _live(layer) for path, layer in asset_layers(model).items()}
    return {path: files for path, files in assets.items() if files}


def read(directory: str) -> dict[str, Files] | None:
    """The assets kept in `directory`, or None if it keeps none (no `assets/index.json`).

    Raises:
        CheckpointCorruptError: the index is garbled or a file it names is missing or altered.
    """
    root = _fs.join(directory, ASSETS)
    index_path = _fs.join(root, INDEX)
    if not _fs.exists(index_path):
        return None
    try:
        index = json.loads(_fs.read_text(index_path))
        layers = index["layers"]
        assets: dict[str, Files] = {}
        for path, sizes in layers.items():
            files = {}
            for name, size in sizes.items():
                data = _fs.read_bytes(_fs.join(root, *path.split("/"), *name.split("/")))
                if len(data) != size:
                    raise ValueError(f"{path}/{name} has {len(data)} bytes, expected {size}")
                files[name] = data
            assets[path] = files
    except (ValueError, KeyError, TypeError, AttributeError, tf.errors.OpError) as exc:
        raise CheckpointCorruptError(
            f"The layer assets in {root} (lookup vocabularies) are damaged: {exc}. Restore "
            f"them from a copy, or delete {root} and restore into a model whose lookup "
            "layers are adapted as in training."
        ) from exc
    return assets


def write_once(directory: str, model: Any) -> None:
    """Keeps `model`'s layer assets in `directory` (the first save of a manager).

    Nothing is written when the directory already keeps the same assets, or the model has
    none. Different ones (a new run in an old directory, adapted anew) replace them, with a
    log line: the newest checkpoints are the ones that go with the live vocabulary.
    """
    assets = live_assets(model)
    if not assets:
        return
    root = _fs.join(directory, ASSETS)
    index_path = _fs.join(root, INDEX)
    try:
        kept = read(directory)
    except CheckpointCorruptError:
        kept = None
    if kept == assets:
        return
    if _fs.exists(root):
        if kept is not None:
            logger.warning("Replacing the layer assets in %s: the model's differ.", root)
        _fs.remove(index_path)  # uncommitted first, then rewritten
        _fs.rmtree(root)
    for path, files in assets.items():
        for name, data in files.items():
            full = _fs.join(root, *path.split("/"), *name.split("/"))
            _fs.makedirs(_fs.dirname(full))
            _fs.write_bytes(full, data)
    index = {"layers": {p: {n: len(d) for n, d in f.items()} for p, f in assets.items()}}
    _fs.write_atomic(index_path, json.dumps(index, indent=1, sort_keys=True))


def _never_adapted(layer: Any) -> bool:
    vocabulary = getattr(layer, "get_vocabulary", None)
    if not callable(vocabulary):
        return False
    try:
        return len(vocabulary(include_special_tokens=False)) == 0
    except Exception:  # a layer we cannot ask is not judged
        return False


def plan(
    model: Any, directory: str, *, strict: bool, stacklevel: int = 3
) -> list[tuple[Any, Files]]:
    """Which of `model`'s layers take which kept assets of `directory` (nothing changed yet).

    Raises:
        CheckpointMismatchError: `strict`, and a layer that was never adapted finds no
            assets in `directory` (its predictions would be silently wrong). Without
            `strict`, a warning says so instead.
        CheckpointCorruptError: the kept assets are damaged.
    """
    layers = asset_layers(model)
    if not layers:
        return []
    kept = read(directory) or {}
    todo = []
    empty = []
    for path, layer in layers.items():
        files = kept.get(path)
        if files is None:
            if _never_adapted(layer):
                empty.append(f"{path} ({type(layer).__name__})")
            continue
        if _live(layer) != files:
            todo.append((layer, files))
    if empty:
        root = _fs.join(directory, ASSETS)
        why = (
            f"{', '.join(empty)} of the model has no vocabulary (never adapted), and {root} "
            "keeps none for it (the directory was written before keras_ckpt kept lookup "
            "vocabularies, or the layer is named differently). Adapt it (or set_vocabulary) "
            "as in training before restoring."
        )
        if strict:
            raise CheckpointMismatchError(f"Nothing was restored: {why}")
        warnings.warn(
            f"restore(strict=False) restored no vocabulary: {why}", stacklevel=stacklevel
        )
    return todo


def load(model: Any, todo: list[tuple[Any, Files]]) -> None:
    """Loads planned assets into their layers; the model's traced functions are rebuilt."""
    for layer, files in todo:
        scratch = tempfile.mkdtemp(prefix="keras_ckpt-assets-")
        try:
            for name, data in files.items():
                full = os.path.join(scratch, *name.split("/"))
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(data)
            layer.load_assets(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if todo:
        for name in ("train_function", "test_function", "predict_function"):
            if getattr(model, name, None) is not None:
                setattr(model, name, None)  # traced with the old tables
