"""What a checkpoint's record says about shared data (`_sharing` writes it). No TensorFlow.

A record's `shared` field names the data files of the checkpoint that hold values shared
with other checkpoints (`{"ckpt-N.data-00000-of-00002": {"id", "first", "how"}}`: `how` is
`written`, `link` or `copy`). `list`, `inspect` and `verify` read it through these functions,
so that `keras-ckpt list` needs no TensorFlow.
"""

from __future__ import annotations

__all__ = ["disk_bytes", "own_bytes", "shared_files", "sharers"]


def shared_files(record: dict) -> dict[str, dict]:
    """The files of a checkpoint's record that hold shared data: name -> {id, first, how}."""
    shared = record.get("shared")
    files = record.get("files")
    if not isinstance(shared, dict) or not isinstance(files, dict):
        return {}
    return {n: s for n, s in shared.items() if n in files and isinstance(s, dict) and "id" in s}


def sharers(records: dict[str, dict]) -> dict[str, list[str]]:
    """Shared data id -> the checkpoints (names, as in `records`) holding it, sorted."""
    out: dict[str, list[str]] = {}
    for name, record in sorted(records.items()):
        for entry in shared_files(record).values():
            out.setdefault(str(entry["id"]), []).append(name)
    return out


def own_bytes(record: dict) -> int:
    """Bytes of a checkpoint's files that no other checkpoint shares."""
    files = record.get("files") or {}
    shared = shared_files(record)
    return sum(int(size) for name, size in files.items() if name not in shared)


def disk_bytes(records: dict[str, dict]) -> int:
    """Bytes the checkpoints of `records` occupy: shared data linked once, copies each."""
    total = 0
    linked: dict[str, int] = {}  # id -> size of the one inode its links share
    for record in records.values():
        files = record.get("files") or {}
        total += own_bytes(record)
        for name, entry in shared_files(record).items():
            if entry.get("how") == "copy":
                total += int(files[name])
            else:
                linked[str(entry["id"])] = int(files[name])
    return total + sum(linked.values())
