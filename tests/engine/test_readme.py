"""The README stays true: its method table is the registry's, its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from eac.engine.methods import methods_table, registry

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
