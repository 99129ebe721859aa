"""Reading one checkpoint: its index (shapes, dtypes, object graph) and its values.

Every failure of TensorFlow's readers (checksum mismatches, truncated files, which surface as
a bare `IndexError: Read less bytes than requested`, garbled tables) is translated here into a
`CheckpointCorruptError` naming the damaged file. `RestoreV2` works on every file system
TensorFlow knows (`tf.train.list_variables` cannot read `ram://`).
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from keras_ckpt import _fs
from keras_ckpt._layout import checkpoint_files, read_record, size_mismatches
from keras_ckpt.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
)
from keras_ckpt.errors import short_reason as short

GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"  # the key of the serialised object graph
VARIABLE_VALUE = "VARIABLE_VALUE"  # the attribute name of a variable's value in that graph

# What TensorFlow raises for a damaged bundle: OpError subclasses (DataLoss, OutOfRange, ...),
# IndexError for a short read, and ValueError/RuntimeError from the pywrap layer.
TF_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, RuntimeError)

_SHARD_RE = re.compile(r"shard (\d+)")


def data_files(prefix: str) -> list[str]:
    """The `.data-*` shards of `prefix` that exist, sorted (`_layout.checkpoint_files`)."""
    base = _fs.basename(prefix)
    directory = _fs.dirname(prefix)
    own = checkpoint_files(base, _fs.list_dir(directory))
    return [_fs.join(directory, n) for n in own if n != f"{base}.index"]


def blame(prefix: str, exc: BaseException, default: str) -> str:
    """The file a TensorFlow read error points at: a data shard, all shards, or `default`."""
    text = short(exc)
    shards = data_files(prefix)
    match = _SHARD_RE.search(text)
    if match:
        tag = f".data-{int(match.group(1)):05d}-of-"
        named = [s for s in shards if tag in _fs.basename(s)]
        return named[0] if named else (", ".join(shards) or f"{prefix}.data-*")
    if "Checksum does not match" in text or "Read less bytes" in text:
        return ", ".join(shards) or f"{prefix}.data-*"
    return default


def check_sizes(prefix: str, record: dict[str, Any] | None = None) -> None:
    """Raises `CheckpointCorruptError` if a file differs in size from what its record says.

    `record`: the parsed `ckpt-N.json`, if the caller has read it (no second read).
    """
    if record is None:
        try:
            record = read_record(prefix)[1]
        except CheckpointCorruptError:  # garbled: nothing to compare with (verify names it)
            return
        if record is None:
            return
    try:
        files = record.get("files", {})
    except AttributeError:
        return
    directory = _fs.dirname(prefix)
    for name, actual, expected in size_mismatches(directory, files):
        path = _fs.join(directory, name)
        if actual is None:
            raise CheckpointCorruptError(
                f"{path} is missing: the checkpoint {prefix} is incomplete. Restore another "
                f"one (`keras-ckpt list {directory}`).",
                path=prefix,
                file=path,
                reason="missing",
            )
        raise CheckpointCorruptError(
            f"{path} is truncated or altered ({actual} of {expected} bytes): restore "
            f"another checkpoint, or run `keras-ckpt verify {directory}`",
            path=prefix,
            file=path,
            reason=f"{actual} of {expected} bytes",
        )


class CheckpointReader:
    """The index of one checkpoint: shapes, dtypes and object graph; `read` fetches values."""

    def __init__(self, prefix: str, record: dict[str, Any] | None = None) -> None:
        """`record`: the parsed `ckpt-N.json`, if the caller has read it (no second read)."""
        self.prefix = prefix
        index = prefix + ".index"
        if not _fs.exists(index):
            raise CheckpointNotFoundError(
                f"No checkpoint at {prefix}: {index} does not exist.", path=prefix, file=index
            )
        check_sizes(prefix, record)
        try:
            reader = tf.compat.v1.train.NewCheckpointReader(prefix)
            self.shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
            self.dtypes = dict(reader.get_variable_to_dtype_map())
            raw = reader.get_tensor(GRAPH_KEY) if GRAPH_KEY in self.shapes else None
        except TF_READ_ERRORS as exc:
            culprit = blame(prefix, exc, index)
            raise CheckpointCorruptError(
                f"{culprit} is unreadable: {short(exc)}. The checkpoint "
                f"is damaged; restore another one or run `keras-ckpt verify "
                f"{_fs.dirname(prefix)}`.",
                path=prefix,
                file=culprit,
                reason=short(exc),
            ) from exc
        self.graph = None
        if raw is not None:
            graph = trackable_object_graph_pb2.TrackableObjectGraph()
            try:
                graph.ParseFromString(raw)
            except Exception as exc:  # protobuf's DecodeError has no stable import path
                raise CheckpointCorruptError(
                    f"The object graph in {prefix}.data-* is garbled ({short(exc)}).",
                    path=prefix,
                    reason=short(exc),
                ) from exc
            self.graph = graph

    def object_graph(self) -> Any:
        """The stored object graph.

        Raises:
            CheckpointMismatchError: the checkpoint has none (a name-based TF1 checkpoint).
        """
        if self.graph is None:
            raise CheckpointMismatchError(
                f"{self.prefix} has no object graph (a name-based TF1 checkpoint); it cannot "
                "be matched to a Keras model."
            )
        return self.graph

    def variable_keys(self) -> list[str]:
        return sorted(k for k in self.shapes if k != GRAPH_KEY)

    def nbytes(self, key: str) -> int:
        """The size of one tensor's values (strings count as 1 byte per element)."""
        count = 1
        for dim in self.shapes.get(key, ()):
            count *= int(dim)
        return count * max(tf.as_dtype(self.dtypes[key]).size, 1)

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
        except TF_READ_ERRORS as exc:
            files = blame(self.prefix, exc, ", ".join(data_files(self.prefix)))
            raise CheckpointCorruptError(
                f"{files or self.prefix + '.data-*'} is truncated or altered ({short(exc)}). "
                f"Restore another checkpoint or run `keras-ckpt verify "
                f"{_fs.dirname(self.prefix)}`.",
                path=self.prefix,
                file=files or None,
                reason=short(exc),
            ) from exc


def describe(prefix: str, exc: CheckpointCorruptError) -> str:
    """`<file>: <what TensorFlow found>` for a `CheckpointCorruptError` raised here."""
    cause = exc.__cause__
    if isinstance(cause, TF_READ_ERRORS):
        return f"{blame(prefix, cause, prefix + '.index')}: {short(cause)}"
    return str(exc)


# -- the stored object graph ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredNode:
    """One node of a stored object graph, as `stored_nodes` reaches it."""

    node: int  # its index in `graph.nodes`
    path: tuple[str, ...]  # the child names leading to it from the walk's start
    parent: int | None  # the node it was reached from; None for the start
    value: Any  # its VARIABLE_VALUE attribute (`checkpoint_key`, `full_name`), or None


def child_of(graph: Any, name: str, node: int = 0) -> int | None:
    """The node that `node` (default: the root) names `name` (`model`, `optimizer`), or None."""
    for ref in graph.nodes[node].children:
        if ref.local_name == name:
            return ref.node_id
    return None


def stored_nodes(
    graph: Any, start: int, *, skip: str | None = None, seen: set[int] | None = None
) -> list[StoredNode]:
    """The nodes reached from `start`, breadth first, each once: the one walk of a stored graph.

    Args:
        graph: A `TrackableObjectGraph` (`CheckpointReader.graph`).
        start: Where the walk starts (`child_of(graph, "model")`; 0: the root).
        skip: A child of `start` not entered (`"optimizer"`, for the model's own variables).
        seen: Nodes already reached by an earlier walk: not entered again (updated).
    """
    seen = set() if seen is None else seen
    seen.add(start)
    found = [StoredNode(start, (), None, _value(graph.nodes[start]))]
    queue = collections.deque(found)
    while queue:
        here = queue.popleft()
        for ref in graph.nodes[here.node].children:
            if (here.node == start and ref.local_name == skip) or ref.node_id in seen:
                continue
            seen.add(ref.node_id)
            node = graph.nodes[ref.node_id]
            there = StoredNode(ref.node_id, (*here.path, ref.local_name), here.node, _value(node))
            found.append(there)
            queue.append(there)
    return found


def _value(node: Any) -> Any:
    values = [a for a in node.attributes if a.name == VARIABLE_VALUE]
    return values[-1] if values else None
