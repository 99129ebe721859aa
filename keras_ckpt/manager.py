"""`CheckpointManager`: keep policies + a writer + a directory. The engine behind the callbacks."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from keras_ckpt import _fs
from keras_ckpt._io import say
from keras_ckpt._snapshot import Snapshotter
from keras_ckpt.directory import CheckpointDirectory, DirectoryLock
from keras_ckpt.errors import CheckpointError, MonitorNotFoundError
from keras_ckpt.info import CheckpointInfo, clean_metrics
from keras_ckpt.policies import KeepAny, KeepBest, KeepLast, KeepPolicy, as_policies
from keras_ckpt.writer import AsyncWriter, SyncWriter, take_snapshot

logger = logging.getLogger(__name__)

__all__ = ["CheckpointManager"]


def _check_verbose(verbose: object) -> int:
    if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
        raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    return verbose


def _is_chief(model: object) -> bool:
    """False on the non-chief workers of a multi-worker strategy (they commit nothing)."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    extended = getattr(strategy, "extended", None)
    multi = getattr(extended, "_in_multi_worker_mode", lambda: False)()
    if resolver is None or not multi:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in cluster


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
        verbose: 1 prints one line per save and deletion.

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
        self.is_chief = _is_chief(model)
        self._kept: list[CheckpointInfo] = []
        self._newest_step = -1
        self._start = time.time()
        if self.is_chief:
            _fs.makedirs(self.directory)
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

    def _auto_step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is not None:
            base = int(iterations.numpy() if hasattr(iterations, "numpy") else iterations)
        else:
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
        doomed = [i for i in kept if i.step not in protected]
        kept = [i for i in kept if i.step in protected]
        self._newest_step = info.step
        if not self.is_chief:
            self._write_elsewhere()
            return info
        self._writer.wait()  # one write in flight, one snapshot in memory
        self._raise_background_error()
        snapshot = self._snapshots.take(copy=self.async_save)
        extra = self._record_extra()
        self._kept = kept
        start = self._start

        def job() -> None:
            try:
                self._dir.commit(info, snapshot.write, extra)
            except BaseException as exc:
                raise CheckpointError(
                    f"Saving {info.path} failed: {exc}. Earlier checkpoints in "
                    f"{self.directory} are intact; free space or fix the path, then save again."
                ) from exc
            self._dir.write_state(kept, start)
            self._dir.delete(doomed)
            if self.verbose:
                for gone in doomed:
                    say(f"keras_ckpt: deleted {gone.path}")

        if self.async_save:
            self._writer.submit(job)
        else:
            try:
                job()
            except BaseException:
                self._reload()
                raise
        if self.verbose:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
            mode = " (async)" if self.async_save else ""
            say(f"keras_ckpt: saved {info.path}{mode}" + (f" [{shown}]" if shown else ""))
        return info

    def _record_extra(self) -> dict[str, Any]:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        extra: dict[str, Any] = {
            "with_optimizer": bool(self.save_optimizer and optimizer is not None),
            "optimizer_step": None if iterations is None else int(iterations.numpy()),
            "step_offset": self._offset or 0,
        }
        if not self._model_json_written:
            self._model_json_written = True
            to_json = getattr(self.model, "to_json", None)
            try:
                if to_json is not None:
                    self._dir.write_model_json(to_json())
            except Exception as exc:  # subclassed models without get_config
                logger.info("model.json not written for %s: %s", self.directory, exc)
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
        """Appends one line of epoch logs to `history.jsonl` (chief only)."""
        if not self.is_chief:
            return
        record = {"epoch": int(epoch), "step": self._newest_step, "time": time.time()}
        record.update(clean_metrics(logs))
        self._dir.append_history(record)

    # -- lifecycle ------------------------------------------------------------------------------

    def _raise_background_error(self) -> None:
        try:
            self._writer.check()
        except BaseException:
            self._reload()
            raise

    def wait(self) -> None:
        """Waits for the write in flight; raises its error if it failed."""
        self._writer.wait()
        self._raise_background_error()

    def close(self) -> None:
        """Waits for the write in flight, then releases the directory."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
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
