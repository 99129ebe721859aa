"""Crash safety: SIGKILL a process that checkpoints a >100 MB model every batch, again and again.

Each round starts a worker process (``helpers/crash_worker.py``, forked from the session's
zygote that imported TensorFlow once, `helpers.fresh`) on the same directory; it resumes
from the newest checkpoint, trains a model of 113 MB (weights + Adam), saves every batch
(sync or async) and is SIGKILLed at a random moment in the 1.2 s after its first committed
save; with sync saves, half of the kills instead fall anywhere in its next save point (a
training step between two saves otherwise takes a good part of the time; an async worker's
background writer is busy nearly all the time).
After every kill the test checks what a user relies on:

- the ``checkpoint`` state file names only complete checkpoints, and
  ``tf.train.latest_checkpoint`` names one of them, no older than the last step the worker
  had reported committed (nothing acknowledged is lost);
- every checkpoint ``list_checkpoints`` returns restores, with the optimizer at that step
  (index, data and record belong together); none is damaged;
- the next worker's callback, once it opened the directory, left no temporary files or
  half-written checkpoints, kept every complete checkpoint the crash left, and made
  ``tf.train.latest_checkpoint`` name the newest one.

Finally a clean run ends normally and leaves exactly the kept checkpoints and no temporary
files. Kills that landed in the middle of a write are counted from the evidence they leave
(a ``.tmp-*`` folder, a record without index, a complete checkpoint the state file does not
name yet or any more, a temporary state file).

A second test kills a worker at each exact window of a commit (see
``helpers.crash_worker.CRASH_POINTS``), so that every window is covered on every run, not only
those the random kills happen to hit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import tensorflow as tf
from helpers.crash_worker import CRASH_POINTS, build_model
from helpers.fresh import Lines

from keras_ckpt import CheckpointManager, KeepLast, list_checkpoints, restore
from keras_ckpt._layout import scan

WORKER = Path(__file__).parent / "helpers" / "crash_worker.py"
KILLS_PER_MODE = 10  # x 2 modes = 20 kills
MAX_DELAY = 1.2  # seconds after the worker's first committed step (half of the kills)
SIDECARS = {"checkpoint", ".lock", "model.json", "history.jsonl"}


def _start(
    fresh,
    directory: Path,
    mode: str,
    log: Path,
    clean: bool = False,
    small: bool = False,
    crash_at: str | None = None,
) -> Lines:
    """A worker (`helpers/crash_worker.py`) forked from the session's zygote
    (`helpers.fresh`): returns once it runs; its lines come as it prints them."""
    job = {"dir": str(directory), "mode": mode, "clean": clean, "small": small}
    return fresh.start_worker(WORKER, {**job, "crash_at": crash_at}, log)


def _state_names(directory: Path) -> list[str]:
    state = tf.train.get_checkpoint_state(str(directory))
    return [] if state is None else [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def _evidence_of_a_write(directory: Path) -> list[str]:
    """What a kill in the middle of a save or a rotation leaves behind (empty: none)."""
    names = os.listdir(directory)
    found = scan(str(directory))
    complete = {i.name for i in found.kept}
    named = set(_state_names(directory))
    evidence = [f"temp {n}" for n in names if ".tmp-" in n]
    evidence += [f"record without index {p}" for p in found.partial]
    evidence += [f"complete, not in state file: {n}" for n in sorted(complete - named)]
    return evidence


def _check_after_kill(directory: Path, model, acknowledged: int | None) -> list[int]:
    """The invariants a crash must not break; returns the complete steps on disk."""
    kept = list_checkpoints(directory)
    paths = {i.path for i in kept}
    assert scan(str(directory)).damaged == {}, "a kill must never damage a checkpoint"
    for name in _state_names(directory):
        assert str(directory / name) in paths, f"state file names incomplete {name}"
    latest = tf.train.latest_checkpoint(str(directory))
    if acknowledged is not None:
        assert latest is not None, f"step {acknowledged} was committed, state names nothing"
        assert int(latest.rsplit("-", 1)[1]) >= acknowledged, (latest, acknowledged)
        assert any(i.step >= acknowledged for i in kept)
    if latest is not None:
        assert latest in paths
        assert tf.train.list_variables(latest)
    for info in kept:
        restored = restore(model, info.path)
        assert restored.step == info.step
        assert int(model.optimizer.iterations.numpy()) == info.step, info.path
    return [i.step for i in kept]


def _check_opened_cleanly(begin_line: str, complete_before: list[int], directory: Path) -> None:
    """What the next writer left once it opened the directory (reported by the worker)."""
    state = json.loads(begin_line.split(" ", 1)[1])
    names = state["names"]
    assert not [n for n in names if ".tmp-" in n], names
    assert set(state["kept"]) >= set(complete_before), "cleanup deleted a complete checkpoint"
    for step in state["kept"]:
        assert {f"ckpt-{step}.index", f"ckpt-{step}.json"} <= set(names)
    allowed = SIDECARS | {
        n for n in names if n.split(".")[0] in {f"ckpt-{s}" for s in state["kept"]}
    }
    assert set(names) <= allowed, f"leftovers: {sorted(set(names) - allowed)}"
    if state["kept"]:
        assert state["tf_latest"] == str(directory / f"ckpt-{max(state['kept'])}")
        assert state["resumed"] == max(complete_before)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_at_random_moments_never_loses_or_damages_a_checkpoint(tmp_path, mode, fresh):
    seed = int(os.environ.get("KERAS_CKPT_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    directory = tmp_path / "run"
    model = build_model()
    started = time.monotonic()
    mid_write, stats = 0, []
    complete: list[int] = []
    worker = _start(fresh, directory, mode, tmp_path / "worker-0.log")
    try:
        for k in range(KILLS_PER_MODE):
            if k:
                _, line = worker.expect("begin")
                _check_opened_cleanly(line, complete, directory)
            at, _ = worker.expect("committed")
            if mode == "async" or rng.random() < 0.5:  # anywhere in the next 1.2 s
                delay = rng.uniform(0.0, MAX_DELAY)
            else:  # sync: anywhere in the next save point (as long as the one just measured)
                took = at - worker.last_seen["saving"]
                at, _ = worker.expect("saving")
                delay = rng.uniform(0.0, took)
            time.sleep(max(0.0, at + delay - time.monotonic()))
            worker.child.kill()
            code, lines = worker.finish()
            log = (tmp_path / f"worker-{k}.log").read_text(errors="replace")[-3000:]
            assert code == -signal.SIGKILL, f"the worker ended by itself ({code}):\n{log}"
            acked = [int(x.split()[1]) for x in lines if x.startswith("committed")]
            # Freeze what the crash left (hard links: the library never rewrites a file in
            # place), let the next worker start on the directory, and check the frozen copy.
            frozen = tmp_path / f"after-kill-{k}"
            shutil.copytree(directory, frozen, copy_function=os.link)
            last = k == KILLS_PER_MODE - 1
            worker = _start(fresh, directory, mode, tmp_path / f"worker-{k + 1}.log", clean=last)
            evidence = _evidence_of_a_write(frozen)
            mid_write += bool(evidence)
            complete = _check_after_kill(frozen, model, max(acked, default=None))
            shutil.rmtree(frozen)
            stats.append((round(delay, 2), evidence[:1], complete))

        _, line = worker.expect("begin")
        _check_opened_cleanly(line, complete, directory)
        worker.expect("done")
        assert worker.finish()[0] == 0
        kept = list_checkpoints(directory)
        assert len(kept) == 2
        files = {n for i in kept for n in os.listdir(directory) if n.split(".")[0] == i.name}
        assert set(os.listdir(directory)) == SIDECARS | files
        assert tf.train.latest_checkpoint(str(directory)) == kept[-1].path
        assert restore(model, directory).step == kept[-1].step == max(complete) + 8
    finally:
        worker.child.kill()  # nothing if it was reaped already
        worker.child.wait()
        shutil.rmtree(tmp_path, ignore_errors=True)  # about 0.5 GB of checkpoints
    seconds = time.monotonic() - started
    report = (
        f"\n[kill test {mode}] seed={seed} kills={KILLS_PER_MODE} mid-write={mid_write} "
        f"in {seconds:.0f}s; (delay, evidence, complete steps) per kill: {stats}"
    )
    print(report)
    assert mid_write >= KILLS_PER_MODE // 3, report


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_sigkill_at_each_step_of_a_commit_leaves_a_consistent_directory(tmp_path, point, fresh):
    """The same checks, with the worker killing itself at one exact instant of its third save."""
    directory = tmp_path / "run"
    worker = _start(fresh, directory, "sync", tmp_path / "worker.log", small=True, crash_at=point)
    code, lines = worker.finish()
    assert code == -signal.SIGKILL, f"the worker did not reach {point} ({code})"
    acked = [int(x.split()[1]) for x in lines if x.startswith("committed")]
    assert max(acked) == 2  # the third save was the one interrupted
    assert _evidence_of_a_write(directory), f"a kill at {point} leaves evidence"
    model = build_model(small=True)
    complete = _check_after_kill(directory, model, 2)

    CheckpointManager(directory, model, keep=[KeepLast(2)]).close()  # the next writer
    found = scan(str(directory))
    names = os.listdir(directory)
    assert not [n for n in names if ".tmp-" in n] and not found.partial, names
    assert [i.step for i in found.kept] == complete  # cleanup deleted nothing complete
    allowed = {n for n in names if n.split(".")[0] in {i.name for i in found.kept}}
    assert set(names) <= SIDECARS | allowed, names
    assert tf.train.latest_checkpoint(str(directory)) == found.kept[-1].path
