"""Per-core sessions: a split batch gives exactly what one session gives; small batches are not split."""

from __future__ import annotations

import os

import numpy as np
import pytest

from runtimes.denoiser import Denoiser
from runtimes.layout import prepare_images
from runtimes.onnx_model import BOUND_MAX_SHAPES, MIN_SLICE, OnnxModel
from runtimes.workers import SliceWorker
from tests.helpers import exit_code_of_forked_child


@pytest.fixture(scope="module")
def models(onnx_dir):
    one = OnnxModel(onnx_dir / "denoiser.onnx", provider="cpu", threads=1)
    split = OnnxModel(onnx_dir / "denoiser.onnx", provider="cpu", threads=2, max_batch=64)
    intra = OnnxModel(onnx_dir / "denoiser.onnx", provider="cpu", threads=2, parallel="intra-op")
    yield one, split, intra
    split.close()


@pytest.mark.parametrize(
    "batch", [1, 2 * MIN_SLICE - 1, 2 * MIN_SLICE, 2 * MIN_SLICE + 3, 17, 64, 64 * 2 + 5]
)
def test_split_equals_one_session(models, batch) -> None:
    one, split, intra = models
    assert len(split._sessions) == 2 and len(one._sessions) == 1 and len(intra._sessions) == 1
    x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    ref = one.run(x)
    # Same kernels on each slice: the same bits, not merely close.
    np.testing.assert_array_equal(split.run(x), ref)
    np.testing.assert_allclose(intra.run(x), ref, atol=1e-6, rtol=1e-6)


def _plain_run(model: OnnxModel, x: np.ndarray) -> np.ndarray:
    """The reference: onnxruntime's own session.run, no bound buffers."""
    return model._session.run(None, {model.input_name: np.ascontiguousarray(x)})[0]


@pytest.mark.parametrize("batch", [1, 3, 2 * MIN_SLICE - 1])
def test_bound_small_batches_equal_session_run_and_are_not_overwritten(models, batch) -> None:
    """Small batches run through reused bound buffers: each result must be the caller's own array, equal
    to session.run's, and must not change when the next call reuses the buffers."""
    one, _, _ = models
    rng = np.random.default_rng(batch)
    first, second = (rng.random((batch, 1, 28, 28), dtype=np.float32) for _ in range(2))
    out_first = one.run(first)
    out_second = one.run(second[:, :, ::-1, :])  # non-contiguous input takes the same path
    np.testing.assert_array_equal(out_first, _plain_run(one, first))
    np.testing.assert_array_equal(out_second, _plain_run(one, second[:, :, ::-1, :]))
    assert not np.shares_memory(out_first, out_second)


def test_bound_buffers_are_per_thread(models) -> None:
    """8 threads hammer one model at batch 1 and 2: every result equals session.run on its own input."""
    from concurrent.futures import ThreadPoolExecutor

    one, _, _ = models

    def worker(seed: int) -> int:
        rng = np.random.default_rng(seed)
        wrong = 0
        for _ in range(100):
            x = rng.random((1 + seed % 2, 1, 28, 28), dtype=np.float32)
            wrong += not np.array_equal(one.run(x), _plain_run(one, x))
        return wrong

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 0


def test_bound_shapes_per_thread_are_capped(models) -> None:
    one, _, _ = models
    for batch in range(1, BOUND_MAX_SHAPES + 5):
        one.run(np.zeros((batch, 1, 28, 28), np.float32))
    assert len(one._local.bound) == BOUND_MAX_SHAPES


def test_split_reads_non_contiguous_input(models) -> None:
    one, split, _ = models
    x = np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32)
    flipped = x[:, :, :, ::-1]  # a view with negative strides
    np.testing.assert_array_equal(split.run(flipped), one.run(np.ascontiguousarray(flipped)))


def test_concurrent_split_batches_equal_one_session(models) -> None:
    """8 threads send split-size batches to one 2-session model at once: most find the worker busy and
    run their batch alone, the rest split it; every result equals the single session's."""
    from concurrent.futures import ThreadPoolExecutor

    one, split, _ = models

    def worker(seed: int) -> int:
        rng = np.random.default_rng(100 + seed)
        wrong = 0
        for _ in range(20):
            x = rng.random((int(rng.integers(2 * MIN_SLICE, 64 * 2 + 5)), 1, 28, 28), dtype=np.float32)
            wrong += not np.array_equal(split.run(x), one.run(x))
        return wrong

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 0


def test_slice_worker_hands_back_errors_and_goes_on() -> None:
    worker = SliceWorker("test-worker")
    ran: list[int] = []

    def fail() -> None:
        raise ArithmeticError("slice failed")

    assert worker.try_claim()
    assert not worker.try_claim()  # held until finish()
    worker.start(fail)
    with pytest.raises(ArithmeticError, match="slice failed"):
        worker.finish()
    assert worker.try_claim()  # the claim was released despite the error
    worker.start(lambda: ran.append(1))
    worker.finish()
    assert ran == [1]
    worker.close()
    worker.close()  # idempotent
    assert not worker.try_claim()
    assert not worker._thread.is_alive()


def test_workers_stop_when_the_model_is_collected(onnx_dir) -> None:
    import gc

    model = OnnxModel(onnx_dir / "denoiser.onnx", provider="cpu", threads=2)
    threads = [worker._thread for worker in model._workers]
    assert len(threads) == 1 and threads[0].is_alive()
    model.run(np.zeros((2 * MIN_SLICE, 1, 28, 28), np.float32))  # the worker has run a slice
    del model
    gc.collect()
    threads[0].join(timeout=10)
    assert not threads[0].is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_split_batches_run_in_a_forked_child(onnx_dir) -> None:
    """A pre-forking server or multiprocessing's fork start method copies only the forking thread: the
    child must get its own slice threads (before, its first split batch waited forever)."""
    model = OnnxModel(onnx_dir / "denoiser.onnx", provider="cpu", threads=2)
    x = np.random.default_rng(7).random((2 * MIN_SLICE + 8, 1, 28, 28), dtype=np.float32)
    ref = model.run(x)

    def check() -> bool:
        return bool(np.array_equal(model.run(x), ref)) and model.run(x[:5]).shape[0] == 5

    assert exit_code_of_forked_child(check) == 0  # -14: the child hung
    np.testing.assert_array_equal(model.run(x), ref)  # the parent's workers are untouched


def test_parallel_choice_is_checked(onnx_dir) -> None:
    with pytest.raises(ValueError, match="sessions, intra-op"):
        Denoiser(onnx_dir, provider="cpu", parallel="gpu")  # type: ignore[arg-type]
    denoiser = Denoiser(onnx_dir, provider="cpu", threads=2)
    assert "sessions=2" in repr(denoiser.model)
    x = np.random.default_rng(1).random((50, 28, 28), dtype=np.float32)
    assert denoiser.denoise(x).shape == (50, 28, 28)


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, 1e-45])
def test_bit_check_accepts_valid_values(value) -> None:
    x = np.full((2, 28, 28), 0.5, np.float32)
    x[1, 2, 3] = value
    batch, _ = prepare_images(x, (28, 28))
    assert batch.shape == (2, 1, 28, 28) and np.shares_memory(batch, x)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "1 NaN"),
        (np.inf, "1 Inf"),
        (-np.inf, "1 Inf"),
        (1.0000001, "values in"),
        (-1e-30, "values in"),
    ],
)
def test_bit_check_rejects_invalid_values(value, message) -> None:
    x = np.full((28, 28), 0.5, np.float32)
    x[5, 5] = value
    with pytest.raises(ValueError, match=message):
        prepare_images(x, (28, 28))


@pytest.fixture(scope="module")
def cpu_denoiser(onnx_dir) -> Denoiser:
    return Denoiser(onnx_dir, provider="cpu")


def test_one_image_fast_path_equals_the_general_path(cpu_denoiser) -> None:
    """(1, 1, 28, 28) float32 skips the layout work; (28, 28) and (1, 28, 28) take prepare_images. Same
    pixels either way, a result the caller owns, and non-contiguous input read correctly."""
    x = np.random.default_rng(5).random((1, 1, 28, 28), dtype=np.float32)
    fast = cpu_denoiser.denoise(x)
    assert fast.shape == (1, 1, 28, 28) and fast.dtype == np.float32 and not np.shares_memory(fast, x)
    np.testing.assert_array_equal(fast[0, 0], cpu_denoiser.denoise(x[0, 0]))
    np.testing.assert_array_equal(fast[0], cpu_denoiser.denoise(x[0]))
    flipped = x[:, :, :, ::-1]  # (1, 1, 28, 28) view with a negative stride
    np.testing.assert_array_equal(cpu_denoiser.denoise(flipped), cpu_denoiser.denoise(flipped.copy()))


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "1 NaN"), (np.inf, "1 Inf"), (1.0000001, "values in"), (-1e-30, "values in"), (-0.0, None)],
)
def test_one_image_fast_path_checks_the_range(cpu_denoiser, value, message) -> None:
    x = np.full((1, 1, 28, 28), 0.5, np.float32)
    x[0, 0, 5, 5] = value
    if message is None:
        assert cpu_denoiser.denoise(x).shape == (1, 1, 28, 28)  # -0.0 is a valid 0
    else:
        with pytest.raises(ValueError, match=message):
            cpu_denoiser.denoise(x)


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_a_sibling_first_opened_after_close_starts_no_thread(onnx_dir, fmnist_test, role) -> None:
    """close() promises later calls on one thread, but an encoder or decoder first opened after it got
    its own worker threads, which nothing closed: an app shut down with a thread it had never seen."""
    denoiser = Denoiser(onnx_dir, provider="cpu", threads=2, warmup=False)
    latents = denoiser.encode(fmnist_test[:64]) if role == "decoder" else None
    denoiser.close()
    result = denoiser.encode(fmnist_test[:64]) if role == "encoder" else denoiser.decode(latents)
    model = denoiser._encoder if role == "encoder" else denoiser._decoder
    assert model._workers and not any(worker._thread.is_alive() for worker in model._workers)
    with Denoiser(onnx_dir, provider="cpu", threads=1, warmup=False) as one:  # the same values
        expected = one.encode(fmnist_test[:64]) if role == "encoder" else one.decode(latents)
    np.testing.assert_array_equal(result, expected)


def test_denoiser_closes_its_threads_and_its_siblings(onnx_dir, fmnist_test) -> None:
    """A Denoiser had no close() and no `with`: an app could only stop its worker threads (and those of
    the encoder/decoder it opened) by dropping every reference and waiting for the collector."""
    images = fmnist_test[:64]
    with Denoiser(onnx_dir, provider="cpu", threads=2) as denoiser:
        expected = denoiser(images)
        denoiser.decode(denoiser.encode(images))
        models = [denoiser.model, denoiser._encoder, denoiser._decoder]
        threads = [worker._thread for model in models for worker in model._workers]
        assert len(threads) == 3 and all(thread.is_alive() for thread in threads)
    assert not any(thread.is_alive() for thread in threads)
    np.testing.assert_array_equal(denoiser(images), expected)  # still runs, on one thread
    denoiser.close()  # idempotent
    with OnnxModel(onnx_dir / "denoiser.onnx", provider="cpu", threads=2) as model:
        threads = [worker._thread for worker in model._workers]
    assert threads and not any(thread.is_alive() for thread in threads)
