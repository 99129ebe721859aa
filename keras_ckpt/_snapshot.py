"""The fast snapshot path: a plan per object graph, one `SaveV2` per save.

`Snapshotter` (used by `CheckpointManager`) walks the model's object graph once
(`_objgraph.walk`), mirrors it with the proxies of `_objgraph` holding placeholders, and
lets TensorFlow's own serialiser name every value (`save_util.serialize_graph_view`, what
`tf.train.Checkpoint.write` uses). The resulting *plan* keeps the checkpoint keys, the
serialised object graph and how to read each value; a save then reads the variables (one
eager op each, no Python serialisation, no proxies) and writes them with one `SaveV2` op:
the files are byte for byte those `tf.train.Checkpoint(model=model).write` would produce
(`tests/test_writer_snapshot.py`).

A synchronous save copies nothing: the tensors read from the variables share their buffers
and are written before training goes on. An asynchronous save copies every value once, on
the training thread, into host buffers that are allocated at the first save and reused by
every later one (`HostBuffers`: a plain memcpy into memory that is already mapped, ~0.12 s
for 1.2 GB here, against ~0.5 s for new tensors); the writer thread reads that memory
through tensors that share it. Peak extra memory: one snapshot, held until `release`.
Leaving the copy to TensorFlow's copy-on-write (a tensor read from a variable keeps the old
buffer when training updates it) costs nothing at the save but the same copies, into new
memory, in the next training step: measured slower overall.

When TensorFlow's helpers are missing, the graph holds something the plan does not model
(Python state, registered savers, sliced variables) or a distribution strategy is active,
`take_snapshot` and `tf.train.Checkpoint.write` do it all the generic way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from keras_ckpt._buffers import HostBuffers
from keras_ckpt._objgraph import (
    Leaf,
    Node,
    Snapshot,
    has_state,
    host_copy,
    saveable_tensors,
    take_snapshot,
    to_tensor,
    walk,
)
from keras_ckpt._reader import VARIABLE_VALUE
from keras_ckpt._sharing import SharedData, save_v2, shareable

logger = logging.getLogger(__name__)

__all__ = ["Snapshotter"]


def _walk(model: object, save_optimizer: bool) -> tuple[list[object], tuple]:
    """The objects of `model`'s graph (breadth first) and its edges, without reading values.

    Returns:
        The objects, and a fingerprint: their identities and the named edges between them.
    """
    graph = walk(model, optimizer=save_optimizer)
    return graph.objects, (tuple(map(id, graph.objects)), tuple(graph.edges))


def _plain_variable(obj: object, standard: Callable) -> Any:
    """The resource variable behind `obj` if it saves its value the standard way, else None.

    `standard` is `BaseResourceVariable._serialize_to_tensors`: one value, read from the
    variable's buffer; subclasses that keep it (such as the variables Keras creates inside
    a traced function) qualify, distributed or sharded ones do not.
    """
    variable = obj if isinstance(obj, tf.Variable) else getattr(obj, "value", None)
    if not isinstance(variable, tf.Variable) or isinstance(
        variable, tf.distribute.DistributedValues
    ):
        return None
    if getattr(type(variable), "_serialize_to_tensors", None) is not standard:
        return None
    if getattr(variable, "_save_slice_info", None) is not None:
        return None
    if not variable.is_initialized():  # TF saves no value for it
        return None
    return variable


class _Plan:
    """How to snapshot one object graph: keys, the serialised graph, what to read.

    Attributes:
        fingerprint: The graph this plan is for (see `_walk`); holds its objects alive.
        keys: The checkpoint key of every saved tensor, variables first.
        variables: The plain resource variables, read by `read` (aligned with `keys`).
        others: `(object, local name)` of the remaining tensors (aligned with the rest).
    """

    def __init__(self, objects: list[object], fingerprint: tuple) -> None:
        from tensorflow.python.checkpoint import graph_view, save_util  # TF's own serialiser
        from tensorflow.python.ops.resource_variable_ops import BaseResourceVariable

        self.fingerprint = fingerprint
        self._objects = objects
        proxies: dict[int, Node] = {}
        slots: dict[int, tuple[object, str]] = {}  # id(sentinel) -> (source, local name)
        sentinels: list[object] = []
        for obj in objects:
            if has_state(obj):
                tensors = {}
                for name in saveable_tensors(obj):  # names only: no read
                    sentinel = object()
                    sentinels.append(sentinel)
                    slots[id(sentinel)] = (obj, name)
                    tensors[name] = sentinel
                label = str(getattr(obj, "path", "") or getattr(obj, "name", ""))
                proxies[id(obj)] = Leaf(tensors, label)
            else:
                proxies[id(obj)] = Node()
        for parent, name, child in fingerprint[1]:
            proxies[id(objects[parent])].adopt(name, proxies[id(objects[child])])
        root = tf.train.Checkpoint(model=proxies[id(objects[0])])
        serialized, feeds, savers, graph = save_util.serialize_graph_view(
            graph_view.ObjectGraphView(root)
        )
        if feeds or savers:
            raise TypeError("the graph has Python state or registered savers")
        keys: dict[int, str] = {}
        for tensors in serialized.values():
            for key, value in tensors.items():
                if id(value) not in slots:
                    raise TypeError(f"{key} is not a plain tensor of the graph")
                keys[id(value)] = key
        fast, slow = [], []
        for sentinel in sentinels:
            obj, name = slots[id(sentinel)]
            if isinstance(getattr(obj, "value", obj), tf.distribute.DistributedValues):
                raise TypeError("distributed variables are saved by TensorFlow's own saver")
            standard = BaseResourceVariable._serialize_to_tensors
            variable = _plain_variable(obj, standard) if name == VARIABLE_VALUE else None
            entry = (keys[id(sentinel)], obj, name, variable)
            (fast if variable is not None else slow).append(entry)
        self.keys = [k for k, *_ in fast] + [k for k, *_ in slow]
        self.variables = [v for *_, v in fast]
        self.others = [(obj, name) for _, obj, name, _ in slow]
        with tf.device("/cpu:0"):
            self.graph = tf.constant(graph.SerializeToString())
        self.reads = [
            (v.handle, v.dtype, "CPU" in (v.device or "CPU").upper()) for v in self.variables
        ]
        self._sources = [obj for _, obj, _, _ in fast] + [obj for obj, _ in self.others]

    @property
    def variable_sources(self) -> list[object]:
        """The objects (Keras variables) behind `variables`, aligned with them."""
        return self._sources[: len(self.variables)]

    def covered_by(self, signature: list[object]) -> bool:
        """True if every saved value comes from an object in `signature`."""
        known = {id(obj) for obj in signature}
        return all(id(obj) in known for obj in self._sources)

    def read(self, buffers: HostBuffers | None = None) -> list[tf.Tensor]:
        """The values of `variables` on the host.

        One eager op per variable (two when it lives on an accelerator): a `tf.function`
        would do it in one call, but tracing it costs seconds per thousand variables on the
        first save, more than the eager ops cost in hundreds of saves. Without `buffers`,
        host variables are not copied: the tensors share the variables' buffers, for a
        write that ends before training goes on. With `buffers`, each value is copied into
        its reused host buffer (see `HostBuffers`).
        """
        out = []
        slots = buffers.slots if buffers is not None else None
        for i, (handle, dtype, on_host) in enumerate(self.reads):
            value = _read_variable(resource=handle, dtype=dtype)
            if not on_host:
                with tf.device("/cpu:0"):
                    value = tf.identity(value)  # device -> host: a tensor of its own
            elif slots is not None:
                slot = slots[i]
                if slot is None:
                    value = _deep_copy(x=value)
                else:
                    np.copyto(slot[0], np.asarray(value))  # a view of the buffer: one memcpy
                    value = slot[1]
            out.append(value)
        return out


_read_variable = tf.raw_ops.ReadVariableOp
_deep_copy = tf.raw_ops.DeepCopy


def same_objects(a: list[object], b: list[object]) -> bool:
    """True if `a` and `b` hold the same objects (by identity) in the same order."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class Snapshotter:
    """Takes snapshots of one model, reusing a plan while its object graph is unchanged.

    Whether the graph changed is decided by the set of variables (the model's and its
    optimizer's, and the optimizer itself), which costs microseconds; the object graph is
    walked again only when that set changes. This is exact for what a checkpoint holds as
    long as every saved value belongs to one of those variables, which the plan checks: if
    the graph saves anything else (a raw `tf.Variable` attribute, a lookup table), the
    graph is walked at every save instead. A change that touches no variable (a layer
    without weights appended) keeps the plan: the files then hold the same values under
    the same keys and lack only that node without values.

    Args:
        model: A Keras model (or any trackable).
        save_optimizer: If False, the model's `optimizer` edge is left out.
        shared: Writes each snapshot sharing the unchanged values with the previous one
            (`_sharing.SharedData`); None writes every value.
    """

    def __init__(
        self, model: object, save_optimizer: bool = True, shared: SharedData | None = None
    ) -> None:
        self.model = model
        self.save_optimizer = save_optimizer
        self.shared = shared
        self._plan: _Plan | None = None
        self._signature: list[object] | None = None  # held: their ids cannot be reused
        self._fast = True  # False once TF's serialisation helpers failed us
        self._buffers: HostBuffers | None = None

    def _variables(self) -> list[object] | None:
        """The model's and optimizer's variables and the optimizer (None if unknown)."""
        variables = getattr(self.model, "variables", None)
        if variables is None:
            return None
        out = [*variables]
        optimizer = getattr(self.model, "optimizer", None) if self.save_optimizer else None
        if optimizer is not None:
            out += [optimizer, *getattr(optimizer, "variables", ())]
        return out

    def plan(self) -> _Plan | None:
        """The plan for the model's current object graph (None: use the generic path)."""
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is not None and type(strategy).__name__ != "_DefaultDistributionStrategy":
            self._fast = False  # every worker takes part in TensorFlow's collective reads
        if not self._fast or tf.distribute.has_strategy():
            return None
        signature = self._variables()
        if (
            self._plan is not None
            and self._signature is not None
            and signature is not None
            and same_objects(signature, self._signature)
        ):
            return self._plan
        objects, fingerprint = _walk(self.model, self.save_optimizer)
        if self._plan is None or self._plan.fingerprint != fingerprint:
            self._plan = None
            try:
                self._plan = _Plan(objects, fingerprint)
            except (ImportError, AttributeError, TypeError, ValueError) as exc:
                logger.info("keras_ckpt: generic checkpoint writing (%s)", exc)
                self._fast = False
                return None
        covered = signature is not None and self._plan.covered_by(signature)
        self._signature = signature if covered else None
        return self._plan

    def take(self, copy: bool = False) -> Snapshot | _FastSnapshot:
        """The current values of the model's saveable state.

        Args:
            copy: The snapshot must survive later training steps while it is being written
                in another thread: the values are copied (into reused host buffers).
        """
        plan = self.plan()
        if plan is None:
            return take_snapshot(self.model, save_optimizer=self.save_optimizer, copy=copy)
        buffers = None
        if copy:
            buffers = self._buffers
            if buffers is None or buffers.plan is not plan or buffers.busy:
                buffers = self._buffers = HostBuffers(plan)
            buffers.ready()
            buffers.busy = True
        tensors = plan.read(buffers)
        for obj, name in plan.others:
            tensor = to_tensor(saveable_tensors(obj)[name])
            tensors.append(host_copy(tensor) if copy else tensor)
        candidates = ([], [])
        if self.shared is not None:
            candidates = shareable(self.model, plan.variable_sources)
        return _FastSnapshot(plan, tensors, buffers, self.shared, *candidates)

    def prepare(self) -> None:
        """Builds the plan and maps the host buffers of asynchronous saves, in the background.

        Call it when the model and its optimizer are built and the first save is still
        some time away (a callback: after the first training step, when Keras has built the
        optimizer); the first save then costs what every later one does. Nothing happens
        on the generic path or if the buffers exist.
        """
        plan = self.plan()
        if plan is None or (self._buffers is not None and self._buffers.plan is plan):
            return
        self._buffers = HostBuffers(plan)
        self._buffers.map_in_background()

    def release(self) -> None:
        """Frees the host buffers of asynchronous saves (the next one allocates them)."""
        self._buffers = None


class _FastSnapshot:
    """Tensors in the order of a plan's keys; `write(prefix)` is one `SaveV2`."""

    def __init__(
        self,
        plan: _Plan,
        tensors: list[tf.Tensor],
        buffers: HostBuffers | None,
        shared: SharedData | None = None,
        candidates: list[int] | None = None,
        preferred: list[int] | None = None,
    ) -> None:
        self._keys = plan.keys
        self._graph = plan.graph
        self._tensors = tensors
        self._buffers = buffers
        self._shared = shared if candidates else None
        self._candidates = candidates or []
        self._preferred = preferred or []
        self.count = len(tensors)
        self.nbytes = sum(t.shape.num_elements() * t.dtype.size for t in tensors)

    def write(self, prefix: str) -> dict | None:
        """Writes the checkpoint `prefix`; returns record fields naming shared data, if any."""
        try:
            if self._shared is not None:
                return self._shared.write(
                    prefix,
                    self._keys,
                    self._tensors,
                    self._graph,
                    self._candidates,
                    self._preferred,
                )
            save_v2(prefix, self._keys, self._tensors, self._graph)
            return None
        finally:
            self._tensors = []  # written or failed: the buffers may be filled again
            if self._buffers is not None:
                self._buffers.busy = False
