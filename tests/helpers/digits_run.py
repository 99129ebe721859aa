"""A real (small) training run on scikit-learn's digits, for the CLI and plot tests."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from sklearn.datasets import load_digits

from keras_ckpt import BestCheckpoint, RotatingCheckpoint


def digits(n_train: int = 600, n_val: int = 200) -> tuple[np.ndarray, ...]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    y = y.astype("int32")
    end = n_train + n_val
    return x[:n_train], y[:n_train], x[n_train:end], y[n_train:end]


def build_classifier(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu", name="body"),
            keras.layers.Dense(10, activation="softmax", name="head"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_digits(root: Path, epochs: int = 6) -> keras.Model:
    """Trains into `root/best` (BestCheckpoint, keep_best=2) and `root/last` (keeps 3)."""
    x, y, x_val, y_val = digits()
    model = build_classifier()
    callbacks = [
        BestCheckpoint(root / "best", keep_best=2),
        RotatingCheckpoint(root / "last", max_to_keep=3),
    ]
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        batch_size=50,  # 12 steps per epoch
        epochs=epochs,
        callbacks=callbacks,
        verbose=0,
    )
    return model
