"""``eac serve --ray``: the same application as a Ray Serve deployment gives the single-process answers.

One small deployment (one replica, one CPU) on a local Ray; Ray starts slowly on a
shared 2-core machine, hence ``slow``.
"""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("starlette", reason="eac serve needs the serve extra")
pytest.importorskip("uvicorn", reason="eac serve needs the serve extra")
pytest.importorskip("ray.serve", reason="eac serve --ray needs Ray Serve (the ray extra)")

from eac.engine.serve.ray_serve import start_on_ray
from eac.engine.serve.settings import ServeSettings

from ..serve_helpers import (
    EVALUATIONS,
    assert_counters_add_up,
    assert_one_line_error,
    demo_config,
    metrics,
    outcome,
    post_image,
    request,
    running,
    scene_png,
    wait_for,
)

SAME = ("values", "stderr", "ranking", "ties", "num_evaluations", "probabilities", "masks_rle", "settings")
#: Ray on two shared cores takes a while to bring a replica up.
RAY_START_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_serve_answers_as_the_single_process_server():
    cases = [(scene_png(31 + i), {"evaluations": EVALUATIONS, "seed": i}) for i in range(2)]
    with running() as local:
        wait_for(lambda: request("GET", f"{local.url}/readyz").status == 200, "the local server")
        expected = [post_image(local.url, png, fields).json() for png, fields in cases]
    settings = ServeSettings(port=free_port())
    deployment = start_on_ray(demo_config(), settings, num_cpus=2)
    try:
        wait_for(lambda: _ready(deployment.url), "the Ray Serve replica", timeout=RAY_START_S)
        for (png, fields), want in zip(cases, expected):
            reply = post_image(deployment.url, png, fields)
            assert reply.status == 200, reply.body
            got = reply.json()
            assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
            assert request("GET", f"{deployment.url}/v1/explanations/{got['id']}/overlay.png").status == 200
        assert "no image" in assert_one_line_error(post_image(deployment.url, None), 400)
        values = metrics(deployment.url)
        assert outcome(values, "ok") == len(cases) and outcome(values, "bad_request") == 1
        assert_counters_add_up(values)
    finally:
        deployment.stop()


def _ready(url: str) -> bool:
    try:
        return request("GET", f"{url}/readyz", timeout=5).status == 200
    except OSError:
        return False
