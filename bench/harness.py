"""Timing harness: repeated runs, per-stage statistics, peak memory, machine facts.

A *side* (the engine or the reference) is a callable that runs one full
workload and returns a :class:`RunRecord`: seconds per stage measured inside
with :func:`time.perf_counter`, and counts (classifier evaluations, concepts).
:func:`measure` runs a side ``warmup`` times untimed and ``repeat`` times
timed, tracking the peak resident memory of each timed run, and
:func:`compare` puts two sides together, computing every ratio from the
measured medians. Nothing here ever invents a number: a stage a side did not
measure has no entry, and a ratio exists only where both sides measured it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.errors import EacError
from .load import LOAD_LIMIT_PER_CORE, LoadMonitor, LoadRecord, Verdict, load_verdict

#: Seconds between two samples of the resident set size.
RSS_SAMPLE_INTERVAL_S = 0.005
#: Label put on reduced runs, everywhere their results are printed or written.
QUICK_LABEL = "QUICK"
#: Photograph of the explain / concepts workloads (any ``skimage.data`` colour image). It lives here, in a
#: module without torch, because `eac bench`'s argument parser (built on every `eac` command) needs it too.
DEFAULT_PHOTO = "astronaut"
#: Name of the stage holding a run's total wall time.
TOTAL = "total"
#: Table columns holding ratios of times: withheld from the printed report when its runs were under load.
RATIO_HEADERS = ("speed-up", "time / eac", "speed-up vs fp32")
#: What a withheld ratio cell shows.
WITHHELD = "withheld (load)"
#: Name of the load record that spans a whole workload (sides have their own).
WHOLE_RUN = "whole run"
_KIB = 1024
_MIB = 1024 * 1024


class BenchError(EacError):
    """A benchmark cannot run (missing model, missing engine piece, bad option)."""


@dataclass
class RunRecord:
    """What one run of one side measured.

    Attributes
    ----------
    stages : dict of str to float
        Seconds per stage, in the order the stages ran. :func:`measure` adds
        ``"total"`` (wall time of the whole call) when absent.
    counts : dict of str to int or float
        Workload counts: ``"evaluations"`` (classifier evaluations),
        ``"concepts"``, ...
    info : dict
        Anything else worth keeping (settings, provider, the result itself).
    detail : dict of str to float
        The side's own finer breakdown (seconds), not comparable across sides
        (each side cuts its work differently); reported as "where the time goes".
    """

    stages: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, float] = field(default_factory=dict)


# --- memory --------------------------------------------------------------------------------------


def current_rss() -> int:
    """Resident set size of this process in bytes (0 when it cannot be read)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional
    except ImportError:
        return 0
    try:
        return int(psutil.Process().memory_info().rss)
    except (OSError, psutil.Error):
        return 0


def _read_hwm() -> int | None:
    """Peak RSS since the last reset (``VmHWM``), bytes; None where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * _KIB
    except (OSError, ValueError):
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Track the peak resident memory of this process during a block.

    Uses the kernel's counter (``VmHWM``, reset through ``/proc/self/clear_refs``)
    when possible — exact, and no extra thread competes with the measured code —
    and a sampling thread otherwise. ``peak`` is in bytes, ``baseline`` the RSS on entry,
    ``method`` says how it was measured.
    """

    def __init__(self, interval: float = RSS_SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.peak = 0
        self.baseline = 0
        self.method = "sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel = False

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> PeakMemory:
        self.baseline = current_rss()
        self.peak = self.baseline
        self._kernel = _reset_hwm() and _read_hwm() is not None
        self.method = "kernel VmHWM" if self._kernel else "sampled"
        self._stop.clear()
        self._thread = None
        if not self._kernel:  # the kernel counter needs no thread competing for the GIL
            self._thread = threading.Thread(target=self._sample, name="eac-bench-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss())
        if self._kernel:
            hwm = _read_hwm()
            if hwm is not None:
                self.peak = max(self.peak, hwm)
        if self.peak == 0:  # no /proc, no psutil: the process-lifetime peak is all there is
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB
            self.method = "process lifetime ru_maxrss"


# --- statistics ----------------------------------------------------------------------------------


@dataclass
class StageStats:
    """Median, min and max seconds of one stage over the timed runs."""

    median: float
    min: float
    max: float
    runs: list[float]

    @classmethod
    def of(cls, values: list[float]) -> StageStats:
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)), [float(v) for v in values])

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "runs_s": self.runs}


@dataclass
class SideResult:
    """Everything measured for one side over its timed runs."""

    name: str
    stages: dict[str, StageStats]
    counts: dict[str, float]
    peak_rss_bytes: int
    peak_rss_increase_bytes: int
    memory_method: str
    warmup: int
    repeat: int
    info: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, StageStats] = field(default_factory=dict)
    load: list[LoadRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
            "detail": {k: v.to_dict() for k, v in self.detail.items()},
            "counts": self.counts,
            "peak_rss_mb": self.peak_rss_bytes / _MIB,
            "peak_rss_increase_mb": self.peak_rss_increase_bytes / _MIB,
            "memory_method": self.memory_method,
            "warmup": self.warmup,
            "repeat": self.repeat,
            "info": self.info,
            "load": [r.to_dict() for r in self.load],
        }


class _SideRuns:
    """The timed runs of one side, gathered as they come (sides alternate)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.per_stage: dict[str, list[float]] = {}
        self.per_detail: dict[str, list[float]] = {}
        self.counts: dict[str, float] | None = None
        self.info: dict[str, Any] = {}
        self.peak, self.increase, self.method = 0, 0, "sampled"
        self.load: list[LoadRecord] = []

    def add(self, record: RunRecord, wall: float, mem: PeakMemory, load: LoadRecord | None) -> None:
        stages = dict(record.stages)
        stages.setdefault(TOTAL, wall)
        for stage, seconds in stages.items():
            self.per_stage.setdefault(stage, []).append(float(seconds))
        for stage, seconds in record.detail.items():
            self.per_detail.setdefault(stage, []).append(float(seconds))
        if self.counts is not None and self.counts != record.counts:
            raise BenchError(f"{self.name}: counts changed between runs ({self.counts} then {record.counts}); "
                             "runs must be seeded")
        self.counts = dict(record.counts)
        self.info = record.info
        self.peak = max(self.peak, mem.peak)
        self.increase = max(self.increase, mem.peak - mem.baseline)
        self.method = mem.method
        if load is not None:
            self.load.append(load)

    def result(self, warmup: int, repeat: int) -> SideResult:
        missing = [s for s, v in self.per_stage.items() if len(v) != repeat]
        if missing:
            raise BenchError(f"{self.name}: stages {missing} were not measured in every run")
        return SideResult(
            name=self.name,
            stages={s: StageStats.of(v) for s, v in self.per_stage.items()},
            counts=self.counts or {},
            peak_rss_bytes=int(self.peak),
            peak_rss_increase_bytes=int(max(self.increase, 0)),
            memory_method=self.method,
            warmup=warmup,
            repeat=repeat,
            info=self.info,
            detail={s: StageStats.of(v) for s, v in self.per_detail.items() if len(v) == repeat},
            load=self.load,
        )


def measure_sides(runs: Mapping[str, Callable[[], RunRecord]], warmup: int = 0, repeat: int = 1,
                  progress: Callable[[str], None] | None = None,
                  monitor: Callable[[], LoadMonitor] | None = LoadMonitor) -> dict[str, SideResult]:
    """Run every side ``warmup`` times untimed, then ``repeat`` times timed, the sides alternating.

    Round ``i`` runs each side once, in the order of ``runs`` (engine, reference, engine,
    reference, ...), so a change of the machine's load during the benchmark falls on all
    sides alike instead of on whichever ran last. Every timed run is wrapped in a
    :class:`~eac.bench.load.LoadMonitor` (load average and CPU time before, during and after).

    Parameters
    ----------
    runs : mapping of str to callable
        Side name ("engine", "reference", ...) → runs the whole workload once and returns
        its :class:`RunRecord`.
    warmup, repeat : int
        Untimed and timed runs per side (``repeat`` ≥ 1).
    progress : callable, optional
        Receives one line per run.
    monitor : callable, optional
        Makes the load monitor of one run (None: no load readings).

    Returns
    -------
    dict of str to SideResult
        Per side: per-stage statistics, the counts of its last run (they must not change
        between runs; a change raises), the peak RSS over its timed runs and the load
        record of each timed run.
    """
    if repeat < 1:
        raise BenchError(f"--repeat must be at least 1 (got {repeat})")
    if warmup < 0:
        raise BenchError(f"--warmup must be 0 or more (got {warmup})")
    for i in range(warmup):
        for name, run in runs.items():
            if progress:
                progress(f"{name}: warm-up {i + 1}/{warmup}")
            run()
    gathered = {name: _SideRuns(name) for name in runs}
    for i in range(repeat):
        for name, run in runs.items():
            if progress:
                progress(f"{name}: run {i + 1}/{repeat}")
            load = monitor() if monitor is not None else None
            with PeakMemory() as mem, (load if load is not None else contextlib.nullcontext()):
                start = time.perf_counter()
                record = run()
                wall = time.perf_counter() - start
            gathered[name].add(record, wall, mem, load.record if load is not None else None)
    return {name: side.result(warmup, repeat) for name, side in gathered.items()}


def measure(name: str, run: Callable[[], RunRecord], warmup: int = 0, repeat: int = 1,
            progress: Callable[[str], None] | None = None,
            monitor: Callable[[], LoadMonitor] | None = LoadMonitor) -> SideResult:
    """One side alone: :func:`measure_sides` with a single side (see there)."""
    return measure_sides({name: run}, warmup, repeat, progress, monitor)[name]


def ratios(engine: SideResult, reference: SideResult) -> dict[str, float]:
    """reference median / engine median for every stage both sides measured."""
    out: dict[str, float] = {}
    for stage, ref in reference.stages.items():
        eng = engine.stages.get(stage)
        if eng is not None and eng.median > 0:
            out[stage] = ref.median / eng.median
    return out


# --- machine -------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_model() -> str | None:
    """The first GPU's name, from ``nvidia-smi`` (None when there is none)."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if names else None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def machine_info(ort_threads: int | None = None) -> dict[str, Any]:
    """Machine and software facts recorded with every result."""
    from ..engine.manifest import eac_version

    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "eac": eac_version(),
            "numpy": _version("numpy"),
            "onnxruntime": _version("onnxruntime"),
            "torch": _version("torch"),
            "opencv": _version("cv2"),
            "segment_anything": None,
        },
        "threads": {"onnxruntime_intra_op": ort_threads if ort_threads is not None
                    else f"default (one per physical core; {os.cpu_count()} logical CPUs)"},
    }
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["versions"]["segment_anything"] = version("segment-anything")
    except PackageNotFoundError:
        info["versions"]["segment_anything"] = None
    try:
        import torch

        info["threads"]["torch_intra_op"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


# --- report --------------------------------------------------------------------------------------


@dataclass
class BenchReport:
    """A finished benchmark: sides, ratios, extra tables, machine facts."""

    workload: str
    quick: bool
    command: str
    sides: dict[str, SideResult]
    ratios: dict[str, float]
    machine: dict[str, Any]
    provider: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    run_load: LoadRecord | None = None
    load_limit_per_cpu: float = LOAD_LIMIT_PER_CORE
    #: A workload that judges its load itself (:func:`eac.bench.load.others_verdict`) sets its verdict here.
    own_verdict: Verdict | None = None
    #: The two sides the stage table compares (and ``ratios`` divides).
    headline: tuple[str, str] = ("engine", "reference")

    @property
    def label(self) -> str:
        return f"{self.workload} ({QUICK_LABEL} reduced run)" if self.quick else self.workload

    @property
    def verdict(self) -> Verdict:
        """Whether the numbers are a result: every load reading of every timed run (and of the
        whole workload) at or below the limit (:func:`eac.bench.load.load_verdict`), unless the workload
        gave its own verdict."""
        if self.own_verdict is not None:
            return self.own_verdict
        runs: dict[str, list[LoadRecord]] = {name: side.load for name, side in self.sides.items() if side.load}
        if self.run_load is not None:
            runs[WHOLE_RUN] = [self.run_load]
        return load_verdict(runs, self.load_limit_per_cpu)

    def to_dict(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "workload": self.workload,
            "quick": self.quick,
            "label": QUICK_LABEL if self.quick else "full",
            "command": self.command,
            "verdict": verdict.to_dict(),
            "provider": self.provider,
            "settings": self.settings,
            "machine": self.machine,
            "load_whole_run": self.run_load.to_dict() if self.run_load is not None else None,
            "sides": {k: v.to_dict() for k, v in self.sides.items()},
            # Ratios measured under load are not a result: kept apart, under a name that says so.
            "ratios": self.ratios if verdict.result else {},
            "ratios_not_a_result": {} if verdict.result else self.ratios,
            "extra": self.extra,
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write every number as JSON (atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        tmp.replace(path)
        return path

    def render(self) -> str:
        """The printed report: header, stage table, extra tables, machine facts."""
        lines = []
        banner = f"eac bench {self.label}"
        if self.quick:
            banner += f" — {QUICK_LABEL}: tiny models / fewer evaluations; NOT comparable with full runs"
        lines.append(banner)
        lines.append(f"command: {self.command}")
        verdict = self.verdict
        lines.append(verdict_line(verdict))
        if self.sides:
            lines.append("")
            lines.append(format_stage_table(self, verdict.result))
        load = format_load_table(self)
        if load:
            lines.append("")
            lines.append(load)
        detail = format_detail_table(self)
        if detail:
            lines.append("")
            lines.append(detail)
        for title, header, rows in self.tables:
            lines.append("")
            lines.append(f"{title}{' [' + QUICK_LABEL + ']' if self.quick else ''}")
            lines.append(format_table(header, rows if verdict.result else withhold_ratios(header, rows)))
        m = self.machine
        v = m.get("versions", {})
        lines.append("")
        lines.append(
            f"machine: {m.get('cpu')} ({m.get('cpu_count')} logical CPUs)"
            + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
            + f"; provider {self.provider or 'n/a'}; threads {json.dumps(m.get('threads', {}))}"
        )
        lines.append(
            "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
            + f"; python {m.get('python')}; {m.get('date_utc')}"
        )
        if self.quick:
            lines.append(f"[{QUICK_LABEL}] reduced run: numbers show that the harness works, not product speed")
        return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _fmt_seconds(s: float) -> str:
    if s >= 100:
        return f"{s:.0f}"
    if s >= 10:
        return f"{s:.1f}"
    if s >= 0.1:
        return f"{s:.2f}"
    return f"{s:.3f}"


def _fmt_stat(stats: StageStats | None, repeat: int) -> str:
    if stats is None:
        return "—"
    if repeat == 1:
        return _fmt_seconds(stats.median)
    return f"{_fmt_seconds(stats.median)} [{_fmt_seconds(stats.min)}–{_fmt_seconds(stats.max)}]"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain monospace table (also valid Markdown)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def verdict_line(verdict: Verdict) -> str:
    """One line saying whether the report is a result, and the load that decided it."""
    if verdict.result and verdict.reason:
        return f"load: a result — {verdict.reason}"
    if verdict.result:
        return (f"load: a result — the 1-minute load average stayed at or below {verdict.limit_per_cpu:g} per CPU "
                f"(highest {verdict.max_per_cpu:.2f}, {verdict.worst})")
    return f"NOT A RESULT: {verdict.reason}. Ratios are withheld (the JSON keeps them as ratios_not_a_result)."


def side_load(side: SideResult) -> str:
    """The highest 1-minute load average per CPU over a side's timed runs, for a table cell ("—" unknown)."""
    finite = [r.max_per_cpu for r in side.load if r.max_per_cpu == r.max_per_cpu]
    return f"{max(finite):.2f}" if finite else "—"


#: Header of the load column beside ratio columns.
LOAD_HEADER = "max load / CPU"


def withhold_ratios(header: list[str], rows: list[list[str]]) -> list[list[str]]:
    """``rows`` with every cell of a ratio column (:data:`RATIO_HEADERS`) replaced by :data:`WITHHELD`."""
    columns = [i for i, h in enumerate(header) if h in RATIO_HEADERS]
    return [[WITHHELD if i in columns and str(cell).strip() not in ("", "—") else cell for i, cell in enumerate(row)]
            for row in rows]


def _fmt_load(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}"


def format_load_table(report: BenchReport) -> str:
    """Per timed run: load average before / during (mean, max) / after, CPU time the process got."""
    rows = []
    named: list[tuple[str, list[LoadRecord]]] = [(n, s.load) for n, s in report.sides.items() if s.load]
    if report.run_load is not None:
        named.append((WHOLE_RUN, [report.run_load]))
    for name, records in named:
        for i, rec in enumerate(records):
            during_max = max(rec.during) if rec.during else None
            share = rec.others_share
            rows.append([name, str(i + 1) if len(records) > 1 or name != WHOLE_RUN else "—",
                         _fmt_load(rec.before), f"{_fmt_load(rec.mean_during)} / {_fmt_load(during_max)}",
                         _fmt_load(rec.after), _fmt_load(rec.max_per_cpu),
                         f"{_fmt_seconds(rec.cpu_seconds)} / {_fmt_seconds(rec.wall_seconds)}",
                         "—" if share is None else f"{100 * share:.0f} %"])
    if not rows:
        return ""
    cpus = named[0][1][0].cpus
    title = (f"machine load per timed run (1-minute load average; {cpus} logical CPUs; limit "
             f"{report.load_limit_per_cpu:g} per CPU)")
    header = ["run of", "#", "before", "during mean / max", "after", "max per CPU", "CPU s / wall s (this process)",
              "CPU taken by other processes"]
    return title + "\n" + format_table(header, rows)


def format_stage_table(report: BenchReport, show_ratios: bool = True) -> str:
    """Per stage: engine and reference median [min–max] seconds, and their ratio (withheld under load)."""
    engine = report.sides.get(report.headline[0])
    reference = report.sides.get(report.headline[1])
    order: list[str] = []
    for side in (reference, engine):
        if side is not None:
            order.extend(s for s in side.stages if s not in order and s != TOTAL)
    order.append(TOTAL)
    header = ["stage", f"{report.headline[0]} s (median [min–max])", f"{report.headline[1]} s (median [min–max])",
              "speed-up"]
    rows = []
    for stage in order:
        e = engine.stages.get(stage) if engine else None
        r = reference.stages.get(stage) if reference else None
        ratio = report.ratios.get(stage)
        ratio_text = "—" if ratio is None else (f"{ratio:.1f}×" if show_ratios else WITHHELD)
        rows.append([stage, _fmt_stat(e, engine.repeat if engine else 1),
                     _fmt_stat(r, reference.repeat if reference else 1), ratio_text])
    count_keys: list[str] = []
    for side in (engine, reference):
        if side is not None:
            count_keys.extend(k for k in side.counts if k not in count_keys)
    for key in count_keys:
        rows.append([f"# {key}", _fmt_count(engine.counts.get(key) if engine else None),
                     _fmt_count(reference.counts.get(key) if reference else None), ""])
    rows.append(["peak RSS MB (rise in run)",
                 _fmt_mem(engine) if engine else "—", _fmt_mem(reference) if reference else "—", ""])
    warmup = max(s.warmup for s in report.sides.values())
    repeat = max(s.repeat for s in report.sides.values())
    title = f"runs: warm-up {warmup}, timed {repeat}" + (" (sides alternating)" if repeat > 1 else "")
    loads = [f"{name} {side_load(side)}" for name, side in report.sides.items() if side_load(side) != "—"]
    if loads:
        title += "; highest load per CPU: " + ", ".join(loads) + f" (limit {report.load_limit_per_cpu:g})"
    if report.quick:
        title += f" [{QUICK_LABEL}]"
    return title + "\n" + format_table(header, rows)


def format_detail_table(report: BenchReport) -> str:
    """Each side's own finer stage breakdown (median seconds and share of its total)."""
    rows = []
    for name, side in report.sides.items():
        total = side.stages[TOTAL].median if TOTAL in side.stages else 0.0
        for stage, stats in side.detail.items():
            share = f"{100 * stats.median / total:.0f} %" if total > 0 else "—"
            rows.append([name, stage, _fmt_seconds(stats.median), share])
    if not rows:
        return ""
    title = "where the time goes (each side's own breakdown; not comparable row by row)"
    if report.quick:
        title += f" [{QUICK_LABEL}]"
    return title + "\n" + format_table(["side", "part", "median s", "of side total"], rows)


def _fmt_count(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{int(value)}" if float(value).is_integer() else f"{value:.3g}"


def _fmt_mem(side: SideResult) -> str:
    return f"{side.peak_rss_bytes / _MIB:.0f} (+{side.peak_rss_increase_bytes / _MIB:.0f})"
