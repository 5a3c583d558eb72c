"""The service's settings and the safe-by-default rules they must pass.

:class:`ServeSettings` holds everything ``eac serve`` decides besides the engine
(:class:`~eac.engine.dataset.RunConfig`): where it listens, how much it accepts,
how it batches. :meth:`ServeSettings.check` refuses unsafe or impossible
combinations with one line: a non-loopback ``host`` needs an API key or an
explicit ``insecure``; limits must be positive.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import ConfigError

#: Where the service listens unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Largest TCP port number.
MAX_PORT = 65535
#: Requests explained at once (threads). Each blocks on the shared classifier batcher while its
#: evaluations run, so a few are needed to fill batches; on a 2-core CPU more only add waiting.
DEFAULT_CONCURRENCY = 4
#: Admitted requests waiting for one of those threads; one more gets 503 + Retry-After.
DEFAULT_MAX_QUEUE = 16
#: Seconds from admission to answer (queueing included) before 504; the work is dropped then.
DEFAULT_TIMEOUT_S = 60.0
#: Seconds a client has to send its whole request body (a stalled upload holds a connection and a request slot).
DEFAULT_UPLOAD_TIMEOUT_S = 60.0
#: Largest request body. A 24-megapixel JPEG is under 15 MB; the decoded size has its own limit.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest decoded image (pixels): 50 MP is 150 MB of RGB per request being decoded.
DEFAULT_MAX_PIXELS = 50_000_000
#: Largest evaluation budget a request may ask for (each evaluation is one classifier image).
DEFAULT_MAX_EVALUATIONS = 8192
#: Recent results kept for the overlay / masks / crop endpoints (each holds its crop and N masks).
DEFAULT_RESULTS = 64
#: Longest a classifier batch waits for other requests' rows before it runs part-full. A request
#: between two rounds of evaluations fits its surrogate for milliseconds; 5 ms lets concurrent
#: requests join without adding noticeable latency to a lone one (which never waits; see batcher).
DEFAULT_MAX_WAIT_S = 0.005
#: Seconds a client is told to wait (Retry-After) when the queue is full or the models are loading.
RETRY_AFTER_S = 1
#: Host names that mean this machine only (besides loopback IP addresses).
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is reachable from this machine only.

    Other host names are treated as not loopback: what they resolve to can change.
    """
    text = host.strip().strip("[]").lower()
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """How the service listens, admits, limits and batches requests (see the module docs).

    Parameters
    ----------
    host, port : str, int
        Where to listen (default loopback only).
    api_key : str, optional
        Bearer token every ``/v1`` and ``/metrics`` request must carry (compared in constant time).
    insecure : bool
        Allow a non-loopback ``host`` without ``api_key``.
    cors_origins : tuple of str
        Origins allowed to call the API from a browser (CORS); empty: no CORS headers at all.
    concurrency : int
        Requests explained at once.
    max_queue : int
        Admitted requests waiting beyond those; more get 503.
    timeout_s : float
        Seconds from admission to answer before 504.
    upload_timeout_s : float
        Seconds from the request's headers to the end of its body before 408 (stalled uploads).
    max_upload_bytes, max_pixels, max_evaluations : int
        Request limits (413 for the body, 400 for the others).
    results : int
        Recent results kept for the overlay, masks and crop endpoints (LRU).
    batching : bool
        Coalesce concurrent requests' evaluations into shared classifier batches.
    batch_size : int, optional
        Rows per classifier batch (default: the evaluator's).
    max_wait_s : float
        Longest a part-full batch waits for other requests' rows.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    insecure: bool = False
    cors_origins: tuple[str, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    timeout_s: float = DEFAULT_TIMEOUT_S
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    results: int = DEFAULT_RESULTS
    batching: bool = True
    batch_size: int | None = None
    max_wait_s: float = DEFAULT_MAX_WAIT_S

    def check(self) -> ServeSettings:
        """Refuse unsafe or impossible settings (ConfigError, one line); returns self.

        Raises
        ------
        ConfigError
            A non-loopback host with neither an API key nor ``insecure``; an empty API key;
            a limit that is not positive.
        """
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key is empty; give a long random token (e.g. `openssl rand -hex 32`)")
        if not is_loopback(self.host) and self.api_key is None and not self.insecure:
            raise ConfigError(f"--host {self.host} is reachable from other machines: give --api-key TOKEN "
                              "(clients send 'Authorization: Bearer TOKEN'), or --insecure to serve without one")
        for name in ("concurrency", "max_upload_bytes", "max_pixels", "max_evaluations", "results"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ConfigError(f"max-queue must be 0 or more, got {self.max_queue}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout_s}")
        if not self.upload_timeout_s > 0:
            raise ConfigError(f"upload-timeout must be positive, got {self.upload_timeout_s}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch-size must be at least 1, got {self.batch_size}")
        if self.max_wait_s < 0:
            raise ConfigError(f"max-wait must be 0 or more, got {self.max_wait_s}")
        if not 0 <= self.port <= MAX_PORT:
            raise ConfigError(f"port must lie in 0..{MAX_PORT}, got {self.port}")
        return self

