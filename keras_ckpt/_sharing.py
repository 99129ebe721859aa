"""Shared data: a save writes the bytes of what changed and shares the rest.

A TensorFlow checkpoint may have several data shards and one index naming, per key, the
shard, offset, size and checksum. A save of a model with a large unchanged part (a frozen
backbone) writes two shards: shard 0 holds the *shared* values, shard 1 the others and the
object graph. Shard 0 is written once, with `SaveV2`, as a little checkpoint of its own; its
index is kept in memory. A later save whose shared values are all unchanged links (local
disk) or copies (`gs://`, `ram://`) the newest kept copy of shard 0 under a temporary
prefix, writes the rest with `SaveV2` and lets `MergeV2Checkpoints` (what TensorFlow's own
sharded saves use) merge the two indexes and rename both shards to the new checkpoint's
names. So every `ckpt-N` is a complete, plain TF checkpoint; on a local disk its shard 0 is a
hard link to the same inode as the previous one's, and deleting either leaves the other
intact.

"Unchanged" is checked, never assumed: the shared values are those of the model's
non-trainable variables whose 64-bit FarmHash fingerprint (`tf.fingerprint` over their
bytes, with dtype and shape) equals that of the values in the shared shard, taken at every
save on the values being saved (a direct `assign`, moving BatchNormalization statistics, a
layer unfrozen, a `restore` between saves all change it). Trainable variables and the
optimizer's are always written: they change at every step. Fingerprinting costs ~15-40 ms
per 300 MB here (memory bandwidth); a synchronous save does it while the files it just wrote
are flushed to disk, an asynchronous one on the writer thread.

Records (`ckpt-N.json`) name the shared shard: `"shared": {"ckpt-N.data-00000-of-00002":
{"id": ..., "first": "ckpt-K", "how": "written" | "link" | "copy"}}`; every checkpoint whose
record carries the same `id` holds the same bytes (`_shared_record.disk_bytes` counts them once).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import tensorflow as tf

from keras_ckpt import _fs
from keras_ckpt._reader import GRAPH_KEY

__all__ = ["MIN_SHARED_BYTES", "SharedData", "fingerprint", "save_v2", "shareable"]

ENABLED = True  # new managers share data; False: every save writes every value (today's way)
MIN_SHARED_BYTES = 1 << 20  # below this, a second shard saves less than it costs
SHARED_SHARD = ".data-00000-of-00002"
_SHARED, _OWN = "shared", "own"  # the temporary prefixes merged into the checkpoint


def fingerprint(tensor: tf.Tensor) -> tuple[str, tuple[int, ...], bytes]:
    """dtype, shape and the 64-bit FarmHash fingerprint of the bytes of `tensor`."""
    flat = tf.reshape(tensor, [1, -1])  # one row: one fingerprint over all the bytes
    digest = tf.raw_ops.Fingerprint(data=flat, method="farmhash64")
    return tensor.dtype.name, tuple(tensor.shape.as_list()), digest.numpy().tobytes()


def shareable(model: object, sources: Sequence[object]) -> tuple[list[int], list[int]]:
    """Indices of the values that may be shared: the model's non-trainable variables.

    Trainable and optimizer variables change at every step; checking them would cost a
    fingerprint each for nothing. Whether a candidate is really unchanged is decided by
    `SharedData.write` from its fingerprint.

    Args:
        model: The Keras model.
        sources: The Keras variables of the saved values, in their order.

    Returns:
        The candidates, and those among them a first save shares: all but the
        non-trainable state of trainable layers (a head's BatchNormalization statistics,
        a Dropout's seed), which moves at every step.
    """
    frozen = {id(v) for v in getattr(model, "non_trainable_variables", ())}
    out = [i for i, source in enumerate(sources) if id(source) in frozen]
    moving: set[int] = set()
    stack = [model]
    while stack:
        layer = stack.pop()
        inner = getattr(layer, "layers", None)
        if inner:
            stack += inner
        elif getattr(layer, "trainable", False):
            moving.update(id(v) for v in getattr(layer, "non_trainable_variables", ()))
    return out, [i for i in out if id(sources[i]) not in moving]


@dataclass
class _Shard:
    """The shared shard: which keys, their fingerprints, its own index, where it lives."""

    id: str
    first: str  # the checkpoint that wrote it
    fingerprints: dict[str, tuple]
    index: bytes  # the index `SaveV2` wrote for the shard alone
    size: int  # bytes of its data file
    holders: list[str] = field(default_factory=list)  # committed files holding it, newest first
    pending: str | None = None  # written by the save in progress, not yet committed


class SharedData:
    """What the saves of one directory share; `write` writes one checkpoint.

    Args:
        directory: The checkpoint directory (shared shards are linked from here).
        min_bytes: Values that stay unchanged are shared only if they hold this many bytes.
    """

    def __init__(self, directory: str, min_bytes: int = MIN_SHARED_BYTES) -> None:
        self.directory = directory
        self.min_bytes = min_bytes
        self._shard: _Shard | None = None
        self._last: dict[str, tuple] | None = None  # fingerprints at the previous save
        self.last_written = 0  # bytes the last `write` produced itself (not linked or copied)

    def write(
        self,
        prefix: str,
        keys: Sequence[str],
        tensors: Sequence[tf.Tensor],
        graph: tf.Tensor,
        candidates: Sequence[int],
        preferred: Sequence[int] = (),
    ) -> dict | None:
        """Writes the checkpoint `prefix` (inside a temporary folder of `commit`).

        Args:
            prefix: Where the merged checkpoint goes; its folder holds nothing else.
            keys, tensors: Every saved value, aligned.
            graph: The serialised object graph.
            candidates: Indices of the values that may be shared (non-trainable variables).
            preferred: The candidates a first save shares (frozen weights); later ones
                share the candidates unchanged since the previous save.

        Returns:
            Fields for the record (`{"shared": ...}`), or None if everything was written.
        """
        folder = _fs.dirname(prefix)
        shard, holder = self._holder()
        if shard is not None:
            # Written while the fingerprints are computed (another thread: TensorFlow's ops
            # release the GIL), checked after. Nothing is visible before `commit` renames it
            # in; if a shared value changed, these files are replaced.
            pool = ThreadPoolExecutor(1, thread_name_prefix="keras_ckpt-fingerprint")
            try:
                pending = pool.submit(self._fingerprints, keys, tensors, candidates)
                own = [i for i, k in enumerate(keys) if k not in shard.fingerprints]
                linked = _fs.link_or_copy(
                    _fs.join(self.directory, holder),
                    _fs.join(folder, _SHARED + ".data-00000-of-00001"),
                )
                index = _fs.join(folder, _SHARED + ".index")
                _fs.write_bytes(index, shard.index, durable=False)  # merged, then deleted
                self._merge(prefix, keys, tensors, graph, own)
                for fname in _fs.list_dir(folder):  # to disk now, not after the fingerprints
                    _fs.fsync_file(_fs.join(folder, fname))
                prints = pending.result()
            finally:
                pool.shutdown(wait=True)
            if all(prints.get(k) == v for k, v in shard.fingerprints.items()):
                self._last = prints
                self.last_written = sum(_nbytes(tensors[i]) for i in own)
                return self._shared(shard, prefix, "link" if linked else "copy")
            for fname in _fs.list_dir(folder):  # a shared value changed: start again
                _fs.remove(_fs.join(folder, fname))
        else:
            prints = self._fingerprints(keys, tensors, candidates)
        last = self._last
        self._last = prints
        if last is None:
            stable = list(preferred)
        else:
            stable = [i for i in candidates if last.get(keys[i]) == prints[keys[i]]]
        self._shard = None
        if sum(_nbytes(tensors[i]) for i in stable) < self.min_bytes:
            save_v2(prefix, keys, tensors, graph)
            self.last_written = sum(map(_nbytes, tensors))
            return None
        shared_prefix = _fs.join(folder, _SHARED)
        save_v2(shared_prefix, [keys[i] for i in stable], [tensors[i] for i in stable])
        shard = _Shard(
            id=uuid.uuid4().hex[:12],
            first=_fs.basename(prefix),
            fingerprints={keys[i]: prints[keys[i]] for i in stable},
            index=_fs.read_bytes(shared_prefix + ".index"),
            size=_fs.size(shared_prefix + ".data-00000-of-00001"),
        )
        chosen = set(stable)
        own = [i for i in range(len(keys)) if i not in chosen]
        self._merge(prefix, keys, tensors, graph, own)
        self.last_written = shard.size + sum(_nbytes(tensors[i]) for i in own)
        self._shard = shard
        return self._shared(shard, prefix, "written")

    @staticmethod
    def _fingerprints(
        keys: Sequence[str], tensors: Sequence[tf.Tensor], candidates: Sequence[int]
    ) -> dict[str, tuple]:
        return {keys[i]: fingerprint(tensors[i]) for i in candidates}

    @staticmethod
    def _merge(
        prefix: str,
        keys: Sequence[str],
        tensors: Sequence[tf.Tensor],
        graph: tf.Tensor,
        own: list[int],
    ) -> None:
        """Writes the values `own` and the graph beside the shared shard; merges the two."""
        folder = _fs.dirname(prefix)
        save_v2(_fs.join(folder, _OWN), [keys[i] for i in own], [tensors[i] for i in own], graph)
        tf.raw_ops.MergeV2Checkpoints(
            checkpoint_prefixes=[_fs.join(folder, _SHARED), _fs.join(folder, _OWN)],
            destination_prefix=prefix,
            delete_old_dirs=False,
        )

    @staticmethod
    def _shared(shard: _Shard, prefix: str, how: str) -> dict:
        shard.pending = _fs.basename(prefix) + SHARED_SHARD
        return {"shared": {shard.pending: {"id": shard.id, "first": shard.first, "how": how}}}

    def committed(self, name: str) -> None:
        """The checkpoint `name` is committed: its shared shard may be linked from now on."""
        shard = self._shard
        if shard is not None and shard.pending == name + SHARED_SHARD:
            shard.holders.insert(0, shard.pending)
            shard.pending = None

    def _holder(self) -> tuple[_Shard | None, str | None]:
        """The shared shard and a kept file holding it (its values are checked by `write`)."""
        shard = self._shard
        if shard is None:
            return None, None
        shard.pending = None  # a save that did not commit: its files are gone
        for holder in list(shard.holders):
            path = _fs.join(self.directory, holder)
            try:
                if _fs.size(path) == shard.size:
                    return shard, holder
            except Exception:  # deleted by rotation: try an older copy
                pass
            shard.holders.remove(holder)
        return None, None


def _nbytes(tensor: tf.Tensor) -> int:
    return tensor.shape.num_elements() * max(tensor.dtype.size, 1)


def save_v2(
    prefix: str,
    keys: Sequence[str],
    tensors: Sequence[tf.Tensor],
    graph: tf.Tensor | None = None,
) -> None:
    """Writes `keys` with `tensors`, and the serialised object graph if any, in one `SaveV2`."""
    names, values = [*keys], [*tensors]
    if graph is not None:
        names.append(GRAPH_KEY)
        values.append(graph)
    with tf.device("/cpu:0"):
        tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=values
        )
