"""`ae-export triton`: write a Triton model repository from an export, or --check one against it.

    ae-export triton [--onnx-dir artifacts/onnx] [--out artifacts/model_repository] [--kind cpu|gpu]
                     [--warmup] [--max-batch-size N] [--max-queue-delay-us US]
    ae-export triton --check artifacts/model_repository [--onnx-dir DIR]

The configs themselves are derived and validated in `ae_export.triton`. A repository holds one export,
since Triton serves every folder in it: folders an earlier run wrote (a config.pbtxt opening with
`triton.MARKER`) are removed, and a folder without it is not ours, so the write is refused before
anything is written; so is a write over a folder of ours that holds a version folder besides `1/`
(Triton serves the highest version). `--check` re-derives each config from its `model.onnx`, compares
that file's sha256 with the header's and the export's, and names folders the export lacks or lacks
folders for, and version folders it did not write.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ae_export.cliargs import HelpFormatter
from ae_export.export import ExportError, check_out_dir
from ae_export.specs import SPECS
from ae_export.triton import (
    CONFIG_FILE,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_ONNX_DIR,
    KINDS,
    MARKER,
    MODEL_FILE,
    SHA256_LINE,
    SOURCE_LINE,
    VERSION,
    Mismatch,
    Options,
    TritonConfigError,
    cpu_nodes_on_gpu,
    derive_config,
    diff,
    load_rule_problems,
    options_of,
    render_config,
    sources,
)
from runtimes.batching import MAX_QUEUE_DELAY_US
from runtimes.fileio import atomic_write_bytes, atomic_write_text
from runtimes.manifest import DEFAULT_VARIANT, ManifestError
from runtimes.metadata import MetadataError


def _ours(folder: Path) -> bool:
    """Whether `folder` is a model an `ae-export triton` run wrote: its config.pbtxt opens with MARKER."""
    try:
        with open(folder / CONFIG_FILE, "rb") as handle:
            return handle.read(len(MARKER)) == MARKER.encode()
    except OSError:  # no config.pbtxt (or an unreadable one): not ours
        return False


def _model_folders(repo: Path) -> list[Path]:
    """Every folder in the repository: Triton treats each one as a model."""
    return sorted(p for p in repo.iterdir() if p.is_dir()) if repo.is_dir() else []


def _other_versions(folder: Path) -> list[str]:
    """Version folders beside ours (`VERSION`): Triton takes every numbered subfolder as a version of the
    model and, by default, serves the highest one, so a `2/` added by hand is served instead of ours."""
    try:
        return sorted((p.name for p in folder.iterdir() if p.name.isdigit() and p.name != VERSION), key=int)
    except OSError:
        return []


def _version_problem(folder: Path, versions: list[str]) -> str:
    served = f"version {versions[-1]}" if int(versions[-1]) > int(VERSION) else f"them beside {VERSION}/"
    return (
        f"{folder} holds version folders ae-export did not write ({', '.join(v + '/' for v in versions)}): "
        f"Triton would serve {served}, not the exported {VERSION}/{MODEL_FILE}"
    )


def write_repository(
    onnx_dir: Path, out: Path, options: Options, warn: Callable[[str], None] = print
) -> tuple[list[Path], list[Path]]:
    """Write `<out>/<name>/{config.pbtxt, 1/model.onnx}` for every source; every config validated first.

    Returns (written, removed): removed are our folders from an earlier export, which Triton would still
    serve. A folder that is not ours is neither overwritten nor deleted: the write is refused first.
    With kind "gpu", `warn` names every base model that would run nodes on the CPU (an export without
    portable twins: the fast graph's Col2Im), and how to export the twins."""
    if options.kind not in KINDS:
        raise ValueError(f"--kind {options.kind!r}: choose from {', '.join(KINDS)}")
    check_out_dir(out)  # a file there stopped the write at its first mkdir, naming no flag
    if options.kind == "gpu":  # the base models hold the portable twins, where the export has them
        base = [f for f in sources(onnx_dir, "gpu") if f.variant == DEFAULT_VARIANT]
        slow = {f.name: ops for f in base if (ops := cpu_nodes_on_gpu(f.path))}
        if slow:
            warn(
                f"warning: {onnx_dir} has no portable twins (*.portable.onnx), so with --kind gpu "
                + ", ".join(f"{name} runs {'/'.join(ops)}" for name, ops in slow.items())
                + " on the CPU, with a host copy around it, on every request (5.5x slower at batch 256 on "
                "an H100); export again with `portable` in --variants (a default) or with --graph portable"
            )
    plans = []
    for source in sources(onnx_dir, options.kind):  # derive and validate everything before writing anything
        data = source.path.read_bytes()
        config = derive_config(source.path, source.name, options)
        sha = hashlib.sha256(data).hexdigest()
        plans.append((source, data, render_config(config, sha, source.path.resolve())))
    existing = _model_folders(out)
    foreign = [p.name for p in existing if not _ours(p)]
    if foreign:
        raise TritonConfigError(
            f"{out} holds folders that `ae-export triton` did not write (no config.pbtxt starting with "
            f"{MARKER!r}): {', '.join(foreign)}; nothing was written. Move them out or pick another --out: "
            "a repository holds one export, and these would be served beside it"
        )
    versions = [_version_problem(p, v) for p in existing if (v := _other_versions(p))]
    if versions:
        raise TritonConfigError(
            f"{'; '.join(versions)}; nothing was written. Move them out or pick another --out"
        )
    written = []
    for source, data, text in plans:
        folder = out / source.name
        (folder / VERSION).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / VERSION / MODEL_FILE, data)
        atomic_write_text(folder / CONFIG_FILE, text)
        written.append(folder)
    removed = [p for p in existing if p not in written]
    for folder in removed:
        shutil.rmtree(folder)
    return written, removed


def _recorded(text: str) -> tuple[str | None, Path | None]:
    """(sha256, source path) that a config.pbtxt header of ours records; None where it records none."""
    sha, source = SHA256_LINE.search(text), SOURCE_LINE.search(text)  # comment lines: the body has none
    return (sha[1] if sha else None), (Path(source[1]) if source else None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_model(folder: Path, found: list[Mismatch]) -> tuple[mc.ModelConfig | None, Path | None]:
    """One folder against itself (config vs graph, model.onnx vs its recorded sha256), into `found`;
    returns the config and the exported file it records, where they can be read."""
    name, model = folder.name, folder / VERSION / MODEL_FILE
    if not (folder / CONFIG_FILE).is_file():
        found.append(Mismatch(name, "model folder", f"no {CONFIG_FILE}: not a model ae-export wrote"))
        return None, None
    text, config = (folder / CONFIG_FILE).read_text(), mc.ModelConfig()
    try:  # schema only: a field that differs is named below, which beats a load-rule message
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        found.append(Mismatch(name, CONFIG_FILE, f"not a valid Triton model config: {err}"))
        return None, None
    if versions := _other_versions(folder):
        found.append(Mismatch(name, "version folder", _version_problem(folder, versions)))
    if not model.is_file():
        found.append(Mismatch(name, "model file", f"{model} is missing"))
        return config, None
    sha, source = _recorded(text)
    if sha is None:
        found.append(Mismatch(name, CONFIG_FILE, f"its header ({MARKER!r}) records no sha256"))
    elif (actual := _sha256(model)) != sha:
        found.append(
            Mismatch(name, f"{VERSION}/{MODEL_FILE}", f"sha256 {actual}, but config.pbtxt records {sha}")
        )
    try:
        derived = derive_config(model, name, options_of(config))
    except (TritonConfigError, MetadataError) as err:
        found.append(Mismatch(name, MODEL_FILE, f"cannot be served: {err}"))
        return config, source
    differences = [Mismatch(name, *d) for d in diff(config, derived)]
    # Equal to its derivation, the config can still break a load-time rule through a serving choice
    # (max_batch_size 0, instance count 0): those are reported too.
    found += differences or [Mismatch(name, "load rule", p) for p in load_rule_problems(config)]
    return config, source


def check_repository(
    repo: Path, onnx_dir: Path | None = None, log: Callable[[str], None] = print
) -> list[Mismatch]:
    """Every model folder against itself and against the export; every difference (empty: all match).

    The export (`onnx_dir`, else the folder the headers record) must have a model for every folder (Triton
    serves them all), and each of its models a folder with its file's sha256. Where the recorded export
    is gone (a repository copied to a server), `log` says so and only the folders are checked."""
    folders = _model_folders(repo)
    if not any((p / CONFIG_FILE).is_file() for p in folders):
        raise FileNotFoundError(f"{repo}: no <model>/{CONFIG_FILE} found; is it a model repository?")
    found: list[Mismatch] = []
    kinds, exports = set(), {}  # the configs' instance kinds; export folder -> the models it recorded
    for folder in folders:
        config, source = _check_model(folder, found)
        if config is not None:
            kinds.add(options_of(config).kind)
        if source is not None:
            exports.setdefault(source.parent, []).append(folder.name)
    if onnx_dir is None and len(exports) > 1:
        where = "; ".join(f"{d}: {', '.join(names)}" for d, names in sorted(exports.items()))
        return [*found, Mismatch(str(repo), "export folder", f"models from different exports ({where})")]
    export = onnx_dir if onnx_dir is not None else next(iter(exports), None)
    if export is None or (onnx_dir is None and not (export / SPECS["denoiser"].file_name).is_file()):
        why = f"the export folder it records, {export}, is gone" if export else "it records no export folder"
        log(f"note: {repo}: {why}: checked each folder by itself (--onnx-dir DIR compares with an export)")
        return found
    if len(kinds) > 1:
        found.append(Mismatch(str(repo), "instance_group kind", f"mixed: {', '.join(sorted(kinds))}"))
    expected = {s.name: s.path for s in sources(export, min(kinds, default="cpu"))}
    log(f"comparing with the export {export} ({len(expected)} models)")
    for name in sorted({p.name for p in folders} - set(expected)):
        found.append(Mismatch(name, "model folder", f"not in the export {export}: Triton would serve it"))
    for name, path in sorted(expected.items()):
        model = repo / name / VERSION / MODEL_FILE
        if not (repo / name).is_dir():
            found.append(Mismatch(name, "model folder", f"missing: the export {export} has {path.name}"))
        elif model.is_file() and (actual := _sha256(model)) != (want := _sha256(path)):
            swapped = f"sha256 {actual}, but the export's {path} has {want}"
            found.append(Mismatch(name, f"{VERSION}/{MODEL_FILE}", swapped))
    return found


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-export triton",
        description="Write (or --check) a Triton model repository derived from the exported ONNX files.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--onnx-dir",
        default=None,
        help=f"the export folder (ae-export --out; default {DEFAULT_ONNX_DIR}); with --check, the export to "
        "compare with (default: the folder the configs record)",
    )
    p.add_argument("--out", default="artifacts/model_repository", help="the model repository to write")
    p.add_argument("--kind", default="cpu", choices=sorted(KINDS), help="instance_group kind")
    p.add_argument("--warmup", action="store_true", help="add model_warmup at batch 1 and max batch")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="as MicroBatcher's")
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        help=f"as MicroBatcher's: 0 to {MAX_QUEUE_DELAY_US} (one minute)",
    )
    p.add_argument(
        "--check",
        metavar="REPO",
        default=None,
        help="compare REPO's configs with their model.onnx, and its models with the export's",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok, 1 --check found a mismatch, 2 bad input (missing files, invalid config)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.check is not None:
            # These shape a repository being written; --check reads one as it is. Accepting them made
            # `--check REPO --kind gpu` pass a CPU repository (and --max-batch-size 0 pass unrefused).
            given = [
                f"--{name.replace('_', '-')}"
                for name in ("out", "kind", "warmup", "max_batch_size", "max_queue_delay_us")
                if getattr(args, name) != parser.get_default(name)
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: not used with --check, which compares each config.pbtxt in "
                    f"{args.check} with its own model file (write a repository without --check)"
                )
            onnx_dir = Path(args.onnx_dir) if args.onnx_dir is not None else None
            mismatches = check_repository(Path(args.check), onnx_dir)
            for mismatch in mismatches:
                print(f"mismatch: {mismatch}", file=sys.stderr)
            if mismatches:
                return 1
            print(f"{args.check}: every config.pbtxt matches its model.onnx")
            return 0
        if args.max_batch_size < 1:
            raise ValueError(f"--max-batch-size {args.max_batch_size}: must be >= 1")
        if not 0 <= args.max_queue_delay_us <= MAX_QUEUE_DELAY_US:
            # The configs carry MicroBatcher's meaning, so its range: Triton's uint64 field would take
            # hours (and past 2**64 protobuf's bare 'Value out of range').
            raise ValueError(
                f"--max-queue-delay-us {args.max_queue_delay_us}: must be 0 to {MAX_QUEUE_DELAY_US} "
                "(one minute), the range runtimes.MicroBatcher takes"
            )
        options = Options(args.kind, args.warmup, args.max_batch_size, args.max_queue_delay_us)
        written, removed = write_repository(
            Path(args.onnx_dir or DEFAULT_ONNX_DIR),
            Path(args.out),
            options,
            lambda line: print(line, file=sys.stderr),
        )
        for folder in written:
            print(f"wrote {folder}/{CONFIG_FILE} and {VERSION}/{MODEL_FILE}")
        for folder in removed:
            print(f"removed {folder}: an earlier export's model, not in this one")
        return 0
    except (
        TritonConfigError,
        ExportError,
        MetadataError,
        ManifestError,
        FileNotFoundError,
        ValueError,
        OSError,
    ) as err:
        print(f"ae-export triton: error: {err}", file=sys.stderr)
        return 2
