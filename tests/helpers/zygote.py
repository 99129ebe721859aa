"""The fork-server loop of the tests' zygote (`helpers.fresh`), and `say`, for its children.

A zygote imports TensorFlow once, then forks a child per request, so that each child starts
in milliseconds instead of seconds. Commands on stdin, one per line; answers on stdout, each
line in one `write` (atomic on a pipe, so a child's output or a SIGKILL never splits one):

- ``run {json}``: forks a child that runs ``child(job)`` and exits as an interpreter does (0,
  or 1 with the traceback on stderr if it raised; ``SystemExit`` gives its code; ``atexit``
  handlers run first); answers ``pid N``.
- ``wait N``: waits for child N; answers ``exit N CODE`` (CODE negative: killed by a signal).
- ``poll N``: does not wait: ``exit N CODE`` if child N has ended, else ``running N``.
- ``quit``: returns.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import traceback
from collections.abc import Callable


def say(line: str) -> None:
    """One line to the test, in one `write`."""
    os.write(1, (line + "\n").encode())


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _fork(child: Callable[[dict], None], job: dict) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never returns into the zygote's loop
        child(job)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        # As at an interpreter's exit (e.g. TensorFlow's autograph deletes its temporary
        # files), then `_exit`: never back into the zygote's loop.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(child: Callable[[dict], None]) -> None:
    """Answers the commands above until ``quit`` or the end of stdin."""
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "run":
            say(f"pid {_fork(child, json.loads(rest))}")
        elif command == "wait":
            _, status = os.waitpid(int(rest), 0)
            say(f"exit {rest} {os.waitstatus_to_exitcode(status)}")
        elif command == "poll":
            pid, status = os.waitpid(int(rest), os.WNOHANG)
            say(f"exit {rest} {os.waitstatus_to_exitcode(status)}" if pid else f"running {rest}")
        elif command == "quit":
            return
