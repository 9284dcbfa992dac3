"""Planning `ae-denoise` runs: which input file goes to which output path, refused when unsafe.

`plan_jobs` maps input files to output PNG paths (mirroring each input tree) and refuses, before any work,
plans that would write over an input or into an input tree (where a later run would read the results back
as inputs). Nothing here decodes an image or runs a model: `runtimes.pipeline` executes a plan.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtimes.fileio import blocking_file, unusable_folder
from runtimes.images import IMAGE_SUFFIXES, find_images
from runtimes.pngmeta import read_png_record, source_label

OUTPUT_SUFFIX = ".png"
NOISY_SUFFIX = ".noisy.png"


class PlanError(ValueError):
    """The requested inputs/outputs are unsafe or ambiguous; nothing has been written."""


@dataclass(frozen=True)
class Job:
    """One input file and where its result (and, with added noise, its noisy input) goes."""

    index: int
    source: Path
    output: Path
    noisy_output: Path | None = None
    # The source's path under its input root (a file input: its name), as `runtimes.pngmeta.source_label`
    # writes it: recorded in the output, so a re-run can tell whose result an existing output holds.
    label: str = ""

    @property
    def output_root(self) -> Path:
        """The folder that mirrors this job's input root (the output's folder for a file input)."""
        return self.output.parents[self.label.count("/")]


@dataclass
class Plan:
    jobs: list[Job]
    scan_errors: list[tuple[Path, str]] = field(default_factory=list)  # folders that could not be listed
    ignored: list[Path] = field(default_factory=list)  # files in input folders without an image suffix
    folder_links: list[Path] = field(default_factory=list)  # symlinked folders in input folders: not followed
    # Inputs that are an earlier run's results of other inputs of this plan (`_earlier_results`): left out.
    earlier_results: list[Path] = field(default_factory=list)

    def ignored_summary(self) -> str:
        """The ignored files in one line, counted by suffix, with the suffixes that are read."""
        counts: dict[str, int] = {}
        for path in self.ignored:
            suffix = path.suffix.lower() or "(none)"
            counts[suffix] = counts.get(suffix, 0) + 1
        by_suffix = ", ".join(f"{s} {n}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return (
            f"{len(self.ignored)} file(s) ignored for their suffix ({by_suffix}); "
            f"image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}"
        )

    def earlier_results_summary(self, shown: int = 3) -> str:
        """The inputs left out as earlier results of this run's inputs, in one line naming the first few."""
        names = ", ".join(str(p) for p in self.earlier_results[:shown])
        more = f" and {len(self.earlier_results) - shown} more" if len(self.earlier_results) > shown else ""
        return (
            f"{len(self.earlier_results)} input(s) left out as results of other inputs of this run, written "
            f"by an earlier run: {names}{more}"
        )

    def folder_links_summary(self, shown: int = 3) -> str:
        """The symbolic links to folders found in input folders, which are not followed (a link may point
        back up its own tree), in one line naming the first few."""
        names = ", ".join(str(p) for p in self.folder_links[:shown])
        more = f" and {len(self.folder_links) - shown} more" if len(self.folder_links) > shown else ""
        return (
            f"{len(self.folder_links)} symbolic link(s) to folders not followed: {names}{more} "
            "(give a link as an input to denoise the images it leads to)"
        )


def _abspath(path: Path) -> Path:
    """Absolute and normalised, symlinks kept (so `.` gets its real folder name for `<input>_denoised`)."""
    return Path(os.path.abspath(path))


def _output_names(rels: Sequence[Path]) -> list[Path]:
    """Output paths for input paths relative to one output folder (the files of a folder input, or the
    file inputs that go to one folder): `a.jpg` -> `a.png`, unless two files would collide
    (`a.png` and `a.jpg`), in which case each one whose suffix is not exactly `.png` keeps it: `a.jpg.png`
    (`a.png` and `a.PNG`, both possible on a case-sensitive file system, give `a.png` and `a.PNG.png`).

    Which name a file gets thus depends on its siblings: adding `a.png` beside `a.jpg` moves `a.jpg`'s
    result from `a.png` to `a.jpg.png`. Each output records its source (`Job.label`), and the pipeline
    checks that record before it skips an existing output."""
    plain = [rel.with_suffix(OUTPUT_SUFFIX) for rel in rels]
    counts: dict[Path, int] = {}
    for name in plain:
        counts[name] = counts.get(name, 0) + 1
    names = []
    for rel, name in zip(rels, plain, strict=True):
        if counts[name] > 1 and rel.suffix != OUTPUT_SUFFIX:
            name = rel.with_name(rel.name + OUTPUT_SUFFIX)
        names.append(name)
    return names


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def plan_jobs(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    with_noisy: bool = False,
) -> Plan:
    """Map inputs (files or folders) to output paths; raise PlanError for unsafe or colliding outputs.

    `inputs` is a list of paths, or one path (a string is one path, not a sequence of one-letter names).

    Layout: a folder `D` goes to `OUT/<relative path>.png` with `-o OUT` and one input, to
    `OUT/<D name>/...` with several inputs, and to the sibling folder `D_denoised/` without `-o`. A file
    `F` goes to `OUT/<F stem>.png`, or beside itself as `<F stem>_denoised.png` without `-o`; file inputs
    whose outputs would share a name there keep their suffix as a folder's files do (`_output_names`).
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if not inputs:
        raise PlanError("no inputs given")
    roots = [Path(p) for p in inputs]
    missing = [str(p) for p in roots if not os.path.lexists(p)]
    if missing:
        raise PlanError(f"input not found: {', '.join(missing)}")
    out_dir = _abspath(Path(output)) if output is not None else None
    scan_errors: list[tuple[Path, str]] = []
    ignored: list[Path] = []
    folder_links: list[Path] = []
    pairs: list[tuple[Path, Path, str] | None] = []  # (source, output, label)
    # File inputs by the folder their outputs go to: named together, as a folder's files are.
    loose: dict[Path, list[tuple[int, Path]]] = {}
    input_dirs: list[Path] = []
    for root in roots:
        absolute = _abspath(root)
        if root.is_dir():
            input_dirs.append(Path(os.path.realpath(root)))
            if out_dir is None:
                out_root = absolute.parent / f"{absolute.name}_denoised"
            elif len(roots) == 1:
                out_root = out_dir
            else:
                out_root = out_dir / absolute.name
            files = find_images(
                root,
                on_error=lambda err: scan_errors.append(
                    (Path(err.filename or "?"), f"cannot list folder: {err.strerror or err}")
                ),
                on_ignored=ignored.append,
                on_folder_link=folder_links.append,
            )
            rels = [src.relative_to(root) for src in files]
            for src, rel, name in zip(files, rels, _output_names(rels), strict=True):
                pairs.append((src, out_root / name, source_label(rel)))
        else:
            folder = absolute.parent if out_dir is None else out_dir
            loose.setdefault(folder, []).append((len(pairs), root))
            pairs.append(None)  # named below, beside the other file inputs going to the same folder
    for folder, entries in loose.items():
        names = [Path(_abspath(root).name) for _, root in entries]
        for (i, root), name, out_name in zip(entries, names, _output_names(names), strict=True):
            # Beside the input: `a.png` -> `a_denoised.png`, `a.jpg.png` -> `a.jpg_denoised.png`.
            if out_dir is None:
                out_name = out_name.with_name(f"{out_name.stem}_denoised{OUTPUT_SUFFIX}")
            pairs[i] = (root, folder / out_name, source_label(name))
    complete = [p for p in pairs if p is not None]
    # Each path resolved once: the earlier-results test and the safety checks both need every input's
    # and every output's real path (about 15 us of system calls each; a tree of 50,000 files has 100,000).
    real = functools.cache(os.path.realpath)
    earlier = _earlier_results(complete, real)
    jobs = [
        Job(
            i,
            src,
            dst,
            dst.with_name(dst.name[: -len(OUTPUT_SUFFIX)] + NOISY_SUFFIX) if with_noisy else None,
            label,
        )
        for i, (src, dst, label) in enumerate(p for p in complete if p[0] not in earlier)
    ]
    _check_safety(jobs, input_dirs, real)
    return Plan(jobs, scan_errors, ignored, folder_links, [p[0] for p in complete if p[0] in earlier])


def _earlier_results(pairs: Sequence[tuple[Path, Path, str]], real: Callable[[Path], str]) -> set[Path]:
    """The inputs that are another input's output path and record that input's label: an earlier run's
    results, named again as inputs by `ae-denoise *` (the shell now also expands `a_denoised.png`).

    Without this, the re-run that README promises after Ctrl-C refused everything ("output
    a_denoised.png is an input file"). An output path holding a file without that record (the user's
    own `a_denoised.png`) stays an input, and the plan is refused as before: it is never written over.
    """
    producers = {real(dst): (src, label) for src, dst, label in pairs}
    earlier: set[Path] = set()
    for src, _dst, _label in pairs:
        producer = producers.get(real(src))
        if producer is not None and producer[0] != src and read_png_record(src).label == producer[1]:
            earlier.add(src)
    return earlier


def _check_safety(jobs: Sequence[Job], input_dirs: Sequence[Path], real: Callable[[Path], str]) -> None:
    """Refuse outputs that are inputs (by path or by inode), lie inside an input tree, collide, go
    where a file stands in the way of their folder (before, each file failed alone on it, exit 1), or
    into an output folder that takes no new file (read-only, full)."""
    input_real = {real(job.source) for job in jobs}
    input_ids: set[tuple[int, int]] = set()
    for job in jobs:
        try:
            st = os.stat(job.source)
        except OSError:
            continue  # unreadable inputs are reported when loaded; they cannot be written over either
        input_ids.add((st.st_dev, st.st_ino))
    problems: list[str] = []
    checked: set[Path] = set()  # output folders: each looked at once
    blocked: dict[Path, list[Path]] = {}  # a file in the way -> the output folders it stops
    for job in jobs:
        folder = job.output.parent
        if folder not in checked:
            checked.add(folder)
            if (blocker := blocking_file(folder)) is not None:
                blocked.setdefault(blocker, []).append(folder)
    for blocker, folders in blocked.items():
        others = f" and {len(folders) - 1} more" if len(folders) > 1 else ""
        problems.append(
            f"output folder {folders[0]}{others} cannot be made: {blocker} is not a folder (choose another "
            "-o, or move it away)"
        )
    # A read-only or full output file system, found before any work: it was one failure per file, each
    # after the file had been decoded and denoised (seconds per photograph).
    for root in dict.fromkeys(job.output_root for job in jobs):
        if blocking_file(root) is None and (refusal := unusable_folder(root)) is not None:
            problems.append(f"output folder {refusal}")
    seen: dict[str, Path] = {}
    inside: dict[Path, list[Path]] = {}  # input folder -> outputs under it: one message per folder
    for job in jobs:
        for out in (job.output, job.noisy_output):
            if out is None:
                continue
            resolved = real(out)
            if resolved in input_real:
                problems.append(f"output {out} is an input file")
            else:
                try:
                    st = os.stat(out)
                except OSError:
                    st = None
                if st is not None and (st.st_dev, st.st_ino) in input_ids:
                    problems.append(f"output {out} is a hard link to an input file")
            for folder in input_dirs:
                if _is_within(Path(resolved), folder):
                    inside.setdefault(folder, []).append(out)
                    break
            if resolved in seen:
                problems.append(f"inputs {seen[resolved]} and {job.source} both map to output {out}")
            seen[resolved] = job.source
    for folder, outs in inside.items():
        others = f" and {len(outs) - 1} more result(s)" if len(outs) > 1 else ""
        problems.append(
            f"output {outs[0]}{others} would lie inside input folder {folder}, and results would be read "
            "back as inputs (choose -o outside every input folder)"
        )
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PlanError(f"refusing to write: {shown}{more}")
