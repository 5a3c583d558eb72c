"""``python -m eac.bench.study_ort_options --quick``: every configuration measured, ratios to the default."""

from __future__ import annotations

import json
from statistics import median

import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage")

INT8_ROW = "int8 (static, per-channel, 7-bit weights)"


def test_study_measures_each_configuration(tmp_path, capsys, monkeypatch):
    from eac.bench.study_ort_options import DEFAULT_ROW, main

    monkeypatch.setenv("EAC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study.json"
    configs = [DEFAULT_ROW, "no spinning", "batch 8", INT8_ROW]
    assert main(["--quick", "--quiet", "--models", "tiny", "--rounds", "2", "--images", "8", "--configs", *configs,
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "QUICK" in printed and ("NOT A RESULT" in printed or "load: a result" in printed)
    data = json.loads(out.read_text())
    rows = {r["config"]: r for r in data["rows"]}
    assert list(rows) == configs
    for row in rows.values():
        assert len(row["wall_s"]) == len(row["cpu_s"]) == 2  # one measurement per round
        assert row["images_per_s"] > 0 and row["cpu_s_per_image"] > 0
        assert row["speed_vs_default"] == pytest.approx(median(rows[DEFAULT_ROW]["wall_s"]) / median(row["wall_s"]))
    assert rows[DEFAULT_ROW]["speed_vs_default"] == pytest.approx(1.0)
    assert "max_load_per_cpu" in data["verdict"]


def test_study_refuses_configs_without_the_default(capsys):
    from eac.bench.study_ort_options import main

    with pytest.raises(SystemExit):
        main(["--quick", "--configs", "no spinning"])
    assert "default" in capsys.readouterr().err
