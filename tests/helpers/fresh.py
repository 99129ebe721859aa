"""Fresh Python processes without paying TensorFlow's start-up each time.

`run(argv, ...)` is `subprocess.run([sys.executable, *argv], capture_output=True, ...)` for
tests that need a new process which never saw the test's code (a model class, a mixed
precision policy, the directory lock of another process); `start(argv, ...)` is
`subprocess.Popen([sys.executable, *argv], ...)` for one the test talks to while it runs
(reads its output, signals it, waits for it). Instead of starting Python, each one is forked
from a zygote: a process started once per test session that imported TensorFlow, Keras and
NumPy and the fork-server loop (`helpers.zygote`), no keras_ckpt and no test module, and has
run no TensorFlow op (so a child may still configure TensorFlow's devices). The child sets
the requested argv, environment (TMPDIR included), `sys.path` (from its PYTHONPATH) and
working directory, then runs the script (or `-c` code) as `__main__`.

Keras' configuration is its defaults in every child: the zygote's `KERAS_HOME` is a new,
empty folder (no `keras.json` of this machine's user). Not for environment variables
TensorFlow or Keras read at import (`KERAS_HOME`, `TF_CPP_MIN_LOG_LEVEL`): a test that
sets those starts a real interpreter.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = f"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy, keras, tensorflow  # the start-up every child shares
sys.path.insert(0, {TESTS!r})
from helpers.fresh import run_script
from helpers.zygote import serve
serve(run_script)
os._exit(0)  # the zygote leaves nothing behind: skips Python's slow teardown of TensorFlow
"""


def _redirect(fd: int, target: str | dict | None) -> None:
    """The child's stdout or stderr (`fd`) to `target`: a file path (truncated), `{"socket":
    path}` (the stream `Child.stdout` the test reads), or None (the same as stdout)."""
    if target is None:
        os.dup2(1, fd)
    elif isinstance(target, dict):
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stream.connect(target["socket"])
        os.dup2(stream.fileno(), fd)
        stream.close()
    else:
        opened = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)


def run_script(job: dict) -> None:
    """In a forked child: `job`'s argv, environment, working directory and output files, then
    the script (or `-c` code) as `__main__`."""
    import runpy

    os.setpgid(0, 0)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    _redirect(1, job["stdout"])
    _redirect(2, job["stderr"])
    os.environ.clear()
    os.environ.update(job["env"])
    tempfile.tempdir = None  # the zygote's; a new process takes it from the job's TMPDIR
    os.chdir(job["cwd"])
    argv = job["argv"]
    extra = [p for p in job["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    base = [p for p in sys.path[1:] if p != TESTS]  # the interpreter's own, as a new process
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path[:] = ["", *extra, *base]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
    else:
        sys.argv = list(argv)
        sys.path[:] = [os.path.dirname(os.path.abspath(argv[0])), *extra, *base]
        runpy.run_path(argv[0], run_name="__main__")


class Zygote:
    """The zygote process: one request at a time (`run`, `start` and `Child`'s calls), from
    any thread."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # a command and its answer, or all of `run`
        self._keras_home = tempfile.mkdtemp(prefix="fresh-keras-home-")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_HOME=self._keras_home)
        env.pop("PYTHONPATH", None)  # it imports no code of this checkout
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )

    def _ask(self, command: str, timeout: float | None) -> str:
        with self._lock:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            return self._line(timeout)

    def _job(self, argv, env, cwd, stdout, stderr) -> dict:
        return {
            "argv": [str(a) for a in argv],
            "env": dict(os.environ if env is None else env),
            "cwd": str(cwd if cwd is not None else os.getcwd()),
            "stdout": stdout,
            "stderr": stderr,
        }

    def _line(self, timeout: float | None) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        return line.strip()

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        """As `subprocess.run([sys.executable, *argv], capture_output=True, ...)`."""
        with self._lock, tempfile.TemporaryDirectory(prefix="fresh-") as scratch:
            out, err = os.path.join(scratch, "out"), os.path.join(scratch, "err")
            job = self._job(argv, env, cwd, out, err)
            pid = int(self._ask("run " + json.dumps(job), 30).split()[1])
            try:
                code = int(self._ask(f"wait {pid}", timeout).split()[2])
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                self._line(30)
                raise subprocess.TimeoutExpired(argv, timeout) from None
            mode = "r" if text else "rb"
            with open(job["stdout"], mode) as out, open(job["stderr"], mode) as err:
                return subprocess.CompletedProcess(argv, code, out.read(), err.read())

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: int | str | os.PathLike[str] = subprocess.PIPE,
        stderr: int | str | os.PathLike[str] = subprocess.DEVNULL,
        text: bool = True,
    ) -> Child:
        """As `subprocess.Popen([sys.executable, *argv], ...)`: returns once the child runs.

        `stdout`: `subprocess.PIPE` (read it from `Child.stdout`), `subprocess.DEVNULL` or a
        file path; `stderr`: `subprocess.DEVNULL`, `subprocess.STDOUT` or a file path.
        """
        scratch = tempfile.mkdtemp(prefix="fresh-")  # removed once the child is reaped
        listener = None
        if stdout == subprocess.PIPE:
            # A forked child cannot inherit a pipe from this process: it connects its stdout
            # to a socket this process listens on.
            out = {"socket": os.path.join(scratch, "stdout")}
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(out["socket"])
            listener.listen(1)
            listener.settimeout(30)
        elif stdout == subprocess.DEVNULL:
            out = os.devnull
        else:
            out = os.fspath(stdout)
        if stderr == subprocess.STDOUT:
            err = None
        elif stderr == subprocess.DEVNULL:
            err = os.devnull
        else:
            err = os.fspath(stderr)
        try:
            job = self._job(argv, env, cwd, out, err)
            child = Child(self, argv, int(self._ask("run " + json.dumps(job), 30).split()[1]))
            child.scratch = scratch
            if listener is not None:
                child.accept_stdout(listener, text)
        finally:
            if listener is not None:
                listener.close()
        return child

    def start_worker(self, script: str, args: dict, log: str | os.PathLike[str]) -> Lines:
        """A test's worker script (`helpers/*_worker.py`) run as `python SCRIPT '{json}'`, with
        this checkout and `tests/` on its path (`helpers.zygote.say` for its lines); its stderr
        goes to `log`, its lines come through the returned `Lines`."""
        path = os.pathsep.join([os.path.dirname(TESTS), TESTS])
        child = self.start(
            [script, json.dumps(args)], env=dict(os.environ, PYTHONPATH=path), stderr=log
        )
        return Lines(child, log)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        shutil.rmtree(self._keras_home, ignore_errors=True)


class Child:
    """A child started by `Zygote.start`: what the tests use of `subprocess.Popen`.

    Its process is a child of the zygote, not of this process: the zygote reaps it, asked by
    `poll`.
    """

    def __init__(self, zygote: Zygote, argv: list[str], pid: int) -> None:
        self.zygote = zygote
        self.args = argv
        self.pid = pid  # also its process group (`os.killpg(child.pid, ...)`)
        self.returncode: int | None = None
        self.stdout = None  # a readable stream with `stdout=subprocess.PIPE`
        self.stdin = self.stderr = None  # never piped (as Popen's, for code that closes them)
        self.stream: socket.socket | None = None  # the socket under `stdout`
        self.scratch: str | None = None  # a directory of ours, removed once it is reaped

    def accept_stdout(self, listener: socket.socket, text: bool) -> None:
        """Its stdout, once it connected it (in its first milliseconds) to `listener`."""
        try:
            self.stream, _ = listener.accept()
        except TimeoutError:
            self.kill()
            code = self.wait()
            raise RuntimeError(f"{self.args}: no stdout after 30 s (exit {code})") from None
        self.stdout = self.stream.makefile("r" if text else "rb")

    def poll(self) -> int | None:
        if self.returncode is None:
            answer = self.zygote._ask(f"poll {self.pid}", 30).split()
            if answer[0] == "exit":
                self.returncode = int(answer[2])
                if self.scratch is not None:
                    shutil.rmtree(self.scratch, ignore_errors=True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """As `Popen.wait`, which also polls (with the same growing pause) when given a
        timeout: the zygote answers one request at a time, so it is not kept waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.05)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple:
        """As `Popen.communicate` (no input): all of stdout, then the exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        output = None
        if self.stdout is not None:
            self.stream.settimeout(timeout)  # a read that waits longer raises TimeoutError
            try:
                output = self.stdout.read()
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self.stdout.close()
        self.wait(None if deadline is None else max(0, deadline - time.monotonic()))
        return output, None

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped: the pid is still this child's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Lines:
    """The lines of a `Child` started with `stdout=subprocess.PIPE`, read by a thread as they
    come, each with the time it arrived (`time.monotonic()`): for tests that act at a moment
    of the child's run (send a signal after a given line, a random time later).

    `log`: the file the child's stderr goes to; its end is shown when an expected line never
    comes.
    """

    def __init__(self, child: Child, log: str | os.PathLike[str] | None = None) -> None:
        self.child = child
        self.log = log
        self.seen: list[str] = []  # the lines the last `expect` passed over
        self.last_seen: dict[str, float] = {}  # and when each kind (first word) last came
        self._queue: queue.Queue[tuple[float, str | None]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.child.stdout:
            self._queue.put((time.monotonic(), line.strip()))
        self._queue.put((time.monotonic(), None))  # its stdout closed: it ended

    def _tail(self) -> str:
        if self.log is None or not os.path.exists(self.log):
            return ""
        with open(self.log, errors="replace") as f:
            return f.read()[-3000:]

    def expect(self, prefix: str, timeout: float = 120.0) -> tuple[float, str]:
        """Waits for the next line that starts with `prefix`: when it came, and the line.

        Raises:
            AssertionError: the child ended, or `timeout` passed, first (with its stderr).
        """
        self.seen, self.last_seen = [], {}
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                at, line = time.monotonic(), ""
            if not line:
                what = "it ended" if line is None else f"nothing in {timeout} s"
                raise AssertionError(
                    f"{self.child.args}: no {prefix!r} line ({what}); last lines "
                    f"{self.seen[-5:]}; stderr:\n{self._tail()}"
                )
            if line.startswith(prefix):
                return at, line
            self.seen.append(line)
            self.last_seen[line.split()[0]] = at

    def finish(self, timeout: float = 120.0) -> tuple[int, list[str]]:
        """Waits for the child to end: its exit code, and its lines not read yet."""
        code = self.child.wait(timeout)
        rest = []
        while True:
            _, line = self._queue.get(timeout=30)  # its stdout closes as it ends
            if line is None:
                return code, rest
            rest.append(line)
