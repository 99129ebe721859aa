"""Text reports for the `keras-ckpt` command line: the checkpoint table and a variable list.

Pure reading and formatting over `_layout` and `_reader`; `cli` only parses and
prints. `list_report` needs no TensorFlow (`keras-ckpt list` starts quietly); `inspect_report`
imports the reader, and with it TensorFlow, when called.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keras_ckpt import _fs
from keras_ckpt import _shared_record as _sharing
from keras_ckpt._layout import Located, checkpoint_files, scan
from keras_ckpt._layout import kept as list_checkpoints
from keras_ckpt.info import prefix_name, step_of
from keras_ckpt.policies import best_by, default_monitor, resolve_mode

if TYPE_CHECKING:
    from keras_ckpt._reader import CheckpointReader


def human_bytes(n: int) -> str:
    """`512 B`, `14.2 KB`, `3.1 MB` (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _when(saved_at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved_at)) if saved_at else "-"


def _number(value: float | None) -> str:
    """Four decimals (aligned columns) for ordinary values, else scientific notation."""
    if value is None:
        return "-"
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"


def checkpoint_bytes(prefix: str, names: Sequence[str] | None = None) -> int:
    """The bytes on disk of a checkpoint's `.index` and `.data-*` files."""
    directory, base = _fs.dirname(prefix), _fs.basename(prefix)
    names = _fs.list_dir(directory) if names is None else names
    return sum(_fs.size(_fs.join(directory, n)) for n in checkpoint_files(base, names))


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def list_report(directory: str, monitor: str | None = None, mode: str = "auto") -> list[str]:
    """The lines of `keras-ckpt list`: a heading, a table (best and latest marked), notes.

    Returns an empty list when the directory holds no checkpoint (nor a damaged one).

    Raises:
        ValueError: `monitor` was given and no checkpoint recorded it.
    """
    found = scan(directory)
    kept = list_checkpoints(directory, found)
    if not kept and not found.damaged:
        return []
    # Keras' order: loss, the other training metrics, then the same for validation.
    metrics = sorted(
        {k for i in kept for k in i.metrics},
        key=lambda n: (n.startswith("val_"), n.removeprefix("val_") != "loss", n),
    )
    if monitor is not None and kept and monitor not in metrics:
        raise ValueError(
            f"no checkpoint in {directory} recorded {monitor!r}; recorded metrics: "
            f"{', '.join(metrics) or 'none'}"
        )
    monitor = monitor or default_monitor(kept)
    best = best_by(monitor, kept, mode)
    files = sorted(found.names)
    records = {prefix_name(s): r for s, r in found.records.items()}
    sharing = any(_sharing.shared_files(r) for r in records.values())
    rows = [["step", "epoch", *metrics, "size", *(["own"] * sharing), "saved", ""]]
    for info in kept:
        marks = []
        if best is not None and info.step == best.step:
            marks.append("best")
        if info is kept[-1]:
            marks.append("latest")
        rows.append(
            [
                str(info.step),
                "-" if info.epoch is None else str(info.epoch),
                *(_number(info.metrics.get(m)) for m in metrics),
                human_bytes(checkpoint_bytes(info.path, files)),
                *([human_bytes(_sharing.own_bytes(records.get(info.name, {})))] * sharing),
                _when(info.saved_at),
                ", ".join(marks),
            ]
        )
    how = f"best by {monitor} ({resolve_mode(monitor, mode)})" if best else "no metric to rank"
    lines = [f"{directory}: {len(kept)} checkpoint{'s' * (len(kept) != 1)}, {how}"]
    if kept:
        lines += _table(rows, right={0, 1, *range(2, 3 + len(metrics) + sharing)})
    if sharing:  # "own": bytes no other checkpoint shares
        lines.append(
            f"disk used: {human_bytes(_sharing.disk_bytes(records))} (unchanged data is "
            f"shared between checkpoints and counted once; `own` is what each one adds)"
        )
    for name, why in sorted(found.damaged.items()):
        lines.append(f"damaged, not listed: {name}: {why} (see `keras-ckpt verify {directory}`)")
    return lines


@dataclass
class _Variable:
    name: str
    shape: tuple[int, ...]
    dtype: str
    count: int
    nbytes: int


def _groups(reader: CheckpointReader) -> dict[str, list[_Variable]]:
    """Variables by owner (`model`, `optimizer`, `other`), in object-graph order."""
    keys = reader.variable_keys()

    def variable(key: str, name: str) -> _Variable:
        shape = tuple(reader.shapes[key])
        count = 1
        for dim in shape:
            count *= dim
        return _Variable(name, shape, reader.dtypes[key].name, count, reader.nbytes(key))

    graph = reader.graph
    if graph is None:  # a name-based (TF1) checkpoint: keys are the names
        return {"other": [variable(k, k) for k in keys]}
    from keras_ckpt._reader import child_of, stored_nodes  # TensorFlow: only when called

    named: dict[str, str] = {}
    order: list[str] = []
    owner: dict[str, str] = {}

    def take(start: int, skip: str | None, group: str) -> None:
        for node in stored_nodes(graph, start, skip=skip):
            attr = node.value
            if attr is not None and attr.checkpoint_key not in owner:
                owner[attr.checkpoint_key] = group
                named[attr.checkpoint_key] = attr.full_name or attr.checkpoint_key
                order.append(attr.checkpoint_key)

    model = child_of(graph, "model")
    if model is not None:
        take(model, "optimizer", "model")
        optimizer = child_of(graph, "optimizer", model)
        if optimizer is not None:
            take(optimizer, None, "optimizer")
    take(0, None, "other")
    groups: dict[str, list[_Variable]] = {"model": [], "optimizer": [], "other": []}
    for key in order:
        groups[owner[key]].append(variable(key, named[key]))
    for key in keys:
        if key not in owner:
            groups["other"].append(variable(key, key))
    return groups


def _shared_note(prefix: str, record: dict[str, Any] | None) -> str:
    """`, of which 3.1 MB shared with ckpt-4, ckpt-8` for a checkpoint holding shared data.

    `record`: the checkpoint's, if the caller has it. The directory is scanned (for the
    other holders) only when the checkpoint holds shared data.
    """
    name = _fs.basename(prefix)
    mine = _sharing.shared_files(record or {})
    if not mine:
        return ""
    found = scan(_fs.dirname(prefix))
    holders = _sharing.sharers({prefix_name(s): r for s, r in found.records.items()})
    shared = sum(int(record["files"][n]) for n in mine)
    others = sorted(
        {n for e in mine.values() for n in holders.get(str(e["id"]), [])} - {name},
        key=step_of,
    )
    return f", of which {human_bytes(shared)} shared with " + (", ".join(others) or "no other")


def inspect_report(found: Located) -> list[str]:
    """The lines of `keras-ckpt inspect`: the checkpoint, its metrics and every variable.

    `found`: the checkpoint, resolved once (`_layout.locate`); its record is not read again.
    """
    from keras_ckpt._reader import CheckpointReader  # TensorFlow: only this report needs it

    prefix, info, record = found.prefix, found.info, found.record
    reader = CheckpointReader(prefix, record)  # it checked the files' sizes against the record
    files = (record or {}).get("files")
    size = sum(map(int, files.values())) if isinstance(files, dict) else checkpoint_bytes(prefix)
    groups = _groups(reader)
    epoch = "" if info.epoch is None else f", epoch {info.epoch}"
    lines = [
        f"{prefix}: step {info.step}{epoch}, saved {_when(info.saved_at)}, "
        f"{human_bytes(size)} on disk{_shared_note(prefix, record)}"
    ]
    if info.metrics:
        lines.append("metrics: " + "  ".join(f"{k}={_number(v)}" for k, v in info.metrics.items()))
    rows = [["variable", "shape", "dtype", "bytes"]]
    summary = []
    for group, variables in groups.items():
        if not variables:
            continue
        rows.append([f"[{group}]", "", "", ""])
        for v in variables:
            rows.append([v.name, str(v.shape), v.dtype, f"{v.nbytes:,}"])
        total = sum(v.nbytes for v in variables)
        count = sum(v.count for v in variables)
        summary.append(
            f"{group}: {len(variables)} variables, {count:,} values, {human_bytes(total)}"
        )
    lines.append("")
    lines += _table(rows, right={3})
    everything = [v for vs in groups.values() for v in vs]
    lines.append("")
    lines.append(
        "; ".join(summary)
        + f"; total {len(everything)} variables, {human_bytes(sum(v.nbytes for v in everything))}"
    )
    return lines
