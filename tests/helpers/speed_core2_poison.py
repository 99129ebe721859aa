"""`poison(model)`: for tests that restore several checkpoints into one model built once."""

from __future__ import annotations

import keras
import numpy as np


def poison(model: keras.Model) -> None:
    """Sets every weight of `model` to NaN.

    Building a model for each restore costs more than the restore itself; reusing one is as
    strict only if a restore that reads nothing (or only some weights) cannot pass because
    of what the previous restore left behind. After this, it cannot: NaN equals nothing.
    """
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
