"""Reading checkpoints back: list, latest, best, restore.

`restore` matches the checkpoint's variables to the model's through the object graph stored
in the checkpoint (never by guessing key names), compares every shape and dtype first, and
assigns only when all is well, so a failed restore leaves the model as it was.
"""

from __future__ import annotations

import collections
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from keras_ckpt import _dist, _fs
from keras_ckpt.directory import STATE, parse_state, scan
from keras_ckpt.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
)
from keras_ckpt.info import CheckpointInfo, from_json, step_of
from keras_ckpt.policies import KeepBest

__all__ = ["list_checkpoints", "latest_checkpoint", "best_checkpoint", "restore"]

_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE = "VARIABLE_VALUE"


# -- listing ------------------------------------------------------------------------------------


def _foreign(directory: str) -> list[CheckpointInfo]:
    """Checkpoints a plain `tf.train.CheckpointManager` recorded (no records of ours).

    Only names inside `directory` are considered; absolute paths and `..` are ignored.
    """
    try:
        fields = parse_state(_fs.read_text(_fs.join(directory, STATE)))
    except Exception:  # no state file, or one we cannot read: nothing foreign to list
        return []
    names = fields.get("all_model_checkpoint_paths", [])
    stamps = fields.get("all_model_checkpoint_timestamps", [])
    present = set(_fs.list_dir(directory))
    out = []
    for i, name in enumerate(names):
        if "/" in name or "\\" in name or name.startswith(".") or f"{name}.index" not in present:
            continue
        match = re.search(r"-(\d+)$", name)
        saved = float(stamps[i]) if i < len(stamps) else 0.0
        out.append(
            CheckpointInfo(
                _fs.join(directory, name), int(match.group(1)) if match else i, None, {}, saved
            )
        )
    return sorted(out, key=lambda i: i.step)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Lists the kept, complete checkpoints of `directory`, oldest first.

    Damaged checkpoints are left out (`verify` names them); a missing directory gives `[]`.

    Example:
        >>> [(i.step, i.metrics["val_loss"]) for i in list_checkpoints("runs/best")]
        [(400, 0.31), (800, 0.27)]
    """
    path = _fs.fspath(directory)
    if not _fs.isdir(path):
        return []
    found = scan(path)
    if found.kept or found.damaged or found.partial:
        return found.kept
    return _foreign(path)


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
    best = KeepBest(monitor=monitor, mode=mode).best(list_checkpoints(directory))  # type: ignore[arg-type]
    return best.path if best else None


def _resolve(checkpoint: str | os.PathLike[str]) -> str:
    """A prefix for a prefix, the latest prefix for a directory."""
    path = _fs.fspath(checkpoint)
    if _fs.exists(path + ".index"):
        return path
    if _fs.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointNotFoundError(
                f"{path} holds no complete checkpoint. Train with a keras_ckpt callback into "
                "it first, or run `keras-ckpt verify` on it to see what is there."
            )
        return latest
    raise CheckpointNotFoundError(
        f"No checkpoint at {path}: neither {path}.index nor a directory of checkpoints exists."
    )


def info_of(prefix: str) -> CheckpointInfo:
    """The `CheckpointInfo` of a prefix, from its record when there is one."""
    record = prefix + ".json"
    if _fs.exists(record):
        try:
            return from_json(_fs.read_text(record), prefix)[0]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorruptError(
                f"{record} is not a valid checkpoint record ({exc}): run "
                f"`keras-ckpt verify {_fs.dirname(prefix)}`"
            ) from exc
    step = step_of(_fs.basename(prefix))
    saved = _fs.mtime(prefix + ".index") if _fs.exists(prefix + ".index") else 0.0
    return CheckpointInfo(prefix, step if step is not None else 0, None, {}, saved)


# -- reading a checkpoint -----------------------------------------------------------------------


def _data_files(prefix: str) -> list[str]:
    base = _fs.basename(prefix)
    names = _fs.list_dir(_fs.dirname(prefix))
    return [_fs.join(_fs.dirname(prefix), n) for n in names if n.startswith(base + ".data-")]


def check_sizes(prefix: str) -> None:
    """Raises `CheckpointCorruptError` if a file differs in size from what its record says."""
    record = prefix + ".json"
    if not _fs.exists(record):
        return
    try:
        files = json.loads(_fs.read_text(record)).get("files", {})
    except (ValueError, AttributeError):
        return
    directory = _fs.dirname(prefix)
    for name, expected in files.items():
        path = _fs.join(directory, name)
        if not _fs.exists(path):
            raise CheckpointCorruptError(
                f"{path} is missing: the checkpoint {prefix} is incomplete. Restore another "
                f"one (`keras-ckpt list {directory}`)."
            )
        actual = _fs.size(path)
        if actual != expected:
            raise CheckpointCorruptError(
                f"{path} is truncated or altered ({actual} of {expected} bytes): restore "
                f"another checkpoint, or run `keras-ckpt verify {directory}`"
            )


class CheckpointReader:
    """The index of one checkpoint: shapes, dtypes and object graph; `read` fetches values."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        index = prefix + ".index"
        if not _fs.exists(index):
            raise CheckpointNotFoundError(f"No checkpoint at {prefix}: {index} does not exist.")
        check_sizes(prefix)
        try:
            reader = tf.compat.v1.train.NewCheckpointReader(prefix)
            self.shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
            self.dtypes = dict(reader.get_variable_to_dtype_map())
            raw = reader.get_tensor(_GRAPH_KEY) if _GRAPH_KEY in self.shapes else None
        except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as exc:
            raise CheckpointCorruptError(
                f"{index} (or its data) is unreadable: {_short(exc)}. The checkpoint is "
                f"damaged; restore another one or run `keras-ckpt verify {_fs.dirname(prefix)}`."
            ) from exc
        self.graph = None
        if raw is not None:
            graph = trackable_object_graph_pb2.TrackableObjectGraph()
            try:
                graph.ParseFromString(raw)
            except Exception as exc:  # protobuf's DecodeError has no stable import path
                raise CheckpointCorruptError(
                    f"The object graph in {prefix}.data-* is garbled ({_short(exc)})."
                ) from exc
            self.graph = graph

    def variable_keys(self) -> list[str]:
        return sorted(k for k in self.shapes if k != _GRAPH_KEY)

    def read(self, keys: list[str]) -> list[tf.Tensor]:
        """Reads `keys` in one op (works on every file system TensorFlow knows)."""
        if not keys:
            return []
        try:
            return list(
                tf.raw_ops.RestoreV2(
                    prefix=self.prefix,
                    tensor_names=keys,
                    shape_and_slices=[""] * len(keys),
                    dtypes=[self.dtypes[k] for k in keys],
                )
            )
        except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as exc:
            files = ", ".join(_data_files(self.prefix)) or f"{self.prefix}.data-*"
            raise CheckpointCorruptError(
                f"{files} is truncated or altered ({_short(exc)}). Restore another checkpoint "
                f"or run `keras-ckpt verify {_fs.dirname(self.prefix)}`."
            ) from exc


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = re.sub(r"\{\{.*?\}\}\s*", "", text)
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__


# -- matching through the object graph ----------------------------------------------------------


def _is_variable(obj: object) -> bool:
    return hasattr(obj, "assign") and hasattr(obj, "shape") and hasattr(obj, "dtype")


def _name(obj: object) -> str:
    return str(getattr(obj, "path", None) or getattr(obj, "name", None) or type(obj).__name__)


@dataclass
class _Match:
    pairs: list[tuple[Any, str]] = field(default_factory=list)  # (live variable, key)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append("missing in the checkpoint: " + ", ".join(self.missing))
        if self.unexpected:
            out.append("unexpected in the checkpoint: " + ", ".join(self.unexpected))
        if self.shapes:
            out.append("shape mismatch: " + "; ".join(self.shapes))
        return out


def _walk(graph, start: int, live: Any, skip: str | None, seen: set[int]) -> dict[int, Any]:
    """Pairs proto nodes with live objects by child names, breadth first from `start`."""
    view = tf.train.TrackableView(live) if live is not None else None
    found: dict[int, Any] = {}
    queue = collections.deque([(start, live)])
    seen.add(start)
    while queue:
        node_id, obj = queue.popleft()
        found[node_id] = obj
        children = {}
        if obj is not None and view is not None:
            try:
                children = view.children(obj)
            except Exception:  # an object TF cannot list: its subtree is unmatched
                children = {}
        for ref in graph.nodes[node_id].children:
            if node_id == start and ref.local_name == skip:
                continue
            if ref.node_id in seen:
                continue
            seen.add(ref.node_id)
            queue.append((ref.node_id, children.get(ref.local_name)))
    return found


def _root_child(graph, name: str, node: int = 0) -> int | None:
    for ref in graph.nodes[node].children:
        if ref.local_name == name:
            return ref.node_id
    return None


def _pair(
    graph, found: dict[int, Any], reader: CheckpointReader, wanted: dict[int, Any], match: _Match
) -> None:
    """Fills `match` with the variables of `found`; `wanted` are the live ones expected."""
    matched: set[int] = set()
    for node_id, obj in found.items():
        attrs = {a.name: a for a in graph.nodes[node_id].attributes}
        if _VALUE not in attrs:
            continue
        attr = attrs[_VALUE]
        if obj is None or not _is_variable(obj):
            match.unexpected.append(attr.full_name or attr.checkpoint_key)
            continue
        key = attr.checkpoint_key
        saved = (reader.shapes.get(key), reader.dtypes.get(key))
        live_shape, live_dtype = tuple(obj.shape), tf.as_dtype(obj.dtype)
        matched.add(id(obj))
        if saved[0] is None or tuple(saved[0]) != live_shape or saved[1] != live_dtype:
            match.shapes.append(
                f"{_name(obj)}: checkpoint {tuple(saved[0] or ())} "
                f"{getattr(saved[1], 'name', '?')}, model {live_shape} {live_dtype.name}"
            )
            continue
        match.pairs.append((obj, key))
    match.missing.extend(
        f"{_name(v)} {tuple(v.shape)}" for i, v in wanted.items() if i not in matched
    )


def restore(
    model: Any, checkpoint: str | os.PathLike[str], *, strict: bool = True
) -> CheckpointInfo:
    """Loads a checkpoint into `model`, and into its optimizer if compiled.

    Args:
        model: A built model with the saved architecture.
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
    prefix = _resolve(checkpoint)
    reader = CheckpointReader(prefix)
    if reader.graph is None:
        raise CheckpointMismatchError(
            f"{prefix} has no object graph (a name-based TF1 checkpoint); it cannot be matched "
            "to a Keras model."
        )
    if not getattr(model, "built", True) or not model.variables:
        raise ValueError(
            "`model` must be built before restoring (call it on a batch, or give it an "
            f"Input). Received an unbuilt {type(model).__name__}."
        )
    graph = reader.graph
    model_node = _root_child(graph, "model")
    if model_node is None:
        roots = ", ".join(r.local_name for r in graph.nodes[0].children) or "none"
        raise CheckpointMismatchError(
            f"{prefix} was not written as tf.train.Checkpoint(model=...): its root objects are "
            f"{roots}. Read it with tf.train.Checkpoint({roots.split(', ')[0]}=model) instead."
        )
    seen: set[int] = set()
    model_side = _walk(graph, model_node, model, skip="optimizer", seen=seen)
    match = _Match()
    _pair(graph, model_side, reader, {id(v): v for v in model.variables}, match)

    optimizer = getattr(model, "optimizer", None)
    opt_node = _root_child(graph, "optimizer", model_node)
    opt_pairs: list[tuple[Any, str]] = []
    opt_problems: list[str] = []
    if optimizer is not None and opt_node is not None:
        if not getattr(optimizer, "built", True):
            with _dist.strategy_scope(model):  # a mirrored model's slots are mirrored
                optimizer.build(model.trainable_variables)
        opt_match = _Match()
        opt_side = _walk(graph, opt_node, optimizer, skip=None, seen=seen)
        _pair(graph, opt_side, reader, {id(v): v for v in optimizer.variables}, opt_match)
        opt_pairs, opt_problems = opt_match.pairs, opt_match.problems

    problems = match.problems
    if problems and strict:
        raise CheckpointMismatchError(
            f"{prefix} does not match the model; nothing was restored.\n  "
            + "\n  ".join(problems)
            + "\nRebuild the model as it was saved, or pass strict=False to restore only the "
            "variables whose path and shape match."
        )
    if problems:
        warnings.warn(
            f"restore(strict=False) from {prefix} skipped: " + "; ".join(problems),
            stacklevel=2,
        )
    if opt_problems:
        warnings.warn(
            f"The optimizer state in {prefix} does not fit the model's optimizer and was not "
            "restored (" + "; ".join(opt_problems) + "); training continues with a fresh one.",
            stacklevel=2,
        )
        opt_pairs = []
    pairs = match.pairs + opt_pairs
    values = reader.read([key for _, key in pairs])
    for (variable, _), value in zip(pairs, values, strict=True):
        variable.assign(value)
    return info_of(prefix)
