"""A save after an epoch's last batch is labelled with that epoch complete, in every preset."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny import tiny_model

from keras_ckpt import BestCheckpoint, RotatingCheckpoint, list_checkpoints, resume


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((16, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("save_freq", ["epoch", 4, 2, 3])
def test_resume_after_a_finished_fit_returns_its_epochs_and_trains_nothing(tmp_path, save_freq):
    x, y = _data()  # 4 batches an epoch
    model = tiny_model()
    cb = RotatingCheckpoint(tmp_path / "run", max_to_keep=20, save_freq=save_freq)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, callbacks=[cb], verbose=0)
    assert list_checkpoints(tmp_path / "run")[-1].step == 8

    again = tiny_model(seed=1)
    start = resume(again, tmp_path / "run")
    assert start == 2
    again.fit(x, y, batch_size=4, epochs=2, initial_epoch=start, callbacks=[], verbose=0)
    assert int(again.optimizer.iterations) == 8
    for a, b in zip(again.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_labels_agree_between_best_and_rotating(tmp_path):
    x, y = _data()
    model = tiny_model()
    rotating = RotatingCheckpoint(tmp_path / "rot", max_to_keep=20, save_freq=2)
    best = BestCheckpoint(tmp_path / "best", monitor="loss", keep_best=20)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, callbacks=[rotating, best], verbose=0)
    labels = {i.step: i.epoch for i in list_checkpoints(tmp_path / "rot")}
    assert labels == {2: 0, 4: 1, 6: 1, 8: 2}
    for info in list_checkpoints(tmp_path / "best"):
        assert labels[info.step] == info.epoch
