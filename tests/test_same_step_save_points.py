"""A save point at the step already saved (gradient accumulation) says so, once at verbose=1."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_ckpt import RotatingCheckpoint, list_checkpoints


def _fit(directory, verbose):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01, gradient_accumulation_steps=2), loss="mse")
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    cb = RotatingCheckpoint(directory, max_to_keep=10, save_freq=1, verbose=verbose)
    model.fit(x, x[:, :1], batch_size=1, epochs=1, shuffle=False, callbacks=[cb], verbose=0)
    return model


@pytest.mark.parametrize("verbose, told", [(0, 0), (1, 1), (2, 3)])
def test_save_point_at_an_unchanged_step_is_reported(tmp_path, capsys, verbose, told):
    keras.config.enable_interactive_logging()
    model = _fit(tmp_path / "run", verbose)
    # 8 batches, the optimizer steps every 2nd: save points at steps 0, 1, 1, 2, 2, 3, 3, 4:
    # three repeat a saved step
    assert int(model.optimizer.iterations) == 4
    assert [i.step for i in list_checkpoints(tmp_path / "run")] == [0, 1, 2, 3, 4]
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "is saved already" in line]
    assert len(lines) == told
    if told:
        assert "step 1 is saved already" in lines[0] and "gradient accumulation" in lines[0]
    assert "no keep policy wanted" not in out
