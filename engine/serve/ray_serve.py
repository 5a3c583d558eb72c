"""The same application as a Ray Serve deployment, for more than one machine.

Each replica makes one :class:`~eac.engine.serve.service.Service` — the engine
(:class:`~eac.engine.holder.EngineHolder`: sessions created once per replica),
its batcher, admission and recent results — and serves the same ASGI
application as ``eac serve`` (:func:`~eac.engine.serve.app.create_app`), so
routes, limits, errors and metrics are the same; Ray Serve's HTTP proxy listens
on ``host:port`` and spreads requests over the replicas. Each replica keeps its
own recent results and metrics: with more than one replica, fetch a result's
overlay in the same session (or keep ``masks_rle`` from the JSON), and scrape
each replica's metrics through Ray's own metrics export.

On CUDA/TensorRT each replica takes one GPU (Ray sets its visible device, so
the engine uses device 0); on the CPU each takes ``threads`` CPUs (default 1)
and runs ONNX Runtime with that many threads. eac must be installed on every
node of the cluster. Ray itself is imported only when :func:`start_on_ray`
runs (the ``ray`` extra, with ``ray[serve]``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..distribution import install_hint
from ..errors import ConfigError

log = logging.getLogger(__name__)

RAY_SERVE_HINT = f"--ray needs Ray Serve: {install_hint('ray', 'serve')}"
#: Name of the Ray Serve application and deployment.
APP_NAME = "eac"
#: CPUs (= ONNX Runtime threads) of one CPU replica when --threads is not given.
DEFAULT_REPLICA_CPUS = 1
#: Ray Serve's own cap of requests per replica sits above the service's admission, so the
#: service answers 503 itself (one line, Retry-After) before Ray queues anything.
ONGOING_MARGIN = 8
#: Seconds a stopping replica waits for requests in flight beyond the service's timeout.
DRAIN_MARGIN_S = 5.0


def _ray_serve() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ConfigError(RAY_SERVE_HINT) from exc
    return ray, serve


def build_application(config: Any, settings: Any, replicas: int) -> Any:
    """The Ray Serve application (bound deployment) serving ``config`` with ``settings``.

    Parameters
    ----------
    config : RunConfig
    settings : ServeSettings
    replicas : int

    Returns
    -------
    ray.serve.Application
    """
    from ..session import GPU_PROVIDERS, resolve_providers

    _, serve = _ray_serve()
    gpu = resolve_providers(config.providers)[0] in GPU_PROVIDERS
    cpus = config.threads or DEFAULT_REPLICA_CPUS
    config = replace(config, threads=cpus, device_id=0 if gpu else config.device_id)

    class EacReplica:
        """One replica: the service made once, its ASGI app served by Ray Serve."""

        def __init__(self, config: Any, settings: Any) -> None:
            from eac.engine.serve.service import Service

            self.service = Service(config, settings).load()

        def __serve_build_asgi_app__(self) -> Any:
            from eac.engine.serve.app import create_app

            return create_app(self.service)

    deployment = serve.deployment(
        serve.ingress()(EacReplica), name=APP_NAME, num_replicas=replicas,
        max_ongoing_requests=settings.concurrency + settings.max_queue + ONGOING_MARGIN,
        graceful_shutdown_timeout_s=settings.timeout_s + DRAIN_MARGIN_S,
        ray_actor_options={"num_cpus": cpus, "num_gpus": 1 if gpu else 0})
    return deployment.bind(config, settings)


@dataclass
class RayDeployment:
    """A running deployment: its URL, and :meth:`stop` (drains the replicas, shuts down a Ray it started)."""

    url: str
    started_ray: bool

    def stop(self) -> None:
        """Delete the application (its replicas drain first); on a Ray started here, stop Serve and Ray too."""
        ray, serve = _ray_serve()
        try:
            serve.delete(APP_NAME)
        finally:
            if self.started_ray:
                serve.shutdown()
                ray.shutdown()


def start_on_ray(config: Any, settings: Any, address: str = "", replicas: int = 1,
                 num_cpus: int | None = None) -> RayDeployment:
    """Start (or join) Ray, start Serve's HTTP proxy on ``settings.host:port``, deploy; returns when ready.

    Parameters
    ----------
    config : RunConfig
    settings : ServeSettings
        Checked already (a non-loopback host has an API key or ``insecure``).
    address : str
        ``""``: a local Ray; anything else: the cluster to join (``"auto"``, ``"ray://host:10001"``).
    replicas : int
    num_cpus : int, optional
        CPUs of a local Ray (default: all).
    """
    ray, serve = _ray_serve()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
        started = True
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(config, settings, replicas), name=APP_NAME, route_prefix="/", blocking=False)
    except Exception:
        if started:
            ray.shutdown()
        raise
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return RayDeployment(f"http://{host}:{settings.port}", started)


def run_on_ray(config: Any, settings: Any, address: str = "", replicas: int = 1,
               on_ready: Callable[[str], None] | None = None) -> None:
    """``eac serve --ray``: deploy, then wait for SIGTERM / SIGINT and stop (draining the replicas)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        deployment = start_on_ray(config, settings, address, replicas)
        try:
            if on_ready is not None:
                on_ready(deployment.url)
            stop.wait()
        finally:
            deployment.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
