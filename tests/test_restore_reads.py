"""One `restore` reads the chosen checkpoint's record once and lists its directory at most once.

Counted through the file layer (`keras_ckpt._fs`): every read of a record and every listing
of a directory goes through `_fs.read_bytes` / `_fs.read_text` and `_fs.list_dir`.
"""

from __future__ import annotations

import collections
import os
import shutil

import pytest
from helpers.tiny import tiny_model
from helpers.trained_runs import assert_weights, data_file, truncate

from keras_ckpt import _fs, evaluate_checkpoints, load_model, restore, resume, verify


class FileCalls:
    """Counts the file layer's reads (by file name) and listings (by directory name)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: collections.Counter[str] = collections.Counter()
        self.listings: collections.Counter[str] = collections.Counter()
        self._depth = 0  # `read_text` reads through `read_bytes`: count the outer call only
        for name in ("read_bytes", "read_text"):
            monkeypatch.setattr(_fs, name, self._counting(getattr(_fs, name), self.reads))
        monkeypatch.setattr(_fs, "list_dir", self._counting(_fs.list_dir, self.listings))

    def _counting(self, original, counter):
        def call(path, *args, **kwargs):
            if self._depth == 0:
                counter[os.path.basename(_fs.fspath(path))] += 1
            self._depth += 1
            try:
                return original(path, *args, **kwargs)
            finally:
                self._depth -= 1

        return call


@pytest.mark.parametrize("argument", ["directory", "prefix"])
def test_one_restore_reads_the_record_once_and_lists_at_most_once(
    argument, trained_run, monkeypatch
):
    directory = trained_run.directory
    target = directory if argument == "directory" else directory / "ckpt-24"
    model = tiny_model(seed=7)
    calls = FileCalls(monkeypatch)

    info = restore(model, target)

    assert info.step == 24 and info.path == str(directory / "ckpt-24")
    assert calls.reads["ckpt-24.json"] == 1, calls.reads
    assert sum(calls.listings.values()) <= (1 if argument == "directory" else 0), calls.listings
    monkeypatch.undo()
    assert_weights(model, trained_run.per_epoch[3])
    assert int(model.optimizer.iterations) == 24


def test_a_damaged_newest_checkpoint_is_skipped_from_the_same_listing(
    tmp_path, trained_run, monkeypatch
):
    directory = tmp_path / "run"
    shutil.copytree(trained_run.directory, directory)
    truncate(data_file(directory / "ckpt-24"))
    model = tiny_model(seed=7)
    calls = FileCalls(monkeypatch)

    with pytest.warns(UserWarning, match=r"ckpt-24.*using .*ckpt-16"):
        info = restore(model, directory)

    assert info.step == 16
    assert calls.reads["ckpt-16.json"] == 1, calls.reads
    assert calls.reads["ckpt-24.json"] <= 1, calls.reads  # the scan's, which finds the damage
    assert sum(calls.listings.values()) == 1, calls.listings
    monkeypatch.undo()
    assert_weights(model, trained_run.per_epoch[2])


def test_load_model_of_a_directory_reads_the_record_once(trained_run, monkeypatch):
    calls = FileCalls(monkeypatch)

    model = load_model(trained_run.directory)

    assert calls.reads["ckpt-24.json"] == 1, calls.reads
    assert calls.listings[os.path.basename(trained_run.directory)] == 1, calls.listings
    monkeypatch.undo()
    assert_weights(model, trained_run.per_epoch[3])


def test_evaluate_checkpoints_reads_each_record_once_from_one_listing(trained_run, monkeypatch):
    model = tiny_model(seed=7)
    calls = FileCalls(monkeypatch)

    rows = evaluate_checkpoints(trained_run.directory, (trained_run.x, trained_run.y), model=model)

    assert [r["step"] for r in rows] == [8, 16, 24]
    records = {n: c for n, c in calls.reads.items() if n.endswith(".json")}
    assert records == {"ckpt-8.json": 1, "ckpt-16.json": 1, "ckpt-24.json": 1}, calls.reads
    assert sum(calls.listings.values()) == 1, calls.listings
    monkeypatch.undo()
    last = tiny_model(seed=7)
    restore(last, trained_run.directory / "ckpt-24")
    assert rows[-1]["loss"] == pytest.approx(
        last.evaluate(trained_run.x, trained_run.y, verbose=0, return_dict=True)["loss"],
        rel=1e-6,
    )


def test_resume_reads_the_newest_record_once_from_one_listing(trained_run, monkeypatch):
    model = tiny_model(seed=7)
    calls = FileCalls(monkeypatch)

    assert resume(model, trained_run.directory) == 3

    assert calls.reads["ckpt-24.json"] == 1, calls.reads
    assert sum(calls.listings.values()) == 1, calls.listings
    monkeypatch.undo()
    assert_weights(model, trained_run.per_epoch[3])
    assert int(model.optimizer.iterations) == 24


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "truncated-ckpt-16"])
@pytest.mark.parametrize("how", ["verify", "cli"])
def test_verify_of_a_directory_reads_each_record_once_from_one_listing(
    how, damaged, tmp_path, trained_run, monkeypatch, capsys
):
    from keras_ckpt.cli import main

    directory = tmp_path / "run"
    shutil.copytree(trained_run.directory, directory)
    if damaged:
        truncate(data_file(directory / "ckpt-16"))
    calls = FileCalls(monkeypatch)

    if how == "verify":
        problems = verify(directory)
    else:
        assert main(["verify", str(directory)]) == int(damaged)
        problems = [line for line in capsys.readouterr().out.splitlines() if "ckpt-16." in line]

    records = {n: c for n, c in calls.reads.items() if n.startswith("ckpt-")}
    assert records == {"ckpt-8.json": 1, "ckpt-16.json": 1, "ckpt-24.json": 1}, calls.reads
    assert calls.listings["run"] == 1, calls.listings
    assert len(problems) == damaged, problems


def test_cli_inspect_of_a_directory_reads_the_record_once(trained_run, monkeypatch, capsys):
    from keras_ckpt.cli import main

    calls = FileCalls(monkeypatch)

    assert main(["inspect", str(trained_run.directory)]) == 0

    assert calls.reads["ckpt-24.json"] == 1, calls.reads
    assert sum(calls.listings.values()) == 1, calls.listings
    assert capsys.readouterr().out.startswith(f"{trained_run.directory / 'ckpt-24'}: step 24")


def test_cli_export_reads_the_record_once(trained_run, tmp_path, monkeypatch, capsys):
    from keras_ckpt import load_saved_model
    from keras_ckpt.cli import main

    out = tmp_path / "exported"
    calls = FileCalls(monkeypatch)

    assert main(["export", str(trained_run.directory), str(out)]) == 0

    assert calls.reads["ckpt-24.json"] == 1, calls.reads
    assert calls.listings[os.path.basename(trained_run.directory)] == 1, calls.listings
    monkeypatch.undo()
    assert "exported" in capsys.readouterr().out
    served = load_saved_model(out)
    reference = tiny_model(seed=7)
    restore(reference, trained_run.directory / "ckpt-24")
    x = trained_run.x[:16]
    assert served.predict(x, verbose=0) == pytest.approx(reference.predict(x, verbose=0), abs=1e-6)


def test_watch_reads_each_record_only_in_its_listings(trained_run, tmp_path, monkeypatch):
    from keras_ckpt import watch

    name = os.path.basename(trained_run.directory)
    calls = FileCalls(monkeypatch)

    rows = watch(
        trained_run.directory,
        (trained_run.x, trained_run.y),
        model=tiny_model(seed=7),
        output=tmp_path / "eval",
        poll_seconds=0.01,
        timeout=5,
    )

    assert [r["step"] for r in rows] == [8, 16, 24]
    for step in (8, 16, 24):  # the restores read none: only each listing's scan does
        assert calls.reads[f"ckpt-{step}.json"] == calls.listings[name], (calls.reads, step)
    monkeypatch.undo()
    assert rows == evaluate_checkpoints(
        trained_run.directory, (trained_run.x, trained_run.y), model=tiny_model(seed=7)
    )
