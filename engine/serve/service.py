"""The service without HTTP: one engine, its batcher, admission, recent results and metrics.

:class:`Service` is what ``eac serve`` runs in one process and what each Ray
Serve replica runs (:mod:`eac.engine.serve.ray_serve`); the HTTP layer
(:mod:`eac.engine.serve.app`) only turns requests into :class:`ExplainRequest`
and answers into responses.

A request's way through: :func:`~eac.engine.serve.params.parse_request`
checks the form's fields (400 on anything wrong) → :meth:`Service.explain` checks the method options, admits it
(503 when full) and hands it to one of ``concurrency`` threads, then waits for
the first of: the result (200), the deadline (504: the request's
:class:`~eac.engine.serve.batcher.CancelToken` is cancelled and its work
dropped), the client going away (cancelled likewise), the server stopping at
once (503 :func:`shutting_down`; cancelled likewise). In the thread: decode the
image (400 when it cannot be), explain it on the shared engine with a
:class:`~eac.engine.serve.batcher.BatchedClassifier` whose evaluations join
other requests' classifier batches, store the result under a random id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ConceptError,
    ConfigError,
    EacError,
    ExplainError,
    ImageError,
    InputShapeError,
    TooManyConceptsError,
)
from .batcher import BatchedClassifier, BatcherClosed, CancelToken, ClassifierBatcher, DirectClient, RequestCancelled
from .limits import (
    STATUS_CLIENT_GONE,
    STATUS_ERROR,
    STATUS_TIMEOUT,
    STATUS_UNAVAILABLE,
    Admission,
    ServiceError,
    bad_request,
)
from .metrics import ServiceMetrics
from .params import ExplainRequest
from .results import ResultStore, StoredResult, new_id
from .settings import RETRY_AFTER_S, ServeSettings

log = logging.getLogger(__name__)

#: SAM calls at once: the encoder holds GBs while it runs and one call already keeps the device busy.
SAM_CALLS_AT_ONCE = 1
#: Errors a request causes itself: 400.
CLIENT_ERRORS = (ImageError, ExplainError, ConceptError, InputShapeError, ConfigError)
#: Service states (``/readyz`` answers 200 only when ``ready``).
LOADING, READY, DRAINING, FAILED = "loading", "ready", "draining", "failed"


def shutting_down() -> ServiceError:
    """503 ``not_ready`` + Retry-After: a request the stopping server cuts off, or one too late for its threads."""
    return ServiceError(STATUS_UNAVAILABLE, "not_ready", "the server is shutting down",
                        {"Retry-After": str(RETRY_AFTER_S)})


class Ticket:
    """One received request: counted once when made, answered (one outcome) exactly once."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self.received = time.perf_counter()
        self.outcome: str | None = None
        self._lock = threading.Lock()
        metrics.received.inc()
        metrics.in_flight.inc()

    def answer(self, outcome: str) -> None:
        """Count the answer (later calls are ignored: a request has one answer)."""
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = outcome
        self.metrics.answered(outcome)


@dataclass
class _Work:
    request: ExplainRequest
    method: str
    options: dict[str, Any]
    token: CancelToken
    admitted: float


class Service:
    """The engine, the batcher and the request bookkeeping of one process (see the module docs).

    Parameters
    ----------
    config : RunConfig
        The engine: models, concepts, default method and options, seed, ONNX Runtime settings.
    settings : ServeSettings
        Limits, batching, results kept.
    engine : EngineHolder, optional
        An engine already made from ``config`` (otherwise :meth:`load` makes it).

    Attributes
    ----------
    state : str
        ``loading``, ``ready``, ``draining`` or ``failed``.
    failure : EacError or None
        Why loading failed.
    stopping : bool
        Set by the server (:mod:`eac.engine.serve.server`) when it begins to stop: a request it cancels
        from then on is cut off by the server, not given up by its client, and is answered
        :func:`shutting_down` (503) rather than counted ``cancelled`` (499). Never set on Ray Serve,
        which cancels a request's handler when its client goes away.
    metrics : ServiceMetrics
    store : ResultStore
    """

    def __init__(self, config: Any, settings: ServeSettings, engine: Any = None) -> None:
        from ..evaluator import DEFAULT_BATCH_SIZE

        self.config = config
        self.settings = settings.check()
        self.batch_size = settings.batch_size or config.batch_size or DEFAULT_BATCH_SIZE
        self.metrics = ServiceMetrics(self.batch_size)
        self.store = ResultStore(settings.results)
        self.admission = Admission(settings.concurrency, settings.max_queue, self.metrics)
        self.engine = engine
        self.batcher: ClassifierBatcher | None = None
        self.executor: cf.ThreadPoolExecutor | None = None
        self.state = LOADING
        self.failure: EacError | None = None
        self.stopping = False
        self._concept_slots: threading.Semaphore | None = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> Service:
        """Make the engine (unless given), start the batcher and the threads; state ``ready``.

        Raises
        ------
        EacError
            The engine cannot be made (state ``failed``, :attr:`failure` set).
        """
        try:
            if self.engine is None:
                from ..holder import EngineHolder

                self.engine = EngineHolder(self.config)
        except EacError as exc:
            self.failure, self.state = exc, FAILED
            raise
        except Exception as exc:  # a model that ONNX Runtime or opencv chokes on: one line
            self.failure, self.state = EacError(f"the engine could not start: {type(exc).__name__}: {exc}"), FAILED
            raise self.failure from exc
        if self.settings.batching:
            self.batcher = ClassifierBatcher(self.engine.classifier, self.batch_size, self.settings.max_wait_s,
                                             observer=self.metrics.observe_batch).start()
        self.executor = cf.ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="eac-explain")
        sam = bool(getattr(self.config, "sam", None))
        self._concept_slots = threading.Semaphore(SAM_CALLS_AT_ONCE if sam else self.settings.concurrency)
        self.state = READY
        return self

    async def start(self, on_failure: Callable[[EacError], None] | None = None,
                    on_ready: Callable[[], None] | None = None) -> None:
        """Load in a background thread (``/readyz`` says 503 until it is done); for the app's startup.

        ``on_ready()`` is called once loaded, ``on_failure(error)`` when loading
        fails (the server then stops). A service loaded already is ready at once.
        """
        if self.state != LOADING:
            if self.state == READY and on_ready is not None:
                on_ready()
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self.load)

        def done(fut: asyncio.Future) -> None:
            if fut.cancelled():
                return
            error = fut.exception()
            if error is None:
                if on_ready is not None:
                    on_ready()
                return
            log.debug("loading failed: %s", self.failure or error)
            if on_failure is not None:
                on_failure(self.failure or EacError(str(error)))

        future.add_done_callback(done)

    def close(self) -> None:
        """Stop taking work; the batcher fails what still waits, the threads end (for the app's shutdown)."""
        if self.state == READY:
            self.state = DRAINING
        if self.batcher is not None:
            self.batcher.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.state == READY

    # ------------------------------------------------------------------ requests
    def receive(self) -> Ticket:
        """Count a new explanation request; answer it exactly once through the ticket."""
        return Ticket(self.metrics)

    def method_names(self) -> tuple[str, ...]:
        from ..methods import method_names

        return tuple(method_names())

    def _method_options(self, request: ExplainRequest) -> tuple[str, dict[str, Any]]:
        """The request's method and options, checked against the classifier (ServiceError 400)."""
        from ..methods import get_method

        method = request.method or self.config.method
        try:
            if request.evaluations is not None:
                options = get_method(method).budget(request.evaluations)
            else:
                options = dict(self.config.options) if method == self.config.method else {}
            get_method(method)(**options).check_classifier(self.engine.classifier)
        except EacError as exc:
            raise bad_request(str(exc)) from exc
        return method, options

    async def explain(self, request: ExplainRequest,
                      disconnected: Callable[[], Awaitable[Any]] | None = None) -> tuple[StoredResult, dict]:
        """Explain one request: the stored result and the response body (``explanation.json`` + ``id``).

        Parameters
        ----------
        request : ExplainRequest
        disconnected : callable returning an awaitable, optional
            Completes when the client goes away (the request is then cancelled).

        Raises
        ------
        ServiceError
            400 bad parameters or image, 503 not ready or queue full, 504 timeout,
            499 client gone, 500 engine failure.
        asyncio.CancelledError
            The caller was cancelled (the client went away, or the server is stopping: :attr:`stopping`);
            the request's work is cancelled too.
        """
        if self.state != READY:
            why = "the models are still loading" if self.state == LOADING else f"the service is {self.state}"
            raise ServiceError(STATUS_UNAVAILABLE, "not_ready", f"{why}; retry later",
                               {"Retry-After": str(RETRY_AFTER_S)})
        method, options = self._method_options(request)
        if not self.admission.try_admit():
            raise ServiceError(STATUS_UNAVAILABLE, "queue_full",
                               f"busy: {self.admission.capacity} requests are already in the service; retry later",
                               {"Retry-After": str(RETRY_AFTER_S)})
        work = _Work(request, method, options, CancelToken(), time.perf_counter())
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self.executor, self._run, work)
        except RuntimeError as exc:  # the executor is shut down: the service is stopping
            self.admission.started()
            self.admission.finished()
            raise shutting_down() from exc
        # The thread always runs to its end (it must release its admission); nobody may cancel the future.
        future.add_done_callback(lambda f: f.exception())
        watch = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            done, _ = await asyncio.wait({future, watch} - {None}, timeout=self.settings.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # Ray Serve: the client went away; uvicorn: the server is stopping at once
            work.token.cancel("cancelled: the server is shutting down" if self.stopping
                              else "cancelled: the client went away")
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if watch is not None and watch in done:
            work.token.cancel("cancelled: the client went away")
            raise ServiceError(STATUS_CLIENT_GONE, "cancelled", "the client closed the connection")
        if future not in done:
            work.token.cancel("timed out")
            raise ServiceError(STATUS_TIMEOUT, "timeout",
                               f"not answered within {self.settings.timeout_s:g} s (--timeout); the work was dropped")
        try:
            return future.result()
        except ServiceError:
            raise
        except RequestCancelled as exc:
            raise ServiceError(STATUS_CLIENT_GONE, "cancelled", str(exc)) from exc
        except BatcherClosed as exc:
            raise ServiceError(STATUS_UNAVAILABLE, "not_ready", str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from exc
        except TooManyConceptsError as exc:  # the client cannot change the server's flags: say what it can do
            raise bad_request(f"the image has {exc.count} concepts, more than this server's limit of {exc.limit}; "
                              "send a simpler or smaller image, or ask the operator (--max-concepts)") from exc
        except CLIENT_ERRORS as exc:
            raise bad_request(str(exc)) from exc
        except EacError as exc:
            raise ServiceError(STATUS_ERROR, "error", str(exc)) from exc
        except Exception as exc:
            log.exception("unexpected error in a request")
            raise ServiceError(STATUS_ERROR, "error", f"internal error: {type(exc).__name__}: {exc}") from exc

    def _concepts(self, token: CancelToken) -> Callable[[Any, Any], Any]:
        """The engine's concept source for one request: cancellable, SAM one call at a time."""
        source = self.engine.source
        slots = self._concept_slots

        def concepts(crop: Any, frame: Any) -> Any:
            token.check()
            with slots:
                token.check()
                return source(crop, frame)

        return concepts

    def _run(self, work: _Work) -> tuple[StoredResult, dict]:
        """A request in its thread (see the module docs)."""
        from ..dataset import decode_image

        self.admission.started()
        try:
            work.token.check()
            queued = time.perf_counter() - work.admitted
            request = work.request
            image = decode_image(request.image, request.name, self.settings.max_pixels)
            engine = self.engine
            if self.batcher is not None:
                client: Any = self.batcher.client(work.token)
            else:
                client = DirectClient(engine.classifier, work.token, self.metrics.observe_batch, self.batch_size)
            with client:
                explainer = engine.explainer_for(method=work.method, options=work.options, seed=request.seed,
                                                 classifier=BatchedClassifier(engine.classifier, client))
                explanation = engine.explain(image, request.target, explainer=explainer,
                                             source=self._concepts(work.token))
            work.token.check()
            result = StoredResult(new_id(), explanation, request.top_k)
            body = explanation.to_dict()
            body["id"] = result.id
            self.store.put(result)
            self.metrics.observe_stages({"queue": queued, **explanation.timings,
                                         "total": time.perf_counter() - work.admitted})
            return result, body
        finally:
            self.admission.finished()
