"""Unit tests of the pure parts: keep policies, the state file, the checkpoint record codec.

No TensorFlow model, no training: these run in milliseconds.
"""

from __future__ import annotations

import math

import pytest

from keras_ckpt._planning import check_monitors
from keras_ckpt._statefile import format_state, parse_state
from keras_ckpt.errors import MonitorNotFoundError
from keras_ckpt.info import CheckpointInfo, clean_metrics, from_json, step_of, to_json
from keras_ckpt.policies import (
    EveryEpoch,
    EveryNSeconds,
    EveryNSteps,
    KeepAll,
    KeepAny,
    KeepBest,
    KeepEveryNHours,
    KeepLast,
    as_policies,
    best_by,
    default_monitor,
    describe,
    judges_weights,
    monitors_of,
    ranking,
    save_every,
)


def _info(step, saved_at=0.0, **metrics):
    return CheckpointInfo(f"d/ckpt-{step}", step, None, dict(metrics), saved_at)


# -- keep policies ------------------------------------------------------------------------------


def test_keep_last_protects_the_newest_n():
    kept = [_info(s) for s in (5, 1, 3, 4)]
    assert KeepLast(2).protected(kept, 0.0) == {4, 5}
    assert KeepLast(2).wants(_info(6), kept, 0.0)


def test_keep_best_wants_only_a_finite_improvement_beyond_min_delta():
    kept = [_info(1, val_loss=0.5), _info(2, val_loss=0.3), _info(3, val_loss=math.nan)]
    policy = KeepBest(k=2, min_delta=0.05)
    assert not policy.wants(_info(4, val_loss=0.26), kept, 0.0)  # within min_delta
    assert policy.wants(_info(4, val_loss=0.2), kept, 0.0)
    assert not policy.wants(_info(4, val_loss=math.inf), kept, 0.0)
    assert policy.protected(kept, 0.0) == {1, 2}  # NaN is never among the best
    assert policy.best(kept).step == 2


def test_keep_best_maximises_accuracy_names_and_ties_go_to_the_newer():
    kept = [_info(1, val_accuracy=0.9), _info(2, val_accuracy=0.9), _info(3, val_accuracy=0.5)]
    assert KeepBest("val_accuracy").best(kept).step == 2
    assert KeepBest("val_accuracy", mode="min").best(kept).step == 3


def test_keep_every_n_hours_keeps_the_first_checkpoint_of_each_period():
    hour = 3600.0
    kept = [_info(s, saved_at=t * hour) for s, t in ((1, 0.5), (2, 1.0), (3, 1.5), (4, 2.1))]
    assert KeepEveryNHours(1).protected(kept, 0.0) == {2, 4}
    assert KeepEveryNHours(1).wants(_info(5, saved_at=3.2 * hour), kept, 0.0)
    assert not KeepEveryNHours(1).wants(_info(5, saved_at=2.5 * hour), kept, 0.0)


def test_keep_any_is_the_union_and_keep_all_keeps_everything():
    kept = [_info(1, loss=0.1), _info(2, loss=0.5), _info(3, loss=0.4)]
    union = KeepAny((KeepBest("loss"), KeepLast(1)))
    assert union.protected(kept, 0.0) == {1, 3}
    assert KeepAll().protected(kept, 0.0) == {1, 2, 3}


def test_the_protocol_members_describe_monitor_and_rank():
    best, last = KeepBest("val_loss", k=2), KeepLast(3)
    assert monitors_of(best) == ("val_loss",) and monitors_of(last) == ()
    assert monitors_of(object()) == ()  # a user policy without the optional member
    assert [describe(p) for p in (best, last, KeepAll(), KeepEveryNHours(0.5))] == [
        "the 2 best by val_loss",
        "the 3 newest",
        "all",
        "one kept per 30 minutes",
    ]
    assert ranking([last, best]) is best and ranking([last]) is None
    assert ranking([best], "loss") is None
    assert judges_weights([last, best]) and not judges_weights([last])


def test_missing_monitor_check_names_the_metric_and_what_is_there():
    check_monitors((KeepBest("val_loss"),), {"val_loss": 1.0})
    with pytest.raises(MonitorNotFoundError, match="'val_loss'.*loss, mae"):
        check_monitors((KeepLast(2), KeepBest("val_loss")), {"loss": 1.0, "mae": 2.0})
    with pytest.raises(MonitorNotFoundError, match="validation_data=\\(x_val"):
        check_monitors((KeepBest("val_loss"),), {"loss": 1.0}, epoch_end=False)


def test_best_by_the_default_monitor():
    kept = [_info(1, loss=0.3), _info(2, loss=0.2)]
    assert default_monitor(kept) == "loss" and best_by(None, kept).step == 2
    assert default_monitor([_info(1)]) is None and best_by(None, [_info(1)]) is None


def test_save_policies_and_argument_checks():
    assert EveryEpoch().at_epoch(0.0) and not EveryEpoch().at_batch(100, 100.0)
    assert EveryNSteps(3).at_batch(3, 0.0) and not EveryNSteps(3).at_batch(2, 0.0)
    assert EveryNSeconds(2).at_batch(1, 2.0) and not EveryNSeconds(2).at_epoch(1.9)
    assert save_every("epoch") == EveryEpoch() and save_every(5) == EveryNSteps(5)
    with pytest.raises(ValueError, match="save_freq=0"):
        save_every(0)
    with pytest.raises(ValueError, match="`keep` must name at least one"):
        as_policies([], KeepLast(3))
    assert as_policies(None, KeepLast(3)) == (KeepLast(3),)


# -- the state file -----------------------------------------------------------------------------


def test_state_file_round_trips_and_names_the_newest_first():
    text = format_state(["ckpt-8", "ckpt-16"], [100.5, 200.25], 50.0)
    assert text.splitlines()[0] == 'model_checkpoint_path: "ckpt-16"'
    fields = parse_state(text)
    assert fields["all_model_checkpoint_paths"] == ["ckpt-8", "ckpt-16"]
    assert [float(t) for t in fields["all_model_checkpoint_timestamps"]] == [100.5, 200.25]
    assert fields["last_preserved_timestamp"] == ["50.0"]


def test_state_file_parser_rejects_garbage_and_unterminated_strings():
    with pytest.raises(ValueError, match="unreadable line"):
        parse_state("this is not a state file\n")
    with pytest.raises(ValueError, match="unterminated"):
        parse_state('model_checkpoint_path: "ckpt-1\n')
    assert parse_state("\n\n") == {}


# -- the checkpoint record ----------------------------------------------------------------------


def test_record_round_trips_with_non_finite_metrics_and_extra_fields():
    info = CheckpointInfo("d/ckpt-12", 12, 3, {"loss": 0.25, "val_loss": math.nan}, 123.5)
    text = to_json(info, {"with_optimizer": True})
    back, record = from_json(text, "elsewhere/ckpt-12")
    assert back.path == "elsewhere/ckpt-12"  # paths are not stored: the directory can move
    assert (back.step, back.epoch, back.saved_at) == (12, 3, 123.5)
    assert back.metrics["loss"] == 0.25 and math.isnan(back.metrics["val_loss"])
    assert record["with_optimizer"] is True and back.name == "ckpt-12"


def test_record_parser_rejects_foreign_json():
    with pytest.raises(ValueError, match="not a keras_ckpt checkpoint record"):
        from_json('{"step": 1}', "d/ckpt-1")
    with pytest.raises(ValueError):
        from_json("{truncated", "d/ckpt-1")


def test_metric_cleaning_and_prefix_names():
    assert clean_metrics({"loss": 1, "name": "x", "acc": "0.5", "obj": None}) == {
        "loss": 1.0,
        "acc": 0.5,
    }
    assert step_of("ckpt-42") == 42 and step_of("ckpt-x") is None and step_of("model") is None
