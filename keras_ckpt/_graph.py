"""The model's computation as a SavedModel (`graph/`), and checkpoints restored into it.

The TF2 counterpart of writing the `.meta` graph once and `saver.restore`-ing each checkpoint
into `tf.train.import_meta_graph`: with `save_graph=True` the first save exports the model
with Keras' `model.export` into `<directory>/graph/` (under a temporary name, renamed in;
never rewritten), and `export_saved_model` does the same into any directory. Beside the
SavedModel, a record (`keras_ckpt.json`) holds what a checkpoint needs to be matched to it:

- `variables`: one entry per variable of the SavedModel, in its order (= `model.variables`):
  the Keras path (`net/dense/kernel`, for messages), the object-graph path (child names from
  the model, the way `restore` pairs a checkpoint with a live model) and the shape and dtype.
  Imported variables are never matched by name (two of them may both be `net/kernel:0`).
- `compile`: the loss and metrics the model was compiled with, for evaluation;
- `files`: the size of every file, so `verify` finds a missing or truncated one.

An imported SavedModel is wrapped in a Keras model (one `ServeLayer` calling its `serve`
endpoint; `_graph_import`), for `predict` and `evaluate`; `restore` into it compares every
name, shape and dtype before it assigns anything. A SavedModel is a TensorFlow program:
import only directories you trust.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from keras_ckpt import _fs
from keras_ckpt._layout import temp_dir_name
from keras_ckpt._mismatch import Match, assign
from keras_ckpt._objgraph import walk
from keras_ckpt._reader import CheckpointReader, child_of, short, stored_nodes
from keras_ckpt.errors import CheckpointCorruptError, CheckpointError, CheckpointMismatchError

GRAPH_DIR = "graph"
RECORD = "keras_ckpt.json"
FORMAT = 1
_COMPILE_KEYS = ("loss", "loss_weights", "metrics", "weighted_metrics")


# -- writing ------------------------------------------------------------------------------------


def variable_record(model: Any) -> list[dict[str, Any]]:
    """The record's `variables`: one entry per `model.variables`, in that order."""
    paths = walk(model, optimizer=False, tolerant=True).paths()
    return [
        {
            "path": str(getattr(v, "path", None) or v.name),
            "object": paths.get(id(v)),  # None: state a checkpoint never holds (seeds)
            "shape": [int(d) for d in v.shape],
            "dtype": tf.as_dtype(v.dtype).name,
        }
        for v in model.variables
    ]


def compile_record(model: Any) -> dict[str, Any] | None:
    """The loss and metrics `model` was compiled with (serialised by Keras), or None."""
    if not getattr(model, "compiled", False):
        return None
    try:
        config = model.get_compile_config() or {}
        out = {k: config.get(k) for k in _COMPILE_KEYS}
        json.dumps(out)
    except Exception:  # an object Keras cannot serialise: evaluate needs model= then
        return None
    return out if out.get("loss") is not None else None


def _file_sizes(root: str) -> dict[str, int]:
    sizes = {}
    for dirpath, _, files in _fs.walk(root):
        rel = dirpath[len(root) :].strip("/\\").replace("\\", "/")
        for name in files:
            key = f"{rel}/{name}" if rel else name
            if key != RECORD:
                sizes[key] = _fs.size(_fs.join(dirpath, name))
    return sizes


def _write_into(model: Any, path: str) -> None:
    """The SavedModel of `model` in `path`, then its record (last: it marks completion)."""
    graph = imported(model)
    if graph is not None:  # an imported SavedModel: saved again with its variables' values
        loaded = graph.loaded
        tf.saved_model.save(loaded, path, signatures=dict(loaded.signatures))
        record = dict(graph.record) if graph.record else None
    else:
        record = {"variables": variable_record(model), "compile": compile_record(model)}
        model.export(path, format="tf_saved_model", verbose=False)
    if record is not None:
        record.update(format=FORMAT, files=_file_sizes(path))
        _fs.write_atomic(_fs.join(path, RECORD), json.dumps(record, indent=1))


def _make_durable(root: str) -> None:
    """fsyncs every file and folder under local `root` (so a crash never leaves an empty one)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fs.fsync_file(os.path.join(dirpath, name))
        _fs.fsync_dir(dirpath)


def write_saved_model(model: Any, export_dir: str, temp_name: str | None = None) -> str:
    """Exports `model` with its record, under a temporary name renamed to `export_dir`.

    `export_dir` must not exist or be empty (checked by the caller). Non-local file systems
    have no directory rename: the files go straight to `export_dir`, the record last.
    """
    if not _fs.is_local(export_dir):
        _write_into(model, export_dir)
        return export_dir
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    if temp_name is None:
        prefix = f".{os.path.basename(export_dir)}.tmp-"
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    else:
        tmp = os.path.join(parent, temp_name)
    try:
        _write_into(model, tmp)
        _make_durable(tmp)  # complete on disk before its name appears
        if os.path.isdir(export_dir):
            os.rmdir(export_dir)  # empty: checked before
        os.rename(tmp, export_dir)
        _fs.fsync_dir(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return export_dir


def graph_dir(directory: str) -> str:
    return _fs.join(directory, GRAPH_DIR)


def write_graph(directory: str, model: Any) -> bool:
    """Writes `<directory>/graph/` unless it exists (never rewritten); True if written.

    Raises:
        CheckpointError: the model cannot be exported (not built, or Keras cannot trace it).
    """
    target = graph_dir(directory)
    if _fs.exists(target):
        return False
    try:
        write_saved_model(model, target, temp_name=temp_dir_name("graph"))
    except Exception as exc:
        raise CheckpointError(
            f"save_graph=True, but the model could not be exported as a SavedModel to "
            f"{target} ({short(exc)}). Build the model (call it on a batch) before the first "
            "save, or pass save_graph=False."
        ) from exc
    return True


# -- reading ------------------------------------------------------------------------------------


def read_record(export_dir: str) -> dict[str, Any] | None:
    """The record of `export_dir`, None if there is none.

    Raises:
        CheckpointCorruptError: the record is not the JSON `_write_into` writes.
    """
    path = _fs.join(export_dir, RECORD)
    if not _fs.exists(path):
        return None
    try:
        record = json.loads(_fs.read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(f"{path} is not valid JSON ({exc}).") from exc
    if not (
        isinstance(record, dict)
        and isinstance(record.get("variables"), list)
        and isinstance(record.get("files"), dict)
        and all(isinstance(e, dict) and "path" in e for e in record["variables"])
    ):
        raise CheckpointCorruptError(f"{path} is not a keras_ckpt SavedModel record.")
    return record


def problems(export_dir: str) -> list[str]:
    """`verify` lines for a SavedModel with a record: missing, truncated or altered files."""
    record_path = _fs.join(export_dir, RECORD)
    fix = f"delete {export_dir} (a run with save_graph=True writes it again)"
    if not _fs.exists(record_path):
        return [f"{record_path}: missing, so {export_dir} is incomplete: {fix}"]
    try:
        record = read_record(export_dir) or {}
    except CheckpointCorruptError as exc:
        return [f"{record_path}: {exc}"]
    lines = []
    for name, expected in sorted(record["files"].items()):
        path = _fs.join(export_dir, *name.split("/"))
        if not _fs.exists(path):
            lines.append(f"{path}: missing (listed in {RECORD}): {fix}")
        elif _fs.size(path) != expected:
            lines.append(
                f"{path}: {_fs.size(path)} bytes, expected {expected} (truncated or altered): "
                f"{fix}"
            )
    return lines


@dataclass(eq=False)
class ImportedGraph:
    """An imported SavedModel, its variables (in record order) and its record."""

    loaded: Any
    variables: list[Any]
    record: dict[str, Any] | None
    source: str

    def restore(
        self, prefix: str, *, strict: bool, stacklevel: int = 3, record: dict | None = None
    ) -> bool:
        """Assigns checkpoint `prefix`'s model variables (all checked first); returns False.

        `record`: the parsed `ckpt-N.json`, if the caller has read it (no second read).
        """
        if self.record is None:
            raise CheckpointMismatchError(
                f"{self.source} has no {RECORD} (it was not written by keras_ckpt), so its "
                "variables cannot be matched to a checkpoint. Export it with "
                "keras_ckpt.export_saved_model(checkpoint, export_dir)."
            )
        reader = CheckpointReader(prefix, record)
        saved = _checkpoint_variables(reader, prefix)
        match, used = Match(), set()
        for variable, entry in zip(self.variables, self.record["variables"], strict=True):
            if entry.get("object") is None:
                continue  # random-number state: never in a checkpoint
            where = tuple(entry["object"])
            if where not in saved:
                match.miss(variable, entry["path"])
                continue
            used.add(where)
            match.add(variable, saved[where][0], reader, entry["path"])
        match.unexpected.extend(label for where, (_, label) in saved.items() if where not in used)
        match.report(
            prefix,
            strict=strict,
            against=f"the SavedModel {self.source}",
            fix="Restore a checkpoint of the same architecture",
            stacklevel=stacklevel,
        )
        assign(reader, match.pairs)  # every value read before any assign
        return False

    def values(self) -> list[Any]:
        return [tf.identity(v) for v in self.variables]

    def assign(self, values: list[Any]) -> None:
        for variable, value in zip(self.variables, values, strict=True):
            variable.assign(value)


def _checkpoint_variables(reader: CheckpointReader, prefix: str) -> dict[tuple, tuple[str, str]]:
    """Object-graph path (from the model) -> (checkpoint key, Keras path) of each variable."""
    graph = reader.object_graph()
    start = child_of(graph, "model")
    if start is None:
        raise CheckpointMismatchError(
            f"{prefix} was not written as tf.train.Checkpoint(model=...); it cannot be "
            "restored into a SavedModel."
        )
    return {
        node.path: (node.value.checkpoint_key, node.value.full_name or node.value.checkpoint_key)
        for node in stored_nodes(graph, start, skip="optimizer")
        if node.value is not None
    }


class ServeLayer(keras.layers.Layer):
    """Calls an imported SavedModel's serving function; it has no Keras weights to train."""

    def __init__(self, graph: ImportedGraph, function: Any, style: str, unwrap: bool) -> None:
        super().__init__(trainable=False, name="saved_model")
        self.graph = graph
        self.function = function
        self.style = style
        self.unwrap = unwrap

    def call(self, inputs: Any) -> Any:
        if self.style == "kwargs":
            outputs = self.function(**inputs)
        elif self.style == "args":
            outputs = self.function(*inputs)
        else:
            outputs = self.function(inputs)
        if self.unwrap and isinstance(outputs, dict) and len(outputs) == 1:
            outputs = next(iter(outputs.values()))
        return outputs


def imported(model: Any) -> ImportedGraph | None:
    """The `ImportedGraph` behind a model from `import_saved_model`, else None.

    Raises:
        CheckpointMismatchError: `model` is a bare `tf.saved_model.load` object.
    """
    if isinstance(model, ServeLayer):
        return model.graph
    for layer in getattr(model, "layers", None) or ():
        if isinstance(layer, ServeLayer):
            return layer.graph
    if not isinstance(model, keras.layers.Layer) and hasattr(model, "signatures"):
        raise CheckpointMismatchError(
            "A tf.saved_model.load object cannot be matched to a checkpoint (its variables "
            "have no Keras paths). Load the directory with keras_ckpt.load_saved_model("
            "export_dir) (an export_saved_model directory) and restore into that model."
        )
    return None


def get_weights(model: Any) -> list[Any]:
    """The values of `model`'s weights: a rebuilt model's, or an imported graph's variables."""
    graph = imported(model)
    return graph.values() if graph is not None else model.get_weights()


def set_weights(model: Any, values: list[Any]) -> None:
    """Puts back values from `get_weights` (into a rebuilt model or an imported graph)."""
    graph = imported(model)
    if graph is not None:
        graph.assign(values)
    else:
        model.set_weights(values)
