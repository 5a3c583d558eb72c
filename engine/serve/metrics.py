"""The service's Prometheus metrics, in a registry of its own (no process-global state).

Explanation requests (``POST /v1/explanations``)
    ``eac_requests_received_total``; ``eac_requests_total{outcome}`` once per
    answer, ``outcome`` one of :data:`OUTCOMES`; ``eac_requests_in_flight``
    (received, not yet answered). At any moment
    ``received = sum over outcomes + in_flight``: every request is answered
    exactly once. ``eac_queue_depth`` (admitted, waiting for a thread) and
    ``eac_requests_explaining`` (in a thread now, including work a timeout or
    disconnect has cancelled and that is still unwinding).
Latency
    ``eac_stage_seconds{stage}`` histograms: ``queue`` (admission to a
    thread), the explanation's own stages (``concepts``, ``evaluations``,
    ``fit``, ``values``) and ``total`` (admission to result, successful
    requests).
Classifier batches
    ``eac_classifier_batches_total``, ``eac_classifier_batch_rows_total``,
    ``eac_classifier_batch_size`` (the configured rows per batch), and
    histograms ``eac_classifier_batch_fill`` (rows / batch size),
    ``eac_classifier_batch_requests`` (distinct requests per batch),
    ``eac_classifier_batch_seconds`` (running) and
    ``eac_classifier_batch_wait_seconds`` (how long the oldest rows of a batch
    waited before it ran: the batcher's own delay plus the batches ahead of
    it). Mean fill = rows / (batches × batch size).

``prometheus_client`` comes with the ``serve`` extra and is imported here only
when a :class:`ServiceMetrics` is made.
"""

from __future__ import annotations

from typing import Any

from ..distribution import install_hint
from ..errors import ConfigError

#: How an explanation request ended; one counter per outcome.
OUTCOMES = ("ok", "bad_request", "unauthorized", "too_large", "upload_timeout", "queue_full", "not_ready", "timeout",
            "cancelled", "error")
#: Stages of ``eac_stage_seconds``.
STAGES = ("queue", "concepts", "evaluations", "fit", "values", "total")
#: Histogram buckets: seconds (1 ms .. 5 min), batch fill fractions, requests per batch.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FILL_BUCKETS = (0.125, 0.25, 0.5, 0.75, 0.99, 1.0)
REQUESTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SERVE_HINT = f"eac serve needs the serve extra: {install_hint('serve')}"


def prometheus() -> Any:
    """The ``prometheus_client`` module, or ConfigError naming the extra."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(SERVE_HINT) from exc
    return prometheus_client


class ServiceMetrics:
    """Every metric of one service instance (see the module docs).

    Parameters
    ----------
    batch_size : int
        Rows per classifier batch (exported as ``eac_classifier_batch_size``).
    """

    def __init__(self, batch_size: int) -> None:
        prom = prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = prom.Counter("eac_requests_received", "Explanation requests received", registry=r)
        self.outcomes = prom.Counter("eac_requests", "Explanation requests answered, by outcome", ["outcome"],
                                     registry=r)
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome)
        self.in_flight = prom.Gauge("eac_requests_in_flight", "Explanation requests received, not yet answered",
                                    registry=r)
        self.queue_depth = prom.Gauge("eac_queue_depth", "Admitted requests waiting for a thread", registry=r)
        self.explaining = prom.Gauge("eac_requests_explaining", "Requests in a thread now", registry=r)
        self.stages = prom.Histogram("eac_stage_seconds", "Seconds per stage of explanation requests", ["stage"],
                                     buckets=SECONDS_BUCKETS, registry=r)
        for stage in STAGES:
            self.stages.labels(stage)
        self.batches = prom.Counter("eac_classifier_batches", "Classifier batches run", registry=r)
        self.batch_rows = prom.Counter("eac_classifier_batch_rows", "Rows (masked images) in classifier batches",
                                       registry=r)
        prom.Gauge("eac_classifier_batch_size", "Configured rows per classifier batch", registry=r).set(batch_size)
        self.fill = prom.Histogram("eac_classifier_batch_fill", "Rows of a classifier batch / batch size",
                                   buckets=FILL_BUCKETS, registry=r)
        self.batch_requests = prom.Histogram("eac_classifier_batch_requests", "Distinct requests in a batch",
                                             buckets=REQUESTS_BUCKETS, registry=r)
        self.batch_seconds = prom.Histogram("eac_classifier_batch_seconds", "Seconds per classifier batch",
                                            buckets=SECONDS_BUCKETS, registry=r)
        self.batch_wait = prom.Histogram("eac_classifier_batch_wait_seconds",
                                         "Seconds the oldest rows of a batch waited before it ran",
                                         buckets=SECONDS_BUCKETS, registry=r)

    def observe_batch(self, rows: int, batch_size: int, requests: int, seconds: float, waited: float) -> None:
        """Record one classifier batch (the batcher's observer)."""
        self.batches.inc()
        self.batch_rows.inc(rows)
        self.fill.observe(rows / batch_size)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)
        self.batch_wait.observe(waited)

    def observe_stages(self, timings: dict[str, float]) -> None:
        """Record the stages of one finished explanation (seconds by stage name)."""
        for stage in STAGES:
            if stage in timings and timings[stage] is not None:
                self.stages.labels(stage).observe(float(timings[stage]))

    def answered(self, outcome: str) -> None:
        """Count one answer (exactly once per received request)."""
        self.outcomes.labels(outcome).inc()
        self.in_flight.dec()

    def answered_count(self) -> int:
        """Explanation requests answered so far (all outcomes)."""
        return int(sum(self.registry.get_sample_value("eac_requests_total", {"outcome": o}) or 0 for o in OUTCOMES))

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
