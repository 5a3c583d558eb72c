"""The cross-request batcher: shared batches, each request exactly its rows, cancellation, isolation.

Most tests use a numpy stand-in classifier that records the batches it is given (so the
batching itself is visible); one runs the shipped demo classifier to show that rows come
back bit-identical to running each request alone.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from eac.engine.classifier import ClassifierOutput
from eac.engine.errors import NonFiniteOutputError
from eac.engine.serve.batcher import (
    BatchedClassifier,
    BatcherClosed,
    CancelToken,
    ClassifierBatcher,
    RequestCancelled,
)

HW = (4, 4)
K = 3
#: A wait no test should ever reach when the batcher decides correctly.
LONG_WAIT_S = 30.0


class RecordingClassifier:
    """logits[i] = (sum of row i, its max, its min); features = row mean; records every batch size."""

    input_hw = HW
    provider = "CPUExecutionProvider"
    num_classes = K

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay = delay

    def run(self, batch, features=True, feature_map=False):
        batch = np.asarray(batch, np.float32)
        self.batches.append(len(batch))
        if np.isnan(batch).any():
            raise NonFiniteOutputError("NaN in")
        time.sleep(self.delay)
        flat = batch.reshape(len(batch), -1)
        logits = np.stack([flat.sum(1), flat.max(1), flat.min(1)], axis=1).astype(np.float32)
        return ClassifierOutput(logits, flat.mean(1, keepdims=True) if features else None, self.provider)


def rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, *HW)).astype(np.float32)


def expected(batch: np.ndarray) -> np.ndarray:
    return RecordingClassifier().run(batch).logits


def run_together(batcher: ClassifierBatcher, batches: list[np.ndarray]) -> list:
    """Each batch from its own client thread, all submitted at once; returns their results (or errors)."""
    results: list = [None] * len(batches)
    barrier = threading.Barrier(len(batches))
    clients = [batcher.client(CancelToken()) for _ in batches]
    for c in clients:
        c.__enter__()  # every client registered before any submits, as requests in flight are

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = clients[i].run(batches[i], features=True)
        except Exception as exc:
            results[i] = exc
        finally:
            clients[i].__exit__(None, None, None)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LONG_WAIT_S)
    return results


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_rows():
    model = RecordingClassifier()
    batcher = ClassifierBatcher(model, batch_size=32, max_wait_s=LONG_WAIT_S).start()
    batches = [rows(i, n) for i, n in enumerate((5, 7, 3, 6))]
    start = time.monotonic()
    results = run_together(batcher, batches)
    assert time.monotonic() - start < LONG_WAIT_S / 2  # ran when everyone was waiting, not at the timeout
    batcher.close()
    assert model.batches == [21]  # one classifier call for the four requests
    for batch, (logits, feats) in zip(batches, results):
        np.testing.assert_array_equal(logits, expected(batch))
        np.testing.assert_array_equal(feats[:, 0], batch.reshape(len(batch), -1).mean(1))


def test_rows_beyond_the_batch_size_are_split_and_come_back_in_order():
    model = RecordingClassifier()
    batcher = ClassifierBatcher(model, batch_size=8, max_wait_s=LONG_WAIT_S).start()
    batches = [rows(0, 13), rows(1, 6)]
    results = run_together(batcher, batches)
    batcher.close()
    assert sum(model.batches) == 19 and max(model.batches) == 8 and len(model.batches) == 3
    for batch, (logits, _) in zip(batches, results):
        np.testing.assert_array_equal(logits, expected(batch))


def test_a_lone_request_never_waits_and_a_part_full_batch_waits_at_most_max_wait():
    model = RecordingClassifier()
    batcher = ClassifierBatcher(model, batch_size=32, max_wait_s=LONG_WAIT_S).start()
    with batcher.client(CancelToken()) as alone:
        start = time.monotonic()
        alone.run(rows(0, 3), features=False)
        assert time.monotonic() - start < LONG_WAIT_S / 2
    batcher.close()

    wait = 0.2
    batcher = ClassifierBatcher(RecordingClassifier(), batch_size=32, max_wait_s=wait).start()
    with batcher.client(CancelToken()), batcher.client(CancelToken()) as busy:  # the other one never submits
        start = time.monotonic()
        busy.run(rows(0, 3), features=False)
        assert time.monotonic() - start >= wait  # it waited for the other request's rows first
    batcher.close()


def test_a_cancelled_request_is_dropped_before_its_rows_run():
    model = RecordingClassifier()
    batcher = ClassifierBatcher(model, batch_size=32, max_wait_s=LONG_WAIT_S).start()
    token = CancelToken()
    errors: list = []
    with batcher.client(CancelToken()), batcher.client(token) as victim:  # the idle client keeps the batch open

        def run() -> None:
            try:
                victim.run(rows(0, 4), features=False)
            except RequestCancelled as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.1)
        token.cancel("timed out")
        thread.join(LONG_WAIT_S / 2)
        assert not thread.is_alive()
        with pytest.raises(RequestCancelled, match="timed out"):
            victim.run(rows(1, 2), features=False)  # and nothing more runs for it
    batcher.close()
    assert len(errors) == 1 and model.batches == []


def test_one_request_failing_in_a_shared_batch_does_not_fail_the_others():
    model = RecordingClassifier()
    batcher = ClassifierBatcher(model, batch_size=32, max_wait_s=LONG_WAIT_S).start()
    bad = rows(0, 4)
    bad[2, 0, 0, 0] = np.nan
    good = rows(1, 5)
    results = run_together(batcher, [bad, good])
    batcher.close()
    assert isinstance(results[0], NonFiniteOutputError)
    np.testing.assert_array_equal(results[1][0], expected(good))


def test_closing_fails_waiting_requests_and_refuses_new_ones():
    batcher = ClassifierBatcher(RecordingClassifier(), batch_size=32, max_wait_s=LONG_WAIT_S).start()
    errors: list = []
    with batcher.client(CancelToken()), batcher.client(CancelToken()) as waiting:

        def run() -> None:
            try:
                waiting.run(rows(0, 2), features=False)
            except BatcherClosed as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.1)
        batcher.close()
        thread.join(LONG_WAIT_S / 2)
        assert len(errors) == 1
        with pytest.raises(BatcherClosed):
            waiting.run(rows(1, 2), features=False)


def test_demo_classifier_rows_are_bit_identical_in_shared_batches(demo_classifier_folder):
    """The claim the service's results rest on: a row's output does not depend on its batch-mates."""
    from eac.engine.classifier import Classifier
    from eac.engine.session import SessionOptions

    classifier = Classifier.from_folder(demo_classifier_folder, session_options=SessionOptions(cpu_threads=1))
    h, w = classifier.input_hw
    batches = [np.random.default_rng(i).normal(size=(n, 3, h, w)).astype(np.float32) for i, n in
               enumerate((1, 13, 7, 20))]
    batcher = ClassifierBatcher(classifier, batch_size=16, max_wait_s=LONG_WAIT_S).start()
    results = run_together(batcher, batches)
    batcher.close()
    for batch, (logits, feats) in zip(batches, results):
        alone = classifier.run(batch, features=True)
        np.testing.assert_array_equal(logits, alone.logits)
        np.testing.assert_array_equal(feats, alone.features)
    proxy = BatchedClassifier(classifier, batcher.client(CancelToken()))
    assert proxy.labels == classifier.labels and proxy.supports_device_compose is False
