"""Shared helpers of the benchmarks: the model, timing, memory sampling, the disk reference.

Nothing here is part of keras_ckpt; the scripts import it as a sibling module.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MB = 2**20


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON result."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def width_for(mb: float, layers: int) -> int:
    """The width of `layers` square Dense layers holding about `mb` MB of float32 weights."""
    return max(2, int((mb * MB / 4 / layers) ** 0.5))


def build_model(mb: float, layers: int, seed: int = 0) -> keras.Model:
    """A stack of square Dense layers with ~`mb` MB of float32 weights, compiled with Adam.

    Adam keeps two slots per weight, so a checkpoint with the optimizer is ~3x `mb`.
    """
    width = width_for(mb, layers)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width, name=f"d{i}") for i in range(layers)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    return model


def train_data(model: keras.Model, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = model.inputs[0].shape[-1]
    x = np.random.default_rng(seed).random((samples, width), dtype=np.float32)
    return x, x


def state_bytes(model: keras.Model, with_optimizer: bool = True) -> int:
    """Bytes of the variables a checkpoint of `model` holds."""
    variables = list(model.variables)
    if with_optimizer and getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def du(path: str) -> int:
    """Bytes of the files under `path`; hard links to one file count once (as `du` does)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def bytes_written() -> int | None:
    """Bytes this process passed to `write()` so far (Linux `/proc/self/io`), else None."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    return path


def rss() -> int:
    """Resident set size of this process, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples the RSS in a thread; `peak_extra` is the peak minus the RSS at the start."""

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def peak_extra(self) -> int:
        return self.peak - self.start


def evict(paths: Iterable[str]) -> None:
    """Drops the page cache of our own files (no root, other files untouched)."""
    for root in paths:
        for dirpath, _, files in os.walk(root) if os.path.isdir(root) else [("", [], [root])]:
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    fd = os.open(full, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def disk_reference(directory: str, nbytes: int, rounds: int) -> dict[str, Any]:
    """Raw write throughput of `nbytes` from memory into one file in `directory`."""
    buf = np.ones(max(nbytes // 4, 1), dtype=np.float32)  # touched: no page faults in the loop
    path = os.path.join(directory, "raw-reference.bin")
    cached, durable = [], []
    for _ in range(rounds):
        for sync, out in ((False, cached), (True, durable)):
            t0 = time.perf_counter()
            with open(path, "wb") as f:
                f.write(memoryview(buf))
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            out.append(time.perf_counter() - t0)
            os.remove(path)
    del buf
    return {
        "bytes": nbytes,
        "write_s": median(cached),
        "write_mb_s": round(nbytes / MB / median(cached), 1),
        "write_fsync_s": median(durable),
        "write_fsync_mb_s": round(nbytes / MB / median(durable), 1),
    }


def median(values: Iterable[float]) -> float:
    values = list(values)
    return round(statistics.median(values), 4) if values else float("nan")


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in load],
    }


def emit(result: dict[str, Any], out: str | None) -> None:
    text = json.dumps(result, indent=2, sort_keys=False)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
