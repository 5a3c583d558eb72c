"""The explainer study (bench/study_explainer.py) runs and compares with exact Shapley values."""

from __future__ import annotations

from eac.bench.study_explainer import main

#: N = 12 grid cells: 2^12 coalitions exceed eac's budget, so it estimates (no enumeration).
STUDY_N = 12


def test_study_prints_fidelity_against_exact_values(capsys):
    assert main(["--scenes", "1", "--concepts", "grid", "--n", str(STUDY_N), "--variants", "n32default"]) == 0
    out = capsys.readouterr().out
    # Columns after the (free-text) method name: N evals sec rho_ex min top1ex ...
    rows = {line[:70].strip(): line[70:].split() for line in out.splitlines() if line.startswith("eac")}
    assert set(rows) == {"eac", "eac-surrogate"}
    n, evals, rho = (float(rows["eac"][i]) for i in (0, 1, 3))
    assert n == STUDY_N
    assert 2 * STUDY_N < evals <= 512 + 1  # estimated within its budget, not enumerated
    assert rho >= 0.9  # ... and close to the exact Shapley values of the classifier
