"""Every code sample in README.rst runs, in order, as a reader would run it.

- ``.. code-block:: python`` blocks run one after the other in one namespace, in a temporary
  directory (the first block defines ``x``, ``y`` and ``build_model``; later blocks use what
  earlier ones made, as the README says).
- ``.. code-block:: console`` blocks run each ``$ keras-ckpt ...`` line through the same
  ``main`` the console script calls; the printed lines must match the README's, with every
  number allowed to differ (times, sizes, metric values, the suffixes Keras adds to
  automatic names; blank lines are not compared),
  and ``; echo "exit code $?"`` must print the exit code shown.
- ``.. code-block:: text`` blocks are signatures, and ``::`` blocks shell commands or sample
  output; neither is run here (CI runs the test command itself).
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import matplotlib
import pytest

from keras_ckpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
_START = re.compile(r"^\.\. code-block:: (\w+)\s*$")
_EXIT = '; echo "exit code $?"'


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line number) of each ``.. code-block::`` in `text`, in order."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _START.match(lines[i])
        i += 1
        if not match:
            continue
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(":")):
            i += 1
        start = i
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            i += 1
        blocks.append((match.group(1), textwrap.dedent("\n".join(lines[start:i])), start + 1))
    return blocks


def _shape(line: str) -> str:
    """A line with numbers masked, Keras' name suffixes (`sequential_3`) dropped and runs of
    spaces collapsed."""
    return " ".join(re.sub(r"\d+", "N", re.sub(r"_\d+", "", line)).split())


def _run_console(block: str, where: str, capsys) -> None:
    sessions: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            sessions.append((line[2:], []))
        elif line.strip():
            sessions[-1][1].append(line)
    for command, expected in sessions:
        echo = command.endswith(_EXIT)
        argv = shlex.split(command.removesuffix(_EXIT))
        assert argv[0] == "keras-ckpt", f"{where}: only keras-ckpt commands are run"
        code = main(argv[1:])
        captured = capsys.readouterr()
        printed = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
        if echo:
            printed.append(f"exit code {code}")
        else:
            assert code == 0, f"{where}: `{command}` exited {code}: {captured.err}"
        assert [_shape(x) for x in printed] == [_shape(x) for x in expected], (
            f"{where}: `{command}` printed:\n" + "\n".join(printed)
        )
        if echo:
            assert printed[-1] == expected[-1], f"{where}: `{command}` exit code"


def test_every_readme_code_sample_runs(tmp_path, monkeypatch, capsys):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks((ROOT / "README.rst").read_text())
    languages = [language for language, _, _ in blocks]
    assert languages.count("python") >= 10 and languages.count("console") >= 4
    namespace: dict[str, object] = {"__name__": "readme"}
    for language, code, line in blocks:
        where = f"README.rst line {line}"
        if language == "python":
            # Padded so that a traceback points at the README's own line numbers.
            source = "\n" * (line - 1) + code
            exec(compile(source, str(ROOT / "README.rst"), "exec"), namespace)  # noqa: S102
            capsys.readouterr()
        elif language == "console":
            _run_console(code, where, capsys)
        else:
            assert language == "text", f"{where}: unknown block language {language}"
    # what the samples say they write is there
    for path in ("runs/best", "runs/last", "export/digits/1", "last.png", "best.png"):
        assert (tmp_path / path).exists(), path


def test_code_blocks_are_found_with_their_indented_body():
    text = "Intro\n\n.. code-block:: python\n\n    a = 1\n\n    b = a\n\nAfter\n"
    assert code_blocks(text) == [("python", "a = 1\n\nb = a\n", 5)]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("runs/best/ckpt-450  0.1529  5.5 KB", "runs/best/ckpt-90 0.9000 55.8 KB", True),
        ("runs/best: 2 checkpoints", "runs/last: 2 checkpoints", False),
        ("adam_4/sequential_9_head_bias (N,)", "adam/sequential_head_bias (10,)", True),
    ],
)
def test_console_lines_compare_with_numbers_free(a, b, same):
    assert (_shape(a) == _shape(b)) is same
