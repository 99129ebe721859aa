"""A hostile directory: rotation deletes only what it created, inside the directory.

The `checkpoint` state file names `../elsewhere/ckpt-1` and an absolute path (both real
checkpoints outside the directory, which `tf.train.CheckpointManager` would delete when it
rotates), the directory holds the user's own files (a plain TensorFlow checkpoint named
like ours, notes, a `.tmp-*` folder, a record whose file list points outside), and one of
our own data files is replaced by a symlink to a file outside. Many saves and rotations
later, every byte outside the directory and every user file inside is as it was.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import tensorflow as tf
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import RotatingCheckpoint, list_checkpoints, restore


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` (symlinks as their target) -> sha256 of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _plain_checkpoint(prefix: Path, seed: int) -> None:
    """A checkpoint written by TensorFlow itself (no record of ours)."""
    tf.train.Checkpoint(model=tiny_model(seed=seed)).write(str(prefix))


def test_rotation_never_deletes_outside_the_directory_nor_files_it_did_not_create(tmp_path):
    run = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    absolute = tmp_path / "abs"
    _plain_checkpoint(elsewhere / "ckpt-1", seed=1)
    _plain_checkpoint(absolute / "ckpt-2", seed=2)
    (elsewhere / "ckpt-1.json").write_text('{"format": "keras_ckpt.checkpoint/1", "step": 1}')
    _plain_checkpoint(run / "ckpt-3", seed=3)  # the user's own, named like ours
    (run / "notes.txt").write_text("lr sweep, run 3\n")
    (run / "ckpt-5.h5").write_bytes(b"user weights")
    (run / ".tmp-scratch").mkdir()
    (run / ".tmp-scratch" / "keep.txt").write_text("the user's scratch folder")
    (run / "checkpoint.tmp-backup").write_text("the user's copy of an old state file")
    _plain_checkpoint(run / "ckpt-4", seed=4)  # with a record of our format naming outside
    planted = {"format": "keras_ckpt.checkpoint/1", "step": 4, "epoch": 0, "metrics": {}}
    planted["files"] = {"../elsewhere/ckpt-1.data-00000-of-00001": 1, "ckpt-4.index": 1}
    (run / "ckpt-4.json").write_text(repr(planted).replace("'", '"'))
    (run / "checkpoint").write_text(
        'model_checkpoint_path: "../elsewhere/ckpt-1"\n'
        'all_model_checkpoint_paths: "../elsewhere/ckpt-1"\n'
        f'all_model_checkpoint_paths: "{absolute / "ckpt-2"}"\n'
        'all_model_checkpoint_paths: "ckpt-3"\n'
    )
    outside_before = {**_tree(elsewhere), **{f"abs/{k}": v for k, v in _tree(absolute).items()}}
    user_before = {k: v for k, v in _tree(run).items() if k != "checkpoint"}

    # Readers never follow the state file out of the directory either.
    assert [i.path for i in list_checkpoints(run)] == []  # ckpt-4's record is damaged

    x, y = tiny_data()
    model = tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not resume" (ckpt-3, ckpt-4 are newer)
        cb = RotatingCheckpoint(run, max_to_keep=1, save_freq=1, save_on_train_end=False)
        model.fit(x, y, batch_size=8, epochs=1, callbacks=[cb], verbose=0)
        # One of our own files becomes a symlink to a copy outside (same size, so the
        # checkpoint still counts as intact): rotating it removes the link, not the target.
        ours = Path(cb.checkpoints[-1].path + ".data-00000-of-00001")
        target = tmp_path / "linked-target.data"
        target.write_bytes(ours.read_bytes())
        ours.unlink()
        ours.symlink_to(target)
        linked = ours.name
        model.fit(x, y, batch_size=8, epochs=2, callbacks=[cb], verbose=0)

    outside_after = {**_tree(elsewhere), **{f"abs/{k}": v for k, v in _tree(absolute).items()}}
    assert outside_after == outside_before
    assert target.read_bytes() and not (run / linked).exists()
    after = _tree(run)
    assert {k: after.get(k) for k in user_before} == user_before
    kept = list_checkpoints(run)
    assert len(kept) == 1 and kept[0].step > 4
    ours_now = {k for k in after if k.startswith(kept[0].name + ".")}
    assert set(after) == set(user_before) | ours_now | {
        "checkpoint",
        "model.json",
        "history.jsonl",
        ".lock",
    }
    assert tf.train.get_checkpoint_state(str(run)).all_model_checkpoint_paths == [kept[0].path]
    assert restore(tiny_model(seed=7), run).step == kept[0].step
