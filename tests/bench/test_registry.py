"""The workload registry (one line per workload) and the --ort settings parser."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from eac.bench.cli import parse_ort_settings
from eac.bench.harness import BenchError
from eac.bench.registry import WORKLOAD_RUNNERS, WORKLOADS, runner


def test_every_workload_resolves_to_a_function_of_the_options():
    pytest.importorskip("torch")
    assert WORKLOADS == tuple(WORKLOAD_RUNNERS)
    for name in WORKLOADS:
        run = runner(name)
        assert callable(run) and list(inspect.signature(run).parameters) == ["opts"], name


def test_unknown_workload_names_the_choices():
    with pytest.raises(BenchError, match=r"unknown workload 'nonesuch'.*explain.*serve.*sanity"):
        runner("nonesuch")


def test_the_registry_imports_no_workload_and_no_torch():
    """`eac bench`'s parser reads WORKLOADS on every eac command: importing it must stay light."""
    code = ("import sys, eac.bench.registry; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('eac.bench.workloads', "
            "'eac.bench.peers', 'eac.bench.end_to_end', 'eac.bench.serve', 'eac.bench.sanity'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ort_settings_are_typed():
    got = parse_ort_settings(["inter_op_threads=2", "allow_spinning=off", "cpu_mem_arena=1",
                              "graph_optimization=extended", "session.set_denormal_as_zero=1"])
    assert got == {"inter_op_threads": 2, "allow_spinning": False, "cpu_mem_arena": True,
                   "graph_optimization": "extended", "config_entries": {"session.set_denormal_as_zero": "1"}}
    assert parse_ort_settings([]) == {}


@pytest.mark.parametrize("item, message", [
    ("spinning=0", "unknown setting"), ("allow_spinning=maybe", "expected 1/0"),
    ("inter_op_threads=two", "expected an integer"), ("allow_spinning", "expected KEY=VALUE"),
])
def test_bad_ort_settings_fail_in_one_line(item, message):
    with pytest.raises(BenchError, match=message):
        parse_ort_settings([item])
