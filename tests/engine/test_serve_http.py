"""``eac serve`` over real HTTP: every endpoint, every failure, the counters, results equal to sequential ones.

A uvicorn server runs in a thread on a free loopback port (tests/serve_helpers.py) with
the shipped demo classifier and a 3×3 grid of concepts; clients are http.client and raw
sockets. Each failure is checked for its status, its one-line body, that nothing was
half-done (no result stored, the work dropped) and that the metrics add up.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import threading
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="eac serve needs the serve extra")
pytest.importorskip("uvicorn", reason="eac serve needs the serve extra")
pytest.importorskip("prometheus_client", reason="eac serve needs the serve extra")

from eac.engine.dataset_schema import schema_for
from eac.engine.holder import EngineHolder
from eac.engine.methods import get_method
from eac.engine.render.overlay import render_overlay
from eac.engine.serve.app import DRAIN_BYTES
from eac.engine.serve.service import Service
from eac.kernels.rle import decode_masks

from ..serve_helpers import (
    EVALUATIONS,
    POLL_S,
    SLOW_EVALUATIONS,
    WAIT_S,
    RawUpload,
    assert_counters_add_up,
    assert_one_line_error,
    demo_config,
    metrics,
    multipart,
    outcome,
    post_image,
    request,
    running,
    scene_png,
    wait_for,
    wait_ready,
)

#: What must be identical between two answers to the same request (everything but timings and the id).
SAME = ("values", "stderr", "ranking", "ties", "num_evaluations", "probabilities", "targets", "masks_rle",
        "concept_areas", "settings", "method", "value_type")
#: A request that would keep the classifier busy for many seconds.
SLOW = {"method": "kernelshap", "evaluations": SLOW_EVALUATIONS}
#: A cancelled request may finish the batch it is in; it must not get anywhere near its budget.
DROPPED_ROWS = 1000
CLIENTS, REQUESTS_PER_CLIENT = 8, 10


def decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def server():
    with running({"concurrency": 2}) as srv:
        wait_ready(srv.url)
        yield srv


def test_post_answers_the_explanation_json_and_every_endpoint_serves_it(server, tmp_path):
    png = scene_png(1)
    reply = post_image(server.url, png, {"evaluations": EVALUATIONS, "seed": 3, "top_k": 4})
    assert reply.status == 200, reply.body
    body = reply.json()
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(body, schema_for("explanation"))  # explanation.json's schema, plus the id
    assert body["schema_version"] == 1 and body["method"] == "eac" and body["num_concepts"] == 9
    assert len(body["id"]) == 22 and body["settings"]["seed"] == 3

    # The service explains exactly as the shared engine does on its own (same engine code, same seed).
    engine = EngineHolder(demo_config(options=get_method("eac").budget(EVALUATIONS), seed=3))
    alone = engine.explain(cv2.cvtColor(decode_png(png), cv2.COLOR_BGR2RGB)).to_dict()
    assert {k: body[k] for k in SAME} == {k: alone[k] for k in SAME}

    again = request("GET", f"{server.url}/v1/explanations/{body['id']}").json()
    assert {k: again[k] for k in (*SAME, "id")} == {k: body[k] for k in (*SAME, "id")}

    stored = server.service.store.get(body["id"])
    overlay = request("GET", f"{server.url}/v1/explanations/{body['id']}/overlay.png")
    assert overlay.status == 200 and overlay.headers["content-type"] == "image/png"
    stored.explanation.save(tmp_path / "saved", top_k=4)  # the overlay is Explanation.save's drawing
    np.testing.assert_array_equal(decode_png(overlay.body), cv2.imread(str(tmp_path / "saved" / "overlay.png")))
    np.testing.assert_array_equal(decode_png(overlay.body), render_overlay(stored.explanation, top_k=4))

    npz = request("GET", f"{server.url}/v1/explanations/{body['id']}/masks.npz")
    with np.load(io.BytesIO(npz.body), allow_pickle=False) as z:  # plain arrays: no pickle
        shape = tuple(z["shape"])
        masks = np.unpackbits(z["packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)
        assert str(z["save_id"]) == body["id"]
    np.testing.assert_array_equal(masks, decode_masks(body["masks_rle"]))
    assert masks.shape == (9, 128, 128) and masks.any(axis=(1, 2)).all()

    crop = request("GET", f"{server.url}/v1/explanations/{body['id']}/crop.png")
    np.testing.assert_array_equal(cv2.cvtColor(decode_png(crop.body), cv2.COLOR_BGR2RGB), stored.explanation.crop)

    other = post_image(server.url, png, {"evaluations": EVALUATIONS, "seed": 3}).json()
    assert other["id"] != body["id"] and other["values"] == body["values"]  # a fresh random id per answer


def test_health_readiness_page_and_unknown_routes(server):
    assert request("GET", f"{server.url}/healthz").json()["status"] == "alive"
    assert request("GET", f"{server.url}/readyz").json() == {"ready": True, "state": "ready"}
    page = request("GET", f"{server.url}/")
    assert page.status == 200 and b'<script src="/page.js">' in page.body
    assert b'data-methods="eac,' in page.body and "script-src 'self'" in page.headers["content-security-policy"]
    assert request("GET", f"{server.url}/page.js").headers["content-type"].startswith("text/javascript")
    assert_one_line_error(request("GET", f"{server.url}/nowhere"), 404)
    not_allowed = request("GET", f"{server.url}/v1/explanations")
    assert_one_line_error(not_allowed, 405)
    assert not_allowed.headers["allow"] == "POST"  # what the client may use instead (RFC 9110 requires it)
    # ids are random tokens looked up in memory only: anything else is simply unknown
    for bad in ("AAAAAAAAAAAAAAAAAAAAAA", "x" * 200, "..%2F..%2Fetc%2Fpasswd"):
        assert_one_line_error(request("GET", f"{server.url}/v1/explanations/{bad}/overlay.png"), 404)
    assert not server.service.store.get("../../etc/passwd")


@pytest.mark.parametrize("fields, image, fragment", [
    ({}, None, "no image"),
    ({"evaluations": "many"}, b"png", "evaluations must be an integer"),
    ({"evaluations": "0"}, b"png", "evaluations must lie in"),
    ({"evaluations": "100000"}, b"png", "evaluations must lie in"),
    ({"seed": "-1"}, b"png", "seed must lie in"),
    ({"top_k": "0"}, b"png", "top_k must lie in"),
    ({"method": "magic"}, b"png", "unknown method"),
    ({"colour": "red"}, b"png", "unknown form field"),
    ({"method": "loo", "evaluations": "64"}, b"png", "does not apply"),
    ({}, b"not an image at all", "could not decode"),
    ({"target": "99"}, "scene", "out of range"),
    ({"target": "giraffe"}, "scene", "not one of the classifier's labels"),
])
def test_bad_requests_get_400_with_one_line_and_leave_nothing(server, fields, image, fragment):
    before = metrics(server.url)
    stored = len(server.service.store)
    reply = post_image(server.url, scene_png(2) if image == "scene" else image, fields)
    assert fragment in assert_one_line_error(reply, 400)
    after = metrics(server.url)
    assert outcome(after, "bad_request") == outcome(before, "bad_request") + 1
    assert len(server.service.store) == stored
    assert_counters_add_up(after)


def test_an_image_under_another_field_name_is_named_as_unknown(server):
    """curl -F file=@photo.png: the reply names the field and the right one (it once said "'file' must be text")."""
    body, kind = multipart({}, scene_png(2), image_field="file")
    message = assert_one_line_error(request("POST", f"{server.url}/v1/explanations", body, {"Content-Type": kind}), 400)
    assert "unknown form field(s) file" in message and "the fields are image" in message


def test_a_body_that_is_not_a_form_or_has_two_images_is_400(server):
    reply = request("POST", f"{server.url}/v1/explanations", b'{"image": 1}', {"Content-Type": "application/json"})
    assert "no image" in assert_one_line_error(reply, 400)
    one, kind = multipart({}, b"first")
    boundary = kind.split("boundary=")[1]
    two = one.replace(f"--{boundary}--\r\n".encode(), b"") + one  # the image part twice
    assert_one_line_error(request("POST", f"{server.url}/v1/explanations", two, {"Content-Type": kind}), 400)


def test_uploads_over_the_limit_get_413_by_length_and_while_streaming():
    png = scene_png(3)
    limit = len(png) + 1000  # the image and the form's few hundred bytes fit
    with running({"max_upload_bytes": limit}) as srv:
        wait_ready(srv.url)
        big = png + b"\0" * limit
        assert "larger than the limit" in assert_one_line_error(post_image(srv.url, big), 413)
        # no Content-Length (chunked): refused while reading; the rest of the body (more than the socket buffers
        # hold, less than DRAIN_BYTES) is read first, so a client that sends it all before reading sees the 413
        body, kind = multipart({}, png + b"\0" * (DRAIN_BYTES // 2))
        conn = http.client.HTTPConnection("127.0.0.1", int(srv.url.rsplit(":", 1)[1]), timeout=30)
        conn.request("POST", "/v1/explanations", body=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                     headers={"Content-Type": kind}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413 and b"larger than the limit" in response.read()
        conn.close()
        assert post_image(srv.url, png, {"evaluations": EVALUATIONS}).status == 200  # below the limit: served
        values = metrics(srv.url)
        assert outcome(values, "too_large") == 2 and outcome(values, "ok") == 1
        assert len(srv.service.store) == 1
        assert_counters_add_up(values)


def test_concurrent_clients_all_answered_with_the_sequential_results():
    """8 clients × 10 requests at once: every one answered, each equal to the same request served alone,
    and the classifier batches really mixed requests."""
    cases = [(scene_png(10 + i), {"evaluations": EVALUATIONS, "seed": i}) for i in range(4)]
    with running({"concurrency": CLIENTS, "max_queue": CLIENTS}) as srv:
        wait_ready(srv.url)
        sequential = [post_image(srv.url, png, fields).json() for png, fields in cases]
        alone = metrics(srv.url)
        replies: list = []
        lock = threading.Lock()

        def client(k: int) -> None:
            for r in range(REQUESTS_PER_CLIENT):
                i = (k + r) % len(cases)
                reply = post_image(srv.url, *cases[i])
                with lock:
                    replies.append((i, reply))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(replies) == CLIENTS * REQUESTS_PER_CLIENT
        assert [reply.status for _, reply in replies] == [200] * len(replies)
        for i, reply in replies:
            body = reply.json()
            assert {k: body[k] for k in SAME} == {k: sequential[i][k] for k in SAME}
        values = metrics(srv.url)
        assert outcome(values, "ok") == len(replies) + len(cases)
        assert_counters_add_up(values)
        assert values["eac_requests_in_flight"] == 0 and values["eac_queue_depth"] == 0
        # Served one at a time, every batch held one request; under load, batches held several.
        assert alone["eac_classifier_batch_requests_sum"] == alone["eac_classifier_batch_requests_count"]
        mixed = (values["eac_classifier_batch_requests_count"] - alone["eac_classifier_batch_requests_count"]
                 - (values['eac_classifier_batch_requests_bucket{le="1.0"}']
                    - alone['eac_classifier_batch_requests_bucket{le="1.0"}']))
        assert mixed > 0
        rows = values["eac_classifier_batch_rows_total"] - alone["eac_classifier_batch_rows_total"]
        assert rows == sum(sequential[i]["num_evaluations"] for i, _ in replies)  # each row run exactly once


def _rows(url: str) -> float:
    return metrics(url)["eac_classifier_batch_rows_total"]


def test_timeout_answers_504_and_drops_the_work():
    with running({"timeout_s": 0.5}) as srv:
        wait_ready(srv.url)
        start = time.monotonic()
        reply = post_image(srv.url, scene_png(4), SLOW)
        assert "not answered within 0.5 s" in assert_one_line_error(reply, 504)
        assert time.monotonic() - start < 10  # the work alone would take 18 s of CPU
        wait_for(lambda: metrics(srv.url)["eac_requests_explaining"] == 0, "the dropped work to unwind")
        settled = _rows(srv.url)
        assert settled < DROPPED_ROWS
        time.sleep(0.3)
        assert _rows(srv.url) == settled  # nothing runs for it any more
        values = metrics(srv.url)
        assert outcome(values, "timeout") == 1 and len(srv.service.store) == 0
        assert_counters_add_up(values)


def test_a_client_that_disconnects_cancels_its_work():
    with running() as srv:
        wait_ready(srv.url)
        upload = RawUpload(srv.url, scene_png(5), SLOW)
        wait_for(lambda: metrics(srv.url)["eac_requests_explaining"] == 1, "the request to start")
        wait_for(lambda: _rows(srv.url) > 0, "its first batch")
        upload.close()
        wait_for(lambda: metrics(srv.url)["eac_requests_explaining"] == 0, "the cancelled work to unwind")
        assert _rows(srv.url) < DROPPED_ROWS
        values = metrics(srv.url)
        assert outcome(values, "cancelled") == 1 and values["eac_requests_in_flight"] == 0
        assert_counters_add_up(values)
        # gone half-way through the upload: counted once, as cancelled, and nothing else happens
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/explanations HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
            wait_for(lambda: metrics(srv.url)["eac_requests_in_flight"] == 1, "the upload to begin")
        wait_for(lambda: metrics(srv.url)["eac_requests_in_flight"] == 0, "the cut upload to be answered")
        values = metrics(srv.url)
        assert outcome(values, "cancelled") == 2 and values["eac_requests_received_total"] == 2
        assert_counters_add_up(values)


def test_a_stalled_upload_is_answered_408_and_lets_go_of_its_slot():
    """A client that sends headers and a few body bytes, then nothing: without a deadline it held a request in
    flight for ever (a walkthrough left 25 such connections open for over a minute)."""
    with running({"upload_timeout_s": 0.5}) as srv:
        wait_ready(srv.url)
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/explanations HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
            sock.settimeout(30)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        error = json.loads(body)
        assert error["status"] == 408 and "--upload-timeout" in error["error"] and "\n" not in body.decode().strip()
        values = metrics(srv.url)
        assert outcome(values, "upload_timeout") == 1 and values["eac_requests_in_flight"] == 0
        assert_counters_add_up(values)
        # a whole upload is not affected
        assert post_image(srv.url, scene_png(9), {"evaluations": EVALUATIONS}).status == 200


def test_a_body_cut_short_is_named_as_such(server):
    """A multipart body without its closing boundary was answered "no image: send the image file as ..."."""
    host, port = server.url.removeprefix("http://").split(":")
    part = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n" + scene_png(10)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/explanations", body=part, headers={"Content-Type": "multipart/form-data; boundary=b"})
    reply = conn.getresponse()
    body = reply.read()
    assert reply.status == 400
    assert "cut short" in json.loads(body)["error"]


def test_too_many_concepts_tells_the_client_what_it_can_do():
    """The limit is the operator's: the 400 names the image's count and the server's limit, not a flag to raise
    (it said "raise max_concepts (--max-concepts)" to an HTTP client)."""
    with running(config=demo_config(max_concepts=2)) as srv:
        wait_ready(srv.url)
        message = assert_one_line_error(post_image(srv.url, scene_png(11), {"evaluations": EVALUATIONS}), 400)
        assert "more than this server's limit of 2" in message and "raise max_concepts" not in message


def test_a_full_queue_answers_503_with_retry_after():
    with running({"concurrency": 1, "max_queue": 1}) as srv:
        wait_ready(srv.url)
        running_one = RawUpload(srv.url, scene_png(6), SLOW)
        wait_for(lambda: metrics(srv.url)["eac_requests_explaining"] == 1, "the first request to start")
        waiting_one = RawUpload(srv.url, scene_png(7), SLOW)
        wait_for(lambda: metrics(srv.url)["eac_queue_depth"] == 1, "the second request to queue")
        reply = post_image(srv.url, scene_png(8), {"evaluations": EVALUATIONS})
        assert "busy" in assert_one_line_error(reply, 503)
        assert int(reply.headers["retry-after"]) >= 1
        running_one.close()
        waiting_one.close()
        wait_for(lambda: metrics(srv.url)["eac_requests_in_flight"] == 0, "both to be answered (cancelled)")
        values = metrics(srv.url)
        assert outcome(values, "queue_full") == 1 and outcome(values, "cancelled") == 2
        assert_counters_add_up(values)
        # A cancelled request keeps its place until its thread has unwound (at its next batch at most).
        wait_for(lambda: metrics(srv.url)["eac_requests_explaining"] + metrics(srv.url)["eac_queue_depth"] == 0,
                 "their threads to let go")
        assert post_image(srv.url, scene_png(8), {"evaluations": EVALUATIONS}).status == 200  # room again


class GatedService(Service):
    """A service whose models take until the test says so to load."""

    gate = threading.Event()

    def load(self):
        self.gate.wait()
        return super().load()


def test_not_ready_while_loading_then_ready():
    GatedService.gate.clear()
    with running(service_class=GatedService) as srv:
        ready = request("GET", f"{srv.url}/readyz")
        assert ready.status == 503 and ready.json()["state"] == "loading"
        assert request("GET", f"{srv.url}/healthz").status == 200
        reply = post_image(srv.url, scene_png(9), {"evaluations": EVALUATIONS})
        assert "still loading" in assert_one_line_error(reply, 503) and reply.headers["retry-after"]
        GatedService.gate.set()
        wait_ready(srv.url)
        assert post_image(srv.url, scene_png(9), {"evaluations": EVALUATIONS}).status == 200
        values = metrics(srv.url)
        assert outcome(values, "not_ready") == 1 and outcome(values, "ok") == 1
        assert_counters_add_up(values)


def test_api_key_is_required_on_the_api_and_metrics_only():
    key = "s3cret-token"
    with running({"api_key": key}) as srv:
        wait_ready(srv.url)
        good = {"Authorization": f"Bearer {key}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            reply = post_image(srv.url, scene_png(1), {"evaluations": EVALUATIONS}, headers)
            assert "API key" in assert_one_line_error(reply, 401)
            assert reply.headers["www-authenticate"] == "Bearer"
        assert_one_line_error(request("GET", f"{srv.url}/metrics"), 401)
        body = post_image(srv.url, scene_png(1), {"evaluations": EVALUATIONS}, good).json()
        assert_one_line_error(request("GET", f"{srv.url}/v1/explanations/{body['id']}/overlay.png"), 401)
        assert request("GET", f"{srv.url}/v1/explanations/{body['id']}/overlay.png", headers=good).status == 200
        assert request("GET", f"{srv.url}/healthz").status == 200 and request("GET", f"{srv.url}/").status == 200
        values = metrics(srv.url, good)
        assert outcome(values, "unauthorized") == 3 and outcome(values, "ok") == 1
        assert_counters_add_up(values)


def test_cors_is_off_unless_an_origin_is_given():
    origin = "http://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    with running() as srv:
        wait_ready(srv.url)
        assert "access-control-allow-origin" not in request("GET", f"{srv.url}/healthz", headers={"Origin": origin}
                                                            ).headers
        assert "access-control-allow-origin" not in request("OPTIONS", f"{srv.url}/v1/explanations",
                                                            headers=preflight).headers
    with running({"cors_origins": (origin,)}) as srv:
        wait_ready(srv.url)
        assert request("GET", f"{srv.url}/healthz", headers={"Origin": origin}
                       ).headers["access-control-allow-origin"] == origin
        answer = request("OPTIONS", f"{srv.url}/v1/explanations", headers=preflight)
        assert answer.status == 200 and answer.headers["access-control-allow-origin"] == origin
        other = request("GET", f"{srv.url}/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_an_engine_failure_is_500_with_one_line_and_the_service_goes_on():
    from eac.engine.errors import NonFiniteOutputError

    with running() as srv:
        wait_ready(srv.url)
        classifier = srv.service.engine.classifier
        real = classifier.run
        for error, fragment in ((NonFiniteOutputError("the classifier produced NaN"), "produced NaN"),
                                (RuntimeError("boom"), "internal error: RuntimeError: boom")):
            def broken(*args, error=error, **kwargs):
                raise error

            classifier.run = broken
            reply = post_image(srv.url, scene_png(1), {"evaluations": EVALUATIONS})
            assert fragment in assert_one_line_error(reply, 500)
        classifier.run = real
        assert post_image(srv.url, scene_png(1), {"evaluations": EVALUATIONS}).status == 200
        values = metrics(srv.url)
        assert outcome(values, "error") == 2 and outcome(values, "ok") == 1 and len(srv.service.store) == 1
        assert_counters_add_up(values)


def _asgi_request(app, method: str, path: str, body: bytes = b"", content_type: str | None = None):
    """Call the ASGI application as uvicorn would, in the running loop: (the task, the messages it sent).
    The client stays connected (no ``http.disconnect``) until the task ends."""
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    sent, body_sent = [], []

    async def receive():
        if not body_sent:
            body_sent.append(True)
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    return asyncio.ensure_future(app(scope, receive, send)), sent


async def _cancel_when(task, ready) -> bool:
    """Cancel ``task`` once ``ready()``; whether the cancellation came out of it (nobody answered)."""
    while not ready():
        assert not task.done(), "the request ended before it could be cancelled"
        await asyncio.sleep(POLL_S)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


def _answer(sent) -> tuple[int, dict[str, str], dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"\n" not in body
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def test_a_cancelled_request_counts_as_its_clients_unless_the_server_is_stopping(monkeypatch):
    """Ray Serve cancels the handler when the client went away: nobody to answer, counted ``cancelled``. Once the
    server stops at once (``Service.stopping``) the cancellation is its own: the client gets the 503 JSON line. Both
    drop the work through its token; other routes cut off the same way answer the same 503."""
    from eac.engine.serve import app as app_module
    from eac.engine.serve.settings import ServeSettings

    service = Service(demo_config(), ServeSettings(port=0)).load()
    app = app_module.create_app(service)
    body, kind = multipart(SLOW, scene_png(3))
    registry = service.metrics.registry

    def rows() -> float:
        return registry.get_sample_value("eac_classifier_batch_rows_total") or 0.0

    def explaining() -> bool:
        return service.admission.explaining == 1 and rows() > 0

    async def post_and_cancel():
        task, sent = _asgi_request(app, "POST", "/v1/explanations", body, kind)
        return await _cancel_when(task, explaining), sent

    try:
        raised, sent = asyncio.run(post_and_cancel())  # the client went away
        assert raised and sent == []
        wait_for(lambda: service.admission.in_service == 0, "the cancelled work to unwind")
        assert rows() < DROPPED_ROWS
        assert registry.get_sample_value("eac_requests_total", {"outcome": "cancelled"}) == 1

        service.stopping = True  # the server's own stop from here on
        before = rows()
        raised, sent = asyncio.run(post_and_cancel())
        assert not raised
        status, headers, error = _answer(sent)
        assert (status, error) == (503, {"error": "the server is shutting down", "status": 503})
        assert headers["content-type"] == "application/json" and int(headers["retry-after"]) >= 1
        wait_for(lambda: service.admission.in_service == 0, "the cut-off work to unwind")
        assert rows() - before < DROPPED_ROWS
        values = {f"{s.name}{s.labels}": s.value for m in registry.collect() for s in m.samples}
        assert values["eac_requests_total{'outcome': 'not_ready'}"] == 1
        assert values["eac_requests_received_total{}"] == 2 and values["eac_requests_in_flight{}"] == 0

        # a route other than the explanation: cut off while it draws an overlay
        async def quick_then_overlay():
            task, sent = _asgi_request(app, "POST", "/v1/explanations", *multipart({"evaluations": EVALUATIONS},
                                                                                   scene_png(4)))
            await task
            result_id = _answer(sent)[2]["id"]
            task, sent = _asgi_request(app, "GET", f"/v1/explanations/{result_id}/overlay.png")
            try:
                return await _cancel_when(task, drawing.is_set), sent
            finally:
                release.set()  # (asyncio.run waits for the drawing thread)

        drawing, release = threading.Event(), threading.Event()

        def slow_overlay(*args):
            drawing.set()
            release.wait(WAIT_S)
            return b""

        monkeypatch.setattr(app_module, "overlay_png", slow_overlay)
        raised, sent = asyncio.run(quick_then_overlay())
        assert not raised and _answer(sent)[0] == 503
    finally:
        service.close()
