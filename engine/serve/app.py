"""The HTTP layer: routes, status codes and one-line error bodies over a :class:`~eac.engine.serve.service.Service`.

An ASGI application (Starlette, from the ``serve`` extra, imported inside
:func:`create_app`) that uvicorn runs in one process and Ray Serve runs in each
replica:

========================================  ==========================================================
``POST /v1/explanations``                 multipart ``image`` (+ ``target``, ``method``,
                                          ``evaluations``, ``seed``, ``top_k``) → 200 explanation JSON
                                          (``explanation.json``'s schema) plus ``id``
``GET /v1/explanations/{id}``             the same JSON again (recent results only)
``GET /v1/explanations/{id}/overlay.png`` the overlay ``Explanation.save`` draws
``GET /v1/explanations/{id}/masks.npz``   the concept masks (``Explanation.save``'s layout)
``GET /v1/explanations/{id}/crop.png``    the explained crop
``GET /healthz``                          200 while the process runs
``GET /readyz``                           200 once the models are loaded, else 503
``GET /metrics``                          Prometheus metrics (:mod:`eac.engine.serve.metrics`)
``GET /``                                 the web page (``static/index.html`` + ``static/page.js``)
========================================  ==========================================================

Errors are JSON on one line, ``{"error": "<one line>", "status": <code>}``:
400 bad parameter or image, 401 missing or wrong API key (``/v1`` and
``/metrics`` when the service has one), 404 unknown route or forgotten id, 405,
408 the body did not arrive within ``upload_timeout_s`` (a stalled upload),
413 body over ``max_upload_bytes`` (checked from ``Content-Length`` before
reading, and while reading), 503 + ``Retry-After`` queue full, not ready, or cut
off because the server is stopping at once (a second Ctrl-C; the server
cancels the requests in flight and :attr:`Service.stopping` says so), 504
timeout, 500 engine failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EacError
from .limits import (
    STATUS_BAD_REQUEST,
    STATUS_CLIENT_GONE,
    STATUS_ERROR,
    STATUS_METHOD_NOT_ALLOWED,
    STATUS_NOT_FOUND,
    STATUS_REQUEST_TIMEOUT,
    STATUS_TOO_LARGE,
    STATUS_UNAUTHORIZED,
    ServiceError,
)
from .metrics import SERVE_HINT
from .params import FIELDS, parse_request
from .results import crop_png, masks_npz, overlay_png
from .service import Service, shutting_down
from .settings import RETRY_AFTER_S

log = logging.getLogger(__name__)

#: The web page's files, served at ``/`` and ``/page.js``.
STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/page.js": ("page.js", "text/javascript")}
#: Headers of every page response: nothing from other origins, no inline script, no sniffing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Where the page's method list goes (filled from the method registry when the app is made).
METHODS_SLOT = b'data-methods=""'
#: A result's files never change (a new request gets a new id), but the result may be forgotten: private caching only.
FILE_HEADERS = {"Cache-Control": "private, max-age=600"}
#: Form parts accepted: the image and each field once.
MAX_FORM_PARTS = 1 + len(FIELDS)
#: Bytes of an over-limit upload still read (and discarded) before the 413 is sent. Clients such as curl,
#: http.client and browsers send the whole body before they read the answer; closing on them mid-body makes
#: them fail with a broken pipe or a reset instead of reading the 413. Bodies longer than this are cut off.
DRAIN_BYTES = 4 * 2**20


def _require_extra() -> None:
    """EacError naming the extra when Starlette or python-multipart (its form parser) is missing."""
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("python_multipart") is None:
        raise EacError(SERVE_HINT)


def error_body(status: int, message: str) -> bytes:
    """The one-line JSON body of an error answer."""
    text = " ".join(str(message).split())
    return json.dumps({"error": text, "status": int(status)}, ensure_ascii=False).encode("utf-8")


def authorized(header: str | None, api_key: str | None) -> bool:
    """Whether an ``Authorization`` header carries the API key (bearer token, constant-time comparison)."""
    if api_key is None:
        return True
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), api_key.encode("utf-8"))


async def drain(stream, at_most: int) -> None:
    """Read and discard what is left of a request body, up to ``at_most`` bytes (see :data:`DRAIN_BYTES`)."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen >= at_most:
            return


def create_app(service: Service, on_failure: Callable[[EacError], None] | None = None,
               on_ready: Callable[[], None] | None = None) -> Any:
    """The ASGI application of ``service``.

    Parameters
    ----------
    service : Service
        Loaded already (Ray Serve) or loaded in the background at startup (uvicorn).
    on_failure : callable(EacError), optional
        Called when background loading fails (``eac serve`` stops the server then).
    on_ready : callable(), optional
        Called once the models are loaded.

    Returns
    -------
    starlette.applications.Starlette
    """
    _require_extra()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    settings = service.settings
    pages = {path: ((STATIC / name).read_bytes(), kind) for path, (name, kind) in PAGE_FILES.items()}
    methods = html.escape(",".join(service.method_names()), quote=True)
    index, kind = pages["/"]
    pages["/"] = (index.replace(METHODS_SLOT, f'data-methods="{methods}"'.encode()), kind)

    def error(exc: ServiceError) -> Response:
        return Response(error_body(exc.status, exc.message), status_code=exc.status, headers=exc.headers,
                        media_type="application/json")

    def check_auth(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), settings.api_key):
            raise ServiceError(STATUS_UNAUTHORIZED, "unauthorized",
                               "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               {"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        """The whole body, within ``upload_timeout_s`` (a client that stops sending gets 408, not a slot held
        for ever)."""
        try:
            async with asyncio.timeout(settings.upload_timeout_s):
                return await read_body_now(request)
        except TimeoutError:
            raise ServiceError(STATUS_REQUEST_TIMEOUT, "upload_timeout",
                               f"the request body did not arrive within {settings.upload_timeout_s:g} s "
                               "(--upload-timeout)", {"Connection": "close"}) from None

    async def read_body_now(request: Request) -> bytes:
        limit = settings.max_upload_bytes
        too_large = ServiceError(STATUS_TOO_LARGE, "too_large",
                                 f"the upload is larger than the limit of {limit} bytes (--max-upload-mb)",
                                 {"Connection": "close"})
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ServiceError(STATUS_BAD_REQUEST, "bad_request", "Content-Length is not a number")
            if int(length) > limit:
                await drain(request.stream(), DRAIN_BYTES)
                raise too_large
        chunks, size = [], 0
        stream = request.stream()
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                await drain(stream, DRAIN_BYTES)
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def parse(request: Request, body: bytes):
        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        kind, _, params = request.headers.get("content-type", "").partition(";")
        if kind.strip().lower() == "multipart/form-data":
            boundary = next((v.strip().strip('"') for k, _, v in (p.partition("=") for p in params.split(";"))
                             if k.strip().lower() == "boundary"), "")
            if boundary and f"--{boundary}--".encode("latin-1", "replace") not in body:
                raise ServiceError(STATUS_BAD_REQUEST, "bad_request",
                                   "the multipart body ends before its closing boundary: the upload was cut short")

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=MAX_FORM_PARTS,
                                                             max_part_size=settings.max_upload_bytes)
        except HTTPException as exc:
            raise ServiceError(STATUS_BAD_REQUEST, "bad_request", f"unreadable form: {exc.detail}") from exc
        except (ValueError, KeyError) as exc:
            raise ServiceError(STATUS_BAD_REQUEST, "bad_request", f"unreadable form: {exc}") from exc
        try:
            image = name = None
            fields: dict[str, str] = {}
            for key in set(form.keys()):
                items = form.getlist(key)
                if len(items) > 1:
                    raise ServiceError(STATUS_BAD_REQUEST, "bad_request", f"form field {key!r} given more than once")
                item = items[0]
                if key != "image" and key not in FIELDS:
                    fields[key] = ""  # parse_request names every unknown field, file part or text, in one line
                    continue
                if key == "image":
                    if isinstance(item, str):
                        raise ServiceError(STATUS_BAD_REQUEST, "bad_request",
                                           "'image' must be a file part (curl -F image=@photo.jpg)")
                    image, name = await item.read(), item.filename
                elif not isinstance(item, str):
                    raise ServiceError(STATUS_BAD_REQUEST, "bad_request", f"form field {key!r} must be text")
                else:
                    fields[key] = item
        finally:
            await form.close()
        return parse_request(image, name, fields, settings, service.method_names())

    async def explanations(request: Request) -> Response:
        ticket = service.receive()
        try:
            check_auth(request)
            body = await read_body(request)
            explain_request = await parse(request, body)

            async def disconnected() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass

            _, payload = await service.explain(explain_request, disconnected)
        except ServiceError as exc:
            ticket.answer(exc.outcome)
            return error(exc)
        except ClientDisconnect:  # gone while uploading: nobody to answer, still one outcome
            ticket.answer("cancelled")
            return error(ServiceError(STATUS_CLIENT_GONE, "cancelled", "the client closed the connection"))
        except asyncio.CancelledError:
            if not service.stopping:  # Ray Serve cancels the handler when the client went away: nobody to answer
                ticket.answer("cancelled")
                raise
            cut_off = shutting_down()  # the server cut it off (stopping at once): the client still waits for an answer
            ticket.answer(cut_off.outcome)
            return error(cut_off)
        except Exception as exc:  # a bug: still exactly one answer, on one line
            log.exception("unexpected error in POST /v1/explanations")
            ticket.answer("error")
            return error(ServiceError(STATUS_ERROR, "error", f"internal error: {type(exc).__name__}: {exc}"))
        ticket.answer("ok")
        return JSONResponse(payload)

    def stored(request: Request):
        check_auth(request)
        result = service.store.get(request.path_params["result_id"])
        if result is None:
            raise ServiceError(STATUS_NOT_FOUND, "not_found",
                               "no such result: unknown id, or forgotten (only the most recent results are kept)")
        return result

    async def explanation_json(request: Request) -> Response:
        try:
            result = stored(request)
        except ServiceError as exc:
            return error(exc)
        payload = result.explanation.to_dict()
        payload["id"] = result.id
        return JSONResponse(payload)

    def file_route(make: Callable[[Any], bytes], media_type: str):
        async def endpoint(request: Request) -> Response:
            try:
                result = stored(request)
            except ServiceError as exc:
                return error(exc)
            content = await asyncio.to_thread(make, result)
            return Response(content, media_type=media_type, headers=FILE_HEADERS)

        return endpoint

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "state": service.state})

    async def readyz(request: Request) -> Response:
        body = {"ready": service.ready, "state": service.state}
        if service.failure is not None:
            body["error"] = " ".join(str(service.failure).split())
        headers = {} if service.ready else {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse(body, status_code=200 if service.ready else 503, headers=headers)

    async def metrics(request: Request) -> Response:
        try:
            check_auth(request)
        except ServiceError as exc:
            return error(exc)
        content, kind = service.metrics.exposition()
        return Response(content, headers={"Content-Type": kind})

    def page(path: str):
        content, kind = pages[path]

        async def endpoint(request: Request) -> Response:
            return Response(content, media_type=kind, headers=PAGE_HEADERS)

        return endpoint

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", STATUS_NOT_FOUND)
        message = {STATUS_NOT_FOUND: f"no route {request.url.path}",
                   STATUS_METHOD_NOT_ALLOWED: f"{request.method} is not allowed on {request.url.path}"}
        return Response(error_body(status, message.get(status, getattr(exc, "detail", "error"))),
                        status_code=status, headers=getattr(exc, "headers", None),  # 405: Allow
                        media_type="application/json")

    class AnswerWhenCutOff:
        """Every other route: a request the stopping server cancels still gets the 503 of :func:`shutting_down`."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            started = False

            async def watched(message: dict) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self.app(scope, receive, watched)
            except asyncio.CancelledError:
                if not service.stopping:
                    raise
                if not started:  # an answer already begun cannot be replaced: the server closes its connection
                    await error(shutting_down())(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        await service.start(on_failure, on_ready)
        yield
        await asyncio.to_thread(service.close)

    routes = [
        Route("/v1/explanations", explanations, methods=["POST"]),
        Route("/v1/explanations/{result_id}", explanation_json, methods=["GET"]),
        Route("/v1/explanations/{result_id}/overlay.png", file_route(lambda r: overlay_png(r.explanation, r.top_k),
                                                                     "image/png"), methods=["GET"]),
        Route("/v1/explanations/{result_id}/masks.npz", file_route(lambda r: masks_npz(r.explanation, r.id),
                                                                   "application/octet-stream"), methods=["GET"]),
        Route("/v1/explanations/{result_id}/crop.png", file_route(lambda r: crop_png(r.explanation), "image/png"),
              methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *(Route(path, page(path), methods=["GET"]) for path in PAGE_FILES),
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    middleware.append(Middleware(AnswerWhenCutOff))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={STATUS_NOT_FOUND: not_found, STATUS_METHOD_NOT_ALLOWED: not_found})
