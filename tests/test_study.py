"""The explainer study (bench/study_explainer.py) runs and compares with exact Shapley values."""

from __future__ import annotations

from eac.bench.study_explainer import main


def test_study_prints_fidelity_against_exact_values(capsys):
    assert main(["--scenes", "1", "--concepts", "grid", "--n", "6", "--variants", "n32default"]) == 0
    out = capsys.readouterr().out
    # Columns after the (free-text) method name: N evals sec rho_ex min top1ex ...
    rows = [line[70:].split() for line in out.splitlines() if line.startswith("eac")]
    assert len(rows) == 2
    for row in rows:
        n, evals, rho = float(row[0]), float(row[1]), float(row[3])
        assert n == 6
        assert evals <= 2 ** 6 + 1  # small N: eac enumerates instead of sampling
        assert rho > 0.99  # ... so its values are the exact Shapley values
