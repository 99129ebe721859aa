"""SeedGenerator state (Dropout, GaussianNoise): not in TF's checkpoint, kept in the record."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from helpers.tiny import tiny_model

from keras_ckpt import CheckpointManager, KeepLast, load_model, restore, resume
from keras_ckpt._untracked import RECORD_KEY, put_back


def _noisy_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="body"),
            keras.layers.Dropout(0.5, name="drop"),
            keras.layers.GaussianNoise(0.1, name="noise"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)  # as after a first training step
    return model


def _states(model) -> list:
    return [v.numpy().tolist() for v in model.variables if "seed_generator" in v.path]


def _advance(model, times: int = 3) -> None:
    for _ in range(times):  # every training-mode call draws new masks
        model(np.ones((2, 4), "float32"), training=True)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_the_record_holds_the_generators_state_of_the_saved_step(tmp_path, async_save):
    model = _noisy_model()
    _advance(model)
    with CheckpointManager(tmp_path, model, async_save=async_save) as manager:
        info = manager.save(step=1)
        at_save = _states(model)
        _advance(model)  # training goes on while an async write is in flight
        assert _states(model) != at_save
    with open(info.path + ".json") as f:
        recorded = json.load(f)[RECORD_KEY]
    assert [r["value"] for r in recorded] == at_save
    assert all(r["dtype"] == "int64" for r in recorded)

    other = _noisy_model(seed=7)  # other seeds, other generator names
    restore(other, info.path)
    assert _states(other) == at_save
    # the restored model draws the masks the saved one would have drawn next
    seeds = [v for v in model.variables if "seed_generator" in v.path]
    for variable, value in zip(seeds, at_save, strict=True):
        variable.assign(value)
    x = np.ones((2, 4), "float32")
    for _ in range(2):
        expected = model(x, training=True).numpy()
        assert np.array_equal(other(x, training=True).numpy(), expected)
    assert not np.array_equal(other(x, training=True).numpy(), other(x, training=False).numpy())


def test_a_model_without_random_layers_records_nothing_extra(tmp_path):
    with CheckpointManager(tmp_path, tiny_model(), keep=KeepLast(1)) as manager:
        info = manager.save(step=1)
    with open(info.path + ".json") as f:
        assert RECORD_KEY not in json.load(f)


def test_records_that_do_not_fit_are_skipped_and_weights_still_restore(tmp_path):
    model = _noisy_model()
    _advance(model)
    with CheckpointManager(tmp_path, model) as manager:
        info = manager.save(step=1)
    record_path = info.path + ".json"
    with open(record_path) as f:
        record = json.load(f)
    record[RECORD_KEY][0]["value"] = [1, 2, 3]  # wrong shape
    record[RECORD_KEY][1]["dtype"] = "float32"  # wrong dtype
    with open(record_path, "w") as f:
        json.dump(record, f)

    other = _noisy_model(seed=7)
    before = _states(other)
    restore(other, info.path)
    assert _states(other) == before  # neither entry fits: both left alone
    for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
        assert np.array_equal(a, b)

    assert put_back(other, None) == 0


@pytest.mark.parametrize(
    "garbage",
    [
        [
            {"path": ["x"], "dtype": 5, "value": [1, 2]},
            {"dtype": "int64", "value": [1.5, 2]},
        ],
        "not a list",
        [None, "text"],
    ],
    ids=["bad-entries", "not-a-list", "not-dicts"],
)
def test_a_garbled_record_warns_and_still_restores_the_weights(tmp_path, garbage):
    model = _noisy_model()
    with CheckpointManager(tmp_path, model) as manager:
        info = manager.save(step=1)
    with open(info.path + ".json") as f:
        record = json.load(f)
    record[RECORD_KEY] = garbage
    with open(info.path + ".json", "w") as f:
        json.dump(record, f)

    other = _noisy_model(seed=7)
    before = _states(other)
    with pytest.warns(UserWarning, match="malformed.*restart from their seeds") as caught:
        restore(other, info.path)
    assert {w.filename for w in caught} == {__file__}  # it points at the caller
    assert _states(other) == before
    for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
        assert np.array_equal(a, b)
    with pytest.warns(UserWarning, match="malformed") as caught:
        assert resume(_noisy_model(seed=7), str(tmp_path)) == 0  # no epoch recorded
    assert {w.filename for w in caught} == {__file__}


def test_one_bad_entry_leaves_the_others_in_place(tmp_path):
    model = _noisy_model()
    _advance(model)
    at_save = _states(model)
    with CheckpointManager(tmp_path, model) as manager:
        info = manager.save(step=1)
    with open(info.path + ".json") as f:
        record = json.load(f)
    record[RECORD_KEY][0]["value"] = "garbled"
    with open(info.path + ".json", "w") as f:
        json.dump(record, f)
    other = _noisy_model(seed=7)
    first_before = _states(other)[0]
    with pytest.warns(UserWarning, match="malformed"):
        restore(other, info.path)
    assert _states(other) == [first_before, at_save[1]]  # paired by position all the same


def test_a_partial_restore_leaves_the_generators_alone(tmp_path):
    model = _noisy_model()
    _advance(model)
    with CheckpointManager(tmp_path, model) as manager:
        info = manager.save(step=1)
    keras.utils.set_random_seed(5)
    other = keras.Sequential(  # another head: strict=False restores the body only
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="body"),
            keras.layers.Dropout(0.5, name="drop"),
            keras.layers.GaussianNoise(0.1, name="noise"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    before = _states(other)
    with pytest.warns(UserWarning, match="skipped"):
        restore(other, info.path, strict=False)
    assert _states(other) == before
    assert np.array_equal(
        other.get_layer("body").kernel.numpy(), model.get_layer("body").kernel.numpy()
    )


def test_load_model_puts_the_generators_back(tmp_path):
    model = _noisy_model()
    _advance(model)
    with CheckpointManager(tmp_path, model) as manager:
        info = manager.save(step=1)
    assert _states(load_model(info.path)) == _states(model)


def test_state_that_cannot_be_read_never_fails_a_save(tmp_path, monkeypatch):
    class Unreadable:
        path, dtype = "broken/seed_generator_state", "int64"

        def __array__(self, *args, **kwargs):
            raise RuntimeError("device lost")

    monkeypatch.setattr("keras_ckpt._untracked.untracked_variables", lambda model: [Unreadable()])
    with CheckpointManager(tmp_path, _noisy_model(), keep=KeepLast(1)) as manager:
        info = manager.save(step=1)  # no error
    with open(info.path + ".json") as f:
        (entry,) = json.load(f)[RECORD_KEY]
    assert entry["path"] == "broken/seed_generator_state" and entry["value"] is None
    monkeypatch.undo()
    other = _noisy_model(seed=3)
    before = _states(other)
    restore(other, info.path)  # 1 entry, 2 generators: nothing paired, weights restored
    assert _states(other) == before
