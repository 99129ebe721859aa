"""Damaged checkpoints: found, named, never restored half-way, never a reason to lose good ones.

A directory holds three good checkpoints (steps 4, 8, 12); the newest is then damaged the ways
files really get damaged: truncated data or index, bytes flipped in the data, the data file
deleted, the JSON record garbled; or the `checkpoint` state file is garbled. Each test checks
what a user relies on: `restore` raises a `CheckpointError` subclass naming the broken file
and leaves the model untouched; `list_checkpoints` still lists the good ones; a callback
started on the directory keeps working and never deletes a good checkpoint because of the
bad one, nor the bad one's files.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers.tiny import SetLogs, poison, tiny_data, tiny_model, weights_equal

from keras_ckpt import (
    BestCheckpoint,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    RotatingCheckpoint,
    list_checkpoints,
    restore,
    verify,
)

DATA = "ckpt-12.data-00000-of-00001"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# name -> (how to damage a checkpoint directory, the file the error must name)
DAMAGE = {
    "truncated-data": (lambda d: _truncate(d / DATA), DATA),
    "truncated-index": (lambda d: _truncate(d / "ckpt-12.index"), "ckpt-12.index"),
    "flipped-data": (lambda d: _flip(d / DATA), DATA),
    "deleted-data": (lambda d: (d / DATA).unlink(), DATA),
    "garbled-record": (
        lambda d: (d / "ckpt-12.json").write_text('{"step": 12, "form'),
        "ckpt-12.json",
    ),
}
FOUND_BY_SIZE = ["truncated-data", "truncated-index", "deleted-data", "garbled-record"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Good checkpoints 4, 8, 12 (val_loss 0.3, 0.1, 0.05), built once; their weights."""
    x, y = tiny_data()
    model = tiny_model()
    directory = tmp_path_factory.mktemp("template") / "run"
    script = SetLogs("val_loss", [0.3, 0.1, 0.05])
    cb = RotatingCheckpoint(directory, max_to_keep=5, save_on_train_end=False)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[script, cb], verbose=0)
    assert [i.step for i in list_checkpoints(directory)] == [4, 8, 12]
    assert verify(directory) == []
    weights = {}
    probe = tiny_model(seed=9)
    for step in (4, 8, 12):
        poison(probe)
        restore(probe, directory / f"ckpt-{step}")
        weights[step] = probe.get_weights()
    return directory, weights


@pytest.fixture
def run(template, tmp_path):
    """A fresh copy of the template directory, to damage."""
    source, weights = template
    directory = tmp_path / "run"
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns(".lock"))
    return directory, weights


def _same(model, weights) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.startswith("ckpt-12.")}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_restoring_a_damaged_checkpoint_raises_naming_the_file_and_changes_nothing(run, kind):
    directory, _ = run
    damage, culprit = DAMAGE[kind]
    damage(directory)
    model = tiny_model(seed=5)
    before = model.get_weights()

    with pytest.raises(CheckpointError) as caught:
        restore(model, directory / "ckpt-12")

    assert isinstance(caught.value, CheckpointCorruptError | CheckpointNotFoundError)
    assert culprit in str(caught.value)
    assert _same(model, before), "a failed restore must leave the model as it was"
    assert int(model.optimizer.iterations.numpy()) == 0


@pytest.mark.parametrize("kind", FOUND_BY_SIZE)
def test_damage_visible_in_sizes_or_record_hides_only_that_checkpoint(run, kind):
    directory, weights = run
    DAMAGE[kind][0](directory)

    assert [i.step for i in list_checkpoints(directory)] == [4, 8]
    problems = verify(directory)
    assert len(problems) == 1 and DAMAGE[kind][1] in problems[0], problems
    model = tiny_model(seed=5)
    assert restore(model, directory).step == 8  # the directory's newest intact one
    assert _same(model, weights[8])
    for step in (4, 8):
        assert restore(model, directory / f"ckpt-{step}").step == step
        assert _same(model, weights[step])


def test_flipped_bytes_are_caught_when_read_and_the_good_ones_still_restore(run):
    directory, weights = run
    _flip(directory / DATA)

    # Sizes are intact, so only reading the bytes (TensorFlow's CRC32C per tensor) tells:
    # list_checkpoints does not read them, verify does.
    assert [i.step for i in list_checkpoints(directory)] == [4, 8, 12]
    problems = verify(directory)
    assert len(problems) == 1 and DATA in problems[0], problems
    model = tiny_model(seed=5)
    with pytest.raises(CheckpointCorruptError, match=DATA):
        restore(model, directory)
    for step in (4, 8):
        restore(model, directory / f"ckpt-{step}")
        assert _same(model, weights[step])


@pytest.mark.parametrize("kind", FOUND_BY_SIZE)
def test_rotating_callback_on_a_damaged_directory_keeps_the_good_and_the_bad(run, kind):
    directory, weights = run
    DAMAGE[kind][0](directory)
    bad = _snapshot(directory)
    x, y = tiny_data()
    model = tiny_model(seed=5)
    restore(model, directory)  # resume from step 8, the newest intact

    cb = RotatingCheckpoint(directory, max_to_keep=3, save_on_train_end=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=2, callbacks=[cb], verbose=0)

    assert any("ckpt-12" in str(w.message) and "damaged" in str(w.message) for w in caught)
    steps = [i.step for i in list_checkpoints(directory)]
    # The damaged ckpt-12 took no slot: both good old ones stay next to the new one, whose
    # step is never 12 (that name is taken by the damaged files, which stay as they were).
    assert steps[:2] == [4, 8] and len(steps) == 3 and steps[2] > 12
    assert _snapshot(directory) == bad
    probe = tiny_model(seed=7)  # one model for the three restores, poisoned before each
    for step in (4, 8):
        poison(probe)
        restore(probe, directory / f"ckpt-{step}")
        assert _same(probe, weights[step])
    poison(probe)
    assert restore(probe, directory).step == steps[2]
    assert weights_equal(probe, model)
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / f"ckpt-{steps[2]}")


def _fit_best(model, x, y, directory, val_losses) -> BestCheckpoint:
    """One epoch per scripted val_loss with a BestCheckpoint on `directory` (warnings off)."""
    cb = BestCheckpoint(directory, monitor="val_loss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=len(val_losses),
            callbacks=[SetLogs("val_loss", val_losses), cb],
            verbose=0,
        )
    return cb


@pytest.mark.parametrize("kind", FOUND_BY_SIZE)
def test_best_callback_never_lets_a_damaged_better_checkpoint_block_or_evict_a_good_one(run, kind):
    directory, weights = run  # ckpt-12 (val_loss 0.05) is the best, and about to be damaged
    DAMAGE[kind][0](directory)
    x, y = tiny_data()
    model = tiny_model(seed=5)
    restore(model, directory)

    # Worse than the best intact (0.1 at step 8): nothing saved, ckpt-8 stays best.
    cb = _fit_best(model, x, y, directory, [0.2, 0.15])
    assert cb.best_checkpoint == str(directory / "ckpt-8") and cb.best_value == 0.1
    assert {4, 8} <= {i.step for i in list_checkpoints(directory)}

    # Better than 0.1 though worse than the damaged 0.05: saved, as the new best.
    cb = _fit_best(model, x, y, directory, [0.09])
    assert cb.best_value == 0.09
    probe = tiny_model(seed=7)
    restore(probe, cb.best_checkpoint)
    assert weights_equal(probe, model)
    assert any(p.name.startswith("ckpt-12.") for p in directory.iterdir())  # bad: untouched


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe garbage", b'model_checkpoint_path: "ckpt-'])
def test_garbled_state_file_loses_nothing_and_the_next_writer_repairs_it(run, garbage):
    directory, weights = run
    (directory / "checkpoint").write_bytes(garbage)

    assert [i.step for i in list_checkpoints(directory)] == [4, 8, 12]
    model = tiny_model(seed=5)
    assert restore(model, directory).step == 12
    assert _same(model, weights[12])

    x, y = tiny_data()
    cb = RotatingCheckpoint(directory, max_to_keep=5, save_on_train_end=False)
    cb.set_model(model)
    cb.on_train_begin()  # a callback opening the directory, before any save
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-12")
    cb.on_train_end()
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[cb], verbose=0)
    assert [i.step for i in list_checkpoints(directory)] == [4, 8, 12, 16]
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-16")


# -- TensorFlow's own errors are translated at the boundary (checkpoints without our record) --


@pytest.fixture(scope="module")
def plain_template(tmp_path_factory):
    """A checkpoint written by tf.train.Checkpoint itself, trained once: copied by `plain`."""
    x, y = tiny_data()
    model = tiny_model()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    directory = tmp_path_factory.mktemp("plain_template") / "plain"
    prefix = tf.train.Checkpoint(model=model).write(str(directory / "ckpt-4"))
    return Path(prefix)


@pytest.fixture
def plain(plain_template, tmp_path):
    """A checkpoint written by tf.train.Checkpoint itself: no record, no size check (a fresh
    copy of `plain_template`, to damage)."""
    directory = tmp_path / "plain"
    shutil.copytree(plain_template.parent, directory)
    return directory / plain_template.name


@pytest.mark.parametrize(
    "damage, culprit",
    [
        (lambda p: _truncate(p.with_name(p.name + ".data-00000-of-00001")), ".data-00000"),
        (lambda p: _flip(p.with_name(p.name + ".data-00000-of-00001")), ".data-00000"),
        (lambda p: _truncate(p.with_name(p.name + ".index")), ".index"),
    ],
    ids=["truncated-data", "flipped-data", "truncated-index"],
)
def test_tensorflow_read_errors_become_checkpoint_corrupt_error(plain, damage, culprit):
    assert restore(tiny_model(seed=3), plain).step == 4  # intact, it restores
    damage(plain)
    model = tiny_model(seed=5)
    before = model.get_weights()

    with pytest.raises(CheckpointCorruptError) as caught:
        restore(model, plain)

    assert plain.name + culprit in str(caught.value)
    assert _same(model, before)
    assert caught.value.__cause__ is not None  # raised from TensorFlow's own error
    assert os.path.exists(str(plain) + ".index")
