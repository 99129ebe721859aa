"""The `checkpoint` state file, as `tf.train.CheckpointManager` writes and reads it.

Relative paths, newest last; `tf.train.latest_checkpoint` and `tf.train.CheckpointManager`
read our directories through it. The codec only (no I/O): `directory` writes the file,
`_layout` and `_verify` read it.
"""

from __future__ import annotations

import re

STATE = "checkpoint"
_STATE_LINE_RE = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_state(names: list[str], timestamps: list[float], start: float) -> str:
    """A `checkpoint` file as `tf.train.CheckpointManager` writes it (relative paths)."""
    lines = []
    if names:
        lines.append(f"model_checkpoint_path: {_quote(names[-1])}")
    lines += [f"all_model_checkpoint_paths: {_quote(n)}" for n in names]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in timestamps]
    lines.append(f"last_preserved_timestamp: {start!r}")
    return "\n".join(lines) + "\n"


def parse_state(text: str) -> dict[str, list[str]]:
    """Parses a `checkpoint` file into field -> values.

    Raises:
        ValueError: a line is not of the `key: value` form.
    """
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _STATE_LINE_RE.match(line)
        if not match:
            raise ValueError(f"unreadable line {line[:60]!r}")
        key, value = match.groups()
        if value.startswith('"'):
            if not value.endswith('"') or len(value) < 2:
                raise ValueError(f"unterminated string in line {line[:60]!r}")
            value = value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        out.setdefault(key, []).append(value)
    return out
