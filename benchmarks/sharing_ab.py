"""Does shared data cost anything when there is nothing to share? An A/B in one loop.

A model that trains everything (``--mb`` MB of float32 Dense weights, Adam) is saved by two
``CheckpointManager`` s, one with shared data on (the default) and one with it off (every
value written: keras_ckpt before shared data), alternating A-B / B-A after every training
step, synchronous and asynchronous. Back-to-back saves of the two see the same machine
state, which the fit-based rounds of ``save_stall.py`` cannot promise on a shared machine.
Medians over the saves after the first.

Run (prints JSON on stdout)::

    python benchmarks/sharing_ab.py --saves 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench as B  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import _sharing  # noqa: E402


def run(args: argparse.Namespace, root: str) -> dict[str, Any]:
    model = B.build_model(args.mb, args.layers)
    x, y = B.train_data(model, 4)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    out: dict[str, Any] = {}
    step = 0
    for mode in ("sync", "async"):
        managers = {}
        for shared in (True, False):
            _sharing.ENABLED = shared  # read when the manager is made
            managers[shared] = keras_ckpt.CheckpointManager(
                os.path.join(root, f"{mode}-{'shared' if shared else 'unshared'}"),
                model,
                keep=keras_ckpt.KeepLast(1),
                async_save=mode == "async",
            )
        _sharing.ENABLED = True
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.saves):
            for shared in (True, False) if i % 2 == 0 else (False, True):
                model.train_on_batch(x, y)
                step += 1
                manager = managers[shared]
                times[shared].append(B.timed(lambda m=manager, s=step: m.save(step=s)))
                manager.wait()  # the call alone; the background write ends before the next
        for manager in managers.values():
            manager.close()
        shared_s, unshared_s = B.median(times[True][1:]), B.median(times[False][1:])
        out[mode] = {
            "shared_save_call_s": shared_s,
            "unshared_save_call_s": unshared_s,
            "shared_over_unshared": round(shared_s / unshared_s, 3),
            "shared_calls_s": [round(t, 3) for t in times[True]],
            "unshared_calls_s": [round(t, 3) for t in times[False]],
        }
        B.log(f"{mode}: shared {shared_s:.3f}s, unshared {unshared_s:.3f}s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200, help="MB of float32 model weights")
    parser.add_argument("--layers", type=int, default=8, help="Dense layers")
    parser.add_argument("--saves", type=int, default=12, help="saves per manager and mode")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="keras_ckpt-bench-", dir=args.dir)
    try:
        result = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    B.emit(
        {
            "benchmark": "sharing_ab",
            "command": "python benchmarks/sharing_ab.py " + " ".join(argv or sys.argv[1:]),
            "machine": B.machine(),
            "config": {"weights_mb": args.mb, "layers": args.layers, "saves": args.saves},
            "modes": result,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
