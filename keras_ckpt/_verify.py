"""`verify`: read checkpoints end to end and report every problem, one line per file.

Each line reads `<file>: <what is wrong>`. For a checkpoint: its record (`ckpt-N.json`) must
parse and name its own step, every file it lists must be there with the recorded size, the
index must open, and every tensor must read back (TensorFlow checks each tensor's CRC32C, so
flipped bytes are found as well as truncation). For a directory, additionally: the
`checkpoint` state file must parse and name only checkpoints whose index exists, and
`model.json` must parse and every file of `graph/` must have its recorded size. Nothing is
written.

Leftovers of an interrupted save (a record without an index, `.tmp-*` folders) are not
problems: they were never kept, every earlier checkpoint is intact, and the next run removes
them.
"""

from __future__ import annotations

import json

from keras_ckpt import _assets, _fs, _graph, _layout
from keras_ckpt import _shared_record as _sharing
from keras_ckpt._layout import MODEL_JSON, Checked, Scan, check, scan
from keras_ckpt._reader import CheckpointReader, describe
from keras_ckpt._statefile import STATE, parse_state
from keras_ckpt.errors import CheckpointCorruptError
from keras_ckpt.info import CheckpointInfo, step_of

_BATCH_BYTES = 64 << 20  # read at most this much per RestoreV2 call


def _batches(reader: CheckpointReader) -> list[list[str]]:
    out: list[list[str]] = []
    size = _BATCH_BYTES
    for key in reader.variable_keys():
        nbytes = reader.nbytes(key)
        if not out or size + nbytes > _BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(key)
        size += nbytes
    return out


def verify_prefix(prefix: str, checked: Checked | None = None) -> list[str]:
    """The problems of one checkpoint (`[]` if it reads back intact).

    `checked`: its `_layout.check`, if the caller has it (a `scan`'s): the record is not
    read again, and is handed on to the reader.
    """
    directory, name = _fs.dirname(prefix), _fs.basename(prefix)
    if checked is None:
        checked = check(directory, name)
    lines = [f"{_fs.join(directory, fname)}: {what}" for fname, what in checked.problems]
    index = prefix + ".index"
    if not checked.has_index:
        return [*lines, f"{index}: missing"]
    if not checked.sizes_ok:
        return lines  # TensorFlow would only fail again on the same files
    try:  # a garbled record ({}): nothing to compare sizes with, and it was named above
        reader = CheckpointReader(prefix, checked.record if checked.info else {})
        for keys in _batches(reader):
            reader.read(keys)
    except CheckpointCorruptError as exc:
        lines.append(describe(prefix, exc))
    return lines


def _state_problems(directory: str, reported: set[str], present: set[str]) -> list[str]:
    path = _fs.join(directory, STATE)
    if not _fs.exists(path):
        return []
    try:
        fields = parse_state(_fs.read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{path}: unreadable ({exc})"]
    names = fields.get("model_checkpoint_path", []) + fields.get("all_model_checkpoint_paths", [])
    lines = []
    for name in dict.fromkeys(names):  # in order, once each
        if "/" in name or "\\" in name or name in reported:
            continue  # paths outside the directory are not ours to judge
        if f"{name}.index" not in present:
            lines.append(f"{path}: names {name}, but {name}.index does not exist")
    return lines


def _step(name: str) -> int:
    return step_of(name) or 0


def _name_sharers(name: str, problems: list[str], records: dict[str, dict]) -> list[str]:
    """Adds, to a problem with a file of shared data, which other checkpoints hold that data.

    On a local disk they are hard links to the same bytes: they are damaged too (and
    reported on their own lines); elsewhere they are copies.
    """
    shared = _sharing.shared_files(records.get(name, {}))
    if not shared or not problems:
        return problems
    holders = _sharing.sharers(records)
    out = []
    for line in problems:
        for fname, entry in shared.items():
            others = [n for n in holders.get(str(entry["id"]), []) if n != name]
            if fname in line and others:
                line += f" (shared data, also held by {', '.join(sorted(others, key=_step))})"
                break
        out.append(line)
    return out


def verify_target(target: tuple[str, str]) -> tuple[list[str], int]:
    """`verify` of a `_layout.classify`d target: its problems, and how many checkpoints it
    holds (kept ones for a directory, 1 for a prefix). A directory is listed once."""
    kind, path = target
    if kind == "prefix":
        return verify_prefix(path), 1
    found = scan(path)
    kept = _layout.kept(path, found)
    return verify_directory(path, found, kept), len(kept)


def verify_directory(directory: str, found: Scan, kept: list[CheckpointInfo]) -> list[str]:
    """The problems of every checkpoint of `directory` (kept and damaged) and its metadata.

    `found`: the directory's `scan`, whose checks (and records) each checkpoint's is.
    """
    prefixes = {info.path: info.step for info in kept}
    for name in found.damaged:
        prefixes[_fs.join(directory, name)] = step_of(name) or 0
    names = [_fs.basename(p) for p in sorted(prefixes, key=lambda p: (prefixes[p], p))]
    lines: list[str] = []
    reported: set[str] = set()
    checks = {n: found.checked.get(n) or check(directory, n, found.names) for n in names}
    records = {n: (c.record if c.info else None) or {} for n, c in checks.items()}
    for name in names:
        problems = verify_prefix(_fs.join(directory, name), checks[name])
        if problems:
            reported.add(name)
        lines += _name_sharers(name, problems, records)
    lines += _state_problems(directory, reported, found.names)
    model_json = _fs.join(directory, MODEL_JSON)
    if _fs.exists(model_json):
        try:
            json.loads(_fs.read_text(model_json))
        except (ValueError, UnicodeDecodeError) as exc:
            lines.append(f"{model_json}: not valid JSON ({exc})")
    if _fs.isdir(_graph.graph_dir(directory)):
        lines += _graph.problems(_graph.graph_dir(directory))
    try:
        _assets.read(directory)  # lookup vocabularies: the files its index names, whole
    except CheckpointCorruptError as exc:
        why = exc.__cause__ or exc  # the file and what is wrong with it
        lines.append(f"{_fs.join(directory, _assets.ASSETS)}: lookup vocabularies damaged ({why})")
    return lines
