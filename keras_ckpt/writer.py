"""Snapshots of a model's saveable state, and the writers that commit them.

A snapshot mirrors the model's object graph (as `tf.train.TrackableView` sees it) with small
proxy trackables that hold the variables' values as tensors. `tf.train.Checkpoint(model=snap)`
therefore writes exactly the keys `tf.train.Checkpoint(model=model)` would, so TensorFlow's
own readers work on our files, while training may go on changing the real variables.

TensorFlow's built-in async checkpointing fails on Keras 3 variables, so `AsyncWriter` is
ours: the training thread takes the snapshot (one copy of the values, in host memory), a
background thread writes it; one write in flight; its error is kept and re-raised by `check`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import tensorflow as tf

_Trackable = tf.__internal__.tracking.Trackable


class _Node(_Trackable):
    """A proxy for one trackable: same children names, no state of its own."""

    def __init__(self) -> None:
        self._kc_children: dict[str, _Trackable] = {}

    def _trackable_children(self, save_type="checkpoint", **kwargs):  # noqa: ANN001
        return self._kc_children

    def adopt(self, name: str, child: _Trackable) -> None:
        """Makes `child` this proxy's child `name`, as in the model's object graph."""
        self._kc_children[name] = child


class _Leaf(_Node):
    """A proxy for a variable-like trackable: holds its serialised tensors."""

    _should_act_as_resource_variable = True  # lets TF record the variable's full name
    _save_slice_info = None

    def __init__(self, tensors: dict[str, Any], full_name: str) -> None:
        super().__init__()
        self._kc_tensors = tensors
        self._shared_name = full_name

    def _serialize_to_tensors(self):
        return self._kc_tensors


def _has_state(obj: object) -> bool:
    own = getattr(type(obj), "_serialize_to_tensors", None)
    return own is not None and own is not _Trackable._serialize_to_tensors


def _to_tensor(value: Any) -> tf.Tensor:
    if isinstance(value, tf.Tensor):
        return value
    tensor = getattr(value, "tensor", None)  # tensor_callable.Callable / SaveSpec
    if tensor is not None:
        return tensor
    return tf.convert_to_tensor(value)


def _copy(tensor: tf.Tensor) -> tf.Tensor:
    """A private host copy of `tensor`, so later training steps cannot change it."""
    if "GPU" in tensor.device or "TPU" in tensor.device:
        with tf.device("/cpu:0"):
            return tf.identity(tensor)
    return tf.raw_ops.DeepCopy(x=tensor)


class Snapshot:
    """The saveable state of a model at one instant; `write(prefix)` writes it."""

    def __init__(self, root: _Node, nbytes: int, count: int) -> None:
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
    view = tf.train.TrackableView(model)
    memo: dict[int, _Node] = {}
    nbytes = 0
    count = 0
    stack: list[tuple[object, _Node]] = []

    def proxy(obj: object) -> _Node:
        nonlocal nbytes, count
        node = memo.get(id(obj))
        if node is not None:
            return node
        if _has_state(obj):
            tensors = {}
            for key, value in obj._serialize_to_tensors().items():  # noqa: SLF001
                tensor = _to_tensor(value)
                tensors[key] = _copy(tensor) if copy else tensor
                nbytes += tensor.shape.num_elements() * tensor.dtype.size
                count += 1
            node = _Leaf(tensors, str(getattr(obj, "path", "") or getattr(obj, "name", "")))
        else:
            node = _Node()
        memo[id(obj)] = node
        stack.append((obj, node))
        return node

    root = proxy(model)
    while stack:
        obj, node = stack.pop()
        for name, child in view.children(obj).items():
            if obj is model and name == "optimizer" and not save_optimizer:
                continue
            node._kc_children[name] = proxy(child)
    return Snapshot(root, nbytes, count)


class SyncWriter:
    """Runs each write on the calling thread."""

    def submit(self, job: Callable[[], None]) -> None:
        job()

    def wait(self) -> None:
        pass

    def check(self) -> None:
        pass

    @property
    def busy(self) -> bool:
        return False


_BACKGROUND_NICE = 19


def lower_priority() -> None:
    """Lets the training threads have the CPU first: renices this thread (Linux only).

    On Linux every thread has its own nice value and the threads it starts inherit it, so
    the write, its copies and its flushing run on the cycles training leaves idle. Elsewhere
    `setpriority` would apply to the whole process, so nothing is done there.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)
    except OSError:  # not permitted in this sandbox: keep the default priority
        pass


class AsyncWriter:
    """Runs each write on a background thread; at most one in flight.

    `submit` first waits for the previous write. An exception in a write is kept and raised
    by the next `check` (the callers call it at every save point and at the end).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, job: Callable[[], None]) -> None:
        if _BACKGROUND_NICE:
            lower_priority()
        try:
            job()
        except BaseException as exc:  # re-raised on the training thread by check()
            self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self.check()
        self._thread = threading.Thread(
            target=self._run, args=(job,), name="keras_ckpt-writer", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def check(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
