"""Which function runs each ``eac bench`` workload: one line per workload.

A workload is ``"module:function"``; the function takes a :class:`~eac.bench.options.BenchOptions`
and returns a :class:`~eac.bench.harness.BenchReport`. Modules are imported only when their
workload runs, so this module stays light (no torch): ``eac bench``'s argument parser, built on
every ``eac`` command, reads :data:`WORKLOADS` from here. Workload modules never import each other.
"""

from __future__ import annotations

import importlib
from typing import Any

from .harness import BenchError, BenchReport
from .load import LoadMonitor

#: Workload name → ``"module:function"`` that runs it. Add a workload with one line here.
WORKLOAD_RUNNERS: dict[str, str] = {
    "explain": "eac.bench.workloads:run_explain",
    "concepts": "eac.bench.workloads:run_concepts",
    "end-to-end": "eac.bench.end_to_end:run_end_to_end",
    "fidelity": "eac.bench.workloads:run_fidelity",
    "peers": "eac.bench.peers:run_peers",
    "serve": "eac.bench.serve:run_serve",
    "sanity": "eac.bench.sanity:run_sanity",
}
WORKLOADS = tuple(WORKLOAD_RUNNERS)


def runner(name: str):
    """The function that runs workload ``name`` (imported now)."""
    if name not in WORKLOAD_RUNNERS:
        raise BenchError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    module, _, function = WORKLOAD_RUNNERS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_workload(opts: Any) -> BenchReport:
    """Run ``opts.workload`` and return its report, with the machine's load over the whole run."""
    run = runner(opts.workload)
    if opts.n_concepts is not None and opts.n_concepts < 1:
        raise BenchError(f"--n-concepts must be at least 1 (got {opts.n_concepts})")
    with LoadMonitor() as whole:
        report = run(opts)
    report.run_load = whole.record
    return report
