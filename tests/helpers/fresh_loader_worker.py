"""Loads checkpoint directories in a fresh process (no model code): `load_model`,
`export_saved_model` + `load_saved_model` and `evaluate_checkpoints`.

Usage: python fresh_loader_worker.py [--fit] OUT.npz DIR [DIR ...]. Each DIR holds
`inputs.npy` (what to predict on) and `labels.npy`; OUT gets `<i>/load_model`,
`<i>/saved_model`, `<i>/evaluate` (the last row's metrics, sorted by name), `<i>/optimizer`
(class name), `<i>/iterations`, `<i>/optimizer_variables` (all values, flattened) and
`<i>/warnings` (texts) for the i-th DIR; with `--fit`, also `<i>/after_fit`: the weights
(flattened) after one more epoch of the loaded model on the data (batches of 16, in order).
`policy`: the process's global dtype policy before anything was loaded.
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ckpt  # noqa: E402


def _flat(values) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype="float64").ravel() for v in values] + [[]])


def main(out: str, directories: list[str], fit: bool) -> None:
    results = {"policy": np.array(keras.config.dtype_policy().name)}
    for i, directory in enumerate(directories):
        x = np.load(os.path.join(directory, "inputs.npy"))
        y = np.load(os.path.join(directory, "labels.npy"))
        inputs = tf.constant(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = keras_ckpt.load_model(directory)
        results[f"{i}/warnings"] = np.array([str(w.message) for w in caught] + [""])
        results[f"{i}/load_model"] = model.predict(inputs, verbose=0)
        optimizer = getattr(model, "optimizer", None)
        results[f"{i}/optimizer"] = np.array(type(optimizer).__name__)
        results[f"{i}/iterations"] = np.array(int(optimizer.iterations) if optimizer else -1)
        results[f"{i}/optimizer_variables"] = _flat(optimizer.variables if optimizer else [])
        export = os.path.join(directory + "-export")
        keras_ckpt.export_saved_model(directory, export)
        served = keras_ckpt.load_saved_model(export)
        results[f"{i}/saved_model"] = served.predict(inputs, verbose=0)
        data = tf.data.Dataset.from_tensor_slices((inputs, y)).batch(16)
        row = keras_ckpt.evaluate_checkpoints(directory, data)[-1]
        names = sorted(k for k in row if k not in ("path", "step", "epoch"))
        results[f"{i}/evaluate"] = np.array([row[k] for k in names])
        if fit:
            model.fit(data, epochs=1, verbose=0)
            results[f"{i}/after_fit"] = _flat(model.get_weights())
    np.savez(out, **results)


if __name__ == "__main__":
    args = sys.argv[1:]
    fit = args[0] == "--fit"
    main(args[fit], args[fit + 1 :], fit)
