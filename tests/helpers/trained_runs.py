"""Helpers for the loader tests: train a tiny model into a directory, damage files."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from helpers.tiny import tiny_data, tiny_model
from keras_ckpt import RotatingCheckpoint

BATCH = 8
N = 64  # 8 steps per epoch


class EpochWeights(keras.callbacks.Callback):
    """Records a copy of the weights after every epoch (index 0 = before training)."""

    def on_train_begin(self, logs=None):
        self.weights = [self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def train(directory, epochs: int = 3, max_to_keep: int = 5, **model_kwargs):
    """Trains `tiny_model` on 64 samples (8 steps/epoch) with a RotatingCheckpoint.

    Returns (model, per-epoch weights, x, y).
    """
    x, y = tiny_data(N)
    model = tiny_model(**model_kwargs)
    record = EpochWeights()
    cb = RotatingCheckpoint(str(directory), max_to_keep=max_to_keep)
    model.fit(
        x, y, batch_size=BATCH, epochs=epochs, shuffle=False, callbacks=[cb, record], verbose=0
    )
    return model, record.weights, x, y


def data_file(prefix) -> str:
    (path,) = glob.glob(f"{prefix}.data-*")
    return path


def flip_byte(path, pos: int = 20) -> None:
    """Flips one byte: same size, different content. Byte 20 of a tiny model's .data file
    lies in some tensor's values (the object graph is stored at the end); TF's per-tensor
    checksum catches it when that tensor is read (restore and verify read all of them)."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[pos] ^= 0xFF
        f.seek(0)
        f.write(data)


def flip_weight(prefix, name: str = "head/kernel") -> str:
    """Flips a byte inside the stored value of the model variable `name` (not an optimizer
    slot); returns the data file's path. Found by its bytes, so no layout is assumed."""
    reader = tf.compat.v1.train.NewCheckpointReader(str(prefix))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    (key,) = [
        a.checkpoint_key
        for node in graph.nodes
        for a in node.attributes
        if a.full_name.endswith("/" + name)
    ]
    raw = reader.get_tensor(key).tobytes()
    path = data_file(prefix)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        at = data.find(raw)
        assert at >= 0 and data.find(raw, at + 1) < 0, f"{name} not found once in {path}"
        data[at] ^= 0xFF
        f.seek(0)
        f.write(data)
    return path


def truncate(path, keep: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def assert_weights(model, expected, atol: float = 0.0) -> None:
    got = model.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def snapshot_files(directory) -> dict[str, bytes]:
    """Every file's bytes under `directory` (to prove nothing was written)."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out
