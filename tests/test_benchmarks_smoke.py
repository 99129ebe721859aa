"""The benchmark scripts still run: each, at a tiny size, prints JSON with its expected keys.

Timings are not checked (this machine's numbers mean nothing at this size); the full runs
are described in README.rst, "Performance".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAVE_STALL = [
    "benchmarks/save_stall.py",
    "--mb", "0.5", "--layers", "2", "--saves", "2", "--steps", "1", "--compute", "0",
    "--rounds", "1", "--no-warmup", "--batch-steps", "20", "--batch-rounds", "2",
    "--many-layers", "20", "--many-saves", "2",
]  # fmt: skip
RESTORE = ["benchmarks/restore.py", "--mb", "0.5", "--layers", "2", "--rounds", "1"]
TRANSFER = [
    "benchmarks/save_stall.py", "--scenario", "transfer", "--transfer-mb", "4",
    "--head-mb", "0.1", "--transfer-saves", "3", "--transfer-rounds", "1",
]  # fmt: skip
AB = ["benchmarks/sharing_ab.py", "--mb", "1", "--layers", "2", "--saves", "2"]


def _benchmark(fresh, args: list[str], tmp_path: Path) -> dict:
    """Runs a benchmark script in a new process (`helpers.fresh`), as `python SCRIPT ...`."""
    tmp_path.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = fresh.run([*args, "--dir", str(tmp_path)], cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_benchmark_scripts_print_json_with_expected_keys(tmp_path, fresh):
    stall = _benchmark(fresh, SAVE_STALL, tmp_path / "s")
    restore = _benchmark(fresh, RESTORE, tmp_path / "r")

    assert stall["benchmark"] == "save_stall"
    expected = {"none", "tf_checkpoint_manager", "keras_model_checkpoint", "keras_ckpt_sync",
                "keras_ckpt_async"}  # fmt: skip
    assert expected <= set(stall["peers"])
    # Orbax either ran or says why not.
    assert ("keras_orbax_checkpoint" in stall["peers"]) != (
        "keras_orbax_checkpoint" in stall["skipped"]
    )
    for peer in expected - {"none"}:
        row = stall["peers"][peer]
        assert {"fit_s", "stall_per_save_s", "save_call_s", "lost_per_save_s", "peak_extra_mb",
                "step_after_save_slowdown_s"} <= set(row)  # fmt: skip
        assert row["bytes_on_disk"] > 0  # each peer really wrote its checkpoint
    assert {
        "keras_ckpt_sync_save_call_over_tf_save",
        "keras_ckpt_sync_stall_per_save_over_tf_save",
        "keras_ckpt_async_stall_per_save_over_tf_save",
        "keras_ckpt_async_lost_per_save_over_tf_save",
    } <= set(stall["ratios"])
    assert stall["disk_reference"]["write_fsync_mb_s"] > 0
    assert stall["per_batch_overhead"]["in_fit_batch_hooks_us"] > 0
    many = stall["many_variables"]
    assert many["variables"] > 60 and many["keras_ckpt_async_call_ms"] > 0
    assert {
        "async_stall_le_0.25x_tf_save",
        "sync_save_le_1.1x_tf_save",
        "per_batch_overhead_lt_50us",
        "async_peak_extra_memory_le_one_snapshot",
    } <= set(stall["targets"])

    assert restore["benchmark"] == "restore"
    assert set(restore["methods"]) == {"keras_ckpt", "tf_checkpoint_read",
                                       "keras_load_weights_h5"}  # fmt: skip
    for row in restore["methods"].values():
        assert row["hot_mb_s"] > 0 and row["cold_mb_s"] > 0
    assert set(restore["targets"]) == {"restore_le_1.1x_tf_read_hot",
                                       "restore_le_1.1x_tf_read_cold"}  # fmt: skip
    assert list(tmp_path.glob("*/keras_ckpt-*")) == []  # scratch files are removed


def test_shared_data_benchmarks_print_json_with_expected_keys(tmp_path, fresh):
    transfer = _benchmark(fresh, TRANSFER, tmp_path / "t")
    ab = _benchmark(fresh, AB, tmp_path / "a")

    assert transfer["scenario"] == "transfer_learning"
    assert set(transfer["peers"]) == {"tf_checkpoint_manager", "keras_ckpt_sync",
                                      "keras_ckpt_async", "keras_ckpt_sync_unshared"}  # fmt: skip
    peers = transfer["peers"]
    for row in peers.values():
        assert row["save_call_s"] > 0 and row["disk_used_bytes"] > 0
    if sys.platform.startswith("linux"):  # bytes written come from /proc/self/io
        full = peers["tf_checkpoint_manager"]["bytes_written_per_save"]
        assert peers["keras_ckpt_sync"]["bytes_written_per_save"] < full / 2
        assert peers["keras_ckpt_sync_unshared"]["bytes_written_per_save"] >= full * 0.9
    assert set(transfer["targets"]) >= {
        "sync_save_call_le_0.1x_tf_save",
        "disk_used_keep_5_le_1.2x_one_checkpoint",
    }
    assert ab["benchmark"] == "sharing_ab"
    for mode in ("sync", "async"):
        assert ab["modes"][mode]["shared_over_unshared"] > 0
    assert list(tmp_path.glob("*/keras_ckpt-*")) == []  # scratch files are removed
