"""The estimator timing study runs and accounts for the estimator's phases (it asserts no times)."""

from __future__ import annotations

from eac.bench.study_estimator_time import FIRST_VERSION, PHASES, run, table, time_one
from eac.kernels.estimators import default_options


def test_phases_add_up_and_both_settings_are_timed():
    one = time_one(12, 0, {})
    assert one["rows"] <= default_options(12)["max_evaluations"]
    assert min(one[p] for p in PHASES) >= -1e-3  # CPU seconds (other = estimator − fit − terms)
    assert abs(one["fit"] + one["terms"] + one["other"] - one["estimator"]) < 1e-9
    rows = run((10,), repeat=1, log=lambda _: None)
    assert [r["settings"] for r in rows] == ["default", "first version"]
    assert all(r["estimator_ms"] > 0 for r in rows)
    assert "| 10 | first version |" in table(rows)
    assert set(FIRST_VERSION) == {"surrogate_mc", "refit"}
