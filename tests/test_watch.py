"""`keras_ckpt.watch`: a sidecar evaluator scoring each checkpoint while another process trains.

The trainers are real subprocesses (`helpers/watch_trainer.py`, forked from the session's
zygote: `helpers.fresh`, which saves starting TensorFlow each time); the watcher runs in the test
process, reading the directory as a watcher on another machine would. Tests that only need
time to pass use `_watch` with a simulated clock and sleep, whose sleep can also act as the
training side (save, close) between two polls.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers.fresh import Child
from helpers.tiny import tiny_data, tiny_model

import keras_ckpt
from keras_ckpt import (
    CheckpointManager,
    KeepLast,
    MonitorNotFoundError,
    RotatingCheckpoint,
    cli,
    evaluate_checkpoints,
    list_checkpoints,
    load_model,
    load_saved_model,
    verify,
)
from keras_ckpt._lock import run_state
from keras_ckpt._watch import _watch

TRAINER = str(Path(__file__).parent / "helpers" / "watch_trainer.py")
VAL = tiny_data(16, seed=1)  # held-out data (the trainer trains on tiny_data(48, seed=0))
SIDECARS = {".lock", "checkpoint", "model.json", "history.jsonl"}


def _launch(fresh, **args) -> Child:
    """A trainer in a new process; its stdout is a stream (`helpers.fresh.Child`)."""
    return fresh.start([TRAINER, json.dumps(args)], stdout=subprocess.PIPE, text=True)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


class FakeTime:
    """A clock whose `sleep` advances it, running `actions[i]` at the i-th sleep."""

    def __init__(self, actions=()) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.actions = list(actions)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.sleeps < len(self.actions):
            self.actions[self.sleeps]()
        self.sleeps += 1
        self.now += seconds


# -- acceptance 1: a live run ---------------------------------------------------------------------


@pytest.mark.slow
def test_watch_evaluates_each_checkpoint_of_a_live_run_and_exports_the_best(tmp_path, fresh):
    run, out = tmp_path / "run", tmp_path / "run-eval"
    trainer = _launch(fresh, dir=str(run), save_freq=2, delay=0.12)  # 24 steps: ~3 s of training
    began = time.monotonic()
    try:
        rows = keras_ckpt.watch(
            run, VAL, export_best=True, poll_seconds=0.2, timeout=120, verbose=0
        )
        returned = time.time()
    finally:
        trainer.wait(timeout=120)
    elapsed = time.monotonic() - began
    assert trainer.returncode == 0
    assert run_state(str(run))[0] == "ended"
    ended_at = float((run / ".lock").read_text().splitlines()[1].split()[-1])
    assert 0 <= returned - ended_at < 10  # it ended with the run, not by its timeout
    assert elapsed < 60

    assert [r["step"] for r in rows] == list(range(2, 25, 2))  # one row per checkpoint
    assert [r["step"] for r in rows] == [i.step for i in list_checkpoints(run)]
    reference = {r["step"]: r for r in evaluate_checkpoints(run, VAL)}
    for row in rows:
        assert row["path"] == str(run / f"ckpt-{row['step']}")
        assert row["epoch"] == reference[row["step"]]["epoch"]
        assert row["loss"] == pytest.approx(reference[row["step"]]["loss"], abs=1e-5)
        assert row["mae"] == pytest.approx(reference[row["step"]]["mae"], abs=1e-5)
    assert _read_jsonl(out / "evaluations.jsonl") == rows

    best = min(rows, key=lambda r: r["loss"])
    exported = load_saved_model(out / "best").predict(VAL[0], verbose=0)
    expected = load_model(best["path"]).predict(VAL[0], verbose=0)
    np.testing.assert_allclose(exported, expected, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["best", "evaluations.jsonl"]


# -- acceptance 2: rotation faster than the watcher -----------------------------------------------


@pytest.mark.slow
def test_watch_survives_fast_rotation_and_leaves_the_training_directory_untouched(tmp_path, fresh):
    run, out = tmp_path / "run", tmp_path / "run-eval"
    trainer = _launch(fresh, dir=str(run), save_freq=1, max_to_keep=1, delay=0.02)
    try:
        rows = keras_ckpt.watch(run, VAL, export_best=True, poll_seconds=0.05, timeout=60)
    finally:
        output, _ = trainer.communicate(timeout=120)
    assert trainer.returncode == 0
    left = json.loads(output.splitlines()[-1].removeprefix("done "))  # as training left it

    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and set(steps) <= set(range(1, 25))
    assert steps[-1] == 24  # the last checkpoint is always scored
    assert _read_jsonl(out / "evaluations.jsonl") == rows

    # Exactly what training alone leaves: the last checkpoint and the run's own files.
    files = _files(run)
    assert files == left
    ckpt = {n for n in files if n.startswith("ckpt-")}
    assert set(files) == SIDECARS | ckpt
    assert {n.split(".")[0] for n in ckpt} == {"ckpt-24"}
    assert verify(run) == []

    again = keras_ckpt.watch(run, VAL, export_best=True, poll_seconds=0.05, timeout=5, verbose=0)
    assert again == []  # a restarted watcher skips what evaluations.jsonl holds
    assert _read_jsonl(out / "evaluations.jsonl") == rows
    assert _files(run) == files


# -- acceptance 3: the command line --------------------------------------------------------------


def _finished_run(directory: Path, max_to_keep: int = 3) -> None:
    x, y = tiny_data(48)
    callback = RotatingCheckpoint(directory, max_to_keep=max_to_keep, save_freq=2)
    tiny_model().fit(x, y, batch_size=8, epochs=2, callbacks=[callback], verbose=0)


def test_cli_watch_on_a_finished_run_evaluates_every_kept_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    _finished_run(run)
    np.savez(tmp_path / "val.npz", x=VAL[0], y=VAL[1])
    code = cli.main(
        ["watch", str(run), "--data", str(tmp_path / "val.npz"), "--timeout", "5"]
        + ["--export-best", "--output", str(tmp_path / "eval")]
    )
    assert code == 0
    rows = _read_jsonl(tmp_path / "eval" / "evaluations.jsonl")
    assert [r["step"] for r in rows] == [8, 10, 12]
    reference = evaluate_checkpoints(run, VAL)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], abs=1e-5)
    assert (tmp_path / "eval" / "best" / "saved_model.pb").exists()
    out = capsys.readouterr().out
    assert "Watch: ckpt-12 - " in out and "ended" in out


@pytest.mark.parametrize(
    "arrays, message",
    [
        (None, "no such file"),
        ({"x": np.zeros((2, 4))}, "has no array 'y' (it has: x)"),
        ({"inputs": np.zeros((2, 4))}, "has no array 'x' or 'y' (it has: inputs)"),
    ],
)
def test_cli_watch_with_bad_data_exits_2_with_one_line(tmp_path, capsys, arrays, message):
    path = tmp_path / "val.npz"
    if arrays is not None:
        np.savez(path, **arrays)
    assert cli.main(["watch", str(tmp_path / "run"), "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run-eval").exists()


# -- acceptance 4: a killed run is not an ended one -----------------------------------------------


@pytest.mark.slow
def test_a_killed_run_is_waited_for_and_its_relaunch_is_watched(tmp_path, fresh):
    run, copy = tmp_path / "run", tmp_path / "killed"
    events: dict[str, object] = {}

    def train() -> None:
        first = _launch(fresh, dir=str(run), save_freq=2, delay=0.2)
        for line in first.stdout:
            if line.strip() == "step 9":  # ckpt-8 committed, not the end of the run
                break
        first.send_signal(signal.SIGKILL)
        first.wait()
        events["killed_state"] = run_state(str(run))
        shutil.copytree(run, copy)
        time.sleep(1.5)  # 30 polls of the watcher: it must keep waiting
        second = _launch(fresh, dir=str(run), save_freq=2, resume=True)
        second.wait(timeout=120)
        events["second"] = second.returncode
        events["second_done"] = time.monotonic()

    thread = threading.Thread(target=train)
    thread.start()
    try:
        rows = keras_ckpt.watch(run, VAL, poll_seconds=0.05, timeout=60, verbose=0)
        returned = time.monotonic()
    finally:
        thread.join()
    assert events["second"] == 0
    assert events["killed_state"][0] == "started"
    steps = [r["step"] for r in rows]
    assert steps == [i.step for i in list_checkpoints(run)]  # every one, in order
    assert steps[:4] == [2, 4, 6, 8] and len(steps) > 4  # the killed run's, the relaunch's
    assert returned <= events["second_done"] + 5  # ended with the relaunch, not by timeout

    # The killed run alone: the watcher waits for `timeout` seconds without a new checkpoint.
    fake = FakeTime()
    killed = _watch(copy, VAL, clock=fake.clock, sleep=fake.sleep, **_opts(timeout=30))
    assert [r["step"] for r in killed] == [i.step for i in list_checkpoints(copy)]
    assert 30 <= fake.now < 31


def _opts(**changes) -> dict:
    options = dict(
        model=None,
        monitor="loss",
        mode="auto",
        output=None,
        export_best=False,
        batch_size=None,
        poll_seconds=0.5,
        timeout=None,
        verbose=0,
    )
    options.update(changes)
    return options


# -- the run marker, the file layer, time ---------------------------------------------------------


def test_watch_on_ram_fs_follows_a_run_until_its_manager_closes():
    run = "ram://watch-live/run"
    model = tiny_model()
    x, y = tiny_data(16)
    managers: list[CheckpointManager] = []

    def save(open_new: bool = False):
        def act():
            if open_new:
                managers.append(CheckpointManager(run, model, keep=[KeepLast(2)]))
            model.train_on_batch(x, y)
            managers[-1].save(metrics={"loss": 1.0})

        return act

    actions = [
        lambda: None,  # the directory does not exist yet: waited for
        save(open_new=True),  # step 1
        save(),  # step 2
        lambda: managers[-1].close(),  # run ended
    ]
    fake = FakeTime(actions)
    options = _opts(timeout=100, export_best=True)
    rows = _watch(run, VAL, clock=fake.clock, sleep=fake.sleep, **options)
    assert [r["step"] for r in rows] == [1, 2]
    assert fake.sleeps == 4  # returned at the first poll after the close, long before timeout
    lines = tf.io.gfile.GFile("ram://watch-live/run-eval/evaluations.jsonl").read()
    assert [json.loads(line) for line in lines.splitlines()] == rows
    reference = evaluate_checkpoints(run, VAL)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], abs=1e-5)
    _assert_best_exported("ram://watch-live/run-eval/best", rows)
    assert tf.io.gfile.listdir("ram://watch-live/run-eval") == ["best", "evaluations.jsonl"]


def _assert_best_exported(best_dir, rows) -> None:
    best = min(reversed(rows), key=lambda r: r["loss"])  # ties: the newer
    exported = load_saved_model(best_dir).predict(VAL[0], verbose=0)
    expected = load_model(best["path"]).predict(VAL[0], verbose=0)
    np.testing.assert_allclose(exported, expected, atol=1e-6)


def test_a_restarted_watcher_exports_the_best_row_of_its_file(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    first = keras_ckpt.watch(run, VAL, timeout=5, verbose=0)
    assert not (tmp_path / "run-eval" / "best").exists()
    assert keras_ckpt.watch(run, VAL, timeout=5, export_best=True, verbose=0) == []
    _assert_best_exported(tmp_path / "run-eval" / "best", first)


@pytest.mark.filterwarnings("ignore:.*did not resume")
def test_a_new_run_in_an_ended_directory_is_watched_again(tmp_path):
    run = tmp_path / "run"
    _finished_run(run, max_to_keep=2)  # steps 10, 12; the run ended
    assert run_state(str(run))[0] == "ended"
    model, (x, y) = tiny_model(), tiny_data(8)
    manager: list[CheckpointManager] = []

    def new_run():
        manager.append(CheckpointManager(run, model, keep=[KeepLast(5)]))  # started again

    def save():
        model.train_on_batch(x, y)
        manager[0].save(metrics={"loss": 1.0})

    # The watcher is started while the next run opens the directory before its first save.
    new_run()
    actions = [lambda: None, save, lambda: None, lambda: manager[0].close()]
    fake = FakeTime(actions)
    rows = _watch(run, VAL, clock=fake.clock, sleep=fake.sleep, **_opts(timeout=100))
    assert [r["step"] for r in rows] == [10, 12, 13]
    assert fake.sleeps == 4


def test_a_directory_without_run_marker_is_watched_until_timeout(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    (run / ".lock").write_text("host:123")  # as an older keras_ckpt left it
    fake = FakeTime()
    rows = _watch(run, VAL, clock=fake.clock, sleep=fake.sleep, **_opts(timeout=20))
    assert [r["step"] for r in rows] == [8, 10, 12]
    assert 20 <= fake.now < 21


def test_ctrl_c_stops_the_watcher_and_keeps_its_rows(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    (run / ".lock").write_text("host:123")  # no end recorded: it would wait

    def interrupt():
        raise KeyboardInterrupt

    fake = FakeTime([interrupt])
    rows = _watch(run, VAL, clock=fake.clock, sleep=fake.sleep, **_opts())
    assert [r["step"] for r in rows] == [8, 10, 12]
    assert _read_jsonl(tmp_path / "run-eval" / "evaluations.jsonl") == rows


def test_watch_reports_a_missing_monitor_and_bad_arguments(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    with pytest.raises(MonitorNotFoundError, match=r"val_acc.*loss, mae"):
        keras_ckpt.watch(run, VAL, monitor="val_acc", timeout=1, verbose=0)
    assert not (tmp_path / "run-eval").exists()
    with pytest.raises(ValueError, match="poll_seconds"):
        keras_ckpt.watch(run, VAL, poll_seconds=0)
    with pytest.raises(ValueError, match="outside the watched directory"):
        keras_ckpt.watch(run, VAL, output=run / "eval")
    with pytest.raises(ValueError, match="data"):
        keras_ckpt.watch(run, [1, 2, 3, 4])


def test_watch_verbose_prints_a_keras_style_line_per_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    fake = FakeTime([lambda: _finished_run(run)])  # no directory yet; a run during the wait
    rows = _watch(run, VAL, clock=fake.clock, sleep=fake.sleep, **_opts(timeout=40, verbose=1))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Watch: waiting for checkpoints in {run} (no run yet; 0 evaluated, 0 s)..."
    assert lines[1].startswith("Watch: ckpt-8 - ")
    first = rows[0]
    assert lines[1].endswith(
        f" - loss: {first['loss']:.4f} - mae: {first['mae']:.4f} (best loss so far)"
    )
    assert lines[3].startswith("Watch: ckpt-12 - ")
    assert lines[4] == (
        f"Watch: the run in {run} ended; 3 checkpoint(s) evaluated, rows in "
        f"{run}-eval/evaluations.jsonl"
    )
    assert len(lines) == 5


def test_watch_says_it_is_waiting_every_30_seconds_until_timeout(tmp_path, capsys):
    run = tmp_path / "run"
    _finished_run(run)
    (run / ".lock").write_text("host:123")  # no end recorded: it waits
    fake = FakeTime()
    _watch(run, VAL, clock=fake.clock, sleep=fake.sleep, **_opts(timeout=70, verbose=1))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines[3:]] == [
        f"Watch: waiting for checkpoints in {run}",
        f"Watch: waiting for checkpoints in {run}",
        "Watch: no new checkpoint for 70 s",
    ]
    assert lines[3].endswith("(no end recorded; 3 evaluated, 30 s)...")


def test_model_argument_is_used_and_its_weights_put_back(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    os.remove(run / "model.json")  # the model comes from the caller
    model = tiny_model(seed=5)
    model.compile(loss="mae", metrics=["mse"])
    before = model.get_weights()
    rows = keras_ckpt.watch(run, VAL, model=model, timeout=1, verbose=0)
    assert [r["step"] for r in rows] == [8, 10, 12] and "mse" in rows[0]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_best_export_replaces_the_old_one_and_repairs_a_replacement_killed_midway(tmp_path):
    from keras_ckpt._export import replace_saved_model, write_saved_model

    first, second = tiny_model(seed=1), tiny_model(seed=2)
    out = tmp_path / "eval"
    write_saved_model(first, str(out / ".best.old-0123456789ab"))  # killed between renames
    (out / ".best.tmp-ba9876543210").mkdir()  # killed while exporting
    replace_saved_model(second, str(out / "best"))
    assert sorted(p.name for p in out.iterdir()) == ["best"]
    predicted = load_saved_model(out / "best").predict(VAL[0], verbose=0)
    np.testing.assert_allclose(predicted, second.predict(VAL[0], verbose=0), atol=1e-6)


def test_a_watcher_killed_mid_line_leaves_a_file_the_next_one_completes(tmp_path):
    run, log = tmp_path / "run", tmp_path / "run-eval" / "evaluations.jsonl"
    _finished_run(run)
    rows = keras_ckpt.watch(run, VAL, timeout=5, verbose=0)
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing the second row
    again = keras_ckpt.watch(run, VAL, timeout=5, verbose=0)
    assert [r["step"] for r in again] == [10, 12]
    kept_line, torn, *added = log.read_text().splitlines()
    assert json.loads(kept_line) == rows[0] and torn == lines[1][:20]
    assert [json.loads(line) for line in added] == again


def test_watch_evaluates_a_dataset_as_evaluate_checkpoints_does(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    dataset = tf.data.Dataset.from_tensor_slices(VAL).batch(5)
    rows = keras_ckpt.watch(run, dataset, timeout=5, verbose=0)
    reference = evaluate_checkpoints(run, dataset)
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == [8, 10, 12]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], abs=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        keras_ckpt.watch(run, dataset, batch_size=4)
