"""Running the application with uvicorn: in this process (``eac serve``), or in a thread (tests, embedding).

The listening socket is bound here, before uvicorn starts, so a port in use
or a host that does not exist fails with one line. uvicorn stops on SIGTERM or
SIGINT: it closes the socket (no new connections), lets every request in
flight finish — each is bounded by the service's timeout — then runs the
application's shutdown (batcher and threads stopped) and returns.

A second SIGINT (Ctrl-C) while it waits stops at once. uvicorn alone would stop
waiting and leave the requests in flight to be cancelled as its event loop
closes: a plain-text 500 and a traceback each. The server of :func:`make_server`
instead cancels them itself, while the loop still runs: each answers 503 (the
service's :func:`~eac.engine.serve.service.shutting_down`), its work is
cancelled through its token, and the application's shutdown runs as after a
graceful stop.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from ..errors import ConfigError, EacError
from .metrics import SERVE_HINT

#: Seconds uvicorn waits for requests in flight after SIGTERM beyond the service's own timeout.
DRAIN_MARGIN_S = 5.0
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 5
#: Signals after which uvicorn drains and the command exits normally.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The signal that, once the server is stopping, stops it at once (uvicorn's "CTRL+C to force quit").
FORCE_SIGNAL = signal.SIGINT
#: How often :func:`running_in_thread` checks that the server has started, and for how long.
START_POLL_S = 0.01
START_TIMEOUT_S = 30.0


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError(SERVE_HINT) from exc
    return uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free port), ready for uvicorn.

    Raises
    ------
    ConfigError
        The address cannot be used (in use, not this machine's, unknown name).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Stopped(NamedTuple):
    """How :func:`run` ended."""

    #: Name of the signal that began the stop (None: the server stopped by itself, e.g. the models did not load).
    signal: str | None
    #: A second SIGINT came while the server waited for the requests in flight: it did not wait.
    forced: bool = False
    #: Requests in flight then (each was answered 503 and its work cancelled).
    cut_off: int = 0


def _server_class(uvicorn: Any) -> type:
    """uvicorn's ``Server``, with :attr:`Service.stopping` set when it stops and a forced stop that answers."""

    class Server(uvicorn.Server):
        def __init__(self, config: Any, service: Any) -> None:
            super().__init__(config)
            self.service = service
            self.forced = False
            self.cut_off = 0
            self._loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == FORCE_SIGNAL and self.should_exit and self._loop is not None:
                # uvicorn would set force_exit: stop waiting and let the loop's end cancel the requests
                # unanswered. Cut them off now instead, once; the stop then goes on as a graceful one.
                if not self.forced:
                    self.forced = True
                    self._loop.call_soon_threadsafe(self._cut_off)  # from a signal handler: into the loop
                return
            super().handle_exit(sig, frame)

        def _cut_off(self) -> None:
            self.service.stopping = True
            for task in list(self.server_state.tasks):
                if not task.done():
                    self.cut_off += 1
                    task.cancel()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            self.service.stopping = True  # a request cancelled from now on is the server's doing (503)
            await super().shutdown(sockets)

    return Server


def make_server(service: Any, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> Any:
    """A uvicorn ``Server`` running the application of ``service`` (not started).

    If the models fail to load the server stops and ``service.failure`` says why.
    """
    from .app import create_app

    uvicorn = _uvicorn()
    server_box: list[Any] = []

    def failed(error: EacError) -> None:
        if server_box:
            server_box[0].should_exit = True

    app = create_app(service, on_failure=failed, on_ready=on_ready)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False, server_header=False,
                            timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=service.settings.timeout_s + DRAIN_MARGIN_S)
    server = _server_class(uvicorn)(config, service)
    server_box.append(server)
    return server


def run(service: Any, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> Stopped:
    """Serve until SIGTERM / SIGINT, then drain; returns which signal stopped it and whether it was forced.

    uvicorn drains on SIGTERM or SIGINT and then raises the signal again for the
    previous handler; here that handler only notes it, so the process ends
    normally (exit 0) after a graceful stop. A second Ctrl-C while draining
    stops at once: the requests in flight are answered 503 (see the module docs).

    Raises
    ------
    EacError
        ``service.failure``: the models did not load.
    """
    server = make_server(service, sock, on_ready)
    stopped_by: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service.failure is not None:
        raise service.failure
    # uvicorn raises the signals it caught last first: the one that began the stop is the last noted
    return Stopped(signal.Signals(stopped_by[-1]).name if stopped_by else None, server.forced, server.cut_off)


@contextmanager
def running_in_thread(service: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``service`` from a thread of this process; yields the base URL, stops (draining) on exit.

    Raises
    ------
    EacError
        The server did not start within :data:`START_TIMEOUT_S` seconds.
    """
    sock = bind(host, port)
    server = make_server(service, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="eac-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive():
        if time.monotonic() > deadline:
            server.should_exit = True
            raise EacError("the server did not start in time")
        time.sleep(START_POLL_S)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
