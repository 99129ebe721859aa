"""verify and CheckpointCorruptError: damaged files are found, named, and never changed."""

from __future__ import annotations

import os
import shutil

import pytest
import tensorflow as tf
from helpers.tiny import tiny_data, tiny_model
from helpers.trained_runs import (
    assert_weights,
    data_file,
    flip_byte,
    snapshot_files,
    truncate,
)

from keras_ckpt import (
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointNotFoundError,
    KeepLast,
    list_checkpoints,
    restore,
    verify,
)


@pytest.fixture(scope="module")
def source(trained_run):
    return trained_run.directory, trained_run.per_epoch


@pytest.fixture
def run(tmp_path, source):
    directory = tmp_path / "run"
    shutil.copytree(source[0], directory)
    return directory


def test_intact_directory_and_prefix_verify_clean(run):
    assert verify(run) == []
    assert verify(str(run / "ckpt-16")) == []


def test_flipped_byte_in_data_is_found_by_checksum_and_named(run):
    damaged = data_file(run / "ckpt-16")
    flip_byte(damaged)
    before = snapshot_files(run)

    problems = verify(run)

    assert len(problems) == 1
    assert problems[0].startswith(f"{damaged}: ")
    assert "Checksum does not match" in problems[0]
    assert verify(run / "ckpt-16") == problems
    assert verify(run / "ckpt-24") == []
    assert snapshot_files(run) == before  # verify wrote nothing


def test_truncated_data_and_garbled_record_are_named(run):
    truncated = data_file(run / "ckpt-8")
    truncate(truncated)
    (run / "ckpt-24.json").write_text("{not json")

    problems = verify(run)

    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{truncated}: ") and "truncated" in problems[0]
    assert problems[1].startswith(f"{run / 'ckpt-24.json'}: not a valid checkpoint record")


def test_missing_index_named_by_state_file_is_reported(run):
    os.remove(run / "ckpt-16.index")
    problems = verify(run)
    assert problems == [f"{run / 'checkpoint'}: names ckpt-16, but ckpt-16.index does not exist"]


def test_verify_of_missing_path_raises_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nowhere"):
        verify(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", [flip_byte, truncate], ids=["flipped-byte", "truncated"])
def test_restore_of_damaged_prefix_raises_corrupt_naming_the_file_and_changes_nothing(
    run, source, damage
):
    damaged = data_file(run / "ckpt-24")
    damage(damaged)
    model = tiny_model(seed=6)
    before = model.get_weights()

    with pytest.raises(CheckpointCorruptError) as err:
        restore(model, run / "ckpt-24")

    assert damaged in str(err.value)
    assert_weights(model, before)


def test_truncated_data_without_a_record_is_translated_from_tensorflow(run):
    """No size record to compare with: TF's bare IndexError surfaces as CheckpointCorruptError."""
    os.remove(run / "ckpt-24.json")
    damaged = data_file(run / "ckpt-24")
    truncate(damaged)
    with pytest.raises(CheckpointCorruptError, match="ckpt-24.data") as err:
        restore(tiny_model(), run / "ckpt-24")
    assert isinstance(err.value.__cause__, (IndexError, tf.errors.OpError))
    assert verify(run / "ckpt-24")[0].startswith(f"{damaged}: ")


def test_altered_index_is_named(run):
    index = run / "ckpt-8.index"
    flip_byte(index, pos=10)
    problems = verify(run / "ckpt-8")
    assert len(problems) == 1 and problems[0].startswith(f"{index}: ")
    with pytest.raises(CheckpointCorruptError, match="ckpt-8.index"):
        restore(tiny_model(), run / "ckpt-8")


def test_verify_and_restore_work_on_ram_filesystem(tmp_path):
    directory = f"ram://{tmp_path.name}/run"
    x, y = tiny_data()
    model = tiny_model()
    model.fit(x, y, epochs=1, verbose=0)
    with CheckpointManager(directory, model, keep=[KeepLast(2)]) as manager:
        manager.save(epoch=1)
    assert [i.step for i in list_checkpoints(directory)] == [1]
    assert verify(directory) == []
    fresh = tiny_model(seed=3)
    assert restore(fresh, directory).step == 1
    assert_weights(fresh, model.get_weights())
