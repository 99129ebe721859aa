"""Errors carry their context as data (`path`, `file`, `reason`) besides their message."""

from __future__ import annotations

import pytest
from helpers.tiny import tiny_model

from keras_ckpt import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    DirectoryLockedError,
    KeepBest,
    MonitorNotFoundError,
    restore,
)
from keras_ckpt.errors import short_reason


def test_a_truncated_file_error_names_the_checkpoint_and_the_file(tmp_path):
    model = tiny_model(compile=False)
    with CheckpointManager(tmp_path / "d", model) as mgr:
        prefix = mgr.save(step=1).path
    data = next((tmp_path / "d").glob("ckpt-1.data-*"))
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(CheckpointCorruptError) as caught:
        restore(tiny_model(compile=False), prefix)
    assert caught.value.path == prefix and caught.value.file == str(data)
    assert "bytes" in caught.value.reason and str(data) in str(caught.value)


def test_missing_directory_and_lock_errors_carry_their_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as caught:
        restore(tiny_model(compile=False), str(tmp_path / "nowhere"))
    assert caught.value.path == str(tmp_path / "nowhere") and caught.value.file is None
    model = tiny_model(compile=False)
    with CheckpointManager(tmp_path / "d", model):
        with pytest.raises(DirectoryLockedError) as locked:
            CheckpointManager(tmp_path / "d", model)
    assert locked.value.path == str(tmp_path / "d") and "CheckpointManager" in locked.value.reason


def test_monitor_error_is_a_key_error_with_a_reason(tmp_path):
    with CheckpointManager(tmp_path / "m", tiny_model(compile=False), keep=KeepBest()) as mgr:
        with pytest.raises(MonitorNotFoundError) as caught:
            mgr.save(step=1, metrics={"loss": 1.0})
    assert isinstance(caught.value, KeyError) and "val_loss" in caught.value.reason
    assert not str(caught.value).startswith('"')


def test_plain_errors_have_empty_context_and_short_reason_drops_tf_noise():
    error = CheckpointError("boom")
    assert (str(error), error.path, error.file, error.reason) == ("boom", None, None, None)
    noisy = RuntimeError("{{function_node __wrapped__RestoreV2}} Read less bytes\nmore lines")
    assert short_reason(noisy) == "Read less bytes"
