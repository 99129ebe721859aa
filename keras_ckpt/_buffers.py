"""Host memory for asynchronous snapshots: one arena, reused by every save of a plan.

An asynchronous save copies each variable's value on the training thread into buffers that
the writer thread then reads (through tensors sharing that memory). Allocating new tensors
at every save made the kernel map and zero their pages each time; these buffers are mapped
once (in huge pages where the OS offers them, ahead of the first save in a low-priority
thread) and overwritten by every later copy. `_snapshot.Snapshotter` owns one.
"""

from __future__ import annotations

import mmap
import threading
from typing import Any

import numpy as np
import tensorflow as tf

from keras_ckpt._threads import lower_priority, wait_for

__all__ = ["HostBuffers"]

_ALIGN = 64  # TensorFlow's CPU kernels need 64-byte aligned buffers (EIGEN_MAX_ALIGN_BYTES)
_BUFFER_DTYPES = frozenset(
    {
        tf.float16,
        tf.float32,
        tf.float64,
        tf.int8,
        tf.int16,
        tf.int32,
        tf.int64,
        tf.uint8,
        tf.uint16,
        tf.uint32,
        tf.uint64,
    }
)


def _arena(nbytes: int) -> np.ndarray:
    """`nbytes` of zeroed host memory, page aligned, in huge pages where the OS offers them.

    The first copy into new memory makes the kernel map and zero every page: 2.1 s for
    1.2 GB in 4 KB pages here, 0.3 s with transparent huge pages (`MADV_HUGEPAGE`).
    """
    private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    try:  # private: shared anonymous memory gets no huge pages
        memory = mmap.mmap(-1, max(nbytes, 1), **({"flags": private} if private else {}))
    except (OSError, ValueError):
        return np.empty(nbytes + _ALIGN, np.uint8)
    advise = getattr(memory, "madvise", None)
    if advise is not None and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            advise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return np.frombuffer(memory, np.uint8)


def _shared_tensor(array: np.ndarray, dtype: tf.DType) -> tf.Tensor | None:
    """A tensor over `array`'s memory (DLPack shares it instead of copying), or None."""
    try:
        tensor = tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        shared = np.asarray(tensor).ctypes.data == array.ctypes.data
    except Exception:  # no DLPack in this numpy or TensorFlow
        return None
    return tensor if shared and tensor.dtype == dtype else None


class HostBuffers:
    """One snapshot's worth of host memory, reused by every asynchronous save of a plan.

    Copying into memory that is already mapped runs at memory bandwidth (~0.13 s for 1.2 GB
    here); copying into new tensors makes the kernel map and zero their pages at every save
    (~0.5 s). One arena holds every buffer, each 64-byte aligned (TensorFlow's CPU kernels
    need it), and the writer reads it through tensors that share it. A variable whose dtype
    cannot be shared this way (`slots[i]` None) is copied into a new tensor instead.
    `busy` is True from the snapshot that fills the buffers until its write ends; a
    snapshot taken meanwhile gets buffers of its own.
    """

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.busy = False
        layout: list[tuple[int, int] | None] = []
        end = 0
        for variable, (_, _, on_host) in zip(plan.variables, plan.reads, strict=True):
            count = variable.shape.num_elements()
            if not on_host or variable.dtype not in _BUFFER_DTYPES or not count:
                layout.append(None)
                continue
            start = -end % _ALIGN + end
            end = start + count * variable.dtype.size
            layout.append((start, end))
        arena = _arena(end)
        shift = -arena.ctypes.data % _ALIGN  # 0 for mmap memory
        self.slots: list[tuple[np.ndarray, tf.Tensor] | None] = []
        for variable, span in zip(plan.variables, layout, strict=True):
            if span is None:
                self.slots.append(None)
                continue
            dtype = variable.dtype
            array = arena[shift + span[0] : shift + span[1]].view(dtype.as_numpy_dtype)
            array = array.reshape(variable.shape.as_list())
            tensor = _shared_tensor(array, dtype)
            self.slots.append((array, tensor) if tensor is not None else None)
        self._arena = arena
        self._mapping: threading.Thread | None = None

    def map_in_background(self) -> None:
        """Touches every page of the arena in a low-priority thread, ahead of the first copy.

        Mapping new memory is most of the first save's cost (~1 s for 1.2 GB here, more in a
        VM touching memory for the first time); done while training runs, the first save
        then copies as fast as the later ones. `ready` waits for it.
        """

        def touch() -> None:
            lower_priority()
            self._arena[:: mmap.PAGESIZE] = 0  # contents do not matter: copies overwrite them

        self._mapping = threading.Thread(target=touch, name="keras_ckpt-map", daemon=True)
        self._mapping.start()

    def ready(self) -> None:
        """Waits until no thread touches the arena any more (before copying into it)."""
        thread, self._mapping = self._mapping, None
        if thread is not None:
            wait_for(thread)
