"""Matching a checkpoint's variables to a live model through the stored object graph.

Variables are paired with the model's by walking the checkpoint's object graph and the model's
trackable children side by side (never by guessing key names). Every shape and dtype is
compared and every value read before the first assignment, so a failed restore leaves the
model (and its optimizer) as it was.
"""

from __future__ import annotations

import warnings
from typing import Any

import tensorflow as tf

from keras_ckpt import _assets, _dist, _fs, _graph, _layout
from keras_ckpt._layout import scan
from keras_ckpt._messages import skipped_warning
from keras_ckpt._mismatch import Match, assign
from keras_ckpt._reader import CheckpointReader, StoredNode, child_of, describe, stored_nodes
from keras_ckpt._untracked import put_back, read_recorded, saveable_variables
from keras_ckpt.errors import CheckpointCorruptError, CheckpointMismatchError
from keras_ckpt.info import CheckpointInfo


def _is_variable(obj: object) -> bool:
    return hasattr(obj, "assign") and hasattr(obj, "shape") and hasattr(obj, "dtype")


def _name(obj: object) -> str:
    return str(getattr(obj, "path", None) or getattr(obj, "name", None) or type(obj).__name__)


def _live_pairs(
    graph: Any, start: int, live: Any, skip: str | None, seen: set[int]
) -> list[tuple[StoredNode, Any]]:
    """The stored nodes from `start`, each with the live object at its child-name path."""
    view = tf.train.TrackableView(live) if live is not None else None
    objects: dict[int, Any] = {}
    children: dict[int, dict[str, Any]] = {}  # per parent node, listed once
    found = []
    for node in stored_nodes(graph, start, skip=skip, seen=seen):
        obj = live
        if node.parent is not None:
            if node.parent not in children:
                children[node.parent] = _children(view, objects[node.parent])
            obj = children[node.parent].get(node.path[-1])
        objects[node.node] = obj
        found.append((node, obj))
    return found


def _children(view: Any, obj: Any) -> dict[str, Any]:
    if obj is None or view is None:
        return {}
    try:
        return view.children(obj)
    except Exception:  # an object TF cannot list: its subtree is unmatched
        return {}


def _pair(
    found: list[tuple[StoredNode, Any]], reader: CheckpointReader, wanted: dict[int, Any]
) -> Match:
    """The variables of `found` matched; `wanted` are the live ones expected."""
    match = Match()
    matched: set[int] = set()
    for node, obj in found:
        attr = node.value
        if attr is None:
            continue
        if obj is None or not _is_variable(obj):
            match.unexpected.append(attr.full_name or attr.checkpoint_key)
            continue
        matched.add(id(obj))
        match.add(obj, attr.checkpoint_key, reader, _name(obj))
    for i, v in wanted.items():
        if i not in matched:
            match.miss(v, _name(v))
    return match


def restore_into(
    model: Any,
    prefix: str,
    *,
    strict: bool,
    optimizer: bool = True,
    stacklevel: int = 3,
    record: dict[str, Any] | None = None,
) -> bool:
    """Restores checkpoint `prefix` into `model`; see `keras_ckpt.loader.restore`.

    Args:
        model: A built Keras model, or one from `_graph.import_saved_model`.
        prefix: A resolved checkpoint prefix.
        strict: Any model-variable mismatch raises (and nothing changes).
        optimizer: Also restore the optimizer state when the model is compiled and the
            checkpoint has one (False for evaluation, which never needs it).
        stacklevel: For the warnings, so they point at the user's call.
        record: The parsed `ckpt-N.json` of `prefix`, if the caller has it (`_layout.locate`,
            a directory's `scan`): it is not read again. None: read here when needed.

    Returns:
        True if the optimizer state was restored.
    """
    graph = _graph.imported(model)
    if graph is not None:  # a SavedModel import: matched through its record (no optimizer)
        return graph.restore(prefix, strict=strict, stacklevel=stacklevel + 1, record=record)
    reader = CheckpointReader(prefix, record)
    # random-number state TF's checkpoint leaves out; only into the same architecture
    untracked = read_recorded(prefix, stacklevel + 1, record) if strict else None
    graph = reader.object_graph()
    if not getattr(model, "built", True) or not model.variables:
        raise ValueError(
            "`model` must be built before restoring (call it on a batch, or give it an "
            f"Input). Received an unbuilt {type(model).__name__}."
        )
    model_node = child_of(graph, "model")
    if model_node is None:
        roots = ", ".join(r.local_name for r in graph.nodes[0].children) or "none"
        raise CheckpointMismatchError(
            f"{prefix} was not written as tf.train.Checkpoint(model=...): its root objects are "
            f"{roots}. Read it with tf.train.Checkpoint({roots.split(', ')[0]}=model) instead."
        )
    seen: set[int] = set()
    model_side = _live_pairs(graph, model_node, model, skip="optimizer", seen=seen)
    match = _pair(model_side, reader, saveable_variables(model))

    live_optimizer = getattr(model, "optimizer", None) if optimizer else None
    opt_node = child_of(graph, "optimizer", model_node)
    opt_pairs: list[tuple[Any, str]] = []
    opt_problems: list[str] = []
    if live_optimizer is not None and opt_node is not None:
        if not getattr(live_optimizer, "built", True):
            with _dist.strategy_scope(model):  # a mirrored model's slots are mirrored
                live_optimizer.build(model.trainable_variables)
        opt_side = _live_pairs(graph, opt_node, live_optimizer, skip=None, seen=seen)
        wanted = {id(v): v for v in live_optimizer.variables}
        opt_match = _pair(opt_side, reader, wanted)
        opt_pairs, opt_problems = opt_match.pairs, opt_match.problems

    match.report(
        prefix,
        strict=strict,
        against="the model",
        fix="Rebuild the model as it was saved",
        stacklevel=stacklevel,
    )
    # lookup vocabularies kept beside the checkpoints (raises before any change, if strict)
    directory = _fs.dirname(prefix)
    vocabularies = _assets.plan(model, directory, strict=strict, stacklevel=stacklevel + 1)
    if opt_problems:
        warnings.warn(
            f"The optimizer state in {prefix} does not fit the model's optimizer and was not "
            "restored (" + "; ".join(opt_problems) + "); training continues with a fresh one.",
            stacklevel=stacklevel,
        )
        opt_pairs = []
    assign(reader, match.pairs + opt_pairs)
    _assets.load(model, vocabularies)
    put_back(model, untracked)
    return bool(opt_pairs)


def restore_newest(
    model: Any, directory: str, *, who: str, stacklevel: int
) -> tuple[CheckpointInfo, dict[str, Any]] | None:
    """Restores the newest intact checkpoint of `directory` (model, optimizer, generators).

    Damaged checkpoints newer than it are skipped with a warning (nothing on disk changes),
    and so is one that turns out damaged while it is read. The one home of "resume from the
    newest intact checkpoint", for `loader.resume` and `resume=True` callbacks.

    Args:
        model: The model to restore into (compiled, for its optimizer state).
        directory: The checkpoint directory.
        who: What the warnings start with (`"resume"`, `"resume=True"`).
        stacklevel: The warnings' stacklevel, counted from this function.

    Returns:
        The restored checkpoint and its record, or None: a missing or empty directory, or
        no intact checkpoint (a warning says so: training starts from scratch).

    Raises:
        CheckpointMismatchError: the model does not match the checkpoints' architecture.
    """
    if not _fs.isdir(directory):
        return None
    found = scan(directory)
    kept, skipped = _layout.newest_intact(directory, found)
    if skipped:
        instead = f"using {kept[-1].path}" if kept else "no intact checkpoint is left"
        warnings.warn(skipped_warning(directory, skipped, instead, who), stacklevel=stacklevel)
    for info in reversed(kept):
        try:
            optimizer_restored = restore_into(
                model,
                info.path,
                strict=True,
                stacklevel=stacklevel + 1,
                record=found.records.get(info.step),
            )
        except CheckpointCorruptError as exc:
            warnings.warn(
                f"{who}: {info.path} is damaged and was skipped ({describe(info.path, exc)}). "
                "Falling back to an older checkpoint.",
                stacklevel=stacklevel,
            )
            continue
        if getattr(model, "optimizer", None) is None:
            warnings.warn(
                f"{who}: restored {info.path} into an uncompiled model, so no optimizer "
                "state was restored. Compile the model first to continue exactly.",
                stacklevel=stacklevel,
            )
        elif not optimizer_restored:
            warnings.warn(
                f"{who}: {info.path} holds no usable optimizer state (saved with "
                "save_optimizer=False, or another optimizer); training continues with a "
                "fresh optimizer and will not match an uninterrupted run exactly.",
                stacklevel=stacklevel,
            )
        return info, found.records.get(info.step, {})
    if kept or skipped:
        warnings.warn(
            f"{who}: no intact checkpoint in {directory}; training starts from scratch "
            f"(epoch 0). Run `keras-ckpt verify {directory}` to see what is damaged.",
            stacklevel=stacklevel,
        )
    return None
