"""Durability: a checkpoint is on stable storage before the state file names it.

A crash that only kills the process loses nothing written (the kernel has the data); a
power loss loses what was not fsynced. So before the `checkpoint` state file is replaced
(the commit point), every file of the new checkpoint must have been fsynced, the renames
that put them in place made durable by an fsync of the directory, and the new state file's
own bytes fsynced; after the replace, the directory is fsynced again. A new checkpoint
directory's own entry is fsynced in its parent.

The test records the real `os.fsync` calls (the path of each descriptor) and the renames of
the file layer, in order, while a real save runs; nothing is replaced or skipped.
"""

from __future__ import annotations

import os

import pytest
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import CheckpointManager, KeepLast, _fs


@pytest.fixture
def events(monkeypatch):
    """("fsync", path), ("rename", src, dst), ("remove", path) in the order they happen."""
    log: list[tuple[str, ...]] = []
    real_fsync, real_gfile = os.fsync, _fs.gfile

    def fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    class Gfile:
        def __getattr__(self, name):
            return getattr(real_gfile, name)

        def rename(self, src, dst, overwrite=False):
            real_gfile.rename(src, dst, overwrite=overwrite)
            log.append(("rename", os.path.realpath(src), os.path.realpath(dst)))

    real_remove = _fs.remove

    def remove(path):
        log.append(("remove", os.path.realpath(path)))
        return real_remove(path)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name what is fsynced")
    monkeypatch.setattr(_fs, "remove", remove)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_fs, "gfile", Gfile())
    return log


def _first(log, event) -> int:
    assert event in log, f"{event} not in {log}"
    return log.index(event)


def _check_commit(log, directory: str, step: int) -> int:
    """Asserts the order for the save of ckpt-`step`; returns the commit point's index."""
    renames = [e for e in log if e[0] == "rename"]
    state = os.path.join(directory, "checkpoint")
    commit = next(i for i, e in enumerate(log) if e[0] == "rename" and e[2] == state)
    files = [e for e in renames if os.path.basename(e[2]).startswith(f"ckpt-{step}.")]
    names = [os.path.basename(e[2]) for e in files]
    assert names[0] == f"ckpt-{step}.json" and names[-1] == f"ckpt-{step}.index", names
    assert any(n.startswith(f"ckpt-{step}.data-") for n in names), names
    for _, src, dst in files:
        moved = log.index(("rename", src, dst))
        assert _first(log, ("fsync", src)) < moved < commit, f"{dst} not durable before commit"
    last_move = max(log.index(e) for e in files)
    assert any(e == ("fsync", directory) for e in log[last_move:commit]), "renames not durable"
    state_src = log[commit][1]
    assert _first(log, ("fsync", state_src)) < commit, "new state file not fsynced"
    assert ("fsync", directory) in log[commit + 1 :], "the state file's rename not durable"
    return commit


def test_every_file_is_fsynced_before_the_state_file_names_the_checkpoint(tmp_path, events):
    x, y = tiny_data()
    model = tiny_model()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    directory = os.path.realpath(tmp_path / "new" / "run")

    with CheckpointManager(directory, model, keep=[KeepLast(1)]) as mgr:
        mgr.save(step=4)  # the first save: new directory, model.json
        commit = _check_commit(events, directory, 4)
        assert _first(events, ("fsync", os.path.dirname(directory))) < commit
        assert _first(events, ("fsync", str(tmp_path))) < commit  # "new" was created too
        model_json = os.path.join(directory, "model.json")
        moved = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == model_json)
        assert _first(events, ("fsync", events[moved][1])) < moved < commit

        events.clear()
        mgr.save(step=8)  # a rotating save: ckpt-4 is deleted only after the commit point
        commit = _check_commit(events, directory, 8)
        gone = [  # moved into a trash folder, unlinked from there in the background
            i
            for i, e in enumerate(events)
            if e[0] == "rename" and "ckpt-4." in e[1] and "/.tmp-trash-" in e[2]
        ]
        assert len(gone) == 3 and min(gone) > commit, events
        order = [os.path.basename(events[i][1]) for i in gone]
        assert order[0] == "ckpt-4.index" and order[-1] == "ckpt-4.json", order
    assert not os.path.exists(os.path.join(directory, "ckpt-4.index"))
    assert sorted(os.listdir(directory)) == sorted(
        [".lock", "checkpoint", "model.json", "ckpt-8.index", "ckpt-8.json"]
        + [n for n in os.listdir(directory) if n.startswith("ckpt-8.data-")]
    )
