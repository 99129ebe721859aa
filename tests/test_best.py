"""BestCheckpoint and KeepBest: improvements, top-k, NaN/inf, modes (issue 3: 1, 4, 8)."""

import json
import math

import numpy as np
import pytest
from helpers.tiny import SetLogs, poison, tiny_data, tiny_model

from keras_ckpt import (
    BestCheckpoint,
    CheckpointCallback,
    EveryNSteps,
    KeepBest,
    KeepLast,
    best_checkpoint,
    list_checkpoints,
    restore,
)


def _fit(model, callbacks, epochs, batch_size=8):
    x, y = tiny_data()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, callbacks=callbacks, verbose=0)


def _saved_steps(directory):
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("ckpt-*.json"))


def test_best_saves_only_improvements_beyond_min_delta(tmp_path):
    values = [1.0, 0.95, 0.8, 0.79, 0.5, 0.6, 0.45]  # min_delta 0.06: 1.0, 0.8, 0.5 improve
    cb = BestCheckpoint(tmp_path / "best", min_delta=0.06, keep_best=10)
    _fit(tiny_model(), [SetLogs("val_loss", values), cb], epochs=len(values))

    kept = cb.checkpoints
    assert [i.metrics["val_loss"] for i in kept] == [1.0, 0.8, 0.5]
    assert [i.step for i in kept] == [4, 12, 20]  # 4 batches per epoch: epochs 1, 3, 5
    assert _saved_steps(tmp_path / "best") == [4, 12, 20]
    assert cb.best_value == 0.5
    assert cb.best_checkpoint == str(tmp_path / "best" / "ckpt-20")


def test_best_keeps_top_k_and_deletes_the_rest(tmp_path):
    values = [0.9, 0.7, 0.6, 0.65, 0.4]
    cb = BestCheckpoint(tmp_path / "best", keep_best=2)
    _fit(tiny_model(), [SetLogs("val_loss", values), cb], epochs=len(values))

    assert [i.metrics["val_loss"] for i in cb.checkpoints] == [0.6, 0.4]
    assert len(list((tmp_path / "best").glob("ckpt-*.data-*"))) == 2
    assert best_checkpoint(tmp_path / "best") == str(tmp_path / "best" / "ckpt-20")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_never_an_improvement(tmp_path, bad):
    values = [0.5, bad, 0.7, bad, 0.3]
    cb = BestCheckpoint(tmp_path / "best", keep_best=5)
    _fit(tiny_model(), [SetLogs("val_loss", values), cb], epochs=len(values))

    assert [i.metrics["val_loss"] for i in cb.checkpoints] == [0.5, 0.3]
    assert cb.best_value == 0.3


def test_nan_from_the_first_epoch_saves_nothing(tmp_path):
    cb = BestCheckpoint(tmp_path / "best")
    _fit(tiny_model(), [SetLogs("val_loss", [math.nan] * 3), cb], epochs=3)

    assert cb.checkpoints == []
    assert cb.best_checkpoint is None and cb.best_value is None
    assert list((tmp_path / "best").glob("ckpt-*")) == []


def test_auto_mode_maximises_accuracy_like_names(tmp_path):
    values = [0.5, 0.4, 0.7, 0.7, 0.9]
    cb = BestCheckpoint(tmp_path / "acc", monitor="val_accuracy", keep_best=10)
    _fit(tiny_model(), [SetLogs("val_accuracy", values), cb], epochs=len(values))

    assert [i.metrics["val_accuracy"] for i in cb.checkpoints] == [0.5, 0.7, 0.9]
    assert cb.best_value == 0.9


def test_explicit_max_mode_and_min_for_other_names(tmp_path):
    cb = BestCheckpoint(tmp_path / "m", monitor="score", mode="max", keep_best=10)
    _fit(tiny_model(), [SetLogs("score", [1.0, 3.0, 2.0]), cb], epochs=3)
    assert [i.metrics["score"] for i in cb.checkpoints] == [1.0, 3.0]

    cb = BestCheckpoint(tmp_path / "e", monitor="val_error", keep_best=10)  # auto -> min
    _fit(tiny_model(), [SetLogs("val_error", [1.0, 3.0, 0.5]), cb], epochs=3)
    assert [i.metrics["val_error"] for i in cb.checkpoints] == [1.0, 0.5]


def test_ties_go_to_the_newer_checkpoint():
    from keras_ckpt.info import CheckpointInfo

    kept = [
        CheckpointInfo("a", 1, metrics={"val_loss": 0.2}),
        CheckpointInfo("b", 2, metrics={"val_loss": 0.2}),
        CheckpointInfo("c", 3, metrics={"val_loss": 0.5}),
    ]
    policy = KeepBest(k=1)
    assert policy.best(kept).step == 2
    assert policy.protected(kept, start=0.0) == {2}
    assert not policy.wants(CheckpointInfo("d", 4, metrics={"val_loss": 0.2}), kept, 0.0)


def test_step_level_best_with_validation_data_matches_model_evaluate(tmp_path):
    x, y = tiny_data()
    x_val, y_val = tiny_data(16, seed=1)
    model = tiny_model()
    cb = BestCheckpoint(
        tmp_path / "best", save_freq=3, keep_best=100, validation_data=(x_val, y_val)
    )
    model.fit(x, y, batch_size=4, epochs=3, callbacks=[cb], verbose=0)  # 24 steps

    kept = cb.checkpoints
    assert len(kept) >= 2
    assert all(i.step % 3 == 0 for i in kept)
    losses = [i.metrics["val_loss"] for i in kept]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    fresh = tiny_model(seed=5)  # one model for every checkpoint: evaluate is traced once
    for info in kept:
        poison(fresh)
        restore(fresh, info.path)
        result = fresh.evaluate(x_val, y_val, verbose=0, return_dict=True)
        assert result["loss"] == pytest.approx(info.metrics["val_loss"], rel=1e-5)
        assert result["mae"] == pytest.approx(info.metrics["val_mae"], rel=1e-5)


def test_step_level_evaluation_does_not_disturb_the_epoch_training_logs(tmp_path):
    x, y = tiny_data()
    history_plain = tiny_model().fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    cb = BestCheckpoint(tmp_path / "best", save_freq=3, validation_data=tiny_data(16, seed=1))
    history = tiny_model().fit(
        x, y, batch_size=4, epochs=2, shuffle=False, callbacks=[cb], verbose=0
    )
    np.testing.assert_allclose(history.history["loss"], history_plain.history["loss"], rtol=1e-5)


def test_union_of_best_two_and_newest_three(tmp_path):
    values = [0.5, 0.2, 0.9, 0.8, 0.7, 0.6, 0.3]
    cb = CheckpointCallback(tmp_path / "mix", keep=[KeepBest(k=2), KeepLast(3)])
    _fit(tiny_model(), [SetLogs("val_loss", values), cb], epochs=len(values))

    # best two: 0.2 (epoch 2) and 0.3 (epoch 7); newest three: epochs 5, 6, 7
    assert [i.step for i in cb.checkpoints] == [8, 20, 24, 28]
    assert _saved_steps(tmp_path / "mix") == [8, 20, 24, 28]
    assert len(list((tmp_path / "mix").glob("ckpt-*.data-*"))) == 4


def test_missing_monitor_lists_the_available_metrics(tmp_path):
    cb = BestCheckpoint(tmp_path / "best", monitor="val_los")
    x, y = tiny_data()
    with pytest.raises(KeyError) as caught:
        tiny_model().fit(x, y, validation_split=0.25, epochs=1, callbacks=[cb], verbose=0)
    message = str(caught.value)
    assert caught.type.__name__ == "MonitorNotFoundError"
    assert "'val_los'" in message and "val_loss" in message and "val_mae" in message
    assert not message.startswith('"')


def test_step_level_val_monitor_without_validation_data_says_to_pass_it(tmp_path):
    from keras_ckpt import MonitorNotFoundError

    cb = BestCheckpoint(tmp_path / "best", save_freq=2)
    with pytest.raises(MonitorNotFoundError, match="validation_data"):
        _fit(tiny_model(), [cb], epochs=1)
    assert list((tmp_path / "best").glob("ckpt-*")) == []


def test_restarted_run_keeps_the_better_best_and_overwrites_nothing(tmp_path):
    model = tiny_model()
    first = BestCheckpoint(tmp_path / "best", keep_best=3)
    _fit(model, [SetLogs("val_loss", [0.5, 0.3, 0.4]), first], epochs=3)
    before = {p.name: p.read_bytes() for p in (tmp_path / "best").glob("ckpt-*")}
    assert [i.metrics["val_loss"] for i in first.checkpoints] == [0.5, 0.3]

    second = BestCheckpoint(tmp_path / "best", keep_best=3)  # same model, continues at step 12
    _fit(model, [SetLogs("val_loss", [0.45, 0.35, 0.2]), second], epochs=3)

    assert [i.metrics["val_loss"] for i in second.checkpoints] == [0.5, 0.3, 0.2]
    assert second.best_value == 0.2 and second.best_checkpoint.endswith("ckpt-24")
    for name, content in before.items():
        assert (tmp_path / "best" / name).read_bytes() == content


def test_restart_with_a_fresh_optimizer_numbers_after_the_newest_and_warns(tmp_path):
    first = BestCheckpoint(tmp_path / "best", keep_best=5)
    _fit(tiny_model(), [SetLogs("val_loss", [0.5, 0.4]), first], epochs=2)  # ckpt-4, ckpt-8
    before = {p.name: p.read_bytes() for p in (tmp_path / "best").glob("ckpt-*")}

    second = BestCheckpoint(tmp_path / "best", keep_best=5)
    with pytest.warns(UserWarning, match="did not resume"):
        _fit(tiny_model(), [SetLogs("val_loss", [0.3]), second], epochs=1)

    steps = [i.step for i in second.checkpoints]
    assert steps == [4, 8, 12]  # optimizer at 4, offset by the newest step on disk (8)
    record = json.loads((tmp_path / "best" / "ckpt-12.json").read_text())
    assert record["optimizer_step"] == 4 and record["step"] == 12
    for name, content in before.items():
        assert (tmp_path / "best" / name).read_bytes() == content
    assert [i.step for i in list_checkpoints(tmp_path / "best")] == [4, 8, 12]


def test_general_callback_with_every_n_steps_and_best(tmp_path):
    x_val, y_val = tiny_data(16, seed=2)
    cb = CheckpointCallback(
        tmp_path / "g", save=EveryNSteps(5), keep=KeepBest(k=1), validation_data=(x_val, y_val)
    )
    _fit(tiny_model(), [cb], epochs=3)  # 12 steps: save points at 5 and 10
    assert len(cb.checkpoints) == 1
    assert cb.checkpoints[0].step in (5, 10)
