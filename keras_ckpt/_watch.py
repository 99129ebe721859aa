"""`watch`: a sidecar evaluator that scores each checkpoint of a running training job.

The watcher is a reader of the training directory only: it lists it (`_layout.kept`, the
records `_layout.scan` reads), reads the run marker of `.lock` (`_lock.run_state`) and
restores checkpoints, all through the file layer (`tf.io.gfile`). Everything it writes goes
to its own output directory::

    <directory>-eval/
      evaluations.jsonl     one row per evaluated checkpoint (as `evaluate_checkpoints`)
      best/                 with export_best: a SavedModel of the best row's checkpoint

The model is built once and each checkpoint restored into it, as `evaluate_checkpoints` does.
With `export_best` the weights of the best row are kept in memory when it is evaluated, so
the export still works after the training run rotated that checkpoint away. Evaluations come
first: the export runs when no checkpoint waits to be evaluated (a second or so for a small
model, during which a fast rotation may delete checkpoints the watcher has not seen).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from keras_ckpt import _evaluate, _export, _fs, _graph, _layout
from keras_ckpt._lock import run_state
from keras_ckpt._messages import check_verbose, say
from keras_ckpt._restore import restore_into
from keras_ckpt.errors import CheckpointCorruptError, CheckpointError, MonitorNotFoundError
from keras_ckpt.info import CheckpointInfo, prefix_name
from keras_ckpt.policies import check_choice, score

logger = logging.getLogger(__name__)

__all__ = ["watch"]

EVALUATIONS = "evaluations.jsonl"
BEST = "best"
_PROGRESS_EVERY = 30.0  # seconds of silence before a "waiting" line
_LISTING_TRIES = 5  # a listing failing this often in a row is not a race with a deletion
_WAITING = {"started": "run in progress", "absent": "no run yet"}
_READ_ERRORS = (CheckpointError, tf.errors.OpError, OSError)


def watch(
    directory: str | os.PathLike[str],
    data: Any,
    *,
    model: Any = None,
    monitor: str = "loss",
    mode: str = "auto",
    output: str | os.PathLike[str] | None = None,
    export_best: bool = False,
    batch_size: int | None = None,
    poll_seconds: float = 10.0,
    timeout: float | None = None,
    verbose: int = 1,
) -> list[dict[str, Any]]:
    """Evaluates every checkpoint of `directory` as a training run commits it.

    Run it in another process (or on another machine reading the same bucket) while training
    writes `directory` with a keras_ckpt callback or `CheckpointManager`: training never
    pauses for evaluation, and a checkpoint the run rotates away later is still scored. Each
    new checkpoint is restored into one model (built once: `model`, else `model.json`) and
    evaluated on `data`; its row is appended to `OUT/evaluations.jsonl` at once. Nothing in
    `directory` is ever written, locked or deleted.

    It waits for a directory that does not exist yet or holds no checkpoint. A checkpoint
    rotated away before or while it is read is skipped with one line. A restarted watcher
    skips the steps already in `OUT/evaluations.jsonl`. It returns when the run has ended
    (its callback or manager closed the directory, recorded in `.lock`; a killed run is not
    taken for an ended one, and a new run in the directory is watched again) and no
    checkpoint is left to evaluate, or after `timeout` seconds without a new checkpoint, or
    on Ctrl-C (`KeyboardInterrupt`), keeping what it wrote. Directories written by an older
    keras_ckpt record no end: there only `timeout` (or Ctrl-C) ends it.

    Args:
        directory: The training run's checkpoint directory (local or any `tf.io.gfile` URL).
        data: `(x, y)`, `(x, y, sample_weight)` or a `tf.data.Dataset` of batches.
        model: A compiled model of the saved architecture (its loss and metrics are the
            columns). Its weights are put back when `watch` returns. Default: rebuilt from
            `model.json`, compiled as recorded there.
        monitor: The column that ranks the rows (for `export_best` and the verbose lines).
        mode: `"min"`, `"max"` or `"auto"` (as `BestCheckpoint`). NaN is never best.
        output: The output directory (default `<directory>-eval`); not inside `directory`.
        export_best: Export the best row's checkpoint as a SavedModel to `OUT/best/`,
            replaced when a better one arrives (written under a temporary name, then
            renamed in: readers see the old or the new model, never a mix).
        batch_size: For `(x, y)` data (Keras' default: 32); None for a dataset.
        poll_seconds: Seconds between two looks at `directory` while nothing is new.
        timeout: Return after this many seconds without a new checkpoint (None: wait until
            the run ends).
        verbose: 0 silent; 1 one line per evaluation (Keras style) and a line while waiting.

    Returns:
        The rows this call evaluated, in order: `{"path", "step", "epoch", "loss", ...}`.

    Raises:
        ValueError: a bad argument, or the model is not compiled.
        MonitorNotFoundError: `monitor` is not among the evaluated metrics (lists them).
        CheckpointNotFoundError: no `model` given and the directory has no `model.json`.
        CheckpointMismatchError: a checkpoint does not fit `model`.

    Example:
        >>> rows = watch("runs/last", (x_val, y_val), export_best=True, timeout=600)
        >>> rows[-1]["step"], min(r["loss"] for r in rows)
    """
    return _watch(
        directory,
        data,
        model=model,
        monitor=monitor,
        mode=mode,
        output=output,
        export_best=export_best,
        batch_size=batch_size,
        poll_seconds=poll_seconds,
        timeout=timeout,
        verbose=verbose,
    )


def _watch(
    directory: str | os.PathLike[str],
    data: Any,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    **options: Any,
) -> list[dict[str, Any]]:
    """`watch` with the clock and the sleep passed in (tests pass a simulated pair)."""
    watcher = _Watcher(_fs.fspath(directory), data, **options)
    return watcher.run(clock, sleep)


def _check_number(name: str, value: object, allow_none: bool, positive: bool) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (positive and value == 0):
        what = "a positive number" if positive else "a non-negative number"
        raise ValueError(
            f"`{name}` must be {what}{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r}"
        )


def _format(value: Any) -> str:
    """A metric value as Keras' progress bar prints it."""
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


class _Watcher:
    """The state of one `watch` call: what is done, the model, the best row."""

    def __init__(
        self,
        directory: str,
        data: Any,
        *,
        model: Any,
        monitor: str,
        mode: str,
        output: str | os.PathLike[str] | None,
        export_best: bool,
        batch_size: int | None,
        poll_seconds: float,
        timeout: float | None,
        verbose: int,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be a metric name. Received: monitor={monitor!r}")
        check_choice("mode", mode, ("auto", "min", "max"))
        _check_number("poll_seconds", poll_seconds, allow_none=False, positive=True)
        _check_number("timeout", timeout, allow_none=True, positive=False)
        check_verbose(verbose)
        self.directory = directory
        self.out = _fs.fspath(output) if output is not None else directory + "-eval"
        inside = self.out == directory or self.out.startswith(directory.rstrip("/") + "/")
        if inside or (_fs.is_local(directory) and _inside(self.out, directory)):
            raise ValueError(
                f"`output` must be outside the watched directory (the watcher never writes "
                f"there). Received: output={self.out!r}"
            )
        self.data = _evaluate.prepare_data(data, batch_size)  # bad data fails here
        self.model = model
        self.given = model is not None
        self.original: list[Any] | None = None
        self.monitor = monitor
        self.mode = mode
        self.export_best = bool(export_best)
        self.poll_seconds = float(poll_seconds)
        self.timeout = timeout
        self.verbose = verbose
        self.log = _fs.join(self.out, EVALUATIONS)
        self.rows: list[dict[str, Any]] = []
        self.done: set[int] = set()
        self.skipped: set[int] = set()
        self.best: tuple[float, dict[str, Any]] | None = None  # (score, row)
        self.best_weights: list[Any] | None = None  # of `best`, while its export is due
        self.records: dict[int, dict[str, Any]] = {}  # step -> record, of the latest listing
        text = _fs.read_text(self.log) if _fs.exists(self.log) else ""
        self.torn = bool(text) and not text.endswith("\n")  # a watcher killed mid-line
        for row in _read_rows(text):
            self.done.add(row["step"])
            self._rank(row)
        best_file = _fs.join(self.out, BEST, "saved_model.pb")
        self.export_due = self.export_best and self.best is not None and not _fs.exists(best_file)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, clock: Callable[[], float], sleep: Callable[[float], None]) -> list[Any]:
        start = last_new = clock()
        last_said: float | None = None  # when a line was last printed (None: never)
        known: set[int] = set()  # every step seen kept in the directory
        failures = 0  # listings in a row that failed
        try:
            while True:
                state, _ = run_state(self.directory)  # read first: "ended" covers the listing
                try:
                    found = _layout.scan(self.directory) if _fs.isdir(self.directory) else None
                    kept = _layout.kept(self.directory, found) if found else []
                    self.records = found.records if found else {}  # handed on to restore
                    failures = 0
                except (tf.errors.OpError, OSError) as exc:  # a file went while listed
                    failures += 1
                    if failures >= _LISTING_TRIES:  # not a race: unreadable
                        raise
                    logger.debug("watch: listing %s again (%s)", self.directory, exc)
                    sleep(min(self.poll_seconds, 0.05))
                    continue
                steps = {i.step for i in kept}
                if steps - known:
                    last_new = clock()
                    known |= steps
                for step in sorted(known - steps - self.done - self.skipped):
                    self._skip(step, "was rotated away before it was evaluated")
                pending = [i for i in kept if i.step not in self.done | self.skipped]
                if pending:
                    self._evaluate(pending[0])
                    last_said = clock()
                    continue
                self._export()
                if state == "ended" or (state == "absent" and kept):
                    self._say(f"the run in {self.directory} ended; {self._summary()}")
                    break
                idle = clock() - last_new
                if self.timeout is not None and idle >= self.timeout:
                    self._say(f"no new checkpoint for {idle:.0f} s (timeout); {self._summary()}")
                    break
                if last_said is None or clock() - last_said >= _PROGRESS_EVERY:
                    last_said = clock()
                    what = _WAITING.get(state, "no end recorded")
                    self._say(
                        f"waiting for checkpoints in {self.directory} ({what}; "
                        f"{len(self.rows)} evaluated, {clock() - start:.0f} s)..."
                    )
                sleep(self.poll_seconds)
        except KeyboardInterrupt:
            self._say(f"interrupted; {self._summary()}")
        finally:
            if self.given and self.original is not None:
                _graph.set_weights(self.model, self.original)
        return self.rows

    def _summary(self) -> str:
        return f"{len(self.rows)} checkpoint(s) evaluated, rows in {self.log}"

    def _say(self, text: str) -> None:
        if self.verbose:
            say(f"Watch: {text}")
        else:
            logger.info("watch: %s", text)

    def _skip(self, step: int, why: str) -> None:
        self.skipped.add(step)
        self._say(f"{prefix_name(step)} {why}: skipped.")

    # -- one checkpoint -------------------------------------------------------------------------

    def _build(self) -> Any:
        if self.given and self.original is None:
            self.original = _graph.get_weights(self.model)
        self.model = _evaluate.compiled_model(self.directory, self.model, "watch")
        return self.model

    def _evaluate(self, info: CheckpointInfo) -> None:
        began = time.monotonic()
        model = self._build()
        try:  # with the record the latest listing read (no re-read)
            row = _evaluate.evaluate_one(model, info, self.data, 5, self.records.get(info.step))
        except _READ_ERRORS as exc:
            if not _fs.exists(info.path + ".index"):
                self._skip(info.step, "was rotated away while it was read")
                return
            if not isinstance(exc, CheckpointCorruptError):
                raise
            warnings.warn(f"watch skipped {info.path}, which is damaged ({exc}).", stacklevel=5)
            self.skipped.add(info.step)
            return
        if self.monitor not in row:
            metrics = ", ".join(k for k in row if k not in ("path", "step", "epoch"))
            raise MonitorNotFoundError(
                f"watch: `monitor={self.monitor!r}` is not among the metrics evaluated on "
                f"`data` ({metrics}). Pass one of them as `monitor`."
            )
        _fs.makedirs(self.out)
        line = json.dumps(row) + "\n"
        _fs.append_text(self.log, "\n" + line if self.torn else line)
        self.torn = False
        self.done.add(info.step)
        self.rows.append(row)
        better = self._rank(row)
        if better and self.export_best:
            self.best_weights = _graph.get_weights(model)
            self.export_due = True
        if self.verbose:
            values = " - ".join(
                f"{k}: {_format(v)}" for k, v in row.items() if k not in ("path", "step", "epoch")
            )
            mark = f" (best {self.monitor} so far)" if better else ""
            seconds = time.monotonic() - began
            say(f"Watch: {info.name} - {seconds:.1f}s - {values}{mark}")

    def _rank(self, row: dict[str, Any]) -> bool:
        """Makes `row` the best if it beats it (ties: the newer one); True if it did."""
        rank = score(row.get(self.monitor), self.monitor, self.mode)
        if math.isnan(rank) or (self.best is not None and rank > self.best[0]):
            return False
        self.best = (rank, row)
        return True

    # -- the best row's SavedModel --------------------------------------------------------------

    def _export(self) -> None:
        """Exports the best row to `OUT/best` if it changed (only with `export_best`)."""
        if not self.export_due or self.best is None:
            return
        self.export_due = False
        target = _fs.join(self.out, BEST)
        step = self.best[1]["step"]
        if self.best_weights is None:  # a restarted watcher: the best row of the file
            path = self.best[1]["path"]
            try:
                record = self.records.get(step)
                restore_into(
                    self._build(), path, strict=True, optimizer=False, stacklevel=4, record=record
                )
            except _READ_ERRORS:
                if _fs.exists(path + ".index"):
                    raise
                self._say(f"{path} is gone: {target} waits for a better checkpoint.")
                return
        else:
            _graph.set_weights(self.model, self.best_weights)
            self.best_weights = None
        tf_logger = tf.get_logger()
        level = tf_logger.level
        tf_logger.setLevel(logging.ERROR)  # no "Assets written to" lines per export
        try:
            _export.replace_saved_model(self.model, target)
        finally:
            tf_logger.setLevel(level)
        self._say(f"exported {prefix_name(step)} to {target}")


def _inside(path: str, directory: str) -> bool:
    """True if local `path` is `directory` or inside it."""
    a, b = os.path.realpath(path), os.path.realpath(directory)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def _read_rows(text: str) -> list[dict[str, Any]]:
    """The rows of an earlier watcher's `evaluations.jsonl` (a torn line is ignored)."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows
