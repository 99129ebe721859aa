"""The model's object graph: one walk, and the proxies that mirror it (the generic snapshot).

`walk` is the one traversal of what `tf.train.Checkpoint(model=model)` saves: breadth first
through `tf.train.TrackableView`, each object once, in a stable order. The snapshots
(`take_snapshot` here, the planned fast path in `_snapshot`), the variable record of
`graph/` (`_graph.variable_record`) and the list of checkpointable variables
(`_untracked.saveable_variables`) all read the graph through it. (`_restore` walks the
*checkpoint's* graph, and `_assets` Keras' layer tree: other graphs.)

A snapshot mirrors the graph with small proxy trackables that hold the variables' values as
tensors. `tf.train.Checkpoint(model=snap)` therefore writes exactly the keys
`tf.train.Checkpoint(model=model)` would, so TensorFlow's own readers work on our files,
while training may go on changing the real variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

Trackable = tf.__internal__.tracking.Trackable


@dataclass
class Graph:
    """The objects of a walk (root first, breadth first) and every named edge between them."""

    objects: list[Any]
    edges: list[tuple[int, str, int]]  # (parent index, child name, child index)

    def paths(self) -> dict[int, list[str]]:
        """id(object) -> the child names leading to it from the root (its first path)."""
        paths: dict[int, list[str]] = {id(self.objects[0]): []}
        for parent, name, child in self.edges:  # the first edge to an object found it
            key = id(self.objects[child])
            if key not in paths:
                paths[key] = paths[id(self.objects[parent])] + [name]
        return paths


def walk(model: Any, *, optimizer: bool = True, tolerant: bool = False) -> Graph:
    """The object graph of `model` as a checkpoint of it sees it.

    Args:
        model: A Keras model (or any trackable).
        optimizer: If False, the root's `optimizer` edge is left out (and what only it
            reaches).
        tolerant: Skip an object whose children TensorFlow cannot list (it holds nothing a
            checkpoint has) instead of raising; for records and lists, never for a save.
    """
    view = tf.train.TrackableView(model)
    index: dict[int, int] = {id(model): 0}
    objects: list[Any] = [model]  # holding them keeps their ids unique during the walk
    edges: list[tuple[int, str, int]] = []
    i = 0
    while i < len(objects):
        obj = objects[i]
        try:
            children = view.children(obj)
        except Exception:
            if not tolerant:
                raise
            children = {}
        for name, child in children.items():
            if i == 0 and name == "optimizer" and not optimizer:
                continue
            j = index.get(id(child))
            if j is None:
                j = index[id(child)] = len(objects)
                objects.append(child)
            edges.append((i, name, j))
        i += 1
    return Graph(objects, edges)


# -- proxies: the generic snapshot --------------------------------------------------------------


class Node(Trackable):
    """A proxy for one trackable: same children names, no state of its own."""

    def __init__(self) -> None:
        self._kc_children: dict[str, Trackable] = {}

    def _trackable_children(self, save_type="checkpoint", **kwargs):  # noqa: ANN001
        return self._kc_children

    def adopt(self, name: str, child: Trackable) -> None:
        """Makes `child` this proxy's child `name`, as in the model's object graph."""
        self._kc_children[name] = child


class Leaf(Node):
    """A proxy for a variable-like trackable: holds its serialised tensors."""

    _should_act_as_resource_variable = True  # lets TF record the variable's full name
    _save_slice_info = None

    def __init__(self, tensors: dict[str, Any], full_name: str) -> None:
        super().__init__()
        self._kc_tensors = tensors
        self._shared_name = full_name

    def _serialize_to_tensors(self):
        return self._kc_tensors


def has_state(obj: object) -> bool:
    """True if `obj` saves tensors of its own (a variable, a lookup table, ...)."""
    own = getattr(type(obj), "_serialize_to_tensors", None)
    return own is not None and own is not Trackable._serialize_to_tensors


def saveable_tensors(obj: Any) -> dict[str, Any]:
    """What `obj` saves: checkpoint key suffix -> value (TensorFlow's trackable protocol)."""
    return obj._serialize_to_tensors()  # noqa: SLF001


def to_tensor(value: Any) -> tf.Tensor:
    if isinstance(value, tf.Tensor):
        return value
    tensor = getattr(value, "tensor", None)  # tensor_callable.Callable / SaveSpec
    if tensor is not None:
        return tensor
    return tf.convert_to_tensor(value)


def host_copy(tensor: tf.Tensor) -> tf.Tensor:
    """A private host copy of `tensor`, so later training steps cannot change it."""
    if "GPU" in tensor.device or "TPU" in tensor.device:
        with tf.device("/cpu:0"):
            return tf.identity(tensor)
    return tf.raw_ops.DeepCopy(x=tensor)


class Snapshot:
    """The saveable state of a model at one instant; `write(prefix)` writes it."""

    def __init__(self, root: Node, nbytes: int, count: int) -> None:
        self.root = root
        self.nbytes = nbytes
        self.count = count

    def write(self, prefix: str) -> None:
        tf.train.Checkpoint(model=self.root).write(prefix)


def take_snapshot(model: object, *, save_optimizer: bool = True, copy: bool = False) -> Snapshot:
    """Mirrors `model`'s object graph with the current values of its variables.

    Args:
        model: A Keras model (or any trackable).
        save_optimizer: If False, the model's `optimizer` edge is left out, so only the
            model's own variables are saved.
        copy: If True, every value is copied (for a background write); else the tensors
            just read are used (they stay valid while nothing else runs).
    """
    graph = walk(model, optimizer=save_optimizer)
    nodes: list[Node] = []
    nbytes = count = 0
    for obj in graph.objects:
        if not has_state(obj):
            nodes.append(Node())
            continue
        tensors = {}
        for key, value in saveable_tensors(obj).items():
            tensor = to_tensor(value)
            tensors[key] = host_copy(tensor) if copy else tensor
            nbytes += tensor.shape.num_elements() * tensor.dtype.size
            count += 1
        nodes.append(Leaf(tensors, str(getattr(obj, "path", "") or getattr(obj, "name", ""))))
    for parent, name, child in graph.edges:
        nodes[parent].adopt(name, nodes[child])
    return Snapshot(nodes[0], nbytes, count)
