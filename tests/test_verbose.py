"""Verbose callbacks print one Keras-style line per save and deletion, true when printed;
history.jsonl records the training step and the saves of every epoch (what plots read)."""

import json

import numpy as np
from helpers.tiny import SetLogs, tiny_model

from keras_ckpt import BestCheckpoint, CheckpointManager, KeepLast, RotatingCheckpoint


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_best_checkpoint_verbose_prints_improvements_and_deletions(tmp_path, data, capsys):
    x, y = data  # 32 samples, batch 8: 4 steps per epoch
    scripted = SetLogs("val_loss", [0.5, 0.4, 0.45, 0.3])
    cb = BestCheckpoint(tmp_path / "best", verbose=1)
    tiny_model().fit(x, y, batch_size=8, epochs=4, callbacks=[scripted, cb], verbose=0)

    d = tmp_path / "best"
    assert _lines(capsys) == [
        f"Epoch 1: saved {d}/ckpt-4, val_loss improved from inf to 0.5",
        f"Epoch 2: saved {d}/ckpt-8, val_loss improved from 0.5 to 0.4",
        f"Epoch 2: deleted {d}/ckpt-4 (not among the 1 best by val_loss)",
        f"Epoch 4: saved {d}/ckpt-16, val_loss improved from 0.4 to 0.3",
        f"Epoch 4: deleted {d}/ckpt-8 (not among the 1 best by val_loss)",
    ]
    assert sorted(p.name for p in d.glob("ckpt-*.index")) == ["ckpt-16.index"]


def test_verbose_2_also_reports_save_points_that_saved_nothing(tmp_path, data, capsys):
    x, y = data
    scripted = SetLogs("val_accuracy", [0.5, 0.5, 0.75])  # "auto" maximises accuracy
    cb = BestCheckpoint(tmp_path / "best", monitor="val_accuracy", keep_best=2, verbose=2)
    tiny_model().fit(x, y, batch_size=8, epochs=3, callbacks=[scripted, cb], verbose=0)

    d = tmp_path / "best"
    assert _lines(capsys) == [
        f"Epoch 1: saved {d}/ckpt-4, val_accuracy improved from -inf to 0.5",
        "Epoch 2: val_accuracy (0.5) did not improve from 0.5, nothing saved",
        f"Epoch 3: saved {d}/ckpt-12, val_accuracy improved from 0.5 to 0.75",
    ]


def test_rotating_verbose_lines_match_the_files_on_disk(tmp_path, data, capsys):
    x, y = data
    cb = RotatingCheckpoint(tmp_path / "last", max_to_keep=2, verbose=1)
    tiny_model().fit(x, y, batch_size=8, epochs=4, callbacks=[cb], verbose=0)

    lines = _lines(capsys)
    saved = [line for line in lines if ": saved " in line]
    deleted = [line for line in lines if ": deleted " in line]
    assert len(lines) == len(saved) + len(deleted) == 6
    assert [line.split(" (")[0] for line in saved] == [
        f"Epoch {e}: saved {tmp_path / 'last'}/ckpt-{4 * e}" for e in (1, 2, 3, 4)
    ]
    assert all("loss=" in line and "mae=" in line for line in saved)
    assert deleted == [
        f"Epoch 3: deleted {tmp_path / 'last'}/ckpt-4 (not among the 2 newest)",
        f"Epoch 4: deleted {tmp_path / 'last'}/ckpt-8 (not among the 2 newest)",
    ]
    on_disk = sorted(p.name for p in (tmp_path / "last").glob("ckpt-*.index"))
    assert on_disk == ["ckpt-12.index", "ckpt-16.index"]


def test_verbose_line_starts_on_its_own_line_under_a_progress_bar(tmp_path, data, capsys):
    x, y = data
    cb = RotatingCheckpoint(tmp_path / "last", max_to_keep=1, verbose=1)
    tiny_model().fit(x, y, batch_size=8, epochs=2, callbacks=[cb], verbose=1)

    out = capsys.readouterr().out
    assert f"\nEpoch 1: saved {tmp_path / 'last'}/ckpt-4 (" in out
    assert f"\nEpoch 2: deleted {tmp_path / 'last'}/ckpt-4 (not among the 1 newest)\n" in out


def test_quiet_by_default(tmp_path, data, capsys):
    x, y = data
    cb = RotatingCheckpoint(tmp_path / "last", max_to_keep=1)
    tiny_model().fit(x, y, batch_size=8, epochs=2, callbacks=[cb], verbose=0)
    assert capsys.readouterr().out == ""


def test_manager_in_a_custom_loop_labels_lines_by_step(tmp_path, data, capsys):
    x, y = data
    model = tiny_model()
    with CheckpointManager(tmp_path / "loop", model, keep=[KeepLast(1)], verbose=1) as mgr:
        for step in (1, 2):
            model.train_on_batch(x[:8], y[:8])
            mgr.save(metrics={"loss": 0.25 / step})
    d = tmp_path / "loop"
    assert _lines(capsys) == [
        f"Step 1: saved {d}/ckpt-1 (loss=0.25)",
        f"Step 2: saved {d}/ckpt-2 (loss=0.125)",
        f"Step 2: deleted {d}/ckpt-1 (not among the 1 newest)",
    ]


def test_async_save_line_is_printed_after_the_background_write(tmp_path, data, capsys):
    x, y = data
    model = tiny_model()
    mgr = CheckpointManager(tmp_path / "bg", model, keep=[KeepLast(2)], async_save=True, verbose=1)
    mgr.save(metrics={"loss": 1.0})
    mgr.wait()
    line = _lines(capsys)
    mgr.close()
    assert line == [f"Step 0: saved in the background {tmp_path / 'bg'}/ckpt-0 (loss=1)"]
    assert (tmp_path / "bg" / "ckpt-0.index").exists()


def test_history_records_the_step_and_every_save_of_each_epoch(tmp_path, data):
    x, y = data
    model = tiny_model()
    cb = RotatingCheckpoint(tmp_path / "last", max_to_keep=1, save_freq=2)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[cb], verbose=0)

    lines = (tmp_path / "last" / "history.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [4, 8, 12]  # the optimizer's iterations then
    assert [r["saved"] for r in records] == [[2, 4], [6, 8], [10, 12]]  # deleted ones too
    assert all(np.isfinite(r["loss"]) and r["time"] > 0 for r in records)
    assert sorted(p.name for p in (tmp_path / "last").glob("ckpt-*.index")) == ["ckpt-12.index"]


def test_deletion_line_names_every_keep_policy_in_plain_units(tmp_path, data, capsys):
    x, y = data
    cb = RotatingCheckpoint(tmp_path / "r", max_to_keep=1, keep_every_n_hours=0.5, verbose=1)
    tiny_model().fit(x, y, batch_size=8, epochs=2, callbacks=[cb], verbose=0)
    deleted = [line for line in _lines(capsys) if "deleted" in line]
    assert deleted == [
        f"Epoch 2: deleted {tmp_path / 'r'}/ckpt-4 (not among the 1 newest or one kept per "
        "30 minutes)"
    ]
