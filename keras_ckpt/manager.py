"""`CheckpointManager`: keep policies + a writer + a directory. The engine behind the callbacks."""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

from keras_ckpt import _clock, _dist, _fs, _messages, _sharing
from keras_ckpt._layout import HISTORY
from keras_ckpt._lock import DirectoryLock
from keras_ckpt._messages import say
from keras_ckpt._planning import SavePlanner
from keras_ckpt._preemption import PreemptionWatch
from keras_ckpt._record import SaveRecord, write_and_discard
from keras_ckpt._snapshot import Snapshotter
from keras_ckpt.directory import CheckpointDirectory, DeletionError
from keras_ckpt.errors import CheckpointError
from keras_ckpt.errors import short_reason as _describe
from keras_ckpt.info import CheckpointInfo, clean_metrics
from keras_ckpt.policies import KeepLast, KeepPolicy, as_policies
from keras_ckpt.writer import AsyncWriter, SyncWriter

logger = logging.getLogger(__name__)

__all__ = ["CheckpointManager"]


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
        save_on_preemption: If True, a SIGTERM handler (main thread only; `close` puts the
            previous one back) sets `preempted`; the loop then saves and stops (see `save`).
            False: no handler is installed.
        save_graph: If True, the first save also writes the model's computation as a
            SavedModel in `<directory>/graph/` (once per directory, atomically; never
            rewritten), so that the checkpoints can be loaded, evaluated and exported without
            the model's code (`load_model`, `evaluate_checkpoints`).

    Under a `tf.distribute` strategy, call `save` on every worker at the same points (the
    variables are read collectively). With `MultiWorkerMirroredStrategy` each save first
    adopts the chief's decision and step, so all workers take part in the same reads; only
    the chief commits files, the lock, `model.json` and `history.jsonl`; the others write
    only to a local temporary directory that is removed at once (`is_chief` says which).

    Example:
        >>> with CheckpointManager("runs/loop", model, keep=[KeepLast(3)],
        ...                        save_on_preemption=True) as mgr:
        ...     for step in range(1, 101):
        ...         loss = train_step(next(batches))
        ...         if step % 10 == 0 or mgr.preempted:
        ...             mgr.save(metrics={"loss": float(loss)})
        ...         if mgr.preempted:  # SIGTERM: this step is saved; stop in the grace period
        ...             break
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        model: Any,
        keep: KeepPolicy | Sequence[KeepPolicy] | None = None,
        save_optimizer: bool = True,
        async_save: bool = False,
        verbose: int = 0,
        save_on_preemption: bool = False,
        save_graph: bool = False,
    ) -> None:
        self.verbose = _messages.check_verbose(verbose)
        self.save_graph = bool(save_graph)
        self.save_optimizer = bool(save_optimizer)
        self.async_save = bool(async_save)
        self.model = model
        self.directory = _fs.fspath(directory)
        self._dir = CheckpointDirectory(self.directory)
        self._planner = SavePlanner(
            model, as_policies(keep, KeepLast(3)), self.directory, self._dir.prefix
        )
        self._inline = SyncWriter()  # synchronous saves, and preemption saves of async ones
        self._writer = AsyncWriter() if async_save else self._inline
        # unchanged values (a frozen backbone) are shared with the previous checkpoint
        self._shared = _sharing.SharedData(self.directory) if _sharing.ENABLED else None
        self._snapshots = Snapshotter(model, self.save_optimizer, self._shared)
        self._record = SaveRecord(self._dir, model, self.save_optimizer, self.save_graph)
        self._lock = DirectoryLock(self.directory, self)
        self._closed = False
        self._strategy = _dist.multi_worker_strategy(model)
        self.is_chief = _dist.is_chief(self._strategy)
        self._saved_since_log: list[int] = []
        self.label: str | None = None  # verbose lines start with this ("Epoch 3"), or the step
        self.save_on_preemption = bool(save_on_preemption)
        owner = weakref.ref(self)  # the process-wide handler must not keep the model alive
        self._preemption = PreemptionWatch(lambda: (m := owner()) is not None and not m.closed)
        if self.is_chief:
            _fs.makedirs(self.directory, durable=True)
            self._lock.acquire()
            self._reload(cleanup=True)
        if self.save_on_preemption:
            self._preemption.start()

    # -- state ----------------------------------------------------------------------------------

    def _reload(self, cleanup: bool = False) -> None:
        found = self._dir.scan()
        if cleanup:
            self._dir.cleanup(found)
        if found.damaged:
            message = _messages.skipped_warning(
                self.directory, found.damaged, "they stay on disk, unused"
            )
            warnings.warn(message, stacklevel=3)
        self._planner.load(found)
        if cleanup:
            self._dir.sync_state(self._planner.kept, self._planner.start)

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
    def preempted(self) -> bool:
        """True once SIGTERM arrived (with `save_on_preemption=True`): save, then stop."""
        return self._preemption.preempted

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
        *,
        extra: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> CheckpointInfo | None:
        """Saves a checkpoint if a keep policy wants it.

        Args:
            step: The global step; default the optimizer's iteration count (or a counter).
            metrics: Metric values recorded with the checkpoint (`KeepBest` reads them).
            epoch: Epochs completed, recorded for `resume`.
            extra: More JSON fields for the checkpoint's record (`ckpt-N.json`); the
                callbacks store their position in `fit` there, for `resume=True`.
            replace: If the newest kept checkpoint has this step already, write this state
                in its place (the model `fit` returns can differ from the state saved at its
                last step: Keras swaps EMA weights in after it). Crash-safe: the old one is
                removed only once the new one's files are complete, just before they are
                renamed in.

        After SIGTERM (`preempted`) a save is made whatever the keep policies say, on this
        thread (after the write in flight), and kept until a newer checkpoint exists (a
        relaunch resumes from it); if `step` is saved already, that checkpoint is returned.

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
        forced = self._preemption.preempted  # the monitored metric may not be logged now
        if not forced:
            planner.check_monitors(values)
        if step is None:
            step = planner.auto_step()
        elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"`step` must be a non-negative integer. Received: step={step!r}")
        if forced and planner.kept and planner.kept[-1].step == step:
            return self._saved_already(planner.kept[-1])
        if self._strategy is None:
            plan = planner.plan(step, values, epoch, force=forced)
            replaced = None
            if plan is None and replace:
                plan = planner.replan(step, values, epoch)
                replaced = plan[2] if plan is not None else None
        else:
            plan = planner.follow_chief(
                self._strategy, self.is_chief, step, values, epoch, force=forced
            )
            replaced = None
        if plan is None:
            return None
        info, kept, doomed = plan
        if replaced:
            doomed = []
        planner.taking(info.step, preempted=forced)
        if not self.is_chief:
            planner.keep(kept)
            write_and_discard(self.model, self.save_optimizer)
            return info
        self._writer.wait()  # one write in flight, one snapshot in memory
        self._raise_background_error()
        background = self.async_save and not forced  # a preemption save is done on return
        snapshot = self._snapshots.take(copy=background)
        try:
            extra = {**(extra or {}), **self._record.fields(planner.offset or 0)}
        except Exception as exc:
            raise self._save_failed(info, exc) from exc
        if forced:
            extra["preempted"] = True  # a relaunch's planner keeps it while it is the newest
        lines = []  # printed once true: after the commit and the deletions
        if self.verbose:
            label = self.label or f"Step {info.step}"
            lines = _messages.save_lines(label, info, planner, doomed, forced, background)
        planner.keep(kept)
        self._saved_since_log.append(info.step)
        start = planner.start

        def job() -> None:
            try:
                self._dir.commit(
                    info,
                    snapshot.write,
                    extra,
                    kept=kept,
                    start=start,
                    doomed=doomed,
                    replaced=replaced or (),
                    flush_early=not background,
                    published=self._shared.committed if self._shared is not None else None,
                )
            except DeletionError as exc:
                raise CheckpointError(
                    f"Saved {info.path}, but deleting older checkpoints failed: "
                    f"{_describe(exc.__cause__ or exc)}. They are no longer in the state "
                    "file; the next save deletes them."
                ) from exc
            except Exception as exc:
                raise self._save_failed(info, exc) from exc
            for line in lines:  # printed once true: after the commit and the deletions
                say(line)

        try:
            (self._writer if background else self._inline).submit(job)
        except BaseException:  # a synchronous save failed: the directory is as it was
            self._reload()
            raise
        return info

    def _saved_already(self, info: CheckpointInfo) -> CheckpointInfo:
        """A preemption save of a step saved already: waits for its write, keeps it."""
        self.wait()
        if self.verbose and self._planner.pinned != info.step:  # else said when it was saved
            label = self.label or f"Step {info.step}"
            say(f"{label}: preempted (SIGTERM); {info.path} holds this step already")
        self._planner.pin(info.step)
        return info

    def _save_failed(self, info: CheckpointInfo, exc: BaseException) -> CheckpointError:
        return CheckpointError(
            f"Saving {info.path} failed: {_describe(exc)}. Earlier checkpoints in "
            f"{self.directory} are intact and nothing of this save remains; free space or "
            "fix the path, then save again."
        )

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
            "time": _clock.wall(),
            "saved": self._saved_since_log,
        }
        self._saved_since_log = []
        record.update(clean_metrics(logs))
        try:
            self._dir.append_history(record)
        except Exception as exc:
            self.wait()  # a background save failing for the same reason (a full disk) says more
            path = _fs.join(self.directory, HISTORY)
            raise CheckpointError(f"Writing {path} failed: {_describe(exc)}.") from exc

    # -- lifecycle ------------------------------------------------------------------------------

    def _raise_background_error(self) -> None:
        try:
            self._writer.check()
        except BaseException:
            self._reload()
            raise

    def prepare(self) -> None:
        """Maps the host buffers of asynchronous saves while training starts (callbacks).

        Optional: the first asynchronous save does it otherwise.
        """
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
            # a preempted run is relaunched: `.lock` keeps saying `started` (keras_ckpt.watch)
            self._lock.release(ended=not self._preemption.preempted)
            self._preemption.stop()  # the previous SIGTERM handler is back

    @property
    def closed(self) -> bool:
        """True once `close` ran: the directory is released and `save` raises."""
        return self._closed

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
        watch = getattr(self, "_preemption", None)
        if watch is not None:
            watch.stop()
