"""The 30-second example: train with two checkpoint callbacks, then restore the best.

Run: python examples/quickstart.py   (writes into ./runs)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from keras_ckpt import BestCheckpoint, RotatingCheckpoint, list_checkpoints, restore


def build_model() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu", name="body"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8)).astype("float32")
y = x @ rng.normal(size=(8, 1)).astype("float32")

model = build_model()
best = BestCheckpoint("runs/quickstart/best", monitor="val_loss", keep_best=2)
last = RotatingCheckpoint("runs/quickstart/last", max_to_keep=3)
model.fit(x, y, validation_split=0.25, epochs=8, batch_size=32, callbacks=[best, last], verbose=0)

for info in list_checkpoints("runs/quickstart/best"):
    print(f"best  step={info.step:4d} epoch={info.epoch} val_loss={info.metrics['val_loss']:.4f}")
print("latest:", [i.step for i in list_checkpoints("runs/quickstart/last")])

fresh = build_model()
info = restore(fresh, best.best_checkpoint)
print(f"restored {info.path}: val_loss={best.best_value:.4f}")
