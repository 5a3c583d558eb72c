"""Helpers of the ``eac serve`` tests: a real server on a free loopback port, real HTTP clients.

Clients are the standard library's (``http.client``, raw sockets for uploads cut
short and clients that go away), so the tests exercise uvicorn's own HTTP
handling exactly as a remote client would.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

#: Concepts of the test requests: a 3×3 grid on the demo classifier's 128×128 scenes; with 40
#: evaluations `eac` samples (2^9 = 512 coalitions would be needed to enumerate) in a few rounds.
GRID = 9
EVALUATIONS = 40
#: A request that keeps the classifier busy for many seconds (kernelshap samples exactly this many).
SLOW_EVALUATIONS = 8000
POLL_S = 0.02
WAIT_S = 30.0


def scene_png(seed: int, size: int = 128) -> bytes:
    """A generated scene (the demo classifier's task) as PNG bytes."""
    from eac.engine.scenes import make_scene

    scene = make_scene(np.random.default_rng(seed), size)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def multipart(fields: dict[str, Any], image: bytes | None, filename: str = "scene.png",
              image_field: str = "image") -> tuple[bytes, str]:
    """A multipart/form-data body and its content type (the image as a file part named ``image_field``)."""
    boundary = secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{image_field}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _split(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port, parts.path or "/"


def request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 120.0) -> Reply:
    """One HTTP request on a fresh connection."""
    host, port, path = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def post_image(base: str, image: bytes | None, fields: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> Reply:
    body, kind = multipart(fields or {}, image)
    return request("POST", f"{base}/v1/explanations", body, {"Content-Type": kind, **(headers or {})})


def metrics(base: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """The service's metrics as {'name{labels}': value} (Prometheus text format)."""
    reply = request("GET", f"{base}/metrics", headers=headers)
    assert reply.status == 200, reply.body
    out = {}
    for line in reply.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def outcome(values: dict[str, float], name: str) -> float:
    return values[f'eac_requests_total{{outcome="{name}"}}']


def assert_counters_add_up(values: dict[str, float]) -> None:
    """received = sum of outcomes + in flight."""
    answered = sum(v for k, v in values.items() if k.startswith("eac_requests_total{"))
    assert values["eac_requests_received_total"] == answered + values["eac_requests_in_flight"]


def wait_for(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def assert_one_line_error(reply: Reply, status: int) -> str:
    """The reply is ``status`` with a one-line JSON error body; returns the message."""
    assert reply.status == status, (reply.status, reply.body[:300])
    text = reply.body.decode()
    assert "\n" not in text.strip()
    data = json.loads(text)
    assert data["status"] == status and data["error"] and "\n" not in data["error"]
    return data["error"]


class RawUpload:
    """A POST written on a raw socket, so a test can go away before the answer (or read it)."""

    def __init__(self, base: str, image: bytes, fields: dict[str, Any]) -> None:
        host, port, _ = _split(base)
        body, kind = multipart(fields, image)
        self.sock = socket.create_connection((host, port))
        head = (f"POST /v1/explanations HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode() + body)

    def close(self) -> None:
        self.sock.close()

    def status(self, timeout: float = WAIT_S) -> int:
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        self.sock.close()
        match = re.match(rb"HTTP/1\.1 (\d{3})", data)
        assert match, data[:200]
        return int(match.group(1))


@dataclass
class Server:
    """A running test server: its URL and the service object behind it."""

    url: str
    service: Any
    extra: dict = field(default_factory=dict)


def demo_config(**overrides: Any):
    """The engine of the tests: the shipped demo classifier, grid concepts."""
    from eac.engine.dataset import RunConfig
    from eac.engine.demo import demo_classifier_path

    return RunConfig(classifier=str(demo_classifier_path()), concepts="grid", n_segments=GRID, threads=1,
                     **overrides)


@contextmanager
def running(settings: dict[str, Any] | None = None, config=None, service_class=None) -> Iterator[Server]:
    """A uvicorn server in a thread on a free loopback port, stopped (drained) at the end."""
    from eac.engine.serve.server import running_in_thread
    from eac.engine.serve.service import Service
    from eac.engine.serve.settings import ServeSettings

    service = (service_class or Service)(config or demo_config(), ServeSettings(port=0, **(settings or {})))
    with running_in_thread(service) as url:
        yield Server(url, service)


def wait_ready(base: str) -> None:
    """Until ``/readyz`` answers 200 (a socket bound but not yet listening refuses: not ready yet either)."""
    def ready() -> bool:
        try:
            return request("GET", f"{base}/readyz", timeout=WAIT_S).status == 200
        except ConnectionRefusedError:
            return False

    wait_for(ready, "the service to be ready")
