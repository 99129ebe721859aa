"""The transfer-learning scenario of `save_stall.py`: a frozen backbone, a trainable head.

A backbone of ``--transfer-mb`` MB of float32 weights (square Dense layers,
``base.trainable = False``) under a head of ``--head-mb`` MB (one Dense layer), Adam. Every
peer saves the same model ``--transfer-saves`` times, one training step between saves, into
its own directory keeping 5 checkpoints (``max_to_keep=5``), peers side by side in rotating
order, ``--transfer-rounds`` times. Per peer (medians over the saves after the first, which
writes everything for every peer):

- ``save_call_s``: the save call on the training thread;
- ``bytes_written_per_save``: what the process passed to ``write()`` during the save and its
  background write (``/proc/self/io``: every byte that went through the file layer);
- ``disk_used_bytes``: the directory after the last save (hard links count once).

Peers: ``tf_checkpoint_manager`` (``tf.train.CheckpointManager``, max_to_keep=5),
``keras_ckpt_sync`` / ``keras_ckpt_async`` (``CheckpointManager(keep=KeepLast(5))``),
``keras_ckpt_sync_unshared`` (the same with shared data turned off: every value written, as
before shared data existed).
"""

from __future__ import annotations

import gc
import os
import shutil
from typing import Any

import _bench as B
import keras
import numpy as np
import tensorflow as tf

import keras_ckpt
from keras_ckpt import _sharing

PEERS = (
    "tf_checkpoint_manager",
    "keras_ckpt_sync",
    "keras_ckpt_async",
    "keras_ckpt_sync_unshared",
)
KEEP = 5


def build(backbone_mb: float, head_mb: float, layers: int = 4, seed: int = 0) -> keras.Model:
    width = B.width_for(backbone_mb, layers)
    keras.utils.set_random_seed(seed)
    base = keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width, name=f"b{i}") for i in range(layers)],
        name="backbone",
    )
    base.trainable = False
    units = max(1, int(head_mb * B.MB / 4 / width))
    model = keras.Sequential([base, keras.layers.Dense(units, name="head")])
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    return model


class _Peer:
    def __init__(self, name: str, directory: str, model: keras.Model) -> None:
        self.name = name
        if name == "tf_checkpoint_manager":
            checkpoint = tf.train.Checkpoint(model=model)
            self.tf = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=KEEP)
            self.mgr = None
            return
        enabled = _sharing.ENABLED
        _sharing.ENABLED = not name.endswith("_unshared")
        try:
            self.mgr = keras_ckpt.CheckpointManager(
                directory, model, keep=keras_ckpt.KeepLast(KEEP),
                async_save=name.endswith("_async"),
            )  # fmt: skip
        finally:
            _sharing.ENABLED = enabled

    def save(self, step: int) -> None:
        if self.mgr is None:
            self.tf.save(checkpoint_number=step)
        else:
            self.mgr.save(step=step)

    def wait(self) -> None:
        if self.mgr is not None:
            self.mgr.wait()

    def close(self) -> None:
        if self.mgr is not None:
            self.mgr.close()


def run(args: Any, root: str) -> dict[str, Any]:
    model = build(args.transfer_mb, args.head_mb)
    width = model.inputs[0].shape[-1]
    x = np.random.default_rng(0).random((args.batch, width), dtype=np.float32)
    y = np.zeros((args.batch, model.outputs[0].shape[-1]), np.float32)
    model.train_on_batch(x, y)  # traces, builds Adam
    head = model.get_layer("head")
    head_bytes = sum(int(np.prod(v.shape)) * 4 for v in head.variables)
    slot_bytes = sum(
        int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in model.optimizer.variables
    )
    backbone_bytes = B.state_bytes(model, False) - head_bytes
    B.log(
        f"transfer: backbone {backbone_bytes / B.MB:.0f} MB frozen, head {head_bytes / B.MB:.1f}"
        f" MB + {slot_bytes / B.MB:.1f} MB of optimizer state"
    )
    rows: dict[str, dict[str, list]] = {p: {"call": [], "written": [], "first_call": [],
                                            "first_written": [], "disk": [], "full": []}
                                        for p in PEERS}  # fmt: skip
    step = int(model.optimizer.iterations.numpy())
    for r in range(args.transfer_rounds):
        order = PEERS[r % len(PEERS) :] + PEERS[: r % len(PEERS)]
        for name in order:
            directory = B.fresh_dir(os.path.join(root, "transfer-" + name))
            peer = _Peer(name, directory, model)
            gc.collect()
            for i in range(args.transfer_saves):
                model.train_on_batch(x, y)
                step += 1
                before = B.bytes_written()
                call = B.timed(lambda s=step, p=peer: p.save(s))
                peer.wait()
                after = B.bytes_written()
                written = None if before is None or after is None else after - before
                row = rows[name]
                row["first_call" if i == 0 else "call"].append(call)
                row["first_written" if i == 0 else "written"].append(written)
            peer.close()
            rows[name]["disk"].append(B.du(directory))
            prefix = tf.train.latest_checkpoint(directory)
            rows[name]["full"].append(
                sum(
                    os.path.getsize(os.path.join(directory, n))
                    for n in os.listdir(directory)
                    if n.startswith(os.path.basename(prefix) + ".")
                )  # fmt: skip
            )
            shutil.rmtree(directory, ignore_errors=True)
            B.log(f"transfer round {r + 1}: {name} calls "
                  f"{[round(c, 3) for c in rows[name]['call']][-3:]}")  # fmt: skip
    peers: dict[str, Any] = {}
    for name, row in rows.items():
        written = [w for w in row["written"] if w is not None]
        peers[name] = {
            "save_call_s": B.median(row["call"]),
            "first_save_call_s": B.median(row["first_call"]),
            "bytes_written_per_save": int(B.median(written)) if written else None,
            "first_save_bytes_written": int(B.median(
                [w for w in row["first_written"] if w is not None] or [0])),
            "disk_used_bytes": int(B.median(row["disk"])),
            "one_checkpoint_bytes": int(B.median(row["full"])),
        }  # fmt: skip
    full = peers["tf_checkpoint_manager"]["one_checkpoint_bytes"]
    tf_call = peers["tf_checkpoint_manager"]["save_call_s"]
    ratios: dict[str, Any] = {}
    for name in PEERS[1:]:
        mine = peers[name]
        ratios[f"{name}_save_call_over_tf_save"] = round(mine["save_call_s"] / tf_call, 4)
        if mine["bytes_written_per_save"] is not None:
            ratios[f"{name}_bytes_per_save_over_head_and_slots"] = round(
                mine["bytes_written_per_save"] / (head_bytes + slot_bytes), 3
            )
        ratios[f"{name}_disk_used_over_one_checkpoint"] = round(mine["disk_used_bytes"] / full, 3)
    sync = "keras_ckpt_sync"
    targets = {
        "sync_save_call_le_0.1x_tf_save": {
            "value": ratios[f"{sync}_save_call_over_tf_save"],
            "met": ratios[f"{sync}_save_call_over_tf_save"] <= 0.1,
        },
        "disk_used_keep_5_le_1.2x_one_checkpoint": {
            "value": ratios[f"{sync}_disk_used_over_one_checkpoint"],
            "met": ratios[f"{sync}_disk_used_over_one_checkpoint"] <= 1.2,
        },
    }
    key = f"{sync}_bytes_per_save_over_head_and_slots"
    if key in ratios:
        targets["bytes_per_save_le_2x_head_and_slots"] = {
            "value": ratios[key], "met": ratios[key] <= 2.0
        }  # fmt: skip
    return {
        "config": {
            "backbone_mb": round(backbone_bytes / B.MB, 1),
            "head_mb": round(head_bytes / B.MB, 2),
            "optimizer_state_mb": round(slot_bytes / B.MB, 2),
            "saves": args.transfer_saves,
            "max_to_keep": KEEP,
            "rounds": args.transfer_rounds,
        },
        "peers": peers,
        "ratios": ratios,
        "targets": targets,
    }
