"""A keep policy a user writes (not subclassing ours) gets the same guards as ours.

Keep policies are used only through their protocol (`wants`, `protected`, and the optional
`monitors`, `describe()`, `best()`, `mode`): a missing monitored metric raises
`MonitorNotFoundError`, a model with non-finite weights is never saved, and verbose lines
describe the policy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.tiny import SetLogs, tiny_data, tiny_model

from keras_ckpt import CheckpointCallback, MonitorNotFoundError, list_checkpoints


class LowestLoss:
    """Keeps the `k` checkpoints with the lowest finite `loss_name`; wants improvements only."""

    def __init__(self, loss_name: str = "val_loss", k: int = 1) -> None:
        self.loss_name, self.k, self.mode = loss_name, k, "min"

    @property
    def monitors(self) -> tuple[str, ...]:
        return (self.loss_name,)

    def describe(self) -> str:
        return f"the {self.k} lowest {self.loss_name}"

    def _ok(self, kept):
        return [i for i in kept if math.isfinite(i.metrics.get(self.loss_name, math.nan))]

    def best(self, kept):
        ok = self._ok(kept)
        return min(ok, key=lambda i: (i.metrics[self.loss_name], -i.step), default=None)

    def wants(self, new, kept, start):
        value = new.metrics.get(self.loss_name, math.nan)
        best = self.best(kept)
        return math.isfinite(value) and (best is None or value < best.metrics[self.loss_name])

    def protected(self, kept, start):
        ok = sorted(self._ok(kept), key=lambda i: (i.metrics[self.loss_name], -i.step))
        return {i.step for i in ok[: self.k]}


def _fit(model, callbacks, epochs):
    x, y = tiny_data()  # 32 samples, batch 8: 4 steps per epoch
    model.fit(x, y, batch_size=8, epochs=epochs, callbacks=callbacks, verbose=0)


def test_user_policy_missing_monitor_raises_and_lists_the_metrics(tmp_path):
    cb = CheckpointCallback(tmp_path / "u", keep=LowestLoss("val_los"))
    with pytest.raises(MonitorNotFoundError) as caught:
        _fit(tiny_model(), [cb], epochs=1)
    message = str(caught.value)
    assert "'val_los'" in message and "loss" in message and "mae" in message
    assert list_checkpoints(tmp_path / "u") == []


def test_user_policy_never_saves_non_finite_weights(tmp_path):
    class Diverge(SetLogs):
        """At the end of epoch 2 the weights become NaN while the metric improves."""

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch == 1:
                for w in self.model.trainable_weights:
                    w.assign(np.full(w.shape, np.nan, dtype="float32"))

    cb = CheckpointCallback(tmp_path / "u", keep=LowestLoss())
    with pytest.warns(UserWarning, match="not finite"):
        _fit(tiny_model(), [Diverge("val_loss", [0.5, 0.1, 0.05]), cb], epochs=3)
    assert [i.step for i in list_checkpoints(tmp_path / "u")] == [4]  # epochs 2, 3: NaN


def test_user_policy_gets_verbose_lines(tmp_path, capsys):
    cb = CheckpointCallback(tmp_path / "u", keep=LowestLoss(), verbose=2)
    _fit(tiny_model(), [SetLogs("val_loss", [0.5, 0.6, 0.4]), cb], epochs=3)

    d = tmp_path / "u"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == [
        f"Epoch 1: saved {d}/ckpt-4, val_loss improved from inf to 0.5",
        "Epoch 2: val_loss (0.6) did not improve from 0.5, nothing saved",
        f"Epoch 3: saved {d}/ckpt-12, val_loss improved from 0.5 to 0.4",
        f"Epoch 3: deleted {d}/ckpt-4 (not among the 1 lowest val_loss)",
    ]
    assert [i.step for i in list_checkpoints(d)] == [12]
