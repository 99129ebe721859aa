"""`CheckpointManager`: keep policies + a writer + a directory. The engine behind the callbacks."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from keras_ckpt import _dist, _fs, _messages
from keras_ckpt._io import say
from keras_ckpt._snapshot import Snapshotter
from keras_ckpt.directory import CheckpointDirectory, DirectoryLock
from keras_ckpt.errors import CheckpointError, MonitorNotFoundError
from keras_ckpt.info import CheckpointInfo, clean_metrics
from keras_ckpt.policies import KeepAny, KeepBest, KeepLast, KeepPolicy, as_policies
from keras_ckpt.writer import AsyncWriter, SyncWriter, take_snapshot

logger = logging.getLogger(__name__)

__all__ = ["CheckpointManager"]

# a save to make: the new checkpoint, the kept list after it, the checkpoints it replaces
_Plan = tuple[CheckpointInfo, list[CheckpointInfo], list[CheckpointInfo]]


def _check_verbose(verbose: object) -> int:
    if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
        raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    return verbose


def _weights_finite(model: Any) -> bool:
    """True if every floating-point trainable weight of `model` is finite (one reduction).

    Under `MultiWorkerMirroredStrategy` reading a variable may be a collective: every worker
    must call this at the same point (see `_follow_chief`).
    """
    checks = [
        tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(w)))
        for w in getattr(model, "trainable_weights", [])
        if tf.as_dtype(w.dtype).is_floating
    ]
    return bool(tf.reduce_all(checks)) if checks else True


def _describe(exc: BaseException) -> str:
    """The first line of an error, without TensorFlow's `{{function_node ...}}` noise."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", str(exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class CheckpointManager:
    """Saves a model into one directory and keeps what the keep policies protect.

    The public engine for custom training loops; the callbacks decide *when* and call it.

    Args:
        directory: The checkpoint directory (local, or any URL `tf.io.gfile` knows).
        model: The Keras model (a compiled model's optimizer state is saved too).
        keep: A keep policy or a list of them (a union); default `[KeepLast(3)]`.
        save_optimizer: If False, only the model's variables are saved.
        async_save: If True, `save` only snapshots the variables; a background thread
            writes. At most one write is in flight; its error is raised by the next `save`,
            `wait` or `close`.
        verbose: 1 prints one line per save and deletion (`Step 500: saved
            runs/loop/ckpt-500 (loss=0.0123)`), once it is done.

    Under a `tf.distribute` strategy, call `save` on every worker at the same points (the
    variables are read collectively). With `MultiWorkerMirroredStrategy` each save first
    adopts the chief's decision and step, so all workers take part in the same reads; only
    the chief commits files, the lock, `model.json` and `history.jsonl`; the others write
    only to a local temporary directory that is removed at once (`is_chief` says which).

    Example:
        >>> with CheckpointManager("runs/loop", model, keep=[KeepLast(3)]) as mgr:
        ...     for step in range(1, 101):
        ...         loss = train_step(next(batches))
        ...         if step % 10 == 0:
        ...             mgr.save(metrics={"loss": float(loss)})
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        model: Any,
        keep: KeepPolicy | Sequence[KeepPolicy] | None = None,
        save_optimizer: bool = True,
        async_save: bool = False,
        verbose: int = 0,
    ) -> None:
        self._policies = as_policies(keep, KeepLast(3))
        self._policy = KeepAny(self._policies)
        self.verbose = _check_verbose(verbose)
        self.save_optimizer = bool(save_optimizer)
        self.async_save = bool(async_save)
        self.model = model
        self.directory = _fs.fspath(directory)
        self._dir = CheckpointDirectory(self.directory)
        self._writer = AsyncWriter() if async_save else SyncWriter()
        self._snapshots = Snapshotter(model, save_optimizer=self.save_optimizer)
        self._lock = DirectoryLock(self.directory, self)
        self._active_check = None
        self._closed = False
        self._offset: int | None = None
        self._counter = 0
        self._model_json_written = False
        self._warned_diverged = False
        self._strategy = _dist.multi_worker_strategy(model)
        self.is_chief = _dist.is_chief(self._strategy)
        self._kept: list[CheckpointInfo] = []
        self._newest_step = -1
        self._saved_since_log: list[int] = []
        self._label: str | None = None  # verbose lines start with this ("Epoch 3"), or the step
        self._start = time.time()
        if self.is_chief:
            _fs.makedirs(self.directory, durable=True)
            self._lock.acquire()
            self._reload(cleanup=True)

    # -- state ----------------------------------------------------------------------------------

    def _reload(self, cleanup: bool = False) -> None:
        found = self._dir.scan()
        if cleanup:
            self._dir.cleanup(found)
        for name, why in found.damaged.items():
            warnings.warn(
                f"{_fs.join(self.directory, name)} is damaged and is not used: {why}. Run "
                f"`keras-ckpt verify {self.directory}`.",
                stacklevel=3,
            )
        self._kept = found.kept
        self._newest_step = max(self._newest_step, found.newest_step)
        if found.start is not None:
            self._start = found.start
        elif found.kept:
            self._start = min(self._start, found.kept[0].saved_at)
        if cleanup:
            self._dir.sync_state(self._kept, self._start)

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        """The kept checkpoints, oldest first."""
        return list(self._kept)

    @property
    def latest(self) -> CheckpointInfo | None:
        """The newest kept checkpoint, or None."""
        return self._kept[-1] if self._kept else None

    @property
    def policies(self) -> tuple[KeepPolicy, ...]:
        return self._policies

    def best(self, monitor: str | None = None) -> CheckpointInfo | None:
        """The best kept checkpoint by the first `KeepBest` policy (or `monitor`)."""
        for policy in self._policies:
            if isinstance(policy, KeepBest) and monitor in (None, policy.monitor):
                return policy.best(self._kept)
        if monitor is not None:
            return KeepBest(monitor=monitor).best(self._kept)
        return None

    # -- saving ---------------------------------------------------------------------------------

    def _optimizer_step(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is None:
            return None
        return int(iterations.numpy() if hasattr(iterations, "numpy") else iterations)

    def _current_step(self) -> int:
        """The step training is at, numbered as a save would number it (no side effects)."""
        base = self._optimizer_step()
        if base is None:
            return self._counter
        if self._offset is not None:
            return base + self._offset
        return base + (self._newest_step if base < self._newest_step else 0)

    def _auto_step(self) -> int:
        base = self._optimizer_step()
        if base is None:
            self._counter += 1
            base = self._counter
        if self._offset is None:
            self._offset = 0
            if base < self._newest_step:
                self._offset = self._newest_step
                warnings.warn(
                    f"{self.directory} already holds checkpoints up to step "
                    f"{self._newest_step}, but this run starts at step {base}: it did not "
                    f"resume (call keras_ckpt.resume(model, {self.directory!r}) first to "
                    f"continue). New checkpoints are numbered from {self._newest_step} on.",
                    stacklevel=4,
                )
        return base + self._offset

    def _check_monitors(self, metrics: dict[str, float]) -> None:
        for policy in self._policies:
            if isinstance(policy, KeepBest) and policy.monitor not in metrics:
                names = ", ".join(sorted(metrics)) or "none"
                raise MonitorNotFoundError(
                    f"KeepBest monitors {policy.monitor!r}, which is not among the metrics "
                    f"passed to save(): {names}. Pass it in `metrics=` or monitor one of them."
                )

    def save(
        self,
        step: int | None = None,
        metrics: dict[str, Any] | None = None,
        epoch: int | None = None,
    ) -> CheckpointInfo | None:
        """Saves a checkpoint if a keep policy wants it.

        Args:
            step: The global step; default the optimizer's iteration count (or a counter).
            metrics: Metric values recorded with the checkpoint (`KeepBest` reads them).
            epoch: Epochs completed, recorded for `resume`.

        Returns:
            The new `CheckpointInfo`, or None when no keep policy wants it (nothing written).

        Raises:
            MonitorNotFoundError: a `KeepBest` monitor is not in `metrics`.
            CheckpointError: this or an earlier background write failed.
        """
        if self._closed:
            raise CheckpointError(f"The CheckpointManager of {self.directory} is closed.")
        self._raise_background_error()
        values = clean_metrics(metrics)
        self._check_monitors(values)
        if step is None:
            step = self._auto_step()
        elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"`step` must be a non-negative integer. Received: step={step!r}")
        if self._strategy is None:
            plan = self._plan(step, values, epoch)
        else:
            plan = self._follow_chief(step, values, epoch)
        if plan is None:
            return None
        info, kept, doomed = plan
        self._newest_step = info.step
        if not self.is_chief:
            self._kept = kept
            self._write_elsewhere()
            return info
        self._writer.wait()  # one write in flight, one snapshot in memory
        self._raise_background_error()
        snapshot = self._snapshots.take(copy=self.async_save)
        try:
            extra = self._record_extra()
        except Exception as exc:
            raise self._save_failed(info, exc) from exc
        lines = []
        if self.verbose:
            label = self._label or f"Step {info.step}"
            lines.append(
                _messages.saved_line(
                    label, info, self._policies, self._kept, self._start, self.async_save
                )
            )
            lines += [_messages.deleted_line(label, gone, self._policies) for gone in doomed]
        self._kept = kept
        self._saved_since_log.append(info.step)
        start = self._start

        def job() -> None:
            try:
                self._dir.commit(info, snapshot.write, extra, flush_early=not self.async_save)
                try:
                    self._dir.write_state(kept, start)
                except BaseException:
                    self._dir.discard(info)  # never named by the state file: not saved
                    raise
            except Exception as exc:
                raise self._save_failed(info, exc) from exc
            try:
                self._dir.delete(doomed)
            except Exception as exc:
                raise CheckpointError(
                    f"Saved {info.path}, but deleting older checkpoints failed: "
                    f"{_describe(exc)}. They are no longer in the state file; the next save "
                    "deletes them."
                ) from exc
            for line in lines:  # printed once true: after the commit and the deletions
                say(line)

        if self.async_save:
            self._writer.submit(job)
        else:
            try:
                job()
            except BaseException:
                self._reload()
                raise
        return info

    def _plan(
        self,
        step: int,
        values: dict[str, float],
        epoch: int | None,
        finite: bool | None = None,
    ) -> _Plan | None:
        """The new checkpoint, what stays and what goes; None if no keep policy wants it.

        `finite`: whether the weights are finite, if already known (else read when needed).
        """
        if step <= self._newest_step:
            if step != self._newest_step or self.latest is None:
                logger.warning(
                    "Not saving step %d: %s holds step %d.",
                    step,
                    self.directory,
                    self._newest_step,
                )
            return None
        info = CheckpointInfo(
            path=self._dir.prefix(step),
            step=int(step),
            epoch=None if epoch is None else int(epoch),
            metrics=values,
            saved_at=time.time(),
        )
        if not self._policy.wants(info, self._kept, self._start):
            return None
        kept = [*self._kept, info]
        protected = self._policy.protected(kept, self._start)
        if info.step not in protected:
            return None
        if self._diverged(info, finite):
            return None
        doomed = [i for i in kept if i.step not in protected]
        return info, [i for i in kept if i.step in protected], doomed

    def _follow_chief(
        self, step: int, values: dict[str, float], epoch: int | None
    ) -> _Plan | None:
        """Multi-worker: the chief plans, every worker adopts its decision and step.

        The other workers' state (metrics, clock, what they know of the directory) may
        differ from the chief's, so they do not decide for themselves: if they did, one
        could join a collective read the chief never starts (see `_dist`). Their `kept`
        list mirrors the chief's saves in memory; the chief's files are the truth.
        """
        finite = _weights_finite(self.model) if self._judges_weights() else None  # all read
        plan = self._plan(step, values, epoch, finite) if self.is_chief else None
        mine = [1, plan[0].step] if plan is not None else [0, 0]
        wanted, chief_step = _dist.from_chief(self._strategy, mine, self.is_chief)
        if self.is_chief:
            return plan
        if not wanted:
            return None
        info = CheckpointInfo(self._dir.prefix(chief_step), chief_step, epoch, values, time.time())
        kept = [*(i for i in self._kept if i.step < chief_step), info]
        protected = self._policy.protected(kept, self._start) | {chief_step}
        return info, [i for i in kept if i.step in protected], []

    def _judges_weights(self) -> bool:
        return any(isinstance(p, KeepBest) for p in self._policies)

    def _diverged(self, info: CheckpointInfo, finite: bool | None = None) -> bool:
        """True (and a warning) if a `KeepBest` manager is about to save non-finite weights.

        A diverged model can score a finite, even better metric (a NaN classifier predicts
        one class for everything), so the metric alone cannot keep it out; nor should it
        take a `KeepLast` slot next to a `KeepBest` policy. Checked only when a save is due,
        except under `MultiWorkerMirroredStrategy`, where every worker reads the weights at
        every save point (`finite`), so that the reads stay collective.
        """
        if not self._judges_weights():
            return False
        if finite is None:
            finite = _weights_finite(self.model)
        if finite:
            return False
        message = (
            f"Not saving {info.path}: the model's weights are not finite (NaN or inf; "
            "training diverged). A diverged model never replaces a kept checkpoint."
        )
        if not self._warned_diverged:
            self._warned_diverged = True
            warnings.warn(message, stacklevel=5)
        else:
            logger.warning(message)
        return True

    def _save_failed(self, info: CheckpointInfo, exc: BaseException) -> CheckpointError:
        return CheckpointError(
            f"Saving {info.path} failed: {_describe(exc)}. Earlier checkpoints in "
            f"{self.directory} are intact and nothing of this save remains; free space or "
            "fix the path, then save again."
        )

    def _record_extra(self) -> dict[str, Any]:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        extra: dict[str, Any] = {
            "with_optimizer": bool(self.save_optimizer and optimizer is not None),
            "optimizer_step": None if iterations is None else int(iterations.numpy()),
            "step_offset": self._offset or 0,
        }
        if not self._model_json_written:
            text = None
            to_json = getattr(self.model, "to_json", None)
            try:
                text = to_json() if to_json is not None else None
            except Exception as exc:  # subclassed models without get_config
                logger.info("model.json not written for %s: %s", self.directory, exc)
            if text is not None:
                self._dir.write_model_json(text)  # a write error fails this save
            self._model_json_written = True
        return extra

    def _write_elsewhere(self) -> None:
        """A non-chief worker: take part in the collective reads, keep nothing."""
        snapshot = take_snapshot(self.model, save_optimizer=self.save_optimizer)
        scratch = tempfile.mkdtemp(prefix="keras_ckpt-worker-")
        try:
            snapshot.write(os.path.join(scratch, "ckpt"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def log_epoch(self, epoch: int, logs: dict[str, Any] | None) -> None:
        """Appends one line of epoch logs to `history.jsonl` (chief only).

        The line holds `epoch` (epochs completed), `step` (the training step now, numbered
        like the checkpoints), `time`, `saved` (the steps saved since the previous line,
        kept or since deleted) and the metrics of `logs`.
        """
        if not self.is_chief:
            return
        self._raise_background_error()  # a failed background save is news at every epoch end
        record: dict[str, Any] = {
            "epoch": int(epoch),
            "step": self._current_step(),
            "time": time.time(),
            "saved": self._saved_since_log,
        }
        self._saved_since_log = []
        record.update(clean_metrics(logs))
        try:
            self._dir.append_history(record)
        except Exception as exc:
            self.wait()  # a background save failing for the same reason (a full disk) says more
            path = _fs.join(self.directory, "history.jsonl")
            raise CheckpointError(f"Writing {path} failed: {_describe(exc)}.") from exc

    # -- lifecycle ------------------------------------------------------------------------------

    def _raise_background_error(self) -> None:
        try:
            self._writer.check()
        except BaseException:
            self._reload()
            raise

    def _prepare(self) -> None:
        """Maps the host buffers of asynchronous saves while training starts (callbacks)."""
        if not (self.async_save and self.is_chief) or self._closed:
            return
        optimizer = getattr(self.model, "optimizer", None) if self.save_optimizer else None
        if optimizer is not None and not getattr(optimizer, "built", True):
            return  # Keras builds it in the first step: the callback asks again then
        try:
            self._snapshots.prepare()
        except Exception as exc:  # only an early start: the first save does it otherwise
            logger.debug("keras_ckpt: no early snapshot buffers (%s)", exc)

    def wait(self) -> None:
        """Waits for the write in flight (and the unlinking of deleted checkpoints).

        Raises:
            CheckpointError: The background write failed.
        """
        self._writer.wait()
        self._dir.wait()
        self._raise_background_error()

    def close(self) -> None:
        """Waits for the write in flight, then releases the directory."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._dir.wait()  # the background unlinking of deleted checkpoints
            self._snapshots.release()  # the host buffers of asynchronous saves
            self._closed = True
            self._lock.release()

    def _lock_active(self) -> bool:
        if self._closed:
            return False
        return self._active_check() if self._active_check is not None else True

    def _release_lock(self) -> None:
        self._lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
