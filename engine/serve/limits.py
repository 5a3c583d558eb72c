"""Admission: a bounded number of requests in the service, and the one-line errors it answers with.

:class:`Admission` admits a request when fewer than ``concurrency + max_queue``
are in the service (explaining, or waiting for one of the ``concurrency``
threads); otherwise the caller answers 503 with ``Retry-After``. A request
counts until its thread has really finished — a timed-out request whose work is
still unwinding keeps its place — so memory and threads stay bounded whatever
the load.

:class:`ServiceError` is every answer other than 200: the HTTP status, the
outcome counted in the metrics, one line of text and extra headers.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import EacError

#: HTTP statuses of the answers the service makes.
STATUS_BAD_REQUEST = 400
STATUS_UNAUTHORIZED = 401
STATUS_REQUEST_TIMEOUT = 408
STATUS_NOT_FOUND = 404
STATUS_METHOD_NOT_ALLOWED = 405
STATUS_TOO_LARGE = 413
STATUS_CLIENT_GONE = 499  # nginx's convention for a client that went away; that client never sees it
STATUS_ERROR = 500
STATUS_UNAVAILABLE = 503
STATUS_TIMEOUT = 504


class ServiceError(EacError):
    """A non-200 answer: HTTP ``status``, metrics ``outcome``, a one-line message, extra ``headers``."""

    def __init__(self, status: int, outcome: str, message: str, headers: dict[str, str] | None = None) -> None:
        line = " ".join(str(message).split())  # one line, whatever the cause said
        super().__init__(line)
        self.status = int(status)
        self.outcome = outcome
        self.message = line
        self.headers = dict(headers or {})


def bad_request(message: str) -> ServiceError:
    """A 400 answer."""
    return ServiceError(STATUS_BAD_REQUEST, "bad_request", message)


class Admission:
    """Counts requests in the service and admits new ones while there is room (thread-safe).

    Parameters
    ----------
    concurrency : int
        Requests explained at once.
    max_queue : int
        Admitted requests allowed to wait beyond those.
    metrics : ServiceMetrics, optional
        Its ``queue_depth`` and ``explaining`` gauges follow the counts.
    """

    def __init__(self, concurrency: int, max_queue: int, metrics: Any = None) -> None:
        self.capacity = int(concurrency) + int(max_queue)
        self.metrics = metrics
        self.waiting = 0
        self.explaining = 0
        self._lock = threading.Lock()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.waiting)
            self.metrics.explaining.set(self.explaining)

    def try_admit(self) -> bool:
        """Admit one request (it now waits for a thread), or say there is no room."""
        with self._lock:
            if self.waiting + self.explaining >= self.capacity:
                return False
            self.waiting += 1
            self._publish()
            return True

    def started(self) -> None:
        """An admitted request got its thread."""
        with self._lock:
            self.waiting -= 1
            self.explaining += 1
            self._publish()

    def finished(self) -> None:
        """A request's thread is done with it."""
        with self._lock:
            self.explaining -= 1
            self._publish()

    @property
    def in_service(self) -> int:
        with self._lock:
            return self.waiting + self.explaining
