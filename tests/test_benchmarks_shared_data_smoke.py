"""The shared-data benchmarks run end to end on tiny sizes and print the JSON they promise.

No timing is asserted (that is what the benchmarks are for); only that each peer ran, wrote
what it says, and that the ratios and targets the README quotes are computed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRANSFER = [
    "benchmarks/save_stall.py", "--scenario", "transfer", "--transfer-mb", "4",
    "--head-mb", "0.1", "--transfer-saves", "3", "--transfer-rounds", "1",
]  # fmt: skip
AB = ["benchmarks/sharing_ab.py", "--mb", "1", "--layers", "2", "--saves", "2"]


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, *args, "--dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def test_transfer_scenario_and_sharing_ab_print_json_with_expected_keys(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "a").mkdir()
    transfer_proc = _start(TRANSFER, tmp_path / "t")
    ab_proc = _start(AB, tmp_path / "a")
    transfer, ab = _result(transfer_proc), _result(ab_proc)

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
