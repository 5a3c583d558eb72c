"""The estimator study's quick mode runs and ranks the estimators the way the full study does."""

from __future__ import annotations

import json

from eac.bench.study_estimators import main


def test_quick_study_new_estimator_beats_the_old_one_and_kernelshap(tmp_path, capsys):
    out = tmp_path / "quick.json"
    assert main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["quick"] is True
    assert "(QUICK)" in capsys.readouterr().out
    rows = {(s["method"], s["budget"]): s for s in result["summary"]}
    eac = rows[("eac", 256)]
    assert eac["evaluations"] <= 256
    assert eac["efficiency_gap"] <= 1e-9
    # the control variate earns its keep: lower max error than the old surrogate-only
    # estimator, than paired KernelSHAP, and than the plain (g ≡ 0) estimator
    assert eac["max_error"] < rows[("surrogate-only", 256)]["max_error"]
    assert eac["max_error"] < rows[("kernelshap", 256)]["max_error"]
    assert eac["max_error"] < 0.5 * rows[("eac-none", 256)]["max_error"]
    assert rows[("surrogate-only", 256)]["efficiency_gap"] > 1e-3  # the old one is not efficient
    assert rows[("loo", None)]["max_error"] > 0.05
