"""A checkpoint's variables matched to a model's, and the report of what does not match.

The one home of the lines a mismatch is told with (missing in the checkpoint, unexpected in
it, shape mismatch) and of the strict/lenient choice: strict raises
`CheckpointMismatchError` before anything changed, lenient warns and restores what matches.
Used by `_restore` (a live Keras model) and `_graph` (an imported SavedModel).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from keras_ckpt._reader import CheckpointReader
from keras_ckpt.errors import CheckpointMismatchError


@dataclass
class Match:
    """Variables paired with checkpoint keys, and the lines of what did not pair."""

    pairs: list[tuple[Any, str]] = field(default_factory=list)  # (live variable, key)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    def add(self, variable: Any, key: str, reader: CheckpointReader, name: str) -> None:
        """Pairs `variable` with `key` if shape and dtype agree, else notes a shape line."""
        saved_shape, saved_dtype = reader.shapes.get(key), reader.dtypes.get(key)
        shape, dtype = tuple(variable.shape), tf.as_dtype(variable.dtype)
        if saved_shape is None or tuple(saved_shape) != shape or saved_dtype != dtype:
            self.shapes.append(
                f"{name}: checkpoint {tuple(saved_shape or ())} "
                f"{getattr(saved_dtype, 'name', '?')}, model {shape} {dtype.name}"
            )
            return
        self.pairs.append((variable, key))

    def miss(self, variable: Any, name: str) -> None:
        """Notes `variable` (called `name`) as missing in the checkpoint."""
        self.missing.append(f"{name} {tuple(variable.shape)}")

    @property
    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append("missing in the checkpoint: " + ", ".join(self.missing))
        if self.unexpected:
            out.append("unexpected in the checkpoint: " + ", ".join(self.unexpected))
        if self.shapes:
            out.append("shape mismatch: " + "; ".join(self.shapes))
        return out

    def report(
        self, prefix: str, *, strict: bool, against: str, fix: str, stacklevel: int
    ) -> None:
        """Raises (strict) or warns (else) if anything did not match; nothing if all did.

        Args:
            prefix: The checkpoint.
            strict: Raise `CheckpointMismatchError` instead of warning.
            against: What the checkpoint was matched to (`"the model"`).
            fix: The first remedy the error offers (before "or pass strict=False").
            stacklevel: For the warning, counted from the caller of this method.
        """
        problems = self.problems
        if problems and strict:
            raise CheckpointMismatchError(
                f"{prefix} does not match {against}; nothing was restored.\n  "
                + "\n  ".join(problems)
                + f"\n{fix}, or pass strict=False to restore only the variables whose path "
                "and shape match."
            )
        if problems:
            warnings.warn(
                f"restore(strict=False) from {prefix} skipped: " + "; ".join(problems),
                stacklevel=stacklevel + 1,
            )


def assign(reader: CheckpointReader, pairs: list[tuple[Any, str]]) -> None:
    """Reads every paired value (one `RestoreV2`), then assigns them: none if a read fails."""
    values = reader.read([key for _, key in pairs])
    for (variable, _), value in zip(pairs, values, strict=True):
        variable.assign(value)
