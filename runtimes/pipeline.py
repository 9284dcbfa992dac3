"""Execute an `ae-denoise` plan: decode, denoise in batches, encode, with the three stages overlapped.

`run_pipeline` decodes files on a small thread pool, gathers them into model batches on the calling
thread, and encodes/writes results on the same pool, so decoding, inference and encoding overlap: Pillow
and onnxruntime both release the GIL in their C code. The plan (which file goes where, and the safety
checks) comes from `runtimes.planning`.

Memory is bounded by decoded pixels, not by file counts, so however many photographs a folder holds, only
a few are in memory at once: a decode task stops once its files reach its share of
DECODE_AHEAD_PIXELS (one file per task for large images) and hands the rest back; fewer tasks run ahead
once large files are seen; a model batch closes at MAX_BATCH_PIXELS; and results waiting to be encoded
are capped too. Measured with 2000x1500 RGB photographs and a model that takes 0.3 s per photo (2
workers): peak RSS 1042 MB for 16 files and 3515 MB for 64 before (every file decoded at
once), 522 MB and 528 MB now (at most 7 photographs' samples held at once, whatever the folder size).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from runtimes.denoiser import Denoiser
from runtimes.fileio import remove_stale_temps
from runtimes.fitting import SIZE_MODES, FitPlan, SizeMismatchError, SizeMode, from_model, to_model, to_uint8
from runtimes.images import DEFAULT_MAX_PIXELS, BadImageError, load_image, save_png
from runtimes.manifest import sha256_file
from runtimes.noise import add_noise, check_std
from runtimes.planning import Job
from runtimes.pngmeta import read_png_record
from runtimes.sessions import physical_cores

CHUNK_FILES = 16  # files per thread-pool task
# Any-size models: a batch also closes at this many decoded pixels, so a folder of photographs never holds
# hundreds of them in memory at once.
MAX_BATCH_PIXELS = 1 << 24
# Decoded pixels (model samples: float32 values) that decode tasks may hold ahead of the model, shared out
# among the tasks running at once; results waiting to be encoded are held to twice MAX_BATCH_PIXELS.
DECODE_AHEAD_PIXELS = 1 << 25


Status = Literal["done", "failed", "skipped"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one job; `reason` is set for failures."""

    job: Job
    status: Status
    reason: str = ""


@dataclass
class PipelineResult:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    stale_temps_removed: int = 0  # temporary files of a killed earlier run, cleaned before starting
    seconds: float = 0.0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self, unlisted: int = 0) -> str:
        """The run's one-line account; `unlisted`: input folders that could not be listed (their files are
        in no count, so the line says how many there were: without it a run that exits 1 read '0 failed')."""
        folders = f", {unlisted} folder(s) not listed" if unlisted else ""
        return (
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped{folders} in "
            f"{self.seconds:.2f} s ({self.images_per_s:.1f} images/s)"
        )


@dataclass
class _Decoded:
    job: Job
    samples: np.ndarray  # (T, 1, h, w) float32 in [0, 1]
    plan: FitPlan
    noisy: np.ndarray | None  # (H, W) or (H, W, 3) uint8: the noisy input to save beside the result
    icc_profile: bytes | None = None  # the input's ICC profile, where it describes these pixels
    source_sha256: str | None = None  # the input file's, recorded in the output (`runtimes.pngmeta`)


@dataclass(frozen=True)
class _DecodeSettings:
    """How every file of a run becomes model samples (one value handed to the pool threads)."""

    tile: tuple[int, int] | None  # the model's (h, w); None: it takes any size
    size_mode: SizeMode
    noise_std: float
    seed: int
    max_pixels: int
    color: bool  # keep colour images' colour (any-size models): each RGB channel is its own sample


def _decode(job: Job, settings: _DecodeSettings) -> _Decoded:
    # The SHA-256 goes into the output's source record (`runtimes.pngmeta`).
    exact = settings.tile if settings.size_mode == "exact" else None  # other sizes: refused undecoded
    loaded = load_image(job.source, settings.max_pixels, settings.color, bool(job.label), exact)
    pixels = loaded.pixels  # (H, W) uint8, or (H, W, 3) for colour
    noisy = None
    if settings.noise_std > 0:
        # One generator per file, keyed by (seed, file index): reproducible whatever the thread timing.
        rng = np.random.default_rng([settings.seed, job.index])
        clean = pixels.astype(np.float32) / np.float32(255.0)
        noisy = to_uint8(add_noise(clean, settings.noise_std, rng))
        pixels = noisy  # denoise exactly what is saved as <stem>.noisy.png
    try:
        samples, plan = to_model(pixels, settings.tile, settings.size_mode)
    except SizeMismatchError as err:
        raise BadImageError(job.source, str(err)) from err
    return _Decoded(job, samples, plan, noisy, loaded.icc_profile, loaded.sha256)


def _encode(item: _Decoded, output: np.ndarray, fsync: bool) -> None:
    result = from_model(output, item.plan)  # (H, W) or (H, W, 3) uint8
    job, icc = item.job, item.icc_profile
    # A Job made without a label (not by plan_jobs) records nothing.
    record = {"source": job.label or None, "source_sha256": item.source_sha256, "icc_profile": icc}
    if item.noisy is not None and job.noisy_output is not None:
        _save(job.noisy_output, item.noisy, fsync, record)
    # Written last: its existence (with its source record) is what marks the job as done for a re-run.
    _save(job.output, result, fsync, record)


def _save(path: Path, pixels: np.ndarray, fsync: bool, record: dict[str, Any]) -> None:
    """save_png into a folder made up front; if that folder is gone by now, make it again, once. Another
    run sharing the output folder removes it when it has written nothing there (`_remove_empty`), and a
    user may move it away mid-run: neither should fail files this run can still write."""
    try:
        save_png(path, pixels, fsync=fsync, make_parents=False, **record)
    except FileNotFoundError:
        save_png(path, pixels, fsync=fsync, make_parents=True, **record)


def _decode_chunk(
    jobs: Sequence[Job], settings: _DecodeSettings, pixel_share: int
) -> tuple[list[_Decoded | Outcome], list[Job]]:
    """Decode files on one pool thread until their samples reach `pixel_share`; return the results and
    the jobs not started. A file that fails becomes an Outcome, never an exception.

    The next file is assumed to be as large as the largest so far, so a task of large images stops
    after one, and a task of thumbnails runs to the end of its chunk."""
    results: list[_Decoded | Outcome] = []
    held = largest = 0
    for n, job in enumerate(jobs):
        if results and held + largest > pixel_share:
            return results, list(jobs[n:])
        try:
            item = _decode(job, settings)
        except BadImageError as err:
            results.append(Outcome(job, "failed", err.reason))
        except Exception as err:  # e.g. MemoryError on a huge image: this file fails, the rest go on
            results.append(Outcome(job, "failed", f"cannot prepare the image: {type(err).__name__}: {err}"))
        else:
            results.append(item)
            held += item.samples.size
            largest = max(largest, item.samples.size)
    return results, []


def _encode_chunk(pairs: Sequence[tuple[_Decoded, np.ndarray]], fsync: bool) -> list[Outcome]:
    """Encode and write several results on one pool thread; one Outcome per file."""
    outcomes: list[Outcome] = []
    for item, output in pairs:
        job = item.job
        try:
            _encode(item, output, fsync)
        except OSError as err:
            outcomes.append(Outcome(job, "failed", f"cannot write {job.output}: {err.strerror or err}"))
        except Exception as err:  # a failure converting one result fails that file only
            outcomes.append(Outcome(job, "failed", f"cannot encode the result: {type(err).__name__}: {err}"))
        else:
            outcomes.append(Outcome(job, "done"))
    return outcomes


def run_pipeline(
    denoiser: Denoiser,
    jobs: Sequence[Job],
    size_mode: SizeMode = "exact",
    batch_size: int = 256,
    overwrite: bool = False,
    noise_std: float = 0.0,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    fsync: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
    color: bool = True,
) -> PipelineResult:
    """Denoise every job; a bad file fails alone (reported via `on_outcome` and in the result).

    Existing outputs are skipped unless `overwrite`, if they hold this input's result (`_existing`).
    `batch_size` counts model samples (tiles in tile mode, channels of colour images); with an any-size
    model, images of equal size are run together and a batch also closes at MAX_BATCH_PIXELS. `workers`
    threads (default: physical cores, at least 2) decode and encode while this thread runs the model.
    `color`: with an any-size model, colour images keep their colour (each RGB channel denoised as a
    grayscale image, an RGB PNG written); a fixed-size model (trained on grayscale Fashion-MNIST) always
    gets grayscale.
    """
    if size_mode not in SIZE_MODES:
        raise ValueError(f"size mode must be one of {', '.join(SIZE_MODES)}; got {size_mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    check_std(noise_std)
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy SeedSequence); got {seed}")
    workers = workers or max(2, physical_cores())
    result = PipelineResult()
    start = time.perf_counter()

    reported: set[int] = set()  # jobs whose outcome is reported (`Job.index`)

    def report(outcome: Outcome) -> None:
        reported.add(outcome.job.index)
        if outcome.status == "done":
            result.done += 1
        elif outcome.status == "skipped":
            result.skipped += 1
        else:
            result.failed += 1
            result.failures.append((outcome.job.source, outcome.reason))
        if on_outcome is not None:
            on_outcome(outcome)

    # A run killed mid-write (SIGKILL, power cut) leaves hidden temporaries beside its outputs.
    result.stale_temps_removed = remove_stale_temps(
        out for job in jobs for out in (job.output, job.noisy_output) if out is not None
    )
    encoding: dict[Future[list[Outcome]], int] = {}  # encode task -> samples it holds
    # Output folders this run made, removed at the end where nothing was written. Inside the `try`, so
    # that an interrupt while they are being made still removes the ones already made.
    created: list[Path] = []
    try:
        todo: list[Job] = []
        folder_errors: dict[Path, str] = {}
        planned = {(job.output_root, job.label) for job in jobs}
        for job in jobs:
            if not overwrite and os.path.lexists(job.output):
                existing = _existing(job, planned)
                if existing is not None:
                    report(existing)
                    continue
            folder = job.output.parent
            if folder not in folder_errors:  # create each output folder once, not once per file
                try:
                    _make_folder(folder, created)
                    folder_errors[folder] = ""
                except OSError as err:
                    folder_errors[folder] = f"cannot create output folder {folder}: {err.strerror or err}"
            if folder_errors[folder]:
                report(Outcome(job, "failed", folder_errors[folder]))
            else:
                todo.append(job)

        # Files travel through the pool in chunks: one Future per file costs more GIL time than decoding a
        # 28x28 PNG, and the GIL is what limits a thread pool.
        chunk = max(1, min(CHUNK_FILES, len(todo) // (2 * workers)))
        pixel_share = max(1, DECODE_AHEAD_PIXELS // (workers + 1))
        tile = denoiser.image_shape
        settings = _DecodeSettings(tile, size_mode, noise_std, seed, max_pixels, color and tile is None)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ae-denoise") as pool:
            decoding: deque[Future[tuple[list[_Decoded | Outcome], list[Job]]]] = deque()
            upcoming = deque(todo)
            largest = 0  # the most samples one file has given so far

            def fill() -> None:
                # One task per worker plus one ready, while files are small; with large files, as many as
                # DECODE_AHEAD_PIXELS holds (at least two: one being consumed, one decoding).
                ahead = (
                    workers + 1 if largest == 0 else max(2, min(workers + 1, DECODE_AHEAD_PIXELS // largest))
                )
                while len(decoding) < ahead and upcoming:
                    files = [upcoming.popleft() for _ in range(min(chunk, len(upcoming)))]
                    decoding.append(pool.submit(_decode_chunk, files, settings, pixel_share))

            def collect(limit: int) -> None:
                """Report finished encodes; block while more than `limit` encode tasks (or more than twice
                MAX_BATCH_PIXELS of samples) are outstanding."""
                while encoding:
                    over = len(encoding) > limit or sum(encoding.values()) > 2 * MAX_BATCH_PIXELS
                    done, _ = wait(encoding, timeout=None if over else 0, return_when=FIRST_COMPLETED)
                    if not done:
                        return
                    for fut in done:
                        for outcome in fut.result():
                            report(outcome)
                        del encoding[fut]  # after its outcomes: an interruption reports what is left

            batch: list[_Decoded] = []
            batch_samples = 0
            batch_pixels = 0

            def flush() -> None:
                nonlocal batch, batch_samples, batch_pixels
                if not batch:
                    return
                # One model call per sample size: a fixed-size model has one; an any-size model one per size.
                by_size: dict[tuple[int, ...], list[_Decoded]] = {}
                for item in batch:
                    by_size.setdefault(item.samples.shape[1:], []).append(item)
                batch, batch_samples, batch_pixels = [], 0, 0  # the groups hold the items now
                for group in by_size.values():
                    inputs = (
                        group[0].samples if len(group) == 1 else np.concatenate([it.samples for it in group])
                    )
                    try:
                        outputs = denoiser.run_batch(inputs)  # (sum of T, 1, h, w)
                    except Exception as err:  # onnxruntime raises bare pybind11 types; fail these files only
                        for item in group:
                            report(
                                Outcome(item.job, "failed", f"inference failed: {type(err).__name__}: {err}")
                            )
                        continue
                    del inputs
                    pairs: list[tuple[_Decoded, np.ndarray]] = []
                    offset = 0
                    for item in group:
                        pairs.append((item, outputs[offset : offset + item.plan.count]))
                        offset += item.plan.count
                    for i in range(0, len(pairs), chunk):
                        part = pairs[i : i + chunk]
                        task = pool.submit(_encode_chunk, part, fsync)
                        encoding[task] = sum(item.samples.size for item, _ in part)
                collect(limit=2 * workers)

            fill()
            while decoding:
                head = decoding.popleft()
                fill()
                # _decode_chunk never raises: failures come back as Outcomes
                entries, leftover = head.result()
                del head  # a finished Future keeps its result: drop it, so consumed images can be freed
                upcoming.extendleft(reversed(leftover))
                for entry in entries:
                    if isinstance(entry, Outcome):
                        report(entry)
                        continue
                    largest = max(largest, entry.samples.size)
                    batch.append(entry)
                    batch_samples += entry.plan.count
                    batch_pixels += entry.samples.size
                    if batch_samples >= batch_size or batch_pixels >= MAX_BATCH_PIXELS:
                        flush()
                del entries
                fill()
                if not decoding:
                    flush()
                collect(limit=2 * workers)
            flush()
            collect(limit=0)
    except KeyboardInterrupt:
        # Leaving the `with` waited for the writes under way: report them too, so the caller counts every
        # output that exists (before, an interrupted run reported none of them: "after 0 of 12 file(s)").
        for fut in encoding:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                for outcome in fut.result():
                    if outcome.job.index not in reported:
                        report(outcome)
        raise
    finally:
        _remove_empty(created)
    result.seconds = time.perf_counter() - start
    return result


def _make_folder(folder: Path, created: list[Path]) -> None:
    """mkdir -p `folder`, appending each folder this call made to `created` as it makes it (outermost
    first). Only a mkdir of this run's own counts: a folder that exists, or that another process makes
    meanwhile, is never recorded, whatever `..` the path holds. An existing folder costs one stat."""
    missing = []
    path = folder
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # made meanwhile, `x/..` once x exists, or not a folder: checked below
            continue
        created.append(path)
    if not folder.is_dir():
        folder.mkdir()  # raises the reason (a file in the way, a dangling link)


def _remove_empty(created: list[Path]) -> None:
    """Remove the output folders this run created that are still empty, innermost first: a run whose
    every file was refused (or that was interrupted before its first write) leaves no empty `-o` tree
    behind. rmdir removes only an empty folder, so nothing written, by this run or another process, is
    lost; a folder that is not empty (or gone) stays as it is."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:  # not empty (results, another writer's files) or already gone: keep it
            continue


def _existing(job: Job, planned: set[tuple[Path, str]]) -> Outcome | None:
    """What to do with a job whose output exists (no --overwrite): an Outcome, or None to denoise it.

    An output path that is not a regular file (a folder, a FIFO, a dangling symbolic link) holds no
    result: the job fails, naming it, instead of being counted as skipped (a FIFO also hung the run).
    Otherwise the output's source record (`runtimes.pngmeta`: the input's label and SHA-256) decides, so
    each output keeps its own input's result:
    * no record (a file we did not write, or one written before records existed), or a job without a
      label to compare: skipped, as always.
    * this job's label: skipped if the recorded SHA-256 is this input's (or none is recorded); with
      other bytes it is the result of another file of the same name (`day1/IMG_0001.png` and
      `day2/IMG_0001.png` into one `-o`), or of this file before it was edited: failed, naming both,
      nothing written.
    * another input of this same run under the same root: that input's output name has changed since
      (adding `a.png` beside `a.jpg` moves `a.jpg`'s result from `a.png` to `a.jpg.png`), so this output
      holds a stale result and is denoised again, from this job's input; the other result is written (or
      already is) under its new name, so nothing is lost.
    * any other label: skipped if the recorded SHA-256 is this input's (the same file given from another
      root: `src` then `src/sub/x.png`); else failed, naming both, nothing written, since the file may be
      the only result of an input that is gone. --overwrite replaces it.
    """
    if not os.path.isfile(job.output):  # a folder, a FIFO, a dangling link: no result is there to keep
        if os.path.isdir(job.output):
            what, fix = "a folder", "move it away"
        elif os.path.islink(job.output) and not os.path.exists(job.output):
            what = f"a symbolic link to the missing {os.readlink(job.output)}"
            fix = "remove it, or use --overwrite to replace the link"
        else:
            what, fix = "not a regular file", "move it away, or use --overwrite to replace it"
        return Outcome(
            job, "failed", f"output {job.output} is {what} and holds no result; nothing written ({fix})"
        )
    record = read_png_record(job.output)
    owner = record.label
    if owner is None or not job.label:
        return Outcome(job, "skipped")
    if owner != job.label and (job.output_root, owner) in planned:
        return None  # decided by the label alone: no need to read the input
    same_bytes: bool | None = None  # None: no SHA-256 recorded (an output written before it was)
    if record.sha256 is not None:
        try:
            same_bytes = sha256_file(job.source) == record.sha256
        except OSError:
            return None  # unreadable input: its decode fails with the reason, the output stays as it is
    fix = "move it away, or use --overwrite to replace it"
    if owner == job.label:
        if same_bytes is not False:
            return Outcome(job, "skipped")
        return Outcome(
            job,
            "failed",
            f"output {job.output} already holds the result of another file named {owner!r} (its "
            f"SHA-256 is not {job.source}'s: another input of that name, or this one before it changed); "
            f"nothing written ({fix})",
        )
    if same_bytes:
        return Outcome(job, "skipped")
    return Outcome(
        job,
        "failed",
        f"output {job.output} already holds the result of another input, {owner!r} (written by an "
        f"earlier run), not of this one; nothing written ({fix})",
    )
