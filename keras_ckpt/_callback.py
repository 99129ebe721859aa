"""`CheckpointCallback`: the general Keras callback. It decides *when*; a `CheckpointManager`
does the rest.

Its save policy says when a save is considered (counted from the `batch` argument of the
batch hooks, as Keras' `ModelCheckpoint` counts, so `steps_per_execution` is honoured); the
keep policies say what stays. It also resumes inside `fit` (`_fit_resume`) and saves on
preemption (the manager's SIGTERM watch). The presets of `keras_ckpt.callbacks` are this
class with arguments turned into policies.

Keras 3 does not call `on_train_end` when `fit` is interrupted by an exception or
`KeyboardInterrupt`: a background write then finishes on its own, but no final save is
made; call `cb.close()` to wait for it and release the directory (a later `fit` on the same
thread, e.g. a notebook cell run again, takes the directory over by itself: see `_lock.Claim`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_ckpt import _clock, _fs
from keras_ckpt._fit_resume import Position, Resumption
from keras_ckpt._layout import scan
from keras_ckpt._lock import Claim, claiming
from keras_ckpt._messages import check_verbose, same_step_line, say, skipped_line
from keras_ckpt._planning import check_monitors, optimizer_step
from keras_ckpt.info import CheckpointInfo
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import EveryEpoch, KeepLast, KeepPolicy, SavePolicy, as_policies

__all__ = ["CheckpointCallback"]


def _check_validation_data(data: Any) -> None:
    if data is None or isinstance(data, tf.data.Dataset):
        return
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return
    raise ValueError(
        "`validation_data` must be a tuple (x_val, y_val), (x_val, y_val, sample_weight) or a "
        f"tf.data.Dataset. Received: validation_data of type {type(data).__name__}"
    )


class CheckpointCallback(keras.callbacks.Callback):
    """Saves checkpoints when its save policy says so; keeps what its keep policies protect.

    Args:
        directory: The directory this callback owns.
        save: When to consider a save: `EveryEpoch()`, `EveryNSteps(n)`, `EveryNSeconds(s)`.
        keep: A keep policy or a list of them (a union); default `[KeepLast(5)]`.
        validation_data: `(x_val, y_val)` or a `tf.data.Dataset`, evaluated at every save
            point (its metrics logged as `val_*`), for monitoring `val_*` inside epochs.
        save_on_train_end: Also save the final step when training ends (unless saved).
        save_optimizer: Store the optimizer's state (slots, iterations) for exact resume.
        async_save: Snapshot on the training thread, write in the background.
        verbose: 1 prints one line per save and deletion, Keras-style (`Epoch 3: saved
            runs/best/ckpt-36, val_loss improved from 0.2154 to 0.1987`); 2 also one line
            per save point that saved nothing.
        resume: In `on_train_begin`, restore the newest intact checkpoint of `directory`
            (model, optimizer, random-generator state) and make `fit` continue from it,
            skipping the batches of the interrupted epoch already trained; an empty or
            missing directory starts from scratch. At most one callback of a `fit` may
            resume. `verbose=1` prints `resumed runs/last/ckpt-1500: epoch 3, batch 12`
            (Keras' epoch number, and how many of its batches were trained already).
        save_on_preemption: On SIGTERM (Kubernetes, Slurm, spot VMs), finish the batch,
            save that step synchronously (no validation, whatever the keep policies say; kept
            until a newer checkpoint exists), stop `fit`, and restore the previous SIGTERM
            handler when training ends. False: no handler is installed.
        save_graph: At the first save, also write the model's computation once as a
            SavedModel in `<directory>/graph/`, so that `load_model`, `evaluate_checkpoints`
            and `export_saved_model` work without the model's code (subclassed models).

    Example:
        >>> cb = CheckpointCallback("runs/mix", save=EveryNSteps(100),
        ...                         keep=[KeepBest("val_loss", k=2), KeepLast(3)],
        ...                         validation_data=(x_val, y_val))
        >>> model.fit(x, y, epochs=10, callbacks=[cb])
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        save: SavePolicy | None = None,
        keep: KeepPolicy | Sequence[KeepPolicy] | None = None,
        validation_data: Any = None,
        save_on_train_end: bool = False,
        save_optimizer: bool = True,
        async_save: bool = False,
        verbose: int = 0,
        resume: bool = False,
        save_on_preemption: bool = False,
        save_graph: bool = False,
    ) -> None:
        super().__init__()
        if directory is None or not _fs.fspath(directory):
            raise ValueError(f"`directory` must be a path. Received: directory={directory!r}")
        save = EveryEpoch() if save is None else save
        if not isinstance(save, SavePolicy):
            raise ValueError(
                "`save` must be a save policy: EveryEpoch(), EveryNSteps(n) or "
                f"EveryNSeconds(s). Received: save={save!r}"
            )
        _check_validation_data(validation_data)
        self.directory = _fs.fspath(directory)
        self.save_policy = save
        self.keep = as_policies(keep, KeepLast(5))
        self.validation_data = validation_data
        self.save_on_train_end = bool(save_on_train_end)
        self.save_optimizer = bool(save_optimizer)
        self.async_save = bool(async_save)
        self.verbose = check_verbose(verbose)
        self.resume = bool(resume)
        self.save_on_preemption = bool(save_on_preemption)
        self.save_graph = bool(save_graph)
        self.manager: CheckpointManager | None = None
        self._resumption: Resumption | None = None
        self._saved_iterations: int | None = None  # the optimizer's step at the last save
        self._told_same_step = False
        self._batches = 0  # batches since the last save point, counted as ModelCheckpoint does
        self._last_batch: int | None = None  # the `batch` of the previous hook
        self._last_time = _clock.monotonic()
        self._epochs_done = 0
        self._last_logs: dict[str, Any] = {}

    # -- what the user reads ----------------------------------------------------------------

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        """The kept checkpoints, oldest first."""
        if self.manager is not None:
            return self.manager.checkpoints
        return scan(self.directory).kept if _fs.isdir(self.directory) else []

    # -- Keras hooks --------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.manager is not None:
            self.manager.close()  # left open by a fit that died without on_train_end
        # Keras gives every callback of one fit the same `params` dict: it names this fit.
        claim = Claim(threading.get_ident(), self.params) if self.params else None
        with claiming(claim):
            self.manager = CheckpointManager(
                self.directory,
                self.model,
                keep=self.keep,
                save_optimizer=self.save_optimizer,
                async_save=self.async_save,
                verbose=self.verbose,
                save_on_preemption=self.save_on_preemption,
                save_graph=self.save_graph,
            )
        self._batches = 0
        self._last_batch = None
        self._last_time = _clock.monotonic()
        self._epochs_done = 0
        self._last_logs = {}
        self._resumption = Resumption(self) if self.resume else None
        position = self._resumption.begin() if self._resumption else None
        if position is not None:  # the save schedule continues as if nothing happened
            self._epochs_done = position.epochs
            self._batches = position.since_save
            self._last_batch = position.batches - 1 if position.batches else None
        self.manager.prepare()  # if the optimizer is built already (a resumed run)
        latest, iterations = self.manager.latest, optimizer_step(self.model)
        self._saved_iterations = iterations if latest and latest.step == iterations else None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_done = epoch
        if self._resumption is not None:
            self._resumption.epoch_begins()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._resumption is not None and self._resumption.skipped(batch):
            return  # a batch trained before the interruption, consumed without training
        # With compile(steps_per_execution=k) this hook runs once per k batches, `batch`
        # being the last of them: count batches from it, exactly as ModelCheckpoint does.
        first = self._last_batch is None
        if first or batch <= self._last_batch:  # a new epoch (batches are zero-indexed)
            self._batches += batch + 1
        else:
            self._batches += batch - self._last_batch
        self._last_batch = batch
        if first:  # the optimizer is built by its first step, not before
            self.manager.prepare()
        if self.save_policy.at_batch(self._batches, _clock.monotonic() - self._last_time):
            self._save_point(logs, epoch_end=False, batch=batch)
        if self.manager.preempted:  # SIGTERM: save this step (if not just saved), then stop
            self._save_point(logs, epoch_end=False, batch=batch)
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_done = epoch + 1
        if self._resumption is not None:
            self._resumption.epoch_ends()
        self._last_logs = dict(logs or {})
        preempted = self.manager.preempted  # (SIGTERM during the validation: save, stop now)
        if self.save_policy.at_epoch(_clock.monotonic() - self._last_time) or preempted:
            self._save_point(logs, epoch_end=True)
        if preempted:
            self.model.stop_training = True
        self.manager.log_epoch(epoch + 1, logs)  # after the save: the line lists it

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._resumption is not None:
            self._resumption.end()
        if self.manager is None:
            return
        try:
            if self.save_on_train_end or self.manager.preempted:
                metrics = {**self._last_logs, **(logs or {})}
                self.manager.label = self._epoch_label(running=self._epochs_done)
                position = Position(self._epochs_done, 0, self._batches)
                # With EMA, fit swapped the averaged weights in after the last save point:
                # the final model differs from the checkpoint of its step, which it replaces.
                self.manager.save(
                    metrics=metrics,
                    epoch=self._epochs_done,
                    extra=position.record(),
                    replace=_uses_ema(self.model),
                )
        finally:
            self.close()

    def close(self) -> None:
        """Waits for a background write and releases the directory (done by `on_train_end`)."""
        if self.manager is not None:
            self.manager.close()

    # -- one save point -----------------------------------------------------------------------

    def _save_point(
        self, logs: dict[str, Any] | None, epoch_end: bool, batch: int | None = None
    ) -> CheckpointInfo | None:
        self._batches = 0
        self._last_time = _clock.monotonic()
        metrics = dict(logs or {})
        preempted = self.manager.preempted  # no time to evaluate; any metrics will do
        if self.validation_data is not None and not (
            preempted or (epoch_end and any(k.startswith("val_") for k in metrics))
        ):
            metrics.update(self._evaluate())
        if not preempted:
            self._check_monitors(metrics, epoch_end)
        # Keras numbers epochs from 1: the one just finished, or the one in progress.
        running = self._epochs_done if epoch_end else self._epochs_done + 1
        position = self._position(batch)
        self.manager.label = self._epoch_label(running)
        before = self.manager.checkpoints
        info = self.manager.save(metrics=metrics, epoch=position.epochs, extra=position.record())
        iterations = optimizer_step(self.model)
        if info is not None:
            self._saved_iterations = iterations
        elif iterations is not None and iterations == self._saved_iterations:
            if self.verbose > 1 or (self.verbose and not self._told_same_step):
                latest = self.manager.latest
                step = latest.step if latest is not None else iterations
                say(same_step_line(self.manager.label, step, latest))
            self._told_same_step = True
        elif self.verbose > 1:
            say(skipped_line(self.manager.label, metrics, self.keep, before))
        return info

    def _position(self, batch: int | None) -> Position:
        """Where `fit` stands after `batch` of the running epoch (None: at its end).

        After an epoch's last batch that epoch is complete: labelled as its end would be.
        """
        steps = self.params.get("steps") if self.params else None
        if batch is None or (steps and batch + 1 >= steps):
            done = self._epochs_done + (0 if batch is None else 1)
            return Position(done, 0, self._batches)
        return Position(self._epochs_done, batch + 1, self._batches)

    def _epoch_label(self, running: int) -> str:
        """`Epoch 3` for verbose lines; on a new line while Keras draws a progress bar."""
        progress_bar = self.params.get("verbose") in (1, "auto") if self.params else False
        newline = "\n" if progress_bar and keras.config.is_interactive_logging_enabled() else ""
        return f"{newline}Epoch {running}"

    def _check_monitors(self, metrics: dict[str, Any], epoch_end: bool) -> None:
        check_monitors(self.keep, metrics, epoch_end)

    def _evaluate(self) -> dict[str, float]:
        """Evaluates on `validation_data` without disturbing the epoch's training metrics."""
        state = [v.numpy() for v in self.model.metrics_variables]
        data = self.validation_data
        if isinstance(data, tf.data.Dataset):
            result = self.model.evaluate(data, verbose=0, return_dict=True)
        else:
            x, y, *weights = data
            result = self.model.evaluate(
                x, y, sample_weight=weights[0] if weights else None, verbose=0, return_dict=True
            )
        for variable, value in zip(self.model.metrics_variables, state, strict=True):
            variable.assign(value)
        return {f"val_{k}": float(v) for k, v in result.items()}


def _uses_ema(model: Any) -> bool:
    """True if `model`'s optimizer keeps an EMA of the weights (swapped in when fit ends)."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    return bool(getattr(optimizer, "use_ema", False))
