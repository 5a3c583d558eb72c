"""``eac bench serve``: latency and throughput of ``eac serve`` under concurrent clients, batching on and off.

Starts ``eac serve`` twice as child processes on free loopback ports (the bench
never sends anything off this machine), one with cross-request batching and one
without (``--no-batching``), and at each concurrency level K (1, 4, 16) drives
each in turn (back to back, so a change of load on the machine hits both) with
K client threads (one keep-alive connection each) for a fixed number of
requests. Each request uploads a different generated scene (the size of the
classifier's crop) with its own seed. Per mode and level it reports the p50 /
p95 / p99 latency, requests per second, errors, the classifier batches' mean
fill (rows / batch size), requests per batch, time per batch and how long a
batch's oldest rows waited before it ran, read from the server's ``/metrics``,
and the server's CPU seconds per request and CPU use (CPU seconds / wall
seconds, from ``/proc``): CPU per request stays comparable on a shared machine,
and a CPU use far below the cores available says the machine was busy with
other work (on a loaded machine the mode with more runnable threads also gets
a larger share of it, so compare the modes on a quiet one). The last table is batching's gain: requests/s
and p50 with batching over without.

Default engine: the demo classifier shipped in the package, a 4×4 grid of
concepts, method ``eac`` at its default budget; ``--classifier DIR`` and
``--providers cuda`` run the same against another model or a GPU (on the GPU
machine itself). ``--n-concepts`` sets the grid. ``--quick``: 8 requests per
level and a 96-evaluation budget.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .harness import BenchError, BenchReport, machine_info
from .load import logical_cpus, others_verdict, read_load_average, read_machine_busy_seconds

#: Concurrent clients of each level.
LEVELS = (1, 4, 16)
#: Requests per level (and a QUICK run's).
REQUESTS = 48
QUICK_REQUESTS = 8
#: Concepts per image (a grid) unless --n-concepts says otherwise.
GRID = 16
#: A QUICK run's evaluation budget per request (eac needs 2 + 8·⌊N/2⌋ = 66 at N = 16).
QUICK_EVALUATIONS = 96
#: Modes compared: name → extra ``eac serve`` flags.
MODES = {"batching": [], "no batching": ["--no-batching"]}
#: Seconds to wait for the server to say it is ready; per request.
START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0
PERCENTILES = (50, 95, 99)
MS = 1000.0
SERVER_CODE = "import sys; from eac.engine.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class LevelResult:
    """What one concurrency level measured."""

    clients: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    batches: float = 0.0
    rows: float = 0.0
    batch_requests: float = 0.0
    batch_size: float = 0.0
    batch_seconds: float = 0.0
    batch_wait_s: float = 0.0
    server_cpu_s: float | None = None
    #: CPU seconds every process outside this bench and its server got during the level (None: unknown).
    others_cpu_s: float | None = None

    @property
    def others_share(self) -> float | None:
        """Share of the machine's CPU time taken by processes outside the workload during the level."""
        if self.others_cpu_s is None or self.seconds <= 0:
            return None
        return max(self.others_cpu_s, 0.0) / (self.seconds * logical_cpus())

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies)
        ok = len(lat)
        return {
            "clients": self.clients, "requests": self.requests, "answered_ok": ok,
            "errors": self.errors, "first_error": self.first_error, "seconds": self.seconds,
            "requests_per_second": ok / self.seconds if self.seconds > 0 else None,
            **{f"p{p}_s": float(np.percentile(lat, p)) if ok else None for p in PERCENTILES},
            "mean_s": float(lat.mean()) if ok else None,
            "classifier_batches": self.batches, "classifier_rows": self.rows,
            "mean_batch_fill": self.rows / (self.batches * self.batch_size) if self.batches else None,
            "mean_requests_per_batch": self.batch_requests / self.batches if self.batches else None,
            "mean_batch_s": self.batch_seconds / self.batches if self.batches else None,
            "mean_batch_wait_s": self.batch_wait_s / self.batches if self.batches else None,
            "others_cpu_share": self.others_share,
            "server_cpu_s_per_request": self.server_cpu_s / ok if self.server_cpu_s is not None and ok else None,
            "server_cpu_utilisation": (self.server_cpu_s / self.seconds
                                       if self.server_cpu_s is not None and self.seconds > 0 else None),
        }


def _scene_pngs(size: int, count: int, seed: int) -> list[bytes]:
    import cv2

    from ..engine.scenes import make_scene

    out = []
    for i in range(count):
        scene = make_scene(np.random.default_rng(seed + i), size)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise BenchError("opencv could not encode a scene")
        out.append(buf.tobytes())
    return out


def _form(image: bytes, fields: dict[str, Any]) -> tuple[bytes, str]:
    boundary = os.urandom(12).hex()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="scene.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _metrics(host: str, port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class _Server:
    """``eac serve`` in a child process on a free loopback port."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVER_CODE, "serve", *args, "--host", "127.0.0.1",
                                         "--port", "0"], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        ready = threading.Event()
        found: dict[str, str] = {}

        def read() -> None:
            for line in self.process.stderr:
                self.lines.append(line.rstrip())
                match = re.search(r"listening on http://([\d.]+):(\d+)", line)
                if match:
                    found.update(host=match.group(1), port=match.group(2))
                if "ready at" in line or "eac: error" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(START_TIMEOUT_S)
        if self.process.poll() is not None or "port" not in found or not any("ready at" in x for x in self.lines):
            self.stop()
            raise BenchError("eac serve did not start: " + (self.lines[-1] if self.lines else "no output"))
        self.host, self.port = found["host"], int(found["port"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(REQUEST_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _drive(server: _Server, pngs: list[bytes], clients: int, requests: int, fields: dict[str, Any],
           offset: int) -> LevelResult:
    """``requests`` requests from ``clients`` threads; latencies of the 200s, errors by status."""
    before = _metrics(server.host, server.port)
    cpu_before = _cpu_seconds(server.process.pid)
    busy_before, own_before = read_machine_busy_seconds(), time.process_time()
    counter = iter(range(requests))
    lock = threading.Lock()
    result = LevelResult(clients, requests, 0.0)

    def client() -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=REQUEST_TIMEOUT_S)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body, kind = _form(pngs[(offset + i) % len(pngs)], {**fields, "seed": offset + i})
                start = time.perf_counter()
                try:
                    conn.request("POST", "/v1/explanations", body=body, headers={"Content-Type": kind})
                    response = conn.getresponse()
                    answer = response.read()
                    status = str(response.status)
                except (OSError, http.client.HTTPException) as exc:
                    status, answer = type(exc).__name__, str(exc).encode()
                    conn.close()
                    conn = http.client.HTTPConnection(server.host, server.port, timeout=REQUEST_TIMEOUT_S)
                seconds = time.perf_counter() - start
                with lock:
                    if status == "200":
                        result.latencies.append(seconds)
                    else:
                        result.errors[status] = result.errors.get(status, 0) + 1
                        result.first_error = result.first_error or f"{status}: {answer[:200].decode(errors='replace')}"
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    busy_after, own_after = read_machine_busy_seconds(), time.process_time()
    after = _metrics(server.host, server.port)
    cpu_after = _cpu_seconds(server.process.pid)
    result.batches = after["eac_classifier_batches_total"] - before["eac_classifier_batches_total"]
    result.rows = after["eac_classifier_batch_rows_total"] - before["eac_classifier_batch_rows_total"]
    result.batch_requests = (after["eac_classifier_batch_requests_sum"]
                             - before["eac_classifier_batch_requests_sum"])
    result.batch_size = after["eac_classifier_batch_size"]
    result.batch_seconds = after["eac_classifier_batch_seconds_sum"] - before["eac_classifier_batch_seconds_sum"]
    result.batch_wait_s = (after["eac_classifier_batch_wait_seconds_sum"]
                           - before["eac_classifier_batch_wait_seconds_sum"])
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu_s = cpu_after - cpu_before
        if busy_before is not None and busy_after is not None:
            result.others_cpu_s = (busy_after - busy_before) - (own_after - own_before) - result.server_cpu_s
    return result


def _classifier_size(folder: str) -> int:
    from ..engine.manifest import ClassifierManifest

    return int(ClassifierManifest.read(folder).input.hw[0])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def run_serve(opts: Any) -> BenchReport:
    """Run the serve workload (see the module docs) and return its report."""
    from ..engine.demo import demo_classifier_path

    folder = opts.classifier or str(demo_classifier_path())
    grid = opts.n_concepts or GRID
    requests = QUICK_REQUESTS if opts.quick else REQUESTS
    fields: dict[str, Any] = {"evaluations": QUICK_EVALUATIONS} if opts.quick else {}
    pngs = _scene_pngs(_classifier_size(folder), max(requests, 16), opts.seed)
    base = ["--classifier", folder, "--concepts", "grid", "--n-segments", str(grid), "--providers", opts.providers,
            "--concurrency", str(max(LEVELS)), "--max-queue", str(max(LEVELS)), "--timeout",
            str(REQUEST_TIMEOUT_S)]
    if opts.threads is not None:
        base += ["--threads", str(opts.threads)]
    results: dict[str, dict[int, LevelResult]] = {mode: {} for mode in MODES}
    servers: dict[str, _Server] = {}
    load_before = read_load_average()
    try:
        for mode, flags in MODES.items():
            opts.log(f"serve: starting eac serve ({mode})")
            servers[mode] = _Server(base + flags)
            _drive(servers[mode], pngs, 1, 1, fields, offset=len(pngs) - 1)  # warm-up: sessions, caches
        for k in LEVELS:  # the two modes back to back at each level, so a change of machine load hits both
            for mode, server in servers.items():
                opts.log(f"serve: {mode}, {k} client(s), {requests} requests")
                results[mode][k] = _drive(server, pngs, k, requests, fields, offset=0)
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for mode, levels in results.items():
        for k, level in levels.items():
            d = level.to_dict()
            rows.append([mode, str(k), f"{d['answered_ok']}/{level.requests}",
                         *(_fmt(d[f"p{p}_s"]) for p in PERCENTILES), _fmt(d["requests_per_second"], 2),
                         _fmt(d["mean_batch_fill"], 2), _fmt(d["mean_requests_per_batch"], 2),
                         _fmt(None if d["mean_batch_s"] is None else MS * d["mean_batch_s"], 1),
                         _fmt(None if d["mean_batch_wait_s"] is None else MS * d["mean_batch_wait_s"], 1),
                         _fmt(d["server_cpu_s_per_request"]),
                         _fmt(None if d["server_cpu_utilisation"] is None else 100 * d["server_cpu_utilisation"], 0),
                         str(sum(level.errors.values()))])
    header = ["mode", "clients", "ok", "p50 s", "p95 s", "p99 s", "requests/s", "batch fill", "requests/batch",
              "batch ms", "batch wait ms", "server CPU s/request", "server CPU %", "errors"]
    gain_rows = []
    for k in LEVELS:
        on, off = results["batching"][k].to_dict(), results["no batching"][k].to_dict()
        rps = (on["requests_per_second"] / off["requests_per_second"]
               if on["requests_per_second"] and off["requests_per_second"] else None)
        p50 = off["p50_s"] / on["p50_s"] if on["p50_s"] and off["p50_s"] else None
        gain_rows.append([str(k), _fmt(rps, 2), _fmt(p50, 2)])
    from ..engine.session import resolve_providers

    settings = {"classifier": folder, "concepts": f"grid {grid}", "method": "eac",
                "evaluations": fields.get("evaluations", "default"), "requests_per_level": requests,
                "levels": list(LEVELS), "server_concurrency": max(LEVELS), "transport": "loopback HTTP/1.1 keep-alive"}
    tables = [("eac serve under concurrent clients (latency from the client, request sent to answer read)",
               header, rows),
              ("cross-request batching's gain (batching / no batching)", ["clients", "requests/s ×", "p50 ×"],
               gain_rows)]
    failed = [[mode, str(k), level.first_error] for mode, levels in results.items() for k, level in levels.items()
              if level.first_error]
    if failed:
        tables.append(("errors (the first of each level)", ["mode", "clients", "answer"], failed))
    return BenchReport(
        workload=opts.workload, quick=opts.quick, command=opts.command, sides={}, ratios={},
        machine=machine_info(opts.threads), provider=resolve_providers(opts.providers)[0], settings=settings,
        extra={"levels": {mode: {str(k): v.to_dict() for k, v in lv.items()} for mode, lv in results.items()}},
        tables=tables,
        own_verdict=others_verdict(load_before, {f"{mode}, {k} client(s)": level.others_share
                                                 for mode, levels in results.items() for k, level in levels.items()},
                                   logical_cpus()),
    )
