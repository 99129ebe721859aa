"""The `keras-ckpt` command line on a real training directory.

The commands run once per module, in `ran`: in-process through `main([...])` (what the
console script calls), except `list`, which also runs as the installed console script in a
subprocess as a smoke test (it imports no TensorFlow, so it starts in a fraction of a second).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
from helpers.digits_run import build_classifier, digits, train_digits

from keras_ckpt import list_checkpoints, load_saved_model, restore
from keras_ckpt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("keras-ckpt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "keras_ckpt.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


class Ran:
    """A finished command: exit code, stdout, and the lines of stderr that are ours."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        # TensorFlow's C++ start-up lines (CUDA stubs, absl) are not ours.
        self.errors = [line for line in err.splitlines() if line.startswith("keras-ckpt")]

    @classmethod
    def subprocess(cls, proc: subprocess.Popen) -> Ran:
        out, err = proc.communicate(timeout=240)
        return cls(proc.returncode, out, err)

    @classmethod
    def in_process(cls, argv: list[str]) -> Ran:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return cls(code, out.getvalue(), err.getvalue())


COMMANDS = {
    "list": ["list", "{run}/best"],
    "inspect": ["inspect", "{run}/best"],
    "plot": ["plot", "{run}/last", "-o", "{out}/last.png"],
    "verify_damaged": ["verify", "{out}/damaged"],
    "export": ["export", "{run}/best", "{out}/export/1"],
    "list_missing": ["list", "{run}/no-such-dir"],
}
SUBPROCESS = {"list", "list_missing"}  # smoke tests of the installed console script


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    train_digits(root, epochs=6)
    return root


@pytest.fixture(scope="module")
def ran(run, tmp_path_factory) -> dict[str, Ran]:
    out = tmp_path_factory.mktemp("out")
    shutil.copytree(run / "last", out / "damaged")
    data = sorted((out / "damaged").glob("ckpt-*.data-*"))[0]
    sizes = {data.name: data.stat().st_size}
    data.write_bytes(data.read_bytes()[:100])  # a truncated data file
    argv = {name: [a.format(run=run, out=out) for a in args] for name, args in COMMANDS.items()}
    procs = {
        name: subprocess.Popen(
            _console_script() + argv[name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for name in SUBPROCESS
    }
    results = {name: Ran.in_process(argv[name]) for name in COMMANDS if name not in SUBPROCESS}
    results.update((name, Ran.subprocess(proc)) for name, proc in procs.items())
    results["out"] = out  # type: ignore[assignment]
    results["sizes"] = sizes  # type: ignore[assignment]
    return results


def _table(stdout: str) -> tuple[list[str], list[list[str]]]:
    lines = stdout.splitlines()
    header = lines[1].split()
    rows = [line.split("  ") for line in lines[2:]]
    return header, [[cell.strip() for cell in row if cell.strip()] for row in rows]


def test_list_shows_a_table_with_metrics_size_and_marks(ran, run):
    kept = list_checkpoints(run / "best")
    assert ran["list"].code == 0, ran["list"].err
    lines = ran["list"].out.splitlines()
    assert lines[0] == f"{run}/best: 2 checkpoints, best by val_loss (min)"
    header, rows = _table(ran["list"].out)
    assert header == [
        "step",
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "size",
        "saved",
    ]
    assert [int(r[0]) for r in rows] == [i.step for i in kept]
    best = min(kept, key=lambda i: i.metrics["val_loss"])
    for info, row in zip(kept, rows, strict=True):
        assert int(row[1]) == info.epoch
        for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
            shown = float(row[header.index(column)])
            assert shown == pytest.approx(info.metrics[column], abs=5e-5)
        files = [*Path(run / "best").glob(f"{info.name}.data-*"), Path(f"{info.path}.index")]
        number, unit = row[header.index("size")].split()
        assert unit == "KB"
        assert float(number) * 1024 == pytest.approx(sum(f.stat().st_size for f in files), abs=52)
        marks = set(row[header.index("saved") + 1].split(", ")) if len(row) > 8 else set()
        assert ("best" in marks) == (info.step == best.step)
        assert ("latest" in marks) == (info is kept[-1])


def test_inspect_lists_every_variable_with_shape_dtype_and_total_bytes(ran, run):
    prefix = list_checkpoints(run / "best")[-1].path  # a directory means its latest
    result = ran["inspect"]
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"{prefix}: step {prefix.rsplit('-', 1)[1]}, epoch ")
    stored = {
        k: s for k, s in tf.train.list_variables(prefix) if k != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }
    model_rows = lines[lines.index("[model]") + 1 : lines.index("[optimizer]")]
    names = [re.sub(r"^sequential_\d+/", "sequential/", r.split()[0]) for r in model_rows]
    assert names == [  # Keras numbers a model "sequential_3" when others came first
        "sequential/body/kernel",
        "sequential/body/bias",
        "sequential/head/kernel",
        "sequential/head/bias",
    ]
    assert "(64, 32)  float32  8,192" in model_rows[0]
    assert any(re.match(r"adam(_\d+)?/iteration ", r) and " int64 " in r for r in lines)
    total = sum(4 * max(1, _size(s)) for k, s in stored.items() if "iterations" not in k) + 8
    assert lines[-1].endswith(f"total {len(stored)} variables, {total / 1024:.1f} KB")


def _size(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_plot_writes_a_real_png(ran):
    result = ran["plot"]
    png = ran["out"] / "last.png"
    assert result.code == 0, result.err
    assert result.out.strip() == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels[..., :3].std() > 0.05


def test_a_wrong_path_prints_one_line_and_exits_2_without_traceback(ran, run):
    result = ran["list_missing"]
    assert result.code == 2
    assert result.errors == [f"keras-ckpt list: error: no such directory: {run}/no-such-dir"]
    assert "Traceback" not in result.err and result.out == ""


# In-process: the same `main` the console script calls (`sys.exit(main())`), for what needs
# no separate process.


def test_verify_passes_an_intact_directory(run, capsys):
    assert main(["verify", str(run / "best")]) == 0
    assert capsys.readouterr().out == f"{run}/best: 2 checkpoints intact\n"


def test_verify_names_each_damaged_file_and_exits_1(ran):
    result, out = ran["verify_damaged"], ran["out"]
    ((name, size),) = ran["sizes"].items()
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{out}/damaged/{name}: 100 bytes, expected {size} (truncated or altered)",
        f"{out}/damaged: 1 problem found",
    ]
    assert "Traceback" not in result.err


def test_export_writes_a_saved_model_that_predicts_like_the_checkpoint(ran, run):
    result, target = ran["export"], ran["out"] / "export" / "1"
    latest = list_checkpoints(run / "best")[-1].path
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"exported {latest} to {target} (a SavedModel: keras_ckpt.load_saved_model or serving)"
    ]
    assert (target / "saved_model.pb").exists()
    x, _, x_val, _ = digits()
    reference = build_classifier(seed=1)
    restore(reference, latest)
    served = load_saved_model(target).predict(x_val, verbose=0)
    np.testing.assert_allclose(served, reference.predict(x_val, verbose=0), atol=1e-6)


def test_export_refuses_a_non_empty_target(run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["export", str(run / "best"), str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"keras-ckpt export: error: {tmp_path}/taken already exists and is not an empty "
        "directory: choose a new one"
    ]
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("list", "inspect", "verify", "export", "plot"):
        assert f"\n    {command} " in out
    assert "exit codes:" in out


@pytest.mark.parametrize("command", ["list", "inspect", "verify", "export", "plot"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: keras-ckpt {command} ")
    assert f"example:\n  keras-ckpt {command} " in out and "exit codes:" in out


def test_list_ranks_by_the_chosen_monitor(run, capsys):
    kept = list_checkpoints(run / "last")
    assert main(["list", str(run / "last"), "--monitor", "val_accuracy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{run}/last: 3 checkpoints, best by val_accuracy (max)"
    best = max(kept, key=lambda i: (i.metrics["val_accuracy"], i.step))
    marked = [line for line in lines[2:] if "best" in line.split("  ")[-1]]
    assert len(marked) == 1 and marked[0].split()[0] == str(best.step)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["list", "{tmp}"], 1, "keras-ckpt list: error: {tmp} holds no checkpoints"),
        (
            ["inspect", "{tmp}", "--bogus"],
            2,
            "keras-ckpt: error: unrecognized arguments: --bogus (see `keras-ckpt --help`)",
        ),
        (
            ["inspect", "{tmp}"],
            1,
            "keras-ckpt inspect: error: {tmp} holds no complete checkpoint "
            "(see `keras-ckpt verify {tmp}`)",
        ),
        (
            ["export", "{tmp}/nope", "{tmp}/out"],
            2,
            "keras-ckpt export: error: no such checkpoint or directory: {tmp}/nope",
        ),
        (
            ["inspect"],
            2,
            "keras-ckpt inspect: error: the following arguments are required: CKPT "
            "(see `keras-ckpt inspect --help`)",
        ),
        (
            [],
            2,
            "keras-ckpt: error: the following arguments are required: COMMAND "
            "(see `keras-ckpt --help`)",
        ),
        (
            ["list", "{tmp}", "--mode", "up"],
            2,
            "keras-ckpt list: error: argument --mode: "
            "invalid choice: 'up' (choose from 'auto', 'min', 'max') "
            "(see `keras-ckpt list --help`)",
        ),
    ],
)
def test_usage_errors_are_one_line_with_exit_code(tmp_path, capsys, args, code, message):
    assert main([a.format(tmp=tmp_path) for a in args]) == code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [message.format(tmp=tmp_path)]
    assert captured.out == ""


def test_list_with_a_monitor_nobody_recorded_is_a_usage_error(run, capsys):
    assert main(["list", str(run / "best"), "--monitor", "val_f1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"keras-ckpt list: error: no checkpoint in {run}/best recorded 'val_f1'; recorded "
        "metrics: loss, accuracy, val_loss, val_accuracy"
    ]


def test_plot_unknown_metric_is_a_usage_error(run, tmp_path, capsys):
    assert main(["plot", str(run / "best"), "-o", str(tmp_path / "x.png"), "--metric", "f1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"keras-ckpt plot: error: 'f1' not logged in {run}/best; available metrics: "
        "accuracy, loss, val_accuracy, val_loss"
    ]
    assert not (tmp_path / "x.png").exists()


def test_plot_into_a_missing_folder_fails_with_one_line(run, tmp_path, capsys):
    target = tmp_path / "no" / "x.png"
    assert main(["plot", str(run / "best"), "-o", str(target)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"keras-ckpt plot: error: cannot write {target}: No such file or directory"
    ]


def test_list_of_a_checkpoint_prefix_points_to_inspect(run, capsys):
    prefix = list_checkpoints(run / "best")[-1].path
    assert main(["list", prefix]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"keras-ckpt list: error: {prefix} is a checkpoint, not a directory: try "
        f"`keras-ckpt inspect {prefix}`"
    ]


def test_list_reports_a_damaged_checkpoint_it_leaves_out(run, tmp_path, capsys):
    copy = tmp_path / "best"
    shutil.copytree(run / "best", copy)
    damaged = list_checkpoints(copy)[0]
    data = next(copy.glob(f"{damaged.name}.data-*"))
    data.write_bytes(data.read_bytes()[:100])  # truncated

    assert main(["list", str(copy)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{copy}: 1 checkpoint, best by val_loss (min)"
    assert out[-1].startswith(f"damaged, not listed: {damaged.name}: {data.name} is 100 bytes")
    assert out[-1].endswith(f"(see `keras-ckpt verify {copy}`)")


def test_list_and_inspect_read_a_plain_tf_checkpoint_manager_directory(tmp_path, capsys):
    model = build_classifier()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), tmp_path, 2)
    paths = [manager.save(checkpoint_number=n) for n in (10, 20)]

    assert main(["list", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path}: 2 checkpoints, no metric to rank"
    assert [line.split()[:2] for line in lines[2:]] == [["10", "-"], ["20", "-"]]
    assert lines[-1].endswith("latest")

    assert main(["inspect", paths[-1]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{paths[-1]}: step 20, saved ")
    assert "(64, 32)  float32  8,192" in out  # body/kernel, read through the object graph
