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

Blocks that need more than the README shows are marked in the README itself, with RST
comments (invisible when rendered):

- ``.. readme-test: setup`` followed by an indented body: Python run (unseen by readers)
  before the next block, e.g. to define a ``make_dataset`` the sample takes for granted;
- ``.. readme-test: skip -- <reason>`` right before a block: that block is not run (a
  cluster, a cloud bucket); the reason is required.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pytest

from keras_ckpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
_START = re.compile(r"^\.\. code-block:: (\w+)\s*$")
_SETUP = re.compile(r"^\.\. readme-test: setup\s*$")
_SKIP = re.compile(r"^\.\. readme-test: skip\b(?: -- )?(.*)$")
_EXIT = '; echo "exit code $?"'


@dataclass
class Block:
    language: str  # python, console, text, or "setup" (hidden Python)
    code: str
    line: int  # of the first line of code, in the README
    skip: str | None = None  # why it is not run


def code_blocks(text: str) -> list[Block]:
    """The ``.. code-block::`` and ``.. readme-test: setup`` blocks of `text`, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    skip = None
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        marked = _SKIP.match(line)
        if marked:
            skip = marked.group(1).strip()
            assert skip, f"README.rst line {i}: say why the block is skipped"
            continue
        match = _START.match(line) or _SETUP.match(line)
        if not match:
            continue
        language = match.group(1) if match.re is _START else "setup"
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(":")):
            i += 1
        start = i
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            i += 1
        code = textwrap.dedent("\n".join(lines[start:i]))
        blocks.append(Block(language, code, start + 1, skip if language != "setup" else None))
        if language != "setup":
            skip = None
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
    run = [b.language for b in blocks if b.skip is None]
    assert run.count("python") >= 10 and run.count("console") >= 4
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in blocks:
        where = f"README.rst line {block.line}"
        if block.skip is not None:
            continue
        if block.language in ("python", "setup"):
            # Padded so that a traceback points at the README's own line numbers.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(ROOT / "README.rst"), "exec"), namespace)  # noqa: S102
            capsys.readouterr()
        elif block.language == "console":
            _run_console(block.code, where, capsys)
        else:
            assert block.language == "text", f"{where}: unknown block language"
    # what the samples say they write is there
    for path in ("runs/best", "runs/last", "export/digits/1", "last.png", "best.png"):
        assert (tmp_path / path).exists(), path


def test_code_blocks_are_found_with_their_indented_body():
    text = "Intro\n\n.. code-block:: python\n\n    a = 1\n\n    b = a\n\nAfter\n"
    assert code_blocks(text) == [Block("python", "a = 1\n\nb = a\n", 5)]


def test_setup_and_skip_markers_apply_to_the_next_block():
    text = (
        ".. readme-test: setup\n\n    data = [1, 2]\n\n"
        ".. code-block:: python\n\n    total = sum(data)\n\n"
        ".. readme-test: skip -- needs a TPU\n\n"
        ".. code-block:: python\n\n    tpu()\n\n"
        ".. code-block:: python\n\n    print(total)\n"
    )
    assert code_blocks(text) == [
        Block("setup", "data = [1, 2]\n", 3),
        Block("python", "total = sum(data)\n", 7),
        Block("python", "tpu()\n", 13, skip="needs a TPU"),
        Block("python", "print(total)", 17),
    ]
    with pytest.raises(AssertionError, match="say why"):
        code_blocks(".. readme-test: skip\n\n.. code-block:: python\n\n    x()\n")


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
