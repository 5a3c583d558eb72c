"""``eac bench serve``'s client driver against a real server: counts, percentiles and batch statistics.

The whole workload (two servers × three levels) is too long for the suite; its driver is
checked here against a server in a thread: every request counted once, percentiles ordered,
batch fill within (0, 1], errors counted by status with the first answer kept.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

pytest.importorskip("starlette", reason="eac serve needs the serve extra")
pytest.importorskip("uvicorn", reason="eac serve needs the serve extra")

from eac.bench import serve as bench_serve
from eac.bench.registry import WORKLOADS

from ..serve_helpers import EVALUATIONS, running, wait_ready


def test_serve_is_a_bench_workload():
    assert "serve" in WORKLOADS


def test_driver_counts_every_request_and_reads_the_batches_from_metrics():
    pngs = bench_serve._scene_pngs(128, 3, seed=5)
    with running({"concurrency": 2}) as srv:
        wait_ready(srv.url)
        host, port = srv.url.removeprefix("http://").split(":")
        server = SimpleNamespace(host=host, port=int(port), process=SimpleNamespace(pid=os.getpid()))
        level = bench_serve._drive(server, pngs, clients=2, requests=5, fields={"evaluations": EVALUATIONS},
                                   offset=0)
        bad = bench_serve._drive(server, [b"not an image"], clients=1, requests=2, fields={}, offset=0)
    summary = level.to_dict()
    assert summary["answered_ok"] == 5 and summary["errors"] == {} and level.seconds > 0
    assert summary["p50_s"] <= summary["p95_s"] <= summary["p99_s"] <= max(level.latencies)
    assert summary["requests_per_second"] == pytest.approx(5 / level.seconds)
    assert level.rows > 0 and level.batches > 0 and 0 < summary["mean_batch_fill"] <= 1
    assert 1 <= summary["mean_requests_per_batch"] <= 2
    assert summary["server_cpu_s_per_request"] > 0
    assert bad.to_dict()["answered_ok"] == 0 and bad.errors == {"400": 2}
    assert bad.first_error.startswith("400: ") and "decode" in bad.first_error
