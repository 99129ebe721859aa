"""`CheckpointInfo` and its JSON sidecar (`ckpt-N.json`). No I/O here."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

FORMAT = "keras_ckpt.checkpoint/1"
_PREFIX_RE = re.compile(r"^ckpt-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One kept checkpoint.

    Attributes:
        path: The checkpoint's path prefix, e.g. `"runs/best/ckpt-1200"`; pass it to
            `restore` or `tf.train.Checkpoint(model=m).read`.
        step: The global training step (the optimizer's iteration count when saved, plus the
            directory's offset for runs that did not resume).
        epoch: Epochs completed when saved (`initial_epoch` for a resumed `fit`), or None.
        metrics: The logged metrics at that point, e.g. `{"loss": 0.1, "val_loss": 0.2}`.
        saved_at: Wall-clock time of the save (seconds since the epoch).
    """

    path: str
    step: int
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    saved_at: float = 0.0

    @property
    def name(self) -> str:
        """The prefix's last component, `ckpt-N`."""
        return prefix_name(self.step)


def prefix_name(step: int) -> str:
    return f"ckpt-{step}"


def step_of(name: str) -> int | None:
    """The step of a prefix name `ckpt-N`, or None if `name` is not one."""
    match = _PREFIX_RE.match(name)
    return int(match.group(1)) if match else None


def clean_metrics(logs: dict[str, Any] | None) -> dict[str, float]:
    """Keeps the scalar numbers of `logs` as Python floats."""
    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = number
    return out


def _encode_float(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # "nan", "inf", "-inf"


def _decode_float(value: Any) -> float:
    return float(value)


def to_json(info: CheckpointInfo, extra: dict[str, Any] | None = None) -> str:
    """Serialises `info` (and private `extra` fields) for `ckpt-N.json`; paths are not stored."""
    record: dict[str, Any] = {
        "format": FORMAT,
        "step": info.step,
        "epoch": info.epoch,
        "metrics": {k: _encode_float(v) for k, v in info.metrics.items()},
        "saved_at": info.saved_at,
    }
    record.update(extra or {})
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def from_json(text: str, path: str) -> tuple[CheckpointInfo, dict[str, Any]]:
    """Parses a sidecar; returns the info and the whole record.

    Raises:
        ValueError: `text` is not a keras_ckpt sidecar.
    """
    record = json.loads(text)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("not a keras_ckpt checkpoint record")
    epoch = record.get("epoch")
    info = CheckpointInfo(
        path=path,
        step=int(record["step"]),
        epoch=None if epoch is None else int(epoch),
        metrics={str(k): _decode_float(v) for k, v in dict(record.get("metrics", {})).items()},
        saved_at=float(record.get("saved_at", 0.0)),
    )
    return info, record
