"""``eac bench``: registered from :mod:`eac.bench.cli` (which must stay light to import)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    try:
        from ...bench.cli import register as register_bench
    except ImportError:  # bench is part of the package; absent only in trimmed installs
        return
    register_bench(sub)
