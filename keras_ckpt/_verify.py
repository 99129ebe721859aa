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

from keras_ckpt import _assets, _fs, _graph
from keras_ckpt import _shared_record as _sharing
from keras_ckpt._layout import STATE, parse_state, scan, size_mismatches
from keras_ckpt._reader import CheckpointReader, describe
from keras_ckpt.errors import CheckpointCorruptError
from keras_ckpt.info import CheckpointInfo, from_json, prefix_name, step_of

_BATCH_BYTES = 64 << 20  # read at most this much per RestoreV2 call


def _record_problems(prefix: str) -> tuple[list[str], bool]:
    """Problems of the record and of the file sizes it lists; and whether to read further."""
    record = prefix + ".json"
    if not _fs.exists(record):
        return [], True
    try:
        info, fields = from_json(_fs.read_text(record), prefix)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return [f"{record}: not a valid checkpoint record ({exc})"], True
    lines = []
    name = _fs.basename(prefix)
    if step_of(name) is not None and prefix_name(info.step) != name:
        lines.append(f"{record}: records step {info.step}, but belongs to {name}")
    files = fields.get("files")
    if not isinstance(files, dict) or not files:
        return [*lines, f"{record}: lists no files"], True
    directory = _fs.dirname(prefix)
    sizes_ok = True
    for fname, actual, expected in size_mismatches(directory, files):
        path = _fs.join(directory, fname)
        sizes_ok = False
        if actual is None:
            lines.append(f"{path}: missing (listed in {_fs.basename(record)})")
        else:
            lines.append(f"{path}: {actual} bytes, expected {expected} (truncated or altered)")
    return lines, sizes_ok


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


def verify_prefix(prefix: str) -> list[str]:
    """The problems of one checkpoint (`[]` if it reads back intact)."""
    lines, sizes_ok = _record_problems(prefix)
    index = prefix + ".index"
    if not _fs.exists(index):
        return [*lines, f"{index}: missing"]
    if not sizes_ok:
        return lines  # TensorFlow would only fail again on the same files
    try:
        reader = CheckpointReader(prefix)
        for keys in _batches(reader):
            reader.read(keys)
    except CheckpointCorruptError as exc:
        lines.append(describe(prefix, exc))
    return lines


def _state_problems(directory: str, reported: set[str]) -> list[str]:
    path = _fs.join(directory, STATE)
    if not _fs.exists(path):
        return []
    try:
        fields = parse_state(_fs.read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{path}: unreadable ({exc})"]
    names = fields.get("model_checkpoint_path", []) + fields.get("all_model_checkpoint_paths", [])
    present = set(_fs.list_dir(directory))
    lines = []
    for name in dict.fromkeys(names):  # in order, once each
        if "/" in name or "\\" in name or name in reported:
            continue  # paths outside the directory are not ours to judge
        if f"{name}.index" not in present:
            lines.append(f"{path}: names {name}, but {name}.index does not exist")
    return lines


def _record(prefix: str) -> dict:
    try:
        record = json.loads(_fs.read_text(prefix + ".json"))
    except Exception:  # missing or garbled: reported by verify_prefix
        return {}
    return record if isinstance(record, dict) else {}


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


def verify_directory(directory: str, kept: list[CheckpointInfo]) -> list[str]:
    """The problems of every checkpoint of `directory` (kept and damaged) and its metadata."""
    found = scan(directory)
    prefixes = {info.path: info.step for info in kept}
    for name in found.damaged:
        prefixes[_fs.join(directory, name)] = step_of(name) or 0
    lines: list[str] = []
    reported: set[str] = set()
    records = {_fs.basename(p): _record(p) for p in prefixes}
    for prefix in sorted(prefixes, key=lambda p: (prefixes[p], p)):
        problems = verify_prefix(prefix)
        if problems:
            reported.add(_fs.basename(prefix))
        lines += _name_sharers(_fs.basename(prefix), problems, records)
    lines += _state_problems(directory, reported)
    model_json = _fs.join(directory, "model.json")
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
