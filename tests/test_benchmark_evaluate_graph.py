"""`benchmarks/evaluate_checkpoints.py --graph` still runs and both contenders agree.

Timings are not checked here (the full run is in README.rst, "Performance").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_graph_benchmark_prints_json_and_both_loops_report_the_same_metrics(tmp_path, fresh):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = ["--graph", "--checkpoints", "2", "--repeats", "1", "--eval-samples", "64"]
    done = fresh.run(  # a new process (`helpers.fresh`)
        ["benchmarks/evaluate_checkpoints.py", *args, "--dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["through_graph"] is True and result["checkpoints"] == 2
    assert result["evaluate_checkpoints_s"] > 0 and result["import_loop_s"] > 0
    assert result["metrics"] == ["accuracy", "loss"]
    assert result["max_abs_metric_diff"] <= 1e-6
