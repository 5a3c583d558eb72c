"""Honest numbers: load readings, the verdict, alternating sides, and ratios withheld under load.

Everything here runs on made-up readings (the readers of :class:`LoadMonitor` are
parameters), so the logic is checked without depending on how busy the test machine is.
"""

from __future__ import annotations

import json

import pytest
from eac.bench.harness import (
    WITHHELD,
    BenchReport,
    RunRecord,
    SideResult,
    StageStats,
    measure_sides,
    ratios,
)
from eac.bench.load import (
    LOAD_LIMIT_PER_CORE,
    OTHERS_SHARE_LIMIT,
    LoadMonitor,
    LoadRecord,
    load_verdict,
    others_verdict,
)


def _record(*loads: float, cpus: int = 2) -> LoadRecord:
    """A record whose load readings are ``loads`` (before, during..., after)."""
    return LoadRecord(before=loads[0], during=tuple(loads[1:-1]), after=loads[-1], cpu_seconds=1.0,
                      wall_seconds=1.0, others_cpu_seconds=0.0, cpus=cpus)


def _scripted(values):
    it = iter(values)
    return lambda: next(it)


def test_monitor_records_before_during_after_and_cpu_time():
    monitor = LoadMonitor(read_load=_scripted([0.5, 2.0, 3.0, 0.7]), read_cpu=_scripted([10.0, 13.0]),
                          read_busy=_scripted([50.0, 58.0]), read_wall=_scripted([100.0, 104.0]), cpus=2, interval=0)
    with monitor:
        monitor.sample()
        monitor.sample()
    rec = monitor.record
    assert (rec.before, rec.during, rec.after) == (0.5, (2.0, 3.0), 0.7)
    assert rec.cpu_seconds == 3.0 and rec.wall_seconds == 4.0
    assert rec.others_cpu_seconds == 5.0  # the machine was busy 8 s, 3 of them ours
    assert rec.others_share == pytest.approx(5.0 / (4.0 * 2))
    assert rec.max_per_cpu == pytest.approx(1.5)
    assert rec.cpu_cores_used == pytest.approx(0.75)


def test_monitor_without_proc_stat_reports_no_other_cpu():
    monitor = LoadMonitor(read_load=_scripted([0.1, 0.2]), read_cpu=_scripted([0.0, 1.0]), read_busy=lambda: None,
                          read_wall=_scripted([0.0, 1.0]), cpus=1, interval=0)
    with monitor:
        pass
    assert monitor.record.others_cpu_seconds is None and monitor.record.others_share is None


def test_a_load_spike_during_a_run_makes_it_not_a_result():
    """Quiet before and after, busy in the middle: a check of the end points alone would pass it."""
    quiet = [_record(1.0, 1.1, 1.2)]
    spiky = [_record(1.0, 1.1, 1.2), _record(1.0, 3.4, 1.2)]  # 3.4 on 2 CPUs = 1.7 per CPU
    verdict = load_verdict({"engine": quiet, "reference": spiky})
    assert not verdict.result
    assert verdict.worst == "reference run 2"
    assert verdict.max_per_cpu == pytest.approx(1.7)
    assert "1.70 per CPU" in verdict.reason and "reference run 2" in verdict.reason


def test_load_at_the_limit_is_a_result_and_just_above_is_not():
    at = _record(1.0, 2 * LOAD_LIMIT_PER_CORE, 1.0)
    above = _record(1.0, 2 * LOAD_LIMIT_PER_CORE + 0.02, 1.0)
    assert load_verdict({"engine": [at]}).result
    assert not load_verdict({"engine": [at], "whole run": [above]}).result


def test_unreadable_load_is_not_a_result():
    nan = float("nan")
    verdict = load_verdict({"engine": [_record(nan, nan)]})
    assert not verdict.result and "could not be read" in verdict.reason


def test_sides_alternate_and_each_timed_run_gets_its_load():
    calls: list[str] = []

    def side(name: str):
        def run() -> RunRecord:
            calls.append(name)
            return RunRecord(stages={"a": 1.0}, counts={"n": 1})
        return run

    readings = iter(range(1000))

    def monitor() -> LoadMonitor:
        return LoadMonitor(read_load=lambda: float(next(readings)), read_busy=lambda: None, cpus=100, interval=0)

    sides = measure_sides({"engine": side("engine"), "reference": side("reference")}, warmup=1, repeat=2,
                          monitor=monitor)
    assert calls == ["engine", "reference"] * 3  # warm-up round, then two timed rounds, alternating
    assert [len(s.load) for s in sides.values()] == [2, 2]
    # timed runs in order engine, reference, engine, reference: before/after readings 0-1, 2-3, 4-5, 6-7
    assert [r.before for r in sides["engine"].load] == [0.0, 4.0]
    assert [r.before for r in sides["reference"].load] == [2.0, 6.0]


def _side(name: str, seconds: float, load: LoadRecord) -> SideResult:
    stats = StageStats.of([seconds])
    return SideResult(name=name, stages={"evaluations": stats, "total": stats}, counts={"evaluations": 10},
                      peak_rss_bytes=1 << 20, peak_rss_increase_bytes=0, memory_method="test", warmup=0, repeat=1,
                      load=[load])


def _report(load: float) -> BenchReport:
    engine = _side("engine", 1.0, _record(1.0, 1.0, 1.0))
    reference = _side("reference", 10.0, _record(1.0, load, 1.0))
    table = ("generators", ["side", "total s", "speed-up"], [["engine", "1.00", "10.0×"], ["reference", "10.0", "—"]])
    return BenchReport(workload="explain", quick=False, command="eac bench explain",
                       sides={"engine": engine, "reference": reference}, ratios=ratios(engine, reference),
                       machine={"cpu": "test", "cpu_count": 2, "versions": {}}, tables=[table])


def test_a_loaded_report_prints_no_ratio_and_its_json_says_why():
    report = _report(load=4.0)  # 2.0 per CPU during the reference
    text = report.render()
    assert "NOT A RESULT" in text and "reference" in text
    assert "10.0×" not in text  # neither in the stage table nor in the extra table's speed-up column
    assert text.count(WITHHELD) >= 3  # evaluations, total, the generators row
    data = json.loads(json.dumps(report.to_dict(), default=str))
    assert data["verdict"]["result"] is False and "per CPU" in data["verdict"]["reason"]
    assert data["ratios"] == {}
    assert data["ratios_not_a_result"]["total"] == pytest.approx(10.0)
    assert data["sides"]["reference"]["load"][0]["load_max_per_cpu"] == pytest.approx(2.0)


def test_a_quiet_report_prints_its_ratios_beside_the_load():
    report = _report(load=2.0)  # 1.0 per CPU
    text = report.render()
    assert "NOT A RESULT" not in text and WITHHELD not in text
    assert "10.0×" in text and "highest load per CPU" in text
    data = report.to_dict()
    assert data["verdict"]["result"] is True and data["ratios"]["total"] == pytest.approx(10.0)


def test_a_server_workload_is_judged_by_the_cpu_other_processes_took():
    """eac bench serve: 16 request threads put the load average near 16 by themselves (2026-12-03: 3.58 per CPU on
    a quiet machine), so the load average during the run cannot tell; the CPU other processes took can."""
    quiet = others_verdict(1.7, {"batching, 16": 0.01, "no batching, 16": 0.02}, cpus=2)
    assert quiet.result and "2.0 %" in quiet.reason and quiet.worst == "no batching, 16"
    busy = others_verdict(1.7, {"batching, 16": 0.01, "no batching, 16": OTHERS_SHARE_LIMIT + 0.01}, cpus=2)
    assert not busy.result and "no batching, 16" in busy.reason
    before = others_verdict(2 * (LOAD_LIMIT_PER_CORE + 0.1), {"batching, 1": 0.0}, cpus=2)
    assert not before.result and "before the run" in before.reason
    unknown = others_verdict(1.0, {"batching, 1": None}, cpus=2)
    assert not unknown.result and "unknown" in unknown.reason
    # the same run judged by the load average alone would have been withheld
    assert not load_verdict({"whole run": [LoadRecord(1.7, (7.17,), 7.17, 0.7, 145.0, 140.0, 2)]}).result
