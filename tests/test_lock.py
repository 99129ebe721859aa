"""The directory lock: one writer per directory; a later fit on the same thread takes over.

Keras calls no `on_train_end` when `fit` dies of an exception, so a notebook cell run again
must be able to take the directory over from the dead fit's callback; two fits running at
once (other threads, other processes) must not.
"""

from __future__ import annotations

import threading

import keras
import pytest
from helpers.tiny import tiny_data, tiny_model

from keras_ckpt import DirectoryLockedError, RotatingCheckpoint, list_checkpoints
from keras_ckpt._lock import Claim, DirectoryLock, claiming


class _Owner:
    pass


def test_second_lock_on_a_directory_is_refused_until_the_first_is_released(tmp_path):
    a, b = _Owner(), _Owner()
    first = DirectoryLock(str(tmp_path), a)
    first.acquire()
    with pytest.raises(DirectoryLockedError, match=f"{tmp_path}.*_Owner"):
        DirectoryLock(str(tmp_path), b).acquire()
    first.release()
    second = DirectoryLock(str(tmp_path), b)
    second.acquire()
    assert second.held and not first.held
    second.release()


def test_a_later_fit_on_the_same_thread_supersedes_the_claim():
    me = threading.get_ident()
    fit1, fit2 = object(), object()
    assert Claim(me, fit1).superseded_by(Claim(me, fit2))
    assert not Claim(me, fit1).superseded_by(Claim(me, fit1))  # the same fit
    assert not Claim(me, fit1).superseded_by(Claim(me + 1, fit2))  # another thread
    assert not Claim(me, fit1).superseded_by(None)  # a manager outside fit


def test_a_claim_takes_a_lock_over_only_from_an_earlier_fit_of_its_thread(tmp_path):
    me = threading.get_ident()
    with claiming(Claim(me, "fit 1")):
        old = DirectoryLock(str(tmp_path), _Owner())
        old.acquire()
    with claiming(Claim(me, "fit 1")), pytest.raises(DirectoryLockedError):
        DirectoryLock(str(tmp_path), _Owner()).acquire()  # two callbacks of one fit
    with pytest.raises(DirectoryLockedError):
        DirectoryLock(str(tmp_path), _Owner()).acquire()  # outside fit: no claim
    with claiming(Claim(me, "fit 2")):
        new = DirectoryLock(str(tmp_path), _Owner())
        new.acquire()
    assert new.held and not old.held
    new.release()


def test_a_manager_outside_fit_is_never_taken_over(tmp_path):
    held = DirectoryLock(str(tmp_path), _Owner())
    held.acquire()
    with claiming(Claim(threading.get_ident(), object())), pytest.raises(DirectoryLockedError):
        DirectoryLock(str(tmp_path), _Owner()).acquire()
    held.release()


class _Boom(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("boom")


def test_notebook_rerun_takes_over_and_the_dead_callback_can_be_reused(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    crashed = RotatingCheckpoint(tmp_path / "d")
    with pytest.raises(RuntimeError, match="boom"):  # cell 1: fit dies, no on_train_end
        model.fit(x, y, batch_size=8, epochs=5, callbacks=[crashed, _Boom()], verbose=0)
    # cell 1 again, same callback object: its own stale manager is closed and replaced
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[crashed], verbose=0)
    assert [i.step for i in list_checkpoints(tmp_path / "d")] == [4, 8, 12]


def test_a_fit_on_another_thread_cannot_take_over_a_dead_fit_of_this_thread(tmp_path):
    x, y = tiny_data()
    crashed = RotatingCheckpoint(tmp_path / "d")
    with pytest.raises(RuntimeError, match="boom"):
        tiny_model().fit(x, y, batch_size=8, epochs=5, callbacks=[crashed, _Boom()], verbose=0)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            tiny_model().fit(
                x, y, epochs=1, callbacks=[RotatingCheckpoint(tmp_path / "d")], verbose=0
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], DirectoryLockedError)
    crashed.close()  # the explicit release
    assert [i.step for i in list_checkpoints(tmp_path / "d")] == [4, 8]
