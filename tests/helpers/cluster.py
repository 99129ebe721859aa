"""Runs helper scripts in new processes: bounded in time, always cleaned up, loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (held together while picking)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def worker_env(tmpdir: Path | None = None, **extra: str) -> dict[str, str]:
    """This checkout (not an installed copy) and the tests' helpers on the path, quiet TF."""
    env = dict(os.environ)
    path = [str(ROOT), str(TESTS), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("TF_CONFIG", None)
    if tmpdir is not None:  # where tempfile puts scratch files: the tests look inside
        tmpdir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    env.update(extra)
    return env


@dataclass
class Result:
    returncode: int | None  # None: killed at the deadline
    log: str

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


def run_all(zygote, commands: list[tuple[list[str], dict[str, str]]], logs: Path, timeout: float):
    """Starts every command at once and waits for all, at most `timeout` seconds in total.

    Each command (`script(...)`) runs in a new process forked from `zygote` (the session's
    `fresh` fixture, `helpers.fresh`): it has imported TensorFlow but run no TensorFlow op, so
    a worker still configures its devices and starts its servers as a new Python would,
    seconds sooner. Each runs in its own process group; whatever is still running at the
    deadline (or if this function is interrupted) is killed with its children. Returns one
    `Result` each.
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for i, (argv, env) in enumerate(commands):
            log = logs / f"proc-{i}.log"
            procs.append(zygote.start(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
    return [
        Result(code, (logs / f"proc-{i}.log").read_text(errors="replace"))
        for i, code in enumerate(codes)
    ]


def script(path: str, *args: str) -> list[str]:
    """The arguments of `python tests/PATH ARGS...` after `python`."""
    return [str(TESTS / path), *args]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
