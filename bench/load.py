"""How busy the machine was while a benchmark ran: load average and CPU time, before, during and after.

A speed ratio means something only when both sides had the machine to themselves: other jobs on
the same cores slow the PyTorch reference (which runs Python between its kernels) more than the
engine, so ratios taken under load overstate the engine. Every timed run is wrapped in a
:class:`LoadMonitor`, which reads

* the 1-minute load average (:func:`os.getloadavg`) before the run, every
  :data:`LOAD_SAMPLE_INTERVAL_S` seconds during it (a sampling thread that wakes once a second),
  and after it;
* the CPU time this process got (:func:`time.process_time`, all its threads) and the wall time;
* the CPU time every other process on the machine got meanwhile (busy time of ``/proc/stat``
  minus this process's), where ``/proc/stat`` exists.

:func:`load_verdict` turns the readings of a whole report into its verdict: a run whose load
average went above :data:`LOAD_LIMIT_PER_CORE` per logical CPU at any reading is *not a result*
(the report prints no ratio and says why). The benchmark itself keeps the load near one per core
(ONNX Runtime and torch use every core), so the limit leaves room for it and little else.

The readers are parameters, so the logic is tested with made-up readings.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A run is a result only while the 1-minute load average stays at or below this many runnable
#: tasks per logical CPU: the benchmark's own threads account for about 1.0 per CPU (issue 18).
LOAD_LIMIT_PER_CORE = 1.2
#: Seconds between two load samples during a run (the kernel updates the load average every 5 s).
LOAD_SAMPLE_INTERVAL_S = 1.0
#: ``/proc/stat`` cpu-line fields that count as busy (user, nice, system, irq, softirq, steal).
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def read_load_average() -> float:
    """The 1-minute load average (runnable + uninterruptible tasks); NaN where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return float("nan")


def read_machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has been busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as fh:
            first = fh.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    if not first or first[0] != "cpu":
        return None
    try:
        values = [int(v) for v in first[1:]]
        return sum(values[i] for i in _BUSY_FIELDS if i < len(values)) / float(ticks)
    except ValueError:
        return None


def logical_cpus() -> int:
    """Logical CPUs of the machine (what the load average is shared among)."""
    return int(os.cpu_count() or 1)


@dataclass(frozen=True)
class LoadRecord:
    """The readings of one timed run.

    Attributes
    ----------
    before, after : float
        1-minute load average just before and just after the run.
    during : tuple of float
        1-minute load average sampled during the run (may be empty for runs shorter than a sample).
    cpu_seconds : float
        CPU time this process got during the run (all threads).
    wall_seconds : float
        Wall time of the run.
    others_cpu_seconds : float or None
        CPU time all other processes got meanwhile (None without ``/proc/stat``).
    cpus : int
        Logical CPUs of the machine.
    """

    before: float
    during: tuple[float, ...]
    after: float
    cpu_seconds: float
    wall_seconds: float
    others_cpu_seconds: float | None
    cpus: int

    @property
    def readings(self) -> tuple[float, ...]:
        """Every load reading, in time order."""
        return (self.before, *self.during, self.after)

    @property
    def max_per_cpu(self) -> float:
        """The highest load reading divided by the logical CPUs (NaN when no reading exists)."""
        finite = [v for v in self.readings if v == v]
        return max(finite) / self.cpus if finite else float("nan")

    @property
    def mean_during(self) -> float:
        """Mean of the samples during the run (of before and after when there is none)."""
        values = [v for v in (self.during or (self.before, self.after)) if v == v]
        return sum(values) / len(values) if values else float("nan")

    @property
    def cpu_cores_used(self) -> float:
        """CPU seconds this process got per wall second (≈ threads kept busy)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def others_share(self) -> float | None:
        """Fraction of the machine's CPU time other processes took during the run."""
        if self.others_cpu_seconds is None or self.wall_seconds <= 0:
            return None
        return max(self.others_cpu_seconds, 0.0) / (self.wall_seconds * self.cpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "load_before": self.before, "load_during": list(self.during), "load_after": self.after,
            "load_max_per_cpu": self.max_per_cpu, "cpu_seconds": self.cpu_seconds,
            "wall_seconds": self.wall_seconds, "cpu_cores_used": self.cpu_cores_used,
            "others_cpu_seconds": self.others_cpu_seconds, "others_cpu_share": self.others_share,
            "cpus": self.cpus,
        }


@dataclass
class LoadMonitor:
    """Context manager recording a :class:`LoadRecord` of the block it wraps (``record`` after exit).

    Parameters
    ----------
    read_load : callable
        Returns the 1-minute load average.
    read_cpu : callable
        Returns this process's CPU seconds.
    read_busy : callable
        Returns the machine's busy CPU seconds since boot, or None.
    read_wall : callable
        A monotonic clock in seconds.
    cpus : int, optional
        Logical CPUs (:func:`logical_cpus` when None).
    interval : float
        Seconds between samples during the block; 0 or less: no sampling thread (before/after only).
    """

    read_load: Callable[[], float] = read_load_average
    read_cpu: Callable[[], float] = time.process_time
    read_busy: Callable[[], float | None] = read_machine_busy_seconds
    read_wall: Callable[[], float] = time.perf_counter
    cpus: int | None = None
    interval: float = LOAD_SAMPLE_INTERVAL_S
    record: LoadRecord | None = field(default=None, init=False)
    _samples: list[float] = field(default_factory=list, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def sample(self) -> None:
        """Take one load reading now (the sampling thread calls this)."""
        self._samples.append(float(self.read_load()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> LoadMonitor:
        self.record = None
        self._samples = []
        self._stop.clear()
        self._before = float(self.read_load())
        self._busy0 = self.read_busy()
        self._cpu0 = float(self.read_cpu())
        self._wall0 = float(self.read_wall())
        if self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="eac-bench-load", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = float(self.read_wall()) - self._wall0
        cpu = float(self.read_cpu()) - self._cpu0
        busy1 = self.read_busy()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        others = None if busy1 is None or self._busy0 is None else (busy1 - self._busy0) - cpu
        self.record = LoadRecord(before=self._before, during=tuple(self._samples), after=float(self.read_load()),
                                 cpu_seconds=cpu, wall_seconds=wall, others_cpu_seconds=others,
                                 cpus=int(self.cpus or logical_cpus()))


@dataclass(frozen=True)
class Verdict:
    """Whether a report's numbers are a result.

    Attributes
    ----------
    result : bool
        True when every load reading stayed at or below the limit.
    reason : str
        Why not (empty for a result); for a result, the highest load seen.
    limit_per_cpu : float
    max_per_cpu : float
        Highest load reading per logical CPU over all runs (NaN without readings).
    worst : str
        The run that saw it ("reference run 2", "whole run", ...).
    """

    result: bool
    reason: str
    limit_per_cpu: float
    max_per_cpu: float
    worst: str

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "reason": self.reason, "limit_load_per_cpu": self.limit_per_cpu,
                "max_load_per_cpu": self.max_per_cpu, "worst_run": self.worst}


def load_verdict(runs: Mapping[str, Sequence[LoadRecord]], limit_per_cpu: float = LOAD_LIMIT_PER_CORE) -> Verdict:
    """The verdict of a report whose timed runs saw these readings.

    Parameters
    ----------
    runs : mapping of str to sequence of LoadRecord
        Per side (or ``"whole run"``), the records of its timed runs in order.
    limit_per_cpu : float
        Highest acceptable 1-minute load average per logical CPU.

    Returns
    -------
    Verdict
        Not a result when any reading of any run exceeds the limit, or when no reading could be
        taken at all (the machine's load is then unknown).
    """
    worst, worst_value, seen = "", float("-inf"), False
    for name, records in runs.items():
        for i, rec in enumerate(records):
            value = rec.max_per_cpu
            if value != value:  # NaN: no reading on this OS
                continue
            seen = True
            if value > worst_value:
                worst_value = value
                worst = name if len(records) == 1 else f"{name} run {i + 1}"
    if not seen:
        return Verdict(False, "the load average could not be read, so the machine's load is unknown",
                       limit_per_cpu, float("nan"), "")
    if worst_value > limit_per_cpu:
        return Verdict(False, f"load average reached {worst_value:.2f} per CPU during {worst} (limit "
                              f"{limit_per_cpu:g}): other jobs shared the machine; re-run on a quiet machine",
                       limit_per_cpu, worst_value, worst)
    return Verdict(True, "", limit_per_cpu, worst_value, worst)


#: A multi-process workload (a server and its clients) is a result while the processes outside it took at
#: most this share of the machine's CPU time: its own threads make the load average meaningless there.
OTHERS_SHARE_LIMIT = 0.05


def others_verdict(load_before: float, others_shares: Mapping[str, float | None], cpus: int,
                   limit_per_cpu: float = LOAD_LIMIT_PER_CORE, share_limit: float = OTHERS_SHARE_LIMIT) -> Verdict:
    """The verdict of a workload that runs in several processes of its own (``eac bench serve``).

    Its server runs one thread per request in flight, so the load average during the run counts the
    workload itself (16 clients: a load of about 16). What other jobs would take is read instead from
    ``/proc/stat``: the machine's busy CPU time minus the bench's and its server's.

    Parameters
    ----------
    load_before : float
        1-minute load average just before the workload started (the machine must be quiet then).
    others_shares : mapping of str to float or None
        Per timed part, the share of the machine's CPU time taken by processes outside the workload
        (None where ``/proc/stat`` could not be read).
    cpus : int
        Logical CPUs.

    Returns
    -------
    Verdict
        ``max_per_cpu`` is the load per CPU before the run; ``worst`` the part where others took most.
    """
    before = load_before / cpus if load_before == load_before else float("nan")
    known = {name: share for name, share in others_shares.items() if share is not None}
    worst = max(known, key=lambda name: known[name]) if known else ""
    if before != before or not known:
        return Verdict(False, "the load average or the CPU time of other processes could not be read, so the "
                              "machine's load is unknown", limit_per_cpu, before, worst)
    if before > limit_per_cpu:
        return Verdict(False, f"load average {before:.2f} per CPU before the run (limit {limit_per_cpu:g}): other "
                              "jobs shared the machine; re-run on a quiet machine", limit_per_cpu, before, "before")
    if known[worst] > share_limit:
        return Verdict(False, f"other processes took {100 * known[worst]:.0f} % of the CPU during {worst} (limit "
                              f"{100 * share_limit:g} %); re-run on a quiet machine", limit_per_cpu, before, worst)
    return Verdict(True, f"the machine was quiet before the run ({before:.2f} per CPU) and other processes took at "
                         f"most {100 * known[worst]:.1f} % of the CPU ({worst}); the load average during the run "
                         "counts the server's own request threads", limit_per_cpu, before, worst)
