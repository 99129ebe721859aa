"""Plots of a run's metric history (`history.jsonl`) with its checkpoints marked.

Needs Matplotlib (`pip install keras_ckpt[plot]`), imported only when something is drawn.

- `plot_history(directory, ax=ax)` draws on one Matplotlib axis (notebooks, your figures).
- `history_figure(directory)` returns a figure with one such axis per metric family
  (`loss`/`val_loss`, `accuracy`/`val_accuracy`, ...): what `keras-ckpt plot` saves.

On each axis: one curve per metric against the training step, the kept checkpoints as rings
on the curves (at the values recorded when they were saved), the best one as a star, and a
rug of ticks along the bottom: black for kept checkpoints, grey for saves since deleted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keras_ckpt import _fs
from keras_ckpt._layout import read_history
from keras_ckpt.errors import CheckpointNotFoundError
from keras_ckpt.info import CheckpointInfo
from keras_ckpt.loader import list_checkpoints
from keras_ckpt.policies import best_by, default_monitor

__all__ = ["read_history", "plot_history", "history_figure", "metric_families"]

_NOT_METRICS = {"epoch", "step", "time", "saved"}


def _metric_names(history: Sequence[dict[str, Any]], kept: Sequence[CheckpointInfo]) -> list[str]:
    """Metrics of the epoch lines and of the checkpoints (`val_*` of a callback's own
    `validation_data`, or a custom loop's `save(metrics=...)`, are only in the latter)."""
    names = {k for r in history for k, v in r.items() if k not in _NOT_METRICS and _is_num(v)}
    return sorted(names | {k for i in kept for k in i.metrics})


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_families(names: Sequence[str]) -> list[list[str]]:
    """Groups metric names by what they measure: `[["loss", "val_loss"], ["accuracy", ...]]`.

    `loss` comes first, then the others alphabetically; within a family, training first.
    """
    groups: dict[str, list[str]] = {}
    for name in sorted(names, key=lambda n: (n.startswith("val_"), n)):
        groups.setdefault(name.removeprefix("val_"), []).append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k != "loss", k))]


@dataclass
class _Run:
    directory: str
    history: list[dict[str, Any]]
    kept: list[CheckpointInfo]
    saved: list[int]  # every step saved, as history.jsonl recorded it
    names: list[str]


def _load(directory: str | os.PathLike[str]) -> _Run:
    path = _fs.fspath(directory)
    if not _fs.isdir(path):
        raise CheckpointNotFoundError(f"No such checkpoint directory: {path}")
    history = read_history(path)
    kept = list_checkpoints(path)
    if not history and not kept:
        raise CheckpointNotFoundError(
            f"{path} has no history.jsonl and no checkpoints: nothing to plot. Point it at "
            "a directory a keras_ckpt callback wrote during model.fit."
        )
    saved = sorted({int(s) for r in history for s in r.get("saved", [])} | {i.step for i in kept})
    return _Run(path, history, kept, saved, _metric_names(history, kept))


def _check_metrics(run: _Run, metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in run.names]
    if unknown:
        available = ", ".join(run.names) or "none"
        raise ValueError(
            f"{', '.join(map(repr, unknown))} not logged in {run.directory}; "
            f"available metrics: {available}"
        )


def _draw(ax: Any, run: _Run, metrics: Sequence[str], monitor: str | None, mode: str) -> None:
    kept_steps = {i.step for i in run.kept}
    for name in metrics:
        points = [(r["step"], r[name]) for r in run.history if _is_num(r.get(name))]
        if not points:  # not logged per epoch: the kept checkpoints are the series
            points = [(i.step, i.metrics[name]) for i in run.kept if name in i.metrics]
        (curve,) = ax.plot(*zip(*points, strict=True), marker=".", label=name, gid=name)
        ringed = [(i.step, i.metrics[name]) for i in run.kept if _finite(i.metrics.get(name))]
        if ringed:
            ax.plot(
                *zip(*ringed, strict=True),
                linestyle="",
                marker="o",
                markersize=9,
                markerfacecolor="none",
                markeredgecolor=curve.get_color(),
                label="_nolegend_",
                gid=f"kept:{name}",
            )
    rug = ax.get_xaxis_transform()  # x in steps, y in axis fractions
    gone = [s for s in run.saved if s not in kept_steps]
    if gone:
        ax.plot(
            gone,
            [0.02] * len(gone),
            transform=rug,
            linestyle="",
            marker="|",
            markersize=12,
            color="0.6",
            label="saved, since deleted",
            gid="deleted",
        )
    if run.kept:
        ax.plot(
            sorted(kept_steps),
            [0.02] * len(kept_steps),
            transform=rug,
            linestyle="",
            marker="|",
            markersize=12,
            markeredgewidth=2,
            color="black",
            label=f"kept checkpoint ({len(run.kept)})",
            gid="kept",
        )
    monitor = monitor or default_monitor(run.kept)
    best = best_by(monitor, run.kept, mode)
    if best is not None and monitor in metrics:
        ax.plot(
            [best.step],
            [best.metrics[monitor]],
            linestyle="",
            marker="*",
            markersize=16,
            color="gold",
            markeredgecolor="black",
            label=f"best by {monitor} (step {best.step})",
            gid="best",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(metrics[0].removeprefix("val_") if metrics else "")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _finite(value: object) -> bool:
    return _is_num(value) and math.isfinite(value)  # type: ignore[arg-type]


def plot_history(
    directory: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
    *,
    ax: Any = None,
    monitor: str | None = None,
    mode: str = "auto",
) -> Any:
    """Draws a run's metric history on one Matplotlib axis, checkpoints marked.

    Args:
        directory: A checkpoint directory written by a keras_ckpt callback.
        metrics: The metrics to draw; default the `loss` family (`loss`, `val_loss`), or the
            first family logged.
        ax: The axis to draw on; default a new figure's (`matplotlib.pyplot.subplots()`).
        monitor: The metric that picks the best checkpoint (starred); default `val_loss`
            (or `loss`) when the checkpoints recorded it.
        mode: `"min"`, `"max"` or `"auto"` for `monitor`, as in `BestCheckpoint`.

    Returns:
        The axis.

    Raises:
        CheckpointNotFoundError: no such directory, or nothing in it to plot.
        ValueError: a name in `metrics` was not logged (the message lists those that were).

    Example:
        >>> fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
        >>> plot_history("runs/best", ["loss", "val_loss"], ax=a)
        >>> plot_history("runs/best", ["accuracy", "val_accuracy"], ax=b)
    """
    run = _load(directory)
    if metrics is None:
        families = metric_families(run.names)
        wanted = monitor.removeprefix("val_") if monitor else "loss"
        chosen = [f for f in families if f[0].removeprefix("val_") == wanted] or families[:1]
        metrics = chosen[0] if chosen else []
    metrics = list(metrics)
    _check_metrics(run, metrics)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 3.5))
    _draw(ax, run, metrics, monitor, mode)
    ax.set_title(_fs.basename(run.directory) or run.directory)
    return ax


def history_figure(
    directory: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
    *,
    monitor: str | None = None,
    mode: str = "auto",
) -> Any:
    """A Matplotlib figure of a run: one `plot_history` axis per metric family.

    Args:
        directory: A checkpoint directory written by a keras_ckpt callback.
        metrics: The metrics to draw (grouped into families); default all that were logged.
        monitor: The metric that picks the best checkpoint; default `val_loss` or `loss`.
        mode: `"min"`, `"max"` or `"auto"` for `monitor`.

    Returns:
        A `matplotlib.figure.Figure`, not attached to pyplot (nothing accumulates in
        scripts): `fig.savefig("run.png")`; in a notebook with `%matplotlib inline` it is
        shown when it is a cell's last value.

    Raises:
        CheckpointNotFoundError: no such directory, or nothing in it to plot.
        ValueError: a name in `metrics` was not logged.
    """
    from matplotlib.figure import Figure

    run = _load(directory)
    names = list(metrics) if metrics is not None else run.names
    _check_metrics(run, names)
    families = metric_families(names)
    fig = Figure(figsize=(8, 1.0 + 3.0 * max(1, len(families))), layout="constrained")
    axes = fig.subplots(max(1, len(families)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, family in zip(axes, families or [[]], strict=True):
        _draw(ax, run, family, monitor, mode)
        ax.label_outer()
    fig.suptitle(f"{run.directory}: {len(run.kept)} kept of {len(run.saved)} saved")
    return fig
