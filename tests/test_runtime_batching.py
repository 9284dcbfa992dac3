"""runtimes.batching.MicroBatcher under real concurrency on the real exported model.

The one test double here, `PoisonDenoiser`, is a real Denoiser whose model call fails when a batch holds a
marked image: the only way to make onnxruntime fail on demand, and exactly what the batcher must isolate.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from runtimes.batching import MicroBatcher
from runtimes.denoiser import Denoiser
from tests.helpers import exit_code_of_forked_child, run_script

THREADS = 16
REQUESTS = 500
POISON = np.float32(0.123)


@pytest.fixture(scope="module")
def denoiser(onnx_dir: Path) -> Denoiser:
    return Denoiser(onnx_dir, provider="cpu")


class PoisonDenoiser(Denoiser):
    """Fails the whole model call when any image in the batch is filled with POISON."""

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        if (batch == POISON).all(axis=(1, 2, 3)).any():
            raise RuntimeError("poisoned batch")
        return super().run_batch(batch)


def test_many_threads_get_their_own_results(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    """16 threads x 500 requests: each result equals a direct call on the same image; bad images fail
    alone at submit time and never reach a batch."""
    rng = np.random.default_rng(0)
    pool = fmnist_test[: THREADS * REQUESTS // 4]  # (2000, 28, 28) uint8
    picks = rng.integers(0, len(pool), size=(THREADS, REQUESTS))
    results: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(THREADS)]
    rejected = [0] * THREADS
    failures: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def client(k: int, batcher: MicroBatcher) -> None:
        try:
            start.wait()
            futures: list[tuple[np.ndarray, Future[np.ndarray]]] = []
            for j, index in enumerate(picks[k]):
                image = pool[index]
                if j % 50 == 49:  # a bad request: NaN in a float image
                    bad = image.astype(np.float32) / 255
                    bad[0, 0] = np.nan
                    with pytest.raises(ValueError, match="NaN"):
                        batcher.submit(bad)
                    rejected[k] += 1
                    continue
                if j % 2:  # half float32, half uint8: each result keeps its caller's kind
                    image = image.astype(np.float32) / 255
                futures.append((image, batcher.submit(image)))
                if j % 10 == 0:  # some callers wait, as a request handler would
                    futures[-1][1].result()
            results[k] = [(image, fut.result(timeout=30)) for image, fut in futures]
        except BaseException as err:  # re-raised in the main thread below
            failures.append(err)

    with MicroBatcher(denoiser, max_batch_size=64, max_queue_delay_us=2000) as batcher:
        threads = [threading.Thread(target=client, args=(k, batcher)) for k in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    assert sum(rejected) == THREADS * (REQUESTS // 50)
    served = sum(len(r) for r in results)
    assert served == THREADS * REQUESTS - sum(rejected) == batcher.items
    assert batcher.largest_batch > 1, "requests were never batched"
    assert batcher.batches < served
    for per_thread in results:
        for image, got in per_thread:
            want = denoiser.denoise(image)  # one direct call on the same single image
            assert got.shape == image.shape and got.dtype == image.dtype
            if image.dtype == np.uint8:
                np.testing.assert_allclose(got.astype(np.int16), want.astype(np.int16), rtol=0, atol=1)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_model_error_reaches_exactly_its_batch(onnx_dir: Path, fmnist_test: np.ndarray) -> None:
    poisoned = PoisonDenoiser(onnx_dir, provider="cpu")
    good = fmnist_test[:8]  # (8, 28, 28) uint8
    poison = np.full((28, 28), POISON, np.float32)
    # A long delay and batch size 4: the first four submissions form one batch, the next four another.
    with MicroBatcher(poisoned, max_batch_size=4, max_queue_delay_us=2_000_000) as batcher:
        first = [
            batcher.submit(good[0]),
            batcher.submit(poison),
            batcher.submit(good[1]),
            batcher.submit(good[2]),
        ]
        second = [batcher.submit(image) for image in good[3:7]]
        for fut in first:
            with pytest.raises(RuntimeError, match="poisoned batch"):
                fut.result(timeout=30)
        for fut, image in zip(second, good[3:7], strict=True):
            np.testing.assert_array_equal(fut.result(timeout=30), poisoned.denoise(image))
    assert batcher.batches == 1  # only the successful batch counts


def test_close_drains_pending_and_joins(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    batcher = MicroBatcher(denoiser, max_batch_size=8, max_queue_delay_us=1_000_000)
    futures = [batcher.submit(image) for image in fmnist_test[:100]]
    batcher.close()
    assert all(fut.done() for fut in futures)
    np.testing.assert_array_equal(
        np.stack([f.result() for f in futures]), denoiser.denoise(fmnist_test[:100])
    )
    assert not batcher._worker.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(fmnist_test[0])
    batcher.close()  # idempotent


def test_context_manager_and_call(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    with MicroBatcher(denoiser) as batcher:
        out = batcher(fmnist_test[0])
    assert batcher.closed and out.dtype == np.uint8 and out.shape == (28, 28)


@pytest.mark.parametrize(
    "image, pattern",
    [
        (np.zeros((2, 28, 28), np.uint8), "one grayscale image; got 2 model samples"),
        (np.zeros((28, 28), np.float64), "float32"),
        (np.full((28, 28), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((27, 28), np.uint8), "shape"),
    ],
    ids=["two_images", "float64", "range", "shape"],
)
def test_submit_validates_for_the_caller(denoiser: Denoiser, image: np.ndarray, pattern: str) -> None:
    with MicroBatcher(denoiser, max_batch_size=4, max_queue_delay_us=100) as batcher:
        with pytest.raises(ValueError, match=pattern):
            batcher.submit(image)
        assert batcher(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 1, 28, 28)  # still serving


def test_caller_buffer_reuse_is_safe(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    buffer = fmnist_test[0].astype(np.float32) / 255
    expected = denoiser.denoise(buffer.copy())
    with MicroBatcher(denoiser, max_batch_size=8, max_queue_delay_us=200_000) as batcher:
        fut = batcher.submit(buffer)
        buffer[:] = 0.0  # reused before the batch runs
    np.testing.assert_allclose(fut.result(), expected, rtol=1e-5, atol=1e-6)


def test_cancelled_request_does_not_break_batch(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    with MicroBatcher(denoiser, max_batch_size=8, max_queue_delay_us=200_000) as batcher:
        futures = [batcher.submit(image) for image in fmnist_test[:4]]
        assert futures[1].cancel()
    assert futures[1].cancelled()
    for i in (0, 2, 3):
        np.testing.assert_array_equal(futures[i].result(), denoiser.denoise(fmnist_test[i]))


@pytest.mark.parametrize(
    "kwargs", [{"max_batch_size": 0}, {"max_queue_delay_us": -1}], ids=["batch", "delay"]
)
def test_bad_settings(denoiser: Denoiser, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MicroBatcher(denoiser, **kwargs)


@pytest.mark.parametrize(
    "delay",
    [float("inf"), float("nan"), -1, 60_000_001, 1e13, True],
    ids=["inf", "nan", "neg", "over", "1e13", "bool"],
)
def test_queue_delay_must_be_a_finite_range(denoiser: Denoiser, delay: float) -> None:
    """Before: inf (or 1e13) was accepted, the worker's queue timeout raised OverflowError and every
    caller waited forever."""
    with pytest.raises(ValueError, match=r"max_queue_delay_us must be a finite number .* in \[0, 60000000\]"):
        MicroBatcher(denoiser, max_queue_delay_us=delay)
    with MicroBatcher(denoiser, max_queue_delay_us=60_000_000) as batcher:  # the upper bound itself is fine
        assert batcher.max_queue_delay_us == 60_000_000


@pytest.mark.parametrize("number", [np.int64, np.int32, np.uint16, np.float32], ids=lambda t: t.__name__)
def test_numpy_numbers_are_settings_too(denoiser: Denoiser, fmnist_test: np.ndarray, number: type) -> None:
    """A sweep over np.arange(...) passed np.int64 values: max_batch_size=np.int64(8) was refused as
    not 'a positive int' and max_queue_delay_us=np.int64(100) as not 'a finite number of microseconds
    in [0, 60000000]', which it is. They are taken, as the Python numbers they equal."""
    kwargs = {"max_queue_delay_us": number(100)}
    if np.issubdtype(number, np.integer):
        kwargs["max_batch_size"] = number(8)
    with MicroBatcher(denoiser, **kwargs) as batcher:
        np.testing.assert_array_equal(batcher(fmnist_test[0]), denoiser.denoise(fmnist_test[0]))
    assert batcher.max_queue_delay_us == 100 and type(batcher.max_queue_delay_us) in (int, float)
    assert type(batcher.max_batch_size) is int
    with pytest.raises(ValueError, match=r"^max_batch_size must be a positive int; got np\.True_$"):
        MicroBatcher(denoiser, max_batch_size=np.True_)


class BrokenOnce(MicroBatcher):
    """A batcher whose batch handling fails once with an error that is no model error: a bug."""

    failed = False

    def _run(self, batch: list) -> None:
        if not self.failed:
            self.failed = True
            raise OverflowError("a bug in the worker")
        super()._run(batch)


def test_worker_error_reaches_its_callers_and_worker_goes_on(
    denoiser: Denoiser, fmnist_test: np.ndarray
) -> None:
    """An unexpected error in the worker thread goes to the requests it had taken, not into a dead
    thread that leaves them (and every later caller) waiting."""
    with BrokenOnce(denoiser, max_batch_size=4) as batcher:
        with pytest.raises(OverflowError, match="a bug in the worker"):
            batcher.submit(fmnist_test[0]).result(timeout=10)
        assert batcher._worker.is_alive()
        np.testing.assert_array_equal(batcher(fmnist_test[1]), denoiser.denoise(fmnist_test[1]))
        np.testing.assert_array_equal(
            batcher.submit(fmnist_test[2]).result(timeout=10), denoiser.denoise(fmnist_test[2])
        )


def test_a_batcher_dropped_without_close_ends_its_thread(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    """Its thread's target used to be a bound method, which kept the batcher, its Denoiser and sessions
    alive for good; a request still queued keeps it alive until served."""
    import gc
    import weakref

    batcher = MicroBatcher(denoiser, max_queue_delay_us=20_000)
    pending = batcher.submit(fmnist_test[0])
    worker, alive = batcher._worker, weakref.ref(batcher)
    del batcher
    gc.collect()
    np.testing.assert_array_equal(pending.result(timeout=10), denoiser.denoise(fmnist_test[0]))
    gc.collect()
    worker.join(timeout=10)
    assert alive() is None and not worker.is_alive()


def test_call_path_delivers_model_errors(onnx_dir: Path, fmnist_test: np.ndarray) -> None:
    """`batcher(image)` (the lock-based wait, not a Future) gets its batch's error, then serves again."""
    poisoned = PoisonDenoiser(onnx_dir, provider="cpu")
    poison = np.full((28, 28), POISON, np.float32)
    with MicroBatcher(poisoned, max_batch_size=2, max_queue_delay_us=500_000) as batcher:
        with ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(batcher, fmnist_test[0]), pool.submit(batcher, poison)]
            for call in calls:
                with pytest.raises(RuntimeError, match="poisoned batch"):
                    call.result(timeout=30)
        np.testing.assert_array_equal(batcher(fmnist_test[1]), poisoned.denoise(fmnist_test[1]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_batcher_serves_in_a_forked_child(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    """A batcher made before a fork (a pre-forking server's app) must serve the child too: fork copies
    only the forking thread, so the child needs a worker thread of its own (before, its first request
    waited forever)."""
    images = fmnist_test[:4]
    with MicroBatcher(denoiser) as batcher:
        expected = [batcher(image) for image in images]

        def check() -> bool:
            pairs = zip(images, expected, strict=True)
            same = all(np.array_equal(batcher(image), want) for image, want in pairs)
            same = same and np.array_equal(batcher.submit(images[0]).result(timeout=10), expected[0])
            batcher.close(timeout=10)
            return bool(same)

        assert exit_code_of_forked_child(check) == 0  # -14: the child hung
        assert np.array_equal(batcher(images[1]), expected[1])  # the parent's worker is untouched


def test_interpreter_exit_serves_queued_requests_and_joins(onnx_dir: Path) -> None:
    """A script that returns with requests still queued: its batcher's daemon worker used to be inside an
    onnxruntime call while the interpreter finalized, and the process could abort ("terminate called
    without an active exception", exit 134). Now exit closes the batcher: every request is served, the
    worker joined, before the interpreter goes down."""
    code = """
import atexit, sys
import numpy as np
state = {}

def report() -> None:  # registered first, so it runs after the runtime's own exit handlers
    print("done", sum(f.done() and f.exception() is None for f in state["futures"]))
    print("worker alive", state["worker"].is_alive())

atexit.register(report)
from runtimes import Denoiser, MicroBatcher
batcher = MicroBatcher(Denoiser(sys.argv[1], provider="cpu", warmup=False), max_batch_size=2)
image = np.random.default_rng(0).random((28, 28), dtype=np.float32)
state["futures"] = [batcher.submit(image) for _ in range(200)]
state["worker"] = batcher._worker
"""
    result = run_script(code, str(onnx_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["done 200", "worker alive False"]


def test_close_from_a_done_callback(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    """A Future's done callback runs on the worker thread: close() there raised 'cannot join current
    thread' (logged by concurrent.futures as a callback failure). It stops intake and the batch is
    still delivered to every caller."""
    # The first request waits up to 5 s for company, so its callback is attached before it runs.
    batcher = MicroBatcher(denoiser, max_batch_size=4, max_queue_delay_us=5_000_000)
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def close_batcher(_future: Future) -> None:
        threads.append(threading.current_thread())
        try:
            batcher.close()
        except BaseException as err:
            errors.append(err)

    first = batcher.submit(fmnist_test[0])
    first.add_done_callback(close_batcher)
    futures = [first, *(batcher.submit(image) for image in fmnist_test[1:4])]
    for future, image in zip(futures, fmnist_test[:4], strict=True):
        np.testing.assert_array_equal(future.result(timeout=10), denoiser.denoise(image))
    batcher.close(timeout=10)
    assert threads == [batcher._worker] and errors == []
    assert batcher.closed and not batcher._worker.is_alive()


def test_blocking_call_from_a_done_callback_raises(denoiser: Denoiser, fmnist_test: np.ndarray) -> None:
    """`batcher(image)` in a Future's done callback runs on the worker thread and waited for a batch only
    that thread could run: the worker hung for good, and with it every caller and close(). It raises
    RuntimeError there; the batcher keeps serving (submit from a callback is fine)."""
    # The first request waits up to 5 s for company, so its callback is attached before it runs.
    batcher = MicroBatcher(denoiser, max_batch_size=2, max_queue_delay_us=5_000_000)
    seen: list[BaseException | Future] = []
    called = threading.Event()

    def call_batcher(_future: Future) -> None:
        try:
            seen.append(batcher.submit(fmnist_test[2]))  # allowed: returns a Future
            batcher(fmnist_test[1])
        except BaseException as err:
            seen.append(err)
        called.set()

    first = batcher.submit(fmnist_test[0])
    first.add_done_callback(call_batcher)
    second = batcher.submit(fmnist_test[3])  # fills the batch: it runs now
    assert called.wait(timeout=10), "the worker hung in the done callback"
    assert isinstance(seen[1], RuntimeError) and "own worker thread" in str(seen[1])
    assert isinstance(seen[0], Future)
    np.testing.assert_array_equal(seen[0].result(timeout=10), denoiser.denoise(fmnist_test[2]))
    np.testing.assert_array_equal(second.result(timeout=10), denoiser.denoise(fmnist_test[3]))
    batcher.close(timeout=10)
    assert not batcher._worker.is_alive()
