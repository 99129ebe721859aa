"""Fresh Python processes without paying TensorFlow's start-up each time.

`run(argv, ...)` is `subprocess.run([sys.executable, *argv], capture_output=True, ...)` for
tests that need a new process which never saw the test's code (a model class, a mixed
precision policy, the directory lock of another process). Instead of starting Python, each
one is forked from a zygote: a process started once per test session that imported
TensorFlow, Keras and NumPy and the fork-server loop (`helpers.zygote`), no keras_ckpt and
no test module, and has run no TensorFlow op. The child sets the requested argv,
environment, `sys.path` (from its PYTHONPATH) and working directory, then runs the script
(or `-c` code) as `__main__`.

Not for environment variables TensorFlow or Keras read at import (`KERAS_HOME`,
`TF_CPP_MIN_LOG_LEVEL`): a test that sets those starts a real interpreter.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = f"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy, keras, tensorflow  # the start-up every child shares
sys.path.insert(0, {TESTS!r})
from helpers.fresh import run_script
from helpers.zygote import serve
serve(run_script)
"""


def run_script(job: dict) -> None:
    """In a forked child: `job`'s argv, environment, working directory and output files, then
    the script (or `-c` code) as `__main__`."""
    import runpy

    os.setpgid(0, 0)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.environ.clear()
    os.environ.update(job["env"])
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
    """The zygote process: one request at a time (`run`)."""

    def __init__(self) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
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
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line(timeout)

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
        with tempfile.TemporaryDirectory(prefix="fresh-") as scratch:
            job = {
                "argv": [str(a) for a in argv],
                "env": dict(os.environ if env is None else env),
                "cwd": str(cwd if cwd is not None else os.getcwd()),
                "stdout": os.path.join(scratch, "out"),
                "stderr": os.path.join(scratch, "err"),
            }
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

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
