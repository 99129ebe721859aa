"""The `keras-ckpt` command line: list, inspect, verify, export, plot and watch checkpoints.

Exit codes: 0 done; 1 a checkpoint problem (verify found damage, no checkpoint where one was
expected, an unreadable file, a failed export); 2 a wrong argument or a path that does not
exist. Every error is one line on stderr, never a traceback (set `KERAS_CKPT_TRACEBACK=1` to
see one).

TensorFlow is imported only by the commands that need it (`inspect`, `verify`, `export`,
`plot`): `list` of a local directory reads the records alone and starts quietly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from keras_ckpt import _fs, _layout, _report
from keras_ckpt.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["main"]

PROG = "keras-ckpt"
_EXIT_CODES = """exit codes:
  0  done
  1  a checkpoint problem (damage found, no checkpoint, unreadable file, failed export)
  2  a wrong argument, or a path that does not exist"""


class _Exit(Exception):
    """Ends the command with one line on stderr and `code`."""

    def __init__(self, message: str, code: int, prog: str = PROG) -> None:
        super().__init__(message)
        self.code = code
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage too; we print one line
        raise _Exit(f"{message} (see `{self.prog} --help`)", 2, self.prog)


# -- arguments that name files -------------------------------------------------------------------


def _directory(path: str) -> str:
    path = _fs.fspath(path)
    if _fs.isdir(path):
        return path
    if _fs.exists(path + ".index"):
        raise _Exit(f"{path} is a checkpoint, not a directory: try `{PROG} inspect {path}`", 2)
    if _fs.exists(path):
        raise _Exit(f"{path} is a file, not a checkpoint directory", 2)
    raise _Exit(f"no such directory: {path}", 2)


def _checkpoint(path: str, lenient: bool = False) -> _layout.Located:
    """A checkpoint prefix, or the latest intact one of a directory, with its record.

    Resolved as the loader resolves it (`_layout.locate`), without the warning about
    skipped damaged checkpoints (`verify` names them). `lenient`: see `locate`.
    """
    path = _fs.fspath(path)
    try:
        return _layout.locate(path, lenient=lenient, warn=False)
    except CheckpointNotFoundError:
        if _fs.isdir(path):
            why = f"{path} holds no complete checkpoint (see `{PROG} verify {path}`)"
            raise _Exit(why, 1) from None
        raise _Exit(f"no such checkpoint or directory: {path}", 2) from None


# -- commands -----------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    directory = _directory(args.directory)
    try:
        lines = _report.list_report(directory, args.monitor, args.mode)
    except ValueError as exc:  # a --monitor no checkpoint recorded
        raise _Exit(str(exc), 2) from None
    if not lines:
        raise _Exit(f"{directory} holds no checkpoints", 1)
    print("\n".join(lines))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    print("\n".join(_report.inspect_report(_checkpoint(args.checkpoint))))
    return 0


def _verify(args: argparse.Namespace) -> int:
    target = _fs.fspath(args.target)
    what = _layout.classify(target)
    if what is None:
        raise _Exit(f"no such checkpoint or directory: {target}", 2)
    from keras_ckpt._verify import verify_target  # TensorFlow: reads every tensor

    problems, count = verify_target(what)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{target}: {len(problems)} problem{'s' * (len(problems) != 1)} found")
        return 1
    print(f"{target}: {count} checkpoint{'s' * (count != 1)} intact")
    return 0


def _export(args: argparse.Namespace) -> int:
    found = _checkpoint(args.checkpoint, lenient=True)
    out = _fs.fspath(args.out)
    if _fs.exists(out) and (not _fs.isdir(out) or _fs.list_dir(out)):
        raise _Exit(f"{out} already exists and is not an empty directory: choose a new one", 2)
    _quiet_tensorflow()
    from keras_ckpt import _export

    try:  # the checkpoint's record, read once by _checkpoint, is handed on
        model = _export.model_to_export(found, None, optimizer=False)
        out = _export.write_saved_model(model, out)
    except ValueError as exc:  # model.json refused (it would run code) or not rebuildable
        raise _Exit(str(exc), 1) from None
    print(
        f"exported {found.prefix} to {out} (a SavedModel: keras_ckpt.load_saved_model or serving)"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    directory = _directory(args.directory)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise _Exit("plotting needs Matplotlib: pip install 'keras_ckpt[plot]'", 1) from None
    from keras_ckpt.plot import history_figure

    try:
        figure = history_figure(directory, args.metric, monitor=args.monitor, mode=args.mode)
        figure.savefig(args.output, dpi=args.dpi)
    except ValueError as exc:  # an unknown metric name or image format
        raise _Exit(str(exc), 2) from None
    except OSError as exc:
        raise _Exit(f"cannot write {args.output}: {exc.strerror or exc}", 1) from None
    print(f"wrote {args.output}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from keras_ckpt._watch import watch

    directory = _fs.fspath(args.directory)
    if _fs.exists(directory) and not _fs.isdir(directory):
        raise _Exit(f"{directory} is a file, not a checkpoint directory", 2)
    path = _fs.fspath(args.data)
    if not _fs.exists(path) or _fs.isdir(path):
        raise _Exit(f"--data: no such file: {path} (an .npz with arrays `x` and `y`)", 2)
    try:
        with np.load(io.BytesIO(_fs.read_bytes(path)), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as exc:
        raise _Exit(f"--data: {path} is not a readable .npz file ({exc})", 2) from None
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise _Exit(
            f"--data: {path} has no array {' or '.join(map(repr, missing))} (it has: "
            f"{', '.join(sorted(arrays)) or 'none'}); save it with np.savez(FILE, x=..., y=...)",
            2,
        )
    _quiet_tensorflow()
    try:
        watch(
            directory,
            (arrays["x"], arrays["y"]),
            monitor=args.monitor,
            mode=args.mode,
            output=args.output,
            export_best=args.export_best,
            timeout=args.timeout,
            poll_seconds=args.poll,
        )
    except ValueError as exc:  # an uncompiled model.json, an --output inside DIR, ...
        raise _Exit(str(exc), 2) from None
    return 0


def _quiet_tensorflow() -> None:
    """TensorFlow logs INFO lines while exporting; a command prints only its own."""
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


# -- the parser ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Look at, check and use the checkpoints keras_ckpt wrote.",
        epilog=_EXIT_CODES + f"\n\nRun `{PROG} COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=f"example:\n  {example}\n\n{_EXIT_CODES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def ranking(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--monitor",
            metavar="METRIC",
            help="the metric that picks the best checkpoint (default: val_loss, else loss)",
        )
        sub.add_argument(
            "--mode",
            choices=("auto", "min", "max"),
            default="auto",
            help="whether lower or higher METRIC is better (default: auto, as BestCheckpoint)",
        )

    sub = command(
        "list",
        "Table of the kept checkpoints: step, epoch, metrics, size, saved time; the latest "
        "and the best marked.",
        f"{PROG} list runs/best --monitor val_accuracy",
    )
    sub.add_argument("directory", metavar="DIR", help="a checkpoint directory")
    ranking(sub)
    sub.set_defaults(run=_list)

    sub = command(
        "inspect",
        "The variables of one checkpoint (model, then optimizer): names, shapes, dtypes and "
        "bytes, with totals.",
        f"{PROG} inspect runs/best/ckpt-1200",
    )
    sub.add_argument(
        "checkpoint", metavar="CKPT", help="a checkpoint prefix, or a directory (its latest)"
    )
    sub.set_defaults(run=_inspect)

    sub = command(
        "verify",
        "Check every kept checkpoint (files complete, sizes as recorded, readable); print one "
        "line per problem and exit 1 if there is any.",
        f"{PROG} verify runs/best",
    )
    sub.add_argument(
        "target", metavar="DIR", help="a checkpoint directory (or one checkpoint prefix)"
    )
    sub.set_defaults(run=_verify)

    sub = command(
        "export",
        "Write a checkpoint as a TensorFlow SavedModel, for serving or for "
        "keras_ckpt.load_saved_model (no model code needed: the architecture comes from "
        "model.json, or from graph/ when the run used save_graph=True).",
        f"{PROG} export runs/best export/digits/1",
    )
    sub.add_argument(
        "checkpoint", metavar="CKPT", help="a checkpoint prefix, or a directory (its latest)"
    )
    sub.add_argument("out", metavar="OUT", help="the SavedModel directory to write")
    sub.set_defaults(run=_export)

    sub = command(
        "plot",
        "Draw the metric history (history.jsonl) with the saved and kept checkpoints marked, "
        "one panel per metric family, to an image file.",
        f"{PROG} plot runs/best -o best.png --metric loss --metric val_loss",
    )
    sub.add_argument("directory", metavar="DIR", help="a checkpoint directory")
    sub.add_argument(
        "-o", "--output", required=True, metavar="FILE.png", help="the image to write"
    )
    sub.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="a metric to draw (repeatable; default: all logged)",
    )
    sub.add_argument("--dpi", type=int, default=100, help="image resolution (default: 100)")
    ranking(sub)
    sub.set_defaults(run=_plot)

    sub = command(
        "watch",
        "Evaluate every checkpoint of DIR as a training run writes it (a sidecar evaluator): "
        "one row per checkpoint in OUT/evaluations.jsonl; stops when the run ends.",
        f"{PROG} watch runs/last --data val.npz --export-best --timeout 600",
    )
    sub.add_argument("directory", metavar="DIR", help="the training run's checkpoint directory")
    sub.add_argument(
        "--data", required=True, metavar="FILE.npz", help="held-out data: arrays `x` and `y`"
    )
    sub.add_argument(
        "--monitor",
        default="loss",
        metavar="METRIC",
        help="the metric ranking the rows, for --export-best (default: loss)",
    )
    sub.add_argument(
        "--mode",
        choices=("auto", "min", "max"),
        default="auto",
        help="whether lower or higher METRIC is better (default: auto, as BestCheckpoint)",
    )
    sub.add_argument("--output", metavar="OUT", help="where the rows go (default: DIR-eval)")
    sub.add_argument(
        "--export-best", action="store_true", help="export the best checkpoint to OUT/best/"
    )
    sub.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="stop after S seconds without a new checkpoint (default: when the run ends)",
    )
    sub.add_argument(
        "--poll",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between two looks at DIR (default: 10)",
    )
    sub.set_defaults(run=_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-ckpt` with `argv` (default: the process's arguments); returns the exit code."""
    parser = _parser()
    prog = PROG
    try:
        args = parser.parse_args(argv)
        prog = f"{PROG} {args.command}"
        return args.run(args)
    except _Exit as exc:
        print(f"{exc.prog if exc.prog != PROG else prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except CheckpointError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("KERAS_CKPT_TRACEBACK"):
            raise
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
