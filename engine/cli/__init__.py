"""The ``eac`` command: one module per subcommand, above the engine.

Nothing under :mod:`eac.engine` outside this package imports the command line;
subcommands that need :mod:`eac.export` or :mod:`eac.bench` import them lazily,
here and nowhere else in the engine, so ``eac explain`` never imports torch and
``eac export``/``eac bench`` fail with one line when the export extra is missing.

Exit codes: 0 success; 1 some images failed or had no concepts (the others were
written); 2 a usage or input error (one line on stderr); 130 interrupted.
"""

from __future__ import annotations

import os

#: numpy's BLAS threads for the command (unless the user set them): the numeric kernels work on small
#: matrices, where a second BLAS thread spinning beside ONNX Runtime's threads made the values stage up
#: to 10× slower on a busy 2-core machine (measured: 7.8 s vs 0.83 s for one eac estimate at N = 28).
#: ONNX Runtime has its own thread pool and is not affected, nor is torch in `eac bench` (OpenMP and
#: MKL, not numpy's OpenBLAS). Set before numpy is first imported.
BLAS_THREAD_VARIABLE = "OPENBLAS_NUM_THREADS"
os.environ.setdefault(BLAS_THREAD_VARIABLE, "1")

import argparse  # noqa: E402 - after the BLAS setting above
import sys  # noqa: E402 - after the BLAS setting above
import traceback  # noqa: E402 - after the BLAS setting above
from collections.abc import Sequence  # noqa: E402 - after the BLAS setting above
from typing import NoReturn  # noqa: E402 - after the BLAS setting above

from ..errors import EacError  # noqa: E402 - after the BLAS setting above
from . import bench, concepts, demo, explain, export, runreport, sanity, serve  # noqa: E402 - after the BLAS setting

#: Subcommand modules, in --help order; each has ``register(subparsers)``.
SUBCOMMANDS = (export, concepts, explain, demo, runreport, sanity, serve, bench)
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2
#: Exit code when the output's reader closed the pipe (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line (``eac: error: ...``) instead of the usage block.

    Subcommand parsers are made of the same class, so ``eac explain --workers 0`` prints
    ``eac: error: argument --workers: must be at least 1, got 0 (see `eac explain --help`)``.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"eac: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but arguments no parser took are reported with the subcommand's help to see."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(EXIT_USAGE, f"eac: error: unrecognized arguments: {' '.join(extras)} (see `{prog} --help`)\n")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    """The ``eac`` argument parser with every subcommand."""
    parser = OneLineErrorParser(
        prog="eac",
        description="Explain Any Concept with ONNX Runtime: SAM concepts, Shapley values, no torch at run time.",
    )
    parser.add_argument("--version", action="store_true", help="print the eac version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def version_line() -> str:
    """``eac --version``: the version, the distribution, and the providers ONNX Runtime offers (or how to
    install it: the base install has none, and must still print its version)."""
    from ..distribution import DISTRIBUTION, installed_version

    try:
        from ..session import available_providers

        providers = ", ".join(available_providers())
    except EacError as exc:  # no ONNX Runtime: the message says which extra to add
        providers = f"none ({exc})"
    return f"eac {installed_version()} ({DISTRIBUTION}); ONNX Runtime providers: {providers}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``eac`` with ``argv`` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = _run(parser, args)
        # Output to a pipe is buffered: a reader that went away shows at this flush, where it is handled, rather
        # than at the interpreter's exit ("Exception ignored ... BrokenPipeError", exit 120).
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (`eac ... | head`): stop quietly, as other commands do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush of stdout at exit must not fail again
        return EXIT_BROKEN_PIPE


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command ``args`` names; eac's errors and Ctrl-C as one line and an exit code."""
    if not args.version and not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        if args.version:
            print(version_line())
            return 0
        return int(args.func(args) or 0)
    except EacError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"eac: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("eac: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
