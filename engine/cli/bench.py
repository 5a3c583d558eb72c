"""``eac bench``: registered from :mod:`eac.bench.cli` (which must stay light to import)."""

from __future__ import annotations

import argparse
import importlib.util

from ..distribution import export_hint
from .export import MissingExtraError


def _require_torch(func):
    """Run ``func`` only when PyTorch is installed (the reference side needs it); else one line."""

    def run(args: argparse.Namespace) -> int:
        if importlib.util.find_spec("torch") is None:
            raise MissingExtraError("eac bench runs the PyTorch reference beside the engine and needs PyTorch "
                                    f"(not installed); install the export extra: {export_hint()}")
        return func(args)

    return run


def register(sub: argparse._SubParsersAction) -> None:
    try:
        from ...bench.cli import register as register_bench
    except ImportError:  # bench is part of the package; absent only in trimmed installs
        return
    parser = register_bench(sub)
    parser.set_defaults(func=_require_torch(parser.get_default("func")))
