"""`SliceWorker`: one thread that runs one slice of a split batch at a time, handed over on bare locks.

Why not `concurrent.futures.ThreadPoolExecutor` (what `OnnxModel` used before): each hand-off there
builds a Future, goes through a queue and a Condition, and the caller waits on another Condition; the
worker also has to take the GIL several times around it. Here a caller claims an idle worker, stores one
callable and releases one lock; the worker releases another when the slice is written. Measured with the
lecture denoiser on two single-threaded sessions, each slice run by `session.run` (2-core AVX-512 Xeon VM,
onnxruntime 1.32, median of 11 alternating rounds):

    batch   ThreadPoolExecutor   SliceWorker
       64         489 us            474 us
      128         813 us            779 us
      256        1494 us           1498 us

The larger share of the old cost was elsewhere: `run_with_iobinding` on two sessions at once ran 40-90 us
slower per batch than `session.run` plus a copy into the output slice (see `OnnxModel._run_into`).

A worker serves one caller at a time. A caller that finds it busy (another thread's split batch is
running) does not queue behind it: `try_claim` says no and the caller runs that slice itself, so
concurrent callers never wait for each other here.

Fork: a process that forks after making a model (multiprocessing's fork start method, a pre-forking
server that loads the app first) keeps only the forking thread in the child. Everything here that owns a
thread (`SliceWorker`, and `MicroBatcher` through `restart_after_fork`) makes a new thread and new locks
in the child; before, the child's first split batch or batched request waited forever. Standard library
only.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol


class SliceWorker:
    """A daemon thread that runs the callables its claimant hands it, one at a time.

    Protocol, all from the claiming thread: `try_claim()`; if True, `start(task)`, do your own share of
    the work, then `finish()` (always, even if your share raised), which waits for the task, releases
    the claim and re-raises the task's exception. `close()` stops the thread after any running task.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._closed = False
        self._begin()
        restart_after_fork(self)

    def _after_fork(self) -> None:
        if not self._closed:
            self._begin()

    def _begin(self) -> None:
        """Fresh locks and a fresh thread: at construction, and in a forked child."""
        self._claim = threading.Lock()  # held by one caller from try_claim() to finish()
        self._go = threading.Lock()  # released by start(): there is a task (or None: exit)
        self._go.acquire()
        self._done = threading.Lock()  # released by the thread when the task has run
        self._done.acquire()
        self._task: Callable[[], object] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def try_claim(self) -> bool:
        """Reserve this worker for one `start`/`finish` round; False if another caller has it (or closed)."""
        if not self._claim.acquire(blocking=False):
            return False
        if self._closed:
            self._claim.release()
            return False
        return True

    def start(self, task: Callable[[], object]) -> None:
        """Run `task` on the worker thread (the caller must hold the claim)."""
        self._task = task
        self._go.release()

    def finish(self) -> None:
        """Wait for the started task, release the claim, and re-raise what the task raised."""
        self._done.acquire()
        error, self._error = self._error, None
        self._claim.release()
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop the thread once any running task is done. Idempotent; later try_claim() calls say False."""
        with self._claim:
            if self._closed:
                return
            self._closed = True
            self._task = None
            self._go.release()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            task, self._task = self._task, None
            if task is None:
                return
            try:
                task()
            except BaseException as err:  # handed to the claimant by finish(), not swallowed
                self._error = err
            task = None  # drop the slice's references (its model) before waiting for the next one
            self._done.release()


class ForkAware(Protocol):
    """An object that owns threads and remakes them (and its locks) in a forked child."""

    def _after_fork(self) -> None: ...


# Objects that own threads, so that a forked child (multiprocessing's fork start method, a pre-forking
# server) gets threads of its own: fork copies only the forking thread, and work handed to a thread that
# stayed in the parent would never run. Their locks are made anew too: another parent thread may have held
# one at the moment of the fork. Weak: a collected object needs nothing.
_FORK_AWARE: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def restart_after_fork(owner: ForkAware) -> None:
    """Have `owner._after_fork()` called in every child this process forks, while `owner` lives."""
    _FORK_AWARE.add(owner)


def _after_fork_in_child() -> None:
    for owner in list(_FORK_AWARE):
        owner._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def close_when_collected(owner: object, workers: list[SliceWorker]) -> None:
    """Close `workers` when `owner` is garbage-collected, so a model dropped without close() leaves no
    thread behind (the workers hold no reference to their owner)."""
    weakref.finalize(owner, _close_all, workers)


def _close_all(workers: list[SliceWorker]) -> None:
    for worker in workers:
        worker.close()
