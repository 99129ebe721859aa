"""How long does checkpointing stall training? keras_ckpt against its peers, in one process.

Every peer trains the same model (a stack of Dense layers with ~``--mb`` MB of float32
weights, Adam: a checkpoint with the optimizer is ~3x that) for ``--saves + 1`` epochs of
``--steps`` real training steps each, with ``--compute`` seconds of simulated compute (sleep)
per epoch spread over its steps, and saves at the end of each of the first ``--saves`` epochs
(the last epoch is training after the last save, as in a real run, so a background write has
something to overlap with). Peers:

- ``none``: no checkpointing (the baseline);
- ``tf_checkpoint_manager``: a callback around ``tf.train.CheckpointManager.save``;
- ``keras_model_checkpoint``: ``keras.callbacks.ModelCheckpoint`` to ``.weights.h5``
  (Keras 3 stores the optimizer's variables in it too: the same bytes);
- ``keras_orbax_checkpoint``: ``keras.callbacks.OrbaxCheckpoint`` (asynchronous; needs
  orbax-checkpoint and JAX in this environment, otherwise reported as skipped);
- ``keras_ckpt_sync`` / ``keras_ckpt_async``: ``RotatingCheckpoint(max_to_keep=1)``, with
  ``async_save`` False / True;
- ``keras_ckpt_sync_unshared`` / ``keras_ckpt_async_unshared``: the same with shared data
  turned off (every value written at every save: keras_ckpt before shared data), to show that
  sharing costs nothing when everything trains.

All peers keep one checkpoint. Rounds run the peers in a rotating order; results are
medians over rounds. Per peer:

- ``stall_per_save_s``: (fit time - fit time of ``none`` in the same round) / saves: the
  definition, but on a shared machine its noise is seconds;
- ``save_call_s``: the time inside the save itself (the hook), for
  ``tf_checkpoint_manager`` the duration of ``CheckpointManager.save``;
- ``step_after_save_slowdown_s``: how much longer the first training step after a save
  took than the same step without checkpointing (copies, a background write competing);
- ``lost_per_save_s``: time blocked in the checkpoint hooks per save + that slowdown: the
  training time a save costs, measured on the steps it touches (much less noisy);
- ``peak_extra_mb``: the peak RSS during the fit above the RSS before it.

``--scenario transfer`` runs the transfer-learning scenario instead (a frozen backbone of
``--transfer-mb`` MB, a trainable head, Adam; see ``_transfer.py``): save call, bytes written
per save and disk used with ``max_to_keep=5``, against ``tf.train.CheckpointManager``.

Run (prints JSON on stdout, progress on stderr)::

    python benchmarks/save_stall.py --rounds 5     # 400 MB of weights, ~1.2 GB per save
    python benchmarks/save_stall.py --mb 4 --rounds 1     # a quick check
    python benchmarks/save_stall.py --scenario transfer --transfer-rounds 3
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench as B  # noqa: E402
import _transfer  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import _sharing  # noqa: E402

PEERS = (
    "none",
    "tf_checkpoint_manager",
    "keras_model_checkpoint",
    "keras_orbax_checkpoint",
    "keras_ckpt_sync",
    "keras_ckpt_async",
    "keras_ckpt_sync_unshared",
    "keras_ckpt_async_unshared",
)


class Compute(keras.callbacks.Callback):
    """Simulated compute: sleeps after every training step; times the real steps."""

    def __init__(self, seconds_per_step: float) -> None:
        super().__init__()
        self.seconds = seconds_per_step
        self.steps: list[tuple[int, int, float]] = []  # (epoch, batch, seconds)
        self._epoch = 0
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append((self._epoch, batch, time.perf_counter() - self._t0))
        if self.seconds > 0:
            time.sleep(self.seconds)


class Gate(keras.callbacks.Callback):
    """Forwards every hook to `inner`, times it, and skips the saves after `saves` epochs."""

    def __init__(self, inner: keras.callbacks.Callback, saves: int) -> None:
        super().__init__()
        self.inner = inner
        self.saves = saves
        self.blocked = 0.0  # seconds spent inside the inner callback's hooks
        self.save_calls: list[float] = []
        self.batch_hooks = 0.0  # of which inside the batch hooks
        self.end_wait = 0.0

    def _call(self, name: str, *args: Any) -> float:
        t0 = time.perf_counter()
        getattr(self.inner, name)(*args)
        spent = time.perf_counter() - t0
        self.blocked += spent
        return spent

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_hooks += self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.batch_hooks += self._call("on_train_batch_end", batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.saves:
            self.save_calls.append(self._call("on_epoch_end", epoch, logs))
        elif self.saves == 0:  # the batch test: epoch ends are part of the fixed cost
            self._call("on_epoch_end", epoch, logs)

    def on_train_end(self, logs=None):
        self.end_wait = self._call("on_train_end", logs)


class TFManagerCallback(keras.callbacks.Callback):
    """The plain TensorFlow way: `tf.train.CheckpointManager(...).save()` at each epoch end."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def on_train_begin(self, logs=None):
        checkpoint = tf.train.Checkpoint(model=self.model)
        self.manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=1)

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=int(self.model.optimizer.iterations.numpy()))


def orbax_problem() -> str | None:
    try:
        import orbax.checkpoint  # noqa: F401
    except Exception as exc:  # ImportError, or a broken JAX install
        return (
            f"orbax-checkpoint cannot be imported here ({type(exc).__name__}: {exc}); "
            "install orbax-checkpoint (it brings JAX) in the benchmark's environment"
        )
    if not hasattr(keras.callbacks, "OrbaxCheckpoint"):
        return f"keras {keras.__version__} has no keras.callbacks.OrbaxCheckpoint"
    return None


def make_peer(peer: str, directory: str) -> keras.callbacks.Callback | None:
    if peer == "none":
        return None
    if peer == "tf_checkpoint_manager":
        return TFManagerCallback(directory)
    if peer == "keras_model_checkpoint":
        path = os.path.join(directory, "model.weights.h5")
        return keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    if peer == "keras_orbax_checkpoint":
        return keras.callbacks.OrbaxCheckpoint(directory, max_to_keep=1, save_on_background=True)
    if peer.startswith("keras_ckpt_"):
        return keras_ckpt.RotatingCheckpoint(
            directory,
            max_to_keep=1,
            save_on_train_end=False,
            async_save="_async" in peer,
        )
    raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def run_peer(peer: str, model, data, args, root: str, saves: int) -> dict[str, Any]:
    directory = B.fresh_dir(os.path.join(root, peer))
    inner = make_peer(peer, directory)
    compute = Compute(args.compute / args.steps)
    callbacks: list[keras.callbacks.Callback] = [compute]
    gate = Gate(inner, saves) if inner is not None else None
    if gate is not None:
        callbacks.append(gate)
    x, y = data
    gc.collect()
    _sharing.ENABLED = not peer.endswith("_unshared")  # read when the manager is made
    with B.PeakMemory() as memory:
        t0 = time.perf_counter()
        model.fit(
            x,
            y,
            batch_size=args.batch,
            epochs=saves + 1,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
        fit_s = time.perf_counter() - t0
    _sharing.ENABLED = True
    on_disk = B.du(directory)
    del inner, callbacks
    shutil.rmtree(directory, ignore_errors=True)
    after = [t for e, b, t in compute.steps if b == 0 and 1 <= e <= saves]
    other = [t for e, b, t in compute.steps if not (b == 0 and 1 <= e <= saves)]
    row = {
        "fit_s": fit_s,
        "peak_extra_mb": memory.peak_extra / B.MB,
        "bytes_on_disk": on_disk,
        "step_after_save_s": B.median(after),
        "other_steps_s": B.median(other),
    }
    if gate is not None:
        row.update(blocked_s=gate.blocked, save_calls_s=gate.save_calls, end_wait_s=gate.end_wait)
    return row


def per_batch_overhead(args, root: str) -> dict[str, Any]:
    """Microseconds our callback adds to a training batch when no save is due."""
    model = B.build_model(0.001, 1)
    x, y = B.train_data(model, args.batch_steps)
    logs = {"loss": 0.5, "mae": 0.25}
    direct = {}
    for label, freq in (("save_freq_epoch", "epoch"), ("save_freq_steps_not_due", 10**12)):
        cb = keras_ckpt.RotatingCheckpoint(
            B.fresh_dir(os.path.join(root, "batch-" + label)), save_freq=freq
        )
        cb.set_model(model)
        cb.on_train_begin()
        calls = 100_000
        t0 = time.perf_counter()
        for i in range(calls):
            cb.on_train_batch_end(i, logs)
        direct[label] = round((time.perf_counter() - t0) / calls * 1e6, 3)
        cb.close()
    # In fit: time spent inside our hooks (exact), and the fit time with and without the
    # callback, interleaved (a difference of two noisy totals: informative only).
    model.fit(x, y, batch_size=1, epochs=1, verbose=0)  # traces the train function
    plain, with_cb, hooks, fixed = [], [], [], []
    for r in range(args.batch_rounds):
        for use in (False, True) if r % 2 == 0 else (True, False):
            cbs: list[keras.callbacks.Callback] = []
            if use:
                inner = keras_ckpt.RotatingCheckpoint(
                    B.fresh_dir(os.path.join(root, "batch-fit")),
                    save_freq=10**12,
                    save_on_train_end=False,
                )
                cbs = [Gate(inner, saves=0)]
            t0 = time.perf_counter()
            model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=cbs)
            (with_cb if use else plain).append(time.perf_counter() - t0)
            if use:
                gate = cbs[0]
                hooks.append(gate.batch_hooks)
                fixed.append(gate.blocked - gate.batch_hooks)
    steps = len(x)
    return {
        "direct_call_us": direct,
        "fit_steps": steps,
        # not B.median: its 4 decimals of seconds round a short run's microseconds to 0
        "in_fit_batch_hooks_us": round(statistics.median(hooks) / steps * 1e6, 3),
        "in_fit_fixed_per_fit_ms": round(B.median(fixed) * 1e3, 2),
        "fit_step_us_without": round(B.median(plain) / steps * 1e6, 2),
        "fit_step_us_with": round(B.median(with_cb) / steps * 1e6, 2),
        "fit_difference_us_noisy": round((B.median(with_cb) - B.median(plain)) / steps * 1e6, 2),
    }


def many_variables(args, root: str) -> dict[str, Any]:
    """Per-variable costs: a model of `--many-layers` small layers (thousands of variables).

    Times the calls on the training thread: `CheckpointManager.save` sync and async (the
    async call is the snapshot) against `tf.train.CheckpointManager.save`, medians.
    """
    model = B.build_model(args.many_layers * 32 * 32 * 4 / B.MB, args.many_layers)
    x, y = B.train_data(model, 4)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    count = len(model.variables) + len(model.optimizer.variables)
    out: dict[str, Any] = {"layers": args.many_layers, "variables": count}
    checkpoint = tf.train.Checkpoint(model=model)
    tf_manager = tf.train.CheckpointManager(
        checkpoint, B.fresh_dir(os.path.join(root, "mv-tf")), 1
    )
    names = ("keras_ckpt_sync", "keras_ckpt_async", "keras_ckpt_sync_unshared")
    times: dict[str, list[float]] = {"tf_checkpoint_manager": [], **{n: [] for n in names}}
    managers = {}
    for name in names:
        _sharing.ENABLED = not name.endswith("_unshared")  # read when the manager is made
        managers[name] = keras_ckpt.CheckpointManager(
            B.fresh_dir(os.path.join(root, "mv-" + name)),
            model,
            keep=keras_ckpt.KeepLast(1),
            async_save=name.endswith("async"),
        )
    _sharing.ENABLED = True
    for step in range(1, args.many_saves + 2):
        times["tf_checkpoint_manager"].append(B.timed(lambda s=step: tf_manager.save(s)))
        for name, manager in managers.items():
            manager.wait()  # the async call alone: the snapshot, not the previous write
            times[name].append(B.timed(lambda m=manager, s=step: m.save(step=s)))
    for manager in managers.values():
        manager.close()
    for name, values in times.items():
        out[f"{name}_call_ms"] = round(B.median(values[1:]) * 1e3, 2)  # the first builds plans
    out["keras_ckpt_async_call_us_per_variable"] = round(
        out["keras_ckpt_async_call_ms"] * 1e3 / count, 2
    )
    return out


def summarise(rows: dict[str, list[dict[str, Any]]], saves: int) -> dict[str, Any]:
    base = rows["none"]
    out: dict[str, Any] = {}
    for peer, runs in rows.items():
        stalls = [(r["fit_s"] - b["fit_s"]) / saves for r, b in zip(runs, base, strict=True)]
        slower = [
            r["step_after_save_s"] - b["step_after_save_s"]
            for r, b in zip(runs, base, strict=True)
        ]
        entry = {
            "fit_s": B.median(r["fit_s"] for r in runs),
            "stall_per_save_s": B.median(stalls) if peer != "none" else 0.0,
            "peak_extra_mb": round(B.median(r["peak_extra_mb"] for r in runs), 1),
            "step_after_save_s": B.median(r["step_after_save_s"] for r in runs),
            "other_steps_s": B.median(r["other_steps_s"] for r in runs),
        }
        if peer != "none":
            blocked = [r["blocked_s"] / saves for r in runs]
            entry.update(
                save_call_s=B.median(t for r in runs for t in r["save_calls_s"]),
                blocked_per_save_s=B.median(blocked),
                step_after_save_slowdown_s=B.median(slower),
                lost_per_save_s=B.median(b + s for b, s in zip(blocked, slower, strict=True)),
                end_wait_s=B.median(r["end_wait_s"] for r in runs),
                bytes_on_disk=int(B.median(r["bytes_on_disk"] for r in runs)),
                stall_per_save_rounds_s=[round(s, 3) for s in stalls],
            )
        out[peer] = entry
    return out


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    tf_peer = summary.get("tf_checkpoint_manager")
    if not tf_peer:
        return {}
    tf_save = tf_peer["save_call_s"]
    out: dict[str, Any] = {"tf_checkpoint_manager_save_s": tf_save}
    for peer in ("keras_ckpt_sync", "keras_ckpt_async"):
        for variant in (peer, peer + "_unshared"):
            mine = summary.get(variant)
            if not mine:
                continue
            for field in ("save_call_s", "stall_per_save_s", "lost_per_save_s"):
                name = field.removesuffix("_s")
                out[f"{variant}_{name}_over_tf_save"] = round(mine[field] / tf_save, 3)
        shared, unshared = summary.get(peer), summary.get(peer + "_unshared")
        if shared and unshared:  # sharing on / off with nothing to share
            for field in ("save_call_s", "lost_per_save_s"):
                name = field.removesuffix("_s")
                out[f"{peer}_{name}_shared_over_unshared"] = round(
                    shared[field] / unshared[field], 3
                )
    return out


def targets(summary, ratio, batch, snapshot_mb) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "keras_ckpt_async_stall_per_save_over_tf_save" in ratio:
        by_fit = ratio["keras_ckpt_async_stall_per_save_over_tf_save"]
        by_steps = ratio["keras_ckpt_async_lost_per_save_over_tf_save"]
        out["async_stall_le_0.25x_tf_save"] = {
            "stall_per_save_over_tf_save": by_fit,
            "lost_per_save_over_tf_save": by_steps,
            "met_by_fit_time": by_fit <= 0.25,
            "met_by_lost_time": by_steps <= 0.25,
        }
    if "keras_ckpt_sync_save_call_over_tf_save" in ratio:
        value = ratio["keras_ckpt_sync_save_call_over_tf_save"]
        out["sync_save_le_1.1x_tf_save"] = {"save_call_over_tf_save": value, "met": value <= 1.1}
    if batch:
        worst = max([*batch["direct_call_us"].values(), batch["in_fit_batch_hooks_us"]])
        out["per_batch_overhead_lt_50us"] = {"value_us": worst, "met": worst < 50}
    if "keras_ckpt_async" in summary:
        extra = summary["keras_ckpt_async"]["peak_extra_mb"]
        training = summary["none"]["peak_extra_mb"]  # training's own transient memory
        out["async_peak_extra_memory_le_one_snapshot"] = {
            "peak_extra_mb": extra,
            "peak_extra_without_checkpointing_mb": training,
            "snapshot_mb": round(snapshot_mb, 1),
            "met": extra - training <= snapshot_mb * 1.05,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=400, help="MB of float32 model weights")
    parser.add_argument("--layers", type=int, default=8, help="Dense layers (variables / 2)")
    parser.add_argument("--saves", type=int, default=4, help="saves per fit")
    parser.add_argument("--steps", type=int, default=1, help="training steps per epoch")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument(
        "--compute", type=float, default=6.0, help="simulated compute per epoch (s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every peer")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up round")
    parser.add_argument("--batch-steps", type=int, default=2000, help="steps of the batch test")
    parser.add_argument("--batch-rounds", type=int, default=5, help="rounds of the batch test")
    parser.add_argument("--skip-batch-test", action="store_true")
    parser.add_argument(
        "--many-layers", type=int, default=300, help="layers of the many-variables test"
    )
    parser.add_argument(
        "--many-saves", type=int, default=10, help="saves of the many-variables test"
    )
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--scenario", choices=("full", "transfer"), default="full")
    parser.add_argument("--transfer-mb", type=float, default=300, help="frozen backbone MB")
    parser.add_argument("--head-mb", type=float, default=2, help="trainable head MB")
    parser.add_argument("--transfer-saves", type=int, default=7, help="saves per peer")
    parser.add_argument("--transfer-rounds", type=int, default=3, help="rounds of all peers")
    args = parser.parse_args(argv)
    if args.scenario == "transfer":
        root = tempfile.mkdtemp(prefix="keras_ckpt-bench-", dir=args.dir)
        try:
            result = _transfer.run(args, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        B.emit(
            {
                "benchmark": "save_stall",
                "scenario": "transfer_learning",
                "command": "python benchmarks/save_stall.py " + " ".join(argv or sys.argv[1:]),
                "machine": B.machine(),
                **result,
            },
            args.out,
        )
        return 0

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if "none" not in peers:
        peers.insert(0, "none")
    skipped: dict[str, str] = {}
    if "keras_orbax_checkpoint" in peers:
        problem = orbax_problem()
        if problem:
            skipped["keras_orbax_checkpoint"] = problem
            peers.remove("keras_orbax_checkpoint")
    root = tempfile.mkdtemp(prefix="keras_ckpt-bench-", dir=args.dir)
    try:
        model = B.build_model(args.mb, args.layers)
        data = B.train_data(model, args.steps * args.batch)
        model.fit(*data, batch_size=args.batch, epochs=1, verbose=0)  # trace, build Adam
        nbytes = B.state_bytes(model)
        B.log(
            f"model: {B.state_bytes(model, False) / B.MB:.0f} MB of weights, "
            f"{nbytes / B.MB:.0f} MB with Adam, {len(model.variables)} + "
            f"{len(model.optimizer.variables)} variables"
        )
        if not args.no_warmup:
            for peer in peers:
                B.log(f"warm-up: {peer}")
                run_peer(
                    peer, model, data, argparse.Namespace(**{**vars(args), "compute": 0}), root, 1
                )
        rows: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
        for r in range(args.rounds):
            order = peers[r % len(peers) :] + peers[: r % len(peers)]
            for peer in order:
                row = run_peer(peer, model, data, args, root, args.saves)
                rows[peer].append(row)
                B.log(
                    f"round {r + 1}/{args.rounds} {peer}: fit {row['fit_s']:.2f}s "
                    f"saves {[round(s, 2) for s in row.get('save_calls_s', [])]}"
                )
        disk = B.disk_reference(root, nbytes, args.rounds)
        batch = None if args.skip_batch_test else per_batch_overhead(args, root)
        many = many_variables(args, root) if args.many_layers > 0 else None
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = summarise(rows, args.saves)
    ratio = ratios(summary)
    result = {
        "benchmark": "save_stall",
        "command": "python benchmarks/save_stall.py " + " ".join(argv or sys.argv[1:]),
        "machine": B.machine(),
        "config": {
            "weights_mb": round(B.state_bytes(model, False) / B.MB, 1),
            "checkpoint_mb": round(nbytes / B.MB, 1),
            "variables": len(model.variables) + len(model.optimizer.variables),
            "saves": args.saves,
            "steps_per_epoch": args.steps,
            "compute_s_per_epoch": args.compute,
            "rounds": args.rounds,
        },
        "peers": summary,
        "skipped": skipped,
        "ratios": ratio,
        "disk_reference": disk,
        "per_batch_overhead": batch,
        "many_variables": many,
        "targets": targets(summary, ratio, batch, nbytes / B.MB),
    }
    B.emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
