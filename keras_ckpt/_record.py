"""What a save records besides the variables' values.

`SaveRecord` gives the fields of each `ckpt-N.json` (optimizer step, whether the optimizer
is in it, the random-generator states `restore` puts back) and writes, at a manager's first
save, the files a directory holds once: `model.json` (the architecture), `assets/` (lookup
vocabularies) and, with `save_graph=True`, `graph/` (the model's computation). Each of those
is written by its owner (`CheckpointDirectory`, `_assets`, `_graph`); this module only says
when and with what.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from keras_ckpt import _assets, _graph, _model_json
from keras_ckpt._objgraph import take_snapshot
from keras_ckpt._planning import optimizer_step
from keras_ckpt._untracked import RECORD_KEY, UntrackedState
from keras_ckpt.directory import CheckpointDirectory

logger = logging.getLogger(__name__)

__all__ = ["SaveRecord", "write_and_discard"]


class SaveRecord:
    """The record fields of every save of one model, and its write-once files.

    Args:
        directory: The directory the saves go to.
        model: The model being saved.
        save_optimizer: Whether the optimizer's state is saved.
        save_graph: Whether `graph/` is written at the first save.
    """

    def __init__(
        self, directory: CheckpointDirectory, model: Any, save_optimizer: bool, save_graph: bool
    ) -> None:
        self._dir = directory
        self.model = model
        self.save_optimizer = save_optimizer
        self.save_graph = save_graph
        self._untracked = UntrackedState(model)  # SeedGenerator states, for `resume`
        self._model_json_written = False
        self._graph_written = False

    def fields(self, step_offset: int) -> dict[str, Any]:
        """The fields of this save's `ckpt-N.json`; writes the once-files at the first call.

        Raises:
            Exception: writing `model.json`, `assets/` or `graph/` failed (the save fails).
        """
        optimizer = getattr(self.model, "optimizer", None)
        fields: dict[str, Any] = {
            "with_optimizer": bool(self.save_optimizer and optimizer is not None),
            "optimizer_step": optimizer_step(self.model),
            "step_offset": step_offset,
        }
        untracked = self._untracked.record()
        if untracked:
            fields[RECORD_KEY] = untracked
        if not self._model_json_written:
            self._write_architecture()
            self._model_json_written = True
        if self.save_graph and not self._graph_written:
            _graph.write_graph(self._dir.path, self.model)  # kept if graph/ already exists
            self._graph_written = True
        return fields

    def _write_architecture(self) -> None:
        text = None
        to_json = getattr(self.model, "to_json", None)
        try:  # model.to_json(), recording a mixed-precision LossScaleOptimizer too
            text = _model_json.model_json_text(self.model) if to_json is not None else None
        except Exception as exc:  # subclassed models without get_config
            logger.info("model.json not written for %s: %s", self._dir.path, exc)
        if text is not None:
            self._dir.write_model_json(text)  # a write error fails this save
        _assets.write_once(self._dir.path, self.model)  # lookup vocabularies, as model.json


def write_and_discard(model: Any, save_optimizer: bool) -> None:
    """A non-chief worker's save: take part in the collective reads, keep nothing."""
    snapshot = take_snapshot(model, save_optimizer=save_optimizer)
    scratch = tempfile.mkdtemp(prefix="keras_ckpt-worker-")
    try:
        snapshot.write(os.path.join(scratch, "ckpt"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
