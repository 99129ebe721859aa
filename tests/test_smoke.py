import numpy as np
import tensorflow as tf
from helpers.tiny import tiny_model, weights_equal

from keras_ckpt import RotatingCheckpoint, restore


def test_rotating_checkpoint_keeps_newest_three_and_restores_exactly(tmp_path, data):
    x, y = data
    model = tiny_model()
    cb = RotatingCheckpoint(tmp_path / "run", max_to_keep=3)
    model.fit(x, y, batch_size=8, epochs=5, callbacks=[cb], verbose=0)  # 4 steps/epoch

    kept = sorted(p.name for p in (tmp_path / "run").glob("ckpt-*.index"))
    assert kept == ["ckpt-12.index", "ckpt-16.index", "ckpt-20.index"]
    assert len(list((tmp_path / "run").glob("ckpt-*.data-*"))) == 3
    fresh = tiny_model(seed=1)
    assert restore(fresh, str(tmp_path / "run")).step == 20
    assert int(fresh.optimizer.iterations) == 20
    assert weights_equal(fresh, model)
    for a, b in zip(fresh.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert tf.train.latest_checkpoint(str(tmp_path / "run")) == str(tmp_path / "run" / "ckpt-20")
