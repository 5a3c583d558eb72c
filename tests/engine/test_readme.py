"""The README stays true: its method table is the registry's, its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from eac.engine.methods import methods_table, registry
from eac.engine.methods.eac import FULL_CROP_RUNS, schedule_table
from eac.kernels.estimators import (
    DEFAULT_REL_TOL,
    DEFAULT_TOP_K,
    MIN_STRATUM_DRAWS,
    SCHEDULE_MIN_FLOOR,
    default_options,
    minimum_evaluations,
    schedule_summary,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def test_method_table_is_built_from_the_registry():
    assert methods_table() in README
    for name in registry():
        assert f"| `{name}`" in README


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    install = next(line for line in README.splitlines() if line.startswith('pip install "torch==2.13.0" -e'))
    assert install in CI
    extra = next(line for line in README.splitlines() if line.startswith("pip install --no-deps"))
    assert extra.split("#")[0].strip() in CI
    assert "python -m pytest" in README and "python -m pytest" in CI
    assert "eac demo" in CI and "ruff check" in CI


def test_the_readme_pictures_exist_and_their_command_is_shown():
    pictures = re.findall(r"(?:\]\(|src=\")(bench/results/figures/[\w.]+\.png)", README)
    assert len(pictures) >= 4
    assert all((ROOT / p).is_file() for p in pictures), pictures
    assert "python -m eac.bench.readme_figures --out bench/results/figures" in README
    assert (ROOT / "bench" / "readme_figures.py").is_file()


def test_readme_states_eacs_schedule_as_the_code_runs_it():
    """The schedule sentence and table are the code's, the numbers in the prose are its constants, and a run at
    the cap reports the cap plus the full-crop run (issue 21: the README said 512 where runs reported 513)."""
    assert schedule_summary() in README
    assert schedule_table() in README
    assert f"top-{DEFAULT_TOP_K} ranking resolved" in README
    assert f"within {DEFAULT_REL_TOL * 100:.0f} % of the largest value" in README
    assert f"consulted from max({SCHEDULE_MIN_FLOOR}, ½·E) on" in README
    assert f"2 + {2 * MIN_STRATUM_DRAWS}·⌊N/2⌋" in README and minimum_evaluations(32) == 2 + 2 * MIN_STRATUM_DRAWS * 16
    cap12 = default_options(12)["max_evaluations"]
    assert f"| 12 | {cap12} | {default_options(12)['min_evaluations']} |" in README
    assert f"| {cap12 + FULL_CROP_RUNS} |" in README
