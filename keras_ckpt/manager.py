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

from keras_ckpt import _dist, _fs, _messages
from keras_ckpt._io import say
from keras_ckpt._lock import DirectoryLock
from keras_ckpt import _sharing
from keras_ckpt._planning import SavePlanner
from keras_ckpt._snapshot import Snapshotter
from keras_ckpt._untracked import RECORD_KEY, UntrackedState
from keras_ckpt.directory import CheckpointDirectory
from keras_ckpt.errors import CheckpointError
from keras_ckpt.info import CheckpointInfo, clean_metrics
from keras_ckpt.policies import KeepLast, KeepPolicy, as_policies
from keras_ckpt.writer import AsyncWriter, SyncWriter, take_snapshot

logger = logging.getLogger(__name__)

__all__ = ["CheckpointManager"]


def _check_verbose(verbose: object) -> int:
    if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
        raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    return verbose


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
        self.verbose = _check_verbose(verbose)
        self.save_optimizer = bool(save_optimizer)
        self.async_save = bool(async_save)
        self.model = model
        self.directory = _fs.fspath(directory)
        self._dir = CheckpointDirectory(self.directory)
        self._planner = SavePlanner(
            model, as_policies(keep, KeepLast(3)), self.directory, self._dir.prefix
        )
        self._writer = AsyncWriter() if async_save else SyncWriter()
        # unchanged values (a frozen backbone) are shared with the previous checkpoint
        self._shared = _sharing.SharedData(self.directory) if _sharing.ENABLED else None
        self._snapshots = Snapshotter(model, self.save_optimizer, self._shared)
        self._untracked = UntrackedState(model)  # SeedGenerator states, for `resume`
        self._lock = DirectoryLock(self.directory, self)
        self._active_check = None
        self._closed = False
        self._model_json_written = False
        self._strategy = _dist.multi_worker_strategy(model)
        self.is_chief = _dist.is_chief(self._strategy)
        self._saved_since_log: list[int] = []
        self._label: str | None = None  # verbose lines start with this ("Epoch 3"), or the step
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
        planner = self._planner
        planner.kept = found.kept
        planner.newest_step = max(planner.newest_step, found.newest_step)
        if found.start is not None:
            planner.start = found.start
        elif found.kept:
            planner.start = min(planner.start, found.kept[0].saved_at)
        if cleanup:
            self._dir.sync_state(planner.kept, planner.start)

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        """The kept checkpoints, oldest first."""
        return list(self._planner.kept)

    @property
    def latest(self) -> CheckpointInfo | None:
        """The newest kept checkpoint, or None."""
        kept = self._planner.kept
        return kept[-1] if kept else None

    @property
    def policies(self) -> tuple[KeepPolicy, ...]:
        return self._planner.policies

    def best(self, monitor: str | None = None) -> CheckpointInfo | None:
        """The best kept checkpoint by the first `KeepBest` policy (or `monitor`)."""
        return self._planner.best(monitor)

    # -- saving ---------------------------------------------------------------------------------

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
        planner = self._planner
        planner.check_monitors(values)
        if step is None:
            step = planner.auto_step()
        elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"`step` must be a non-negative integer. Received: step={step!r}")
        if self._strategy is None:
            plan = planner.plan(step, values, epoch)
        else:
            plan = planner.follow_chief(self._strategy, self.is_chief, step, values, epoch)
        if plan is None:
            return None
        info, kept, doomed = plan
        planner.newest_step = info.step
        if not self.is_chief:
            planner.kept = kept
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
                    label, info, planner.policies, planner.kept, planner.start, self.async_save
                )
            )
            lines += [_messages.deleted_line(label, gone, planner.policies) for gone in doomed]
        planner.kept = kept
        self._saved_since_log.append(info.step)
        start = planner.start

        def job() -> None:
            try:
                self._dir.commit(info, snapshot.write, extra, flush_early=not self.async_save)
                try:
                    self._dir.write_state(kept, start)
                except BaseException:
                    self._dir.discard(info)  # never named by the state file: not saved
                    raise
                if self._shared is not None:
                    self._shared.committed(info.name)
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
            "step_offset": self._planner.offset or 0,
        }
        untracked = self._untracked.record()
        if untracked:
            extra[RECORD_KEY] = untracked
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
            "step": self._planner.current_step(),
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
