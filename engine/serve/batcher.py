"""Cross-request batching: concurrent requests' masked evaluations share classifier batches.

One :class:`ClassifierBatcher` per classifier session. Each request explains in
its own thread with a :class:`BatchedClassifier` — a stand-in with the
:class:`~eac.engine.classifier.Classifier` API whose ``run`` hands the request's
composed batch (M×3×h×w, already normalised) to the batcher and blocks until
exactly its M rows of logits (and features) come back. The batcher's thread
takes waiting rows, oldest first, into one classifier batch of up to
``batch_size`` rows (a request's rows may be split across two batches), runs
it, and hands every request its own rows.

When a batch runs
    As soon as it is full; or when every request currently explaining is
    waiting on the batcher (no more rows can come, so waiting would only add
    latency — a lone request never waits); or when the oldest waiting rows have
    waited ``max_wait_s``.

Identical results
    A row's output does not depend on which other rows share its batch *if*
    the classifier computes rows independently to the bit. Measured with ONNX
    Runtime 1.32's CPU provider (AMD EPYC with AVX2, 1 and 2 threads): the
    shipped demo CNN gives bit-identical logits and features for batch sizes 1
    to 64 in any row order, the bench's ResNet-50 for batch sizes 1, 3, 8, 16
    and 24 and a shuffled batch; so a request served alongside others gets
    exactly the values it gets alone (the service tests check it). GPU kernels
    may choose other algorithms per batch size; there it is not measured.

Cancellation
    Every request carries a :class:`CancelToken`. Rows of a cancelled request
    that wait are dropped before they reach a batch, and its next call raises
    :class:`RequestCancelled`, which unwinds the request's thread: after a
    timeout or a disconnect at most the batch already running is spent on it.

Failures
    If a shared batch fails (say, a model producing NaN for one request's
    rows), each request's rows are run again on their own, so the error
    reaches only the request it belongs to.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..classifier import ClassifierOutput
from ..errors import EacError, InputShapeError
from ..evaluator import DEFAULT_BATCH_SIZE

#: Called after each classifier batch: (rows, batch_size, distinct requests, seconds it ran,
#: seconds its oldest rows waited in the queue before it ran).
BatchObserver = Callable[[int, int, int, float, float], None]


class RequestCancelled(EacError):
    """The request this work belongs to was cancelled (timed out or its client went away)."""


class BatcherClosed(EacError):
    """The service is shutting down; no more classifier batches run."""


class CancelToken:
    """A request's cancellation flag, shared by its HTTP handler and its explaining thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel (idempotent) and wake whoever listens (the batcher)."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when the token is cancelled."""
        with self._lock:
            self._listeners.append(listener)

    def check(self) -> None:
        """Raise :class:`RequestCancelled` when cancelled."""
        if self._event.is_set():
            raise RequestCancelled(f"request {self.reason}; its work was dropped")


@dataclass(eq=False)
class _Item:
    """One request's batch on its way through the batcher."""

    client: Any
    batch: np.ndarray
    features: bool
    enqueued: float
    sent: int = 0
    returned: int = 0
    logits: np.ndarray | None = None
    feats: np.ndarray | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return int(self.batch.shape[0])

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class ClassifierBatcher:
    """Coalesces concurrent requests' classifier batches (see the module docs).

    Parameters
    ----------
    classifier : Classifier
        The one classifier session shared by every request.
    batch_size : int, optional
        Rows per classifier batch (default :data:`eac.engine.evaluator.DEFAULT_BATCH_SIZE`).
    max_wait_s : float
        Longest the oldest waiting rows wait for more before a part-full batch runs.
    observer : callable(rows, batch_size, requests, seconds, waited), optional
        Told about every batch (the service's metrics).
    """

    def __init__(self, classifier: Any, batch_size: int | None = None, max_wait_s: float = 0.005,
                 observer: BatchObserver | None = None) -> None:
        self.classifier = classifier
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise InputShapeError(f"batch size must be at least 1, got {self.batch_size}")
        self.max_wait_s = float(max_wait_s)
        self.observer = observer
        self._cond = threading.Condition()
        self._pending: collections.deque[_Item] = collections.deque()
        self._clients: set[BatchClient] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="eac-classifier-batcher", daemon=True)
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ClassifierBatcher:
        """Start the batching thread (once)."""
        with self._cond:
            if not self._started:
                self._started = True
                self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop: waiting rows fail with :class:`BatcherClosed`, the running batch finishes, the thread ends."""
        with self._cond:
            self._closed = True
            for item in self._pending:
                item.fail(BatcherClosed("the service is shutting down"))
            self._pending.clear()
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout)

    def client(self, token: CancelToken) -> BatchClient:
        """A request's handle on the batcher (use it as a context manager around the request's work)."""
        return BatchClient(self, token)

    # ------------------------------------------------------------------ requests' side
    def _register(self, client: BatchClient) -> None:
        with self._cond:
            self._clients.add(client)
        client.token.listen(self._wake)

    def _unregister(self, client: BatchClient) -> None:
        with self._cond:
            self._clients.discard(client)
            self._cond.notify_all()  # one fewer request that could add rows

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _submit(self, item: _Item) -> None:
        with self._cond:
            if self._closed:
                raise BatcherClosed("the service is shutting down")
            if not self._started:
                raise BatcherClosed("the classifier batcher was not started")
            self._pending.append(item)
            self._cond.notify_all()

    # ------------------------------------------------------------------ the batching thread
    def _drop_cancelled(self) -> None:
        kept: collections.deque[_Item] = collections.deque()
        for item in self._pending:
            if item.client.token.cancelled:
                item.fail(RequestCancelled(f"request {item.client.token.reason}; its work was dropped"))
            else:
                kept.append(item)
        self._pending = kept

    def _due(self, now: float) -> float | None:
        """0 when a batch should run now, else seconds until the oldest rows' wait runs out (None: nothing)."""
        if not self._pending:
            return None
        rows = sum(item.rows - item.sent for item in self._pending)
        if rows >= self.batch_size:
            return 0.0
        waiting = {item.client for item in self._pending}
        could_add = {c for c in self._clients if not c.token.cancelled} - waiting
        if not could_add:  # everyone who could still add rows is waiting for these
            return 0.0
        return max(0.0, self._pending[0].enqueued + self.max_wait_s - now)

    def _take(self) -> list[tuple[_Item, int, int]]:
        """Rows for one batch, oldest first: (item, start, stop) slices; fully sent items leave the queue."""
        taken = []
        room = self.batch_size
        while self._pending and room > 0:
            item = self._pending[0]
            stop = min(item.rows, item.sent + room)
            taken.append((item, item.sent, stop))
            room -= stop - item.sent
            item.sent = stop
            if item.sent == item.rows:
                self._pending.popleft()
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    self._drop_cancelled()
                    if self._closed:
                        return
                    wait = self._due(time.monotonic())
                    if wait == 0.0:
                        break
                    self._cond.wait(wait)
                taken = self._take()
            try:
                self._run(taken)
            except Exception as exc:  # never leave a request waiting on a batch that went wrong
                for item, _, _ in taken:
                    self._fail(item, exc)

    def _run(self, taken: list[tuple[_Item, int, int]]) -> None:
        waited = time.monotonic() - min(item.enqueued for item, _, _ in taken)
        start = time.perf_counter()
        features = any(item.features for item, _, _ in taken)
        rows = sum(stop - begin for _, begin, stop in taken)
        try:
            batch = np.concatenate([item.batch[begin:stop] for item, begin, stop in taken], axis=0)
            out = self.classifier.run(batch, features=features)
            offset = 0
            for item, begin, stop in taken:
                n = stop - begin
                self._deliver(item, begin, out.logits[offset : offset + n],
                              None if out.features is None else out.features[offset : offset + n])
                offset += n
        except Exception as exc:
            if len({item for item, _, _ in taken}) == 1:  # the rows of one request: the error is its own
                self._fail(taken[0][0], exc)
            else:  # rows of several: run each request's rows alone, so the error reaches only its owner
                for part in taken:
                    self._run_alone(*part)
        if self.observer is not None:
            self.observer(rows, self.batch_size, len({item.client for item, _, _ in taken}),
                          time.perf_counter() - start, waited)

    def _run_alone(self, item: _Item, begin: int, stop: int) -> None:
        if item.done.is_set():
            return
        try:
            out = self.classifier.run(item.batch[begin:stop], features=item.features)
        except Exception as exc:  # the request's own rows fail: its thread raises it
            self._fail(item, exc)
            return
        self._deliver(item, begin, out.logits, out.features)

    def _fail(self, item: _Item, error: BaseException) -> None:
        """Fail a request's item: its waiting rows leave the queue, its thread raises ``error``."""
        with self._cond:
            if item in self._pending:
                self._pending.remove(item)
        if not item.done.is_set():
            item.fail(error)

    @staticmethod
    def _deliver(item: _Item, begin: int, logits: np.ndarray, feats: np.ndarray | None) -> None:
        if item.done.is_set():
            return
        if item.logits is None:
            item.logits = np.empty((item.rows, logits.shape[1]), np.float32)
        item.logits[begin : begin + len(logits)] = logits
        if item.features and feats is not None:
            if item.feats is None:
                item.feats = np.empty((item.rows, feats.shape[1]), np.float32)
            item.feats[begin : begin + len(feats)] = feats
        item.returned += len(logits)
        if item.returned == item.rows:
            item.done.set()


class BatchClient:
    """One request's connection to a :class:`ClassifierBatcher` (a context manager around its work)."""

    def __init__(self, batcher: ClassifierBatcher, token: CancelToken) -> None:
        self.batcher = batcher
        self.token = token

    def __enter__(self) -> BatchClient:
        self.batcher._register(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.batcher._unregister(self)

    def run(self, batch: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits M×K (and features M×D or None) of a normalised batch M×3×h×w, through shared batches.

        Raises
        ------
        RequestCancelled
            The request was cancelled before or while its rows ran.
        BatcherClosed
            The service is shutting down.
        """
        self.token.check()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[0] == 0:
            out = self.batcher.classifier.run(batch, features=features)
            return out.logits, out.features
        item = _Item(self, batch, bool(features), time.monotonic())
        self.batcher._submit(item)
        item.done.wait()
        if item.error is not None:
            raise item.error
        self.token.check()
        return item.logits, item.feats


class DirectClient:
    """The same interface as :class:`BatchClient` without batching: the request runs its own batches.

    Used when the service runs with batching off (``--no-batching``, the bench's comparison).
    """

    def __init__(self, classifier: Any, token: CancelToken, observer: BatchObserver | None = None,
                 batch_size: int | None = None) -> None:
        self.classifier = classifier
        self.token = token
        self.observer = observer
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)

    def __enter__(self) -> DirectClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def run(self, batch: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        self.token.check()
        start = time.perf_counter()
        out = self.classifier.run(batch, features=features)
        if self.observer is not None and len(batch):
            self.observer(len(batch), self.batch_size, 1, time.perf_counter() - start, 0.0)
        self.token.check()
        return out.logits, out.features


class BatchedClassifier:
    """A request's classifier: the real one's API, its ``run`` going through the request's client.

    Everything but ``run`` / ``__call__`` is the real classifier's (crop,
    normalize, labels, head...). Composition on the device is off for it
    (``supports_device_compose`` is False): the rows of different requests
    meet in the batcher as host arrays. Feature-map runs (CAM, SeCAM: one
    image) go straight to the classifier, after the cancellation check.

    Parameters
    ----------
    classifier : Classifier
    client : BatchClient or DirectClient
    """

    supports_device_compose = False

    def __init__(self, classifier: Any, client: BatchClient | DirectClient) -> None:
        self._classifier = classifier
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._classifier, name)

    def run(self, batch: np.ndarray, features: bool = True, feature_map: bool = False) -> ClassifierOutput:
        """As :meth:`Classifier.run <eac.engine.classifier.Classifier.run>`, through the batcher."""
        batch = np.asarray(batch)
        h, w = self._classifier.input_hw
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w) or not np.issubdtype(batch.dtype, np.floating):
            raise InputShapeError(f"classifier input must be B×3×{h}×{w} float32 (normalised), got "
                                  f"{batch.dtype} {batch.shape}")
        if feature_map:
            self._client.token.check()
            return self._classifier.run(batch, features=features, feature_map=True)
        logits, feats = self._client.run(batch, features)
        return ClassifierOutput(logits, feats, self._classifier.provider)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch, features=False).logits
