"""How fast does a checkpoint load? keras_ckpt.restore against its peers, in one process.

One model (a stack of Dense layers with ~``--mb`` MB of float32 weights, Adam) is saved once
by each peer, then restored into the same model ``--rounds`` times per peer, in a rotating
order, from a warm page cache (``hot``) and after dropping our files from the page cache
(``cold``, with ``posix_fadvise``: other files are untouched, no root needed):

- ``keras_ckpt``: ``keras_ckpt.restore(model, path)`` (model + optimizer);
- ``tf_checkpoint_read``: ``tf.train.Checkpoint(model=model).read(path)`` of a checkpoint
  written by ``tf.train.Checkpoint.write`` (model + optimizer);
- ``keras_load_weights_h5``: ``model.load_weights("model.weights.h5")`` (Keras 3 stores and
  loads the optimizer's variables too).

Throughput is the bytes of the variables restored divided by the median time.

Run (prints JSON on stdout, progress on stderr)::

    python benchmarks/restore.py                   # 400 MB of weights, ~1.2 GB per restore
    python benchmarks/restore.py --mb 4 --rounds 2 # a quick check
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench as B  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ckpt  # noqa: E402

METHODS = ("keras_ckpt", "tf_checkpoint_read", "keras_load_weights_h5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=400, help="MB of float32 model weights")
    parser.add_argument("--layers", type=int, default=8, help="Dense layers (variables / 2)")
    parser.add_argument("--rounds", type=int, default=5, help="restores per method and mode")
    parser.add_argument("--modes", default="hot,cold", help="hot, cold or both")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    root = tempfile.mkdtemp(prefix="keras_ckpt-restore-", dir=args.dir)
    try:
        model = B.build_model(args.mb, args.layers)
        x, y = B.train_data(model, 4)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # builds Adam's slots
        expected = [v.numpy().copy() for v in model.variables[:2]]
        full, weights = B.state_bytes(model), B.state_bytes(model, False)
        B.log(f"model: {weights / B.MB:.0f} MB of weights, {full / B.MB:.0f} MB with Adam")

        with keras_ckpt.CheckpointManager(os.path.join(root, "kc"), model) as manager:
            kc_path = manager.save().path
        tf_path = tf.train.Checkpoint(model=model).write(os.path.join(root, "tf", "ckpt"))
        h5_path = os.path.join(root, "h5", "model.weights.h5")
        os.makedirs(os.path.dirname(h5_path))
        model.save_weights(h5_path)

        calls = {
            "keras_ckpt": lambda: keras_ckpt.restore(model, kc_path),
            "tf_checkpoint_read": lambda: (
                tf.train.Checkpoint(model=model).read(tf_path).assert_existing_objects_matched()
            ),
            "keras_load_weights_h5": lambda: model.load_weights(h5_path),
        }
        files = {
            "keras_ckpt": [os.path.join(root, "kc")],
            "tf_checkpoint_read": [os.path.join(root, "tf")],
            "keras_load_weights_h5": [h5_path],
        }
        nbytes = dict.fromkeys(METHODS, full)
        for method in METHODS:  # warm-up: first calls build readers and trace
            calls[method]()
        times: dict[str, dict[str, list[float]]] = {
            m: {mode: [] for mode in modes} for m in METHODS
        }
        memory: dict[str, list[int]] = {m: [] for m in METHODS}
        for r in range(args.rounds):
            order = METHODS[r % 3 :] + METHODS[: r % 3]
            for mode in modes:
                for method in order:
                    for v in model.variables[:2]:  # a restore must really write the values
                        v.assign(np.zeros(v.shape, v.dtype))
                    if mode == "cold":
                        B.evict(files[method])
                    gc.collect()
                    with B.PeakMemory() as peak:
                        seconds = B.timed(calls[method])
                    times[method][mode].append(seconds)
                    memory[method].append(peak.peak_extra)
                    for v, want in zip(model.variables[:2], expected, strict=True):
                        if not np.array_equal(v.numpy(), want):
                            raise AssertionError(f"{method} did not restore {v.path}")
                    B.log(f"round {r + 1}/{args.rounds} {mode} {method}: {seconds:.3f}s")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    results: dict[str, Any] = {}
    for method in METHODS:
        entry: dict[str, Any] = {"bytes": nbytes[method]}
        for mode in modes:
            seconds = B.median(times[method][mode])
            entry[f"{mode}_s"] = seconds
            entry[f"{mode}_mb_s"] = round(nbytes[method] / B.MB / seconds, 1)
        entry["peak_extra_mb"] = round(B.median(memory[method]) / B.MB, 1)
        results[method] = entry
    ratios = {
        f"keras_ckpt_over_tf_read_{mode}": round(
            results["keras_ckpt"][f"{mode}_s"] / results["tf_checkpoint_read"][f"{mode}_s"], 3
        )
        for mode in modes
    }
    result = {
        "benchmark": "restore",
        "command": "python benchmarks/restore.py " + " ".join(argv or sys.argv[1:]),
        "machine": B.machine(),
        "config": {
            "weights_mb": round(weights / B.MB, 1),
            "checkpoint_mb": round(full / B.MB, 1),
            "variables": len(model.variables) + len(model.optimizer.variables),
            "rounds": args.rounds,
        },
        "methods": results,
        "ratios": ratios,
        "targets": {
            f"restore_le_1.1x_tf_read_{mode}": {"value": v, "met": v <= 1.1}
            for mode, v in ((m, ratios[f"keras_ckpt_over_tf_read_{m}"]) for m in modes)
        },
    }
    B.emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
