"""`ae-denoise` as a user runs it (a subprocess on real PNG files), plus runtimes.images loaders/fitting.

Slow pieces (one CLI run over a folder of good and bad files) are module-scoped fixtures; the assertions
about them are parametrized so each bad-file kind fails on its own.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtimes.denoiser import Denoiser
from runtimes.fitting import from_model, to_model, to_uint8
from runtimes.images import BadImageError, find_images, load_gray8, load_image8, save_png
from runtimes.noise import add_noise
from runtimes.planning import PlanError, plan_jobs
from tests.helpers import run_cli, run_script

CLI = "runtimes.cli"
NOISE = 0.3


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return float(10 * np.log10(1.0 / max(float((diff**2).mean()), 1e-12)))


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every entry under root (symlinks not followed): contents (or link target) and mtime."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            state[str(path)] = (os.readlink(path).encode(), st.st_mtime_ns)
        elif path.is_file():
            state[str(path)] = (path.read_bytes(), st.st_mtime_ns)
        else:
            state[str(path)] = (b"<dir>", 0)
    return state


def noisy_u8(clean: np.ndarray, seed: int = 0) -> np.ndarray:
    return to_uint8(add_noise(clean.astype(np.float32) / 255, NOISE, np.random.default_rng(seed)))


# ---------------------------------------------------------------------------------------------------------
# End to end


def test_end_to_end_psnr(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    clean = fmnist_test[:200]
    noisy = noisy_u8(clean)
    for i, image in enumerate(noisy):
        save(tmp_path / "noisy" / f"{i // 100}" / f"img_{i:04d}.png", image)
    proc = run_cli(
        CLI, "--onnx", str(onnx_dir / "denoiser.onnx"), str(tmp_path / "noisy"), "--batch-size", "64"
    )
    assert proc.returncode == 0, proc.stderr
    assert "200 done, 0 failed, 0 skipped" in proc.stderr and "images/s" in proc.stderr
    out_root = tmp_path / "noisy_denoised"  # the default sibling folder, mirroring the tree
    outputs = np.stack([read(out_root / f"{i // 100}" / f"img_{i:04d}.png") for i in range(200)])
    noisy_psnr = np.mean([psnr(n, c) for n, c in zip(noisy, clean, strict=True)])
    denoised_psnr = np.mean([psnr(o, c) for o, c in zip(outputs, clean, strict=True)])
    assert denoised_psnr > noisy_psnr + 1.0, (noisy_psnr, denoised_psnr)


def test_a_run_that_writes_nothing_leaves_no_empty_output_folders(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """Every file refused: the `-o` tree the run created is removed again (it once stayed, empty); a
    folder that existed before stays, and so does one that received a result."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    model = str(onnx_dir / "denoiser.onnx")
    proc = run_cli(CLI, "--onnx", model, str(bad), "-o", str(tmp_path / "out" / "deep"))
    assert proc.returncode == 1 and "0 done, 2 failed" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    proc = run_cli(CLI, "--onnx", model, str(bad), "-o", str(tmp_path / "mine" / "new"))
    assert proc.returncode == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["bad", "mine"]
    assert not any((tmp_path / "mine").iterdir())  # its own new subfolder went, the folder stayed
    save(bad / "good.png", fmnist_test[0])
    proc = run_cli(CLI, "--onnx", model, str(bad), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1 and "1 done, 2 failed" in proc.stderr, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]


def test_folder_cleanup_keeps_what_the_run_did_not_make(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the API: an output path with `..` over a folder that does not exist yet still names an
    existing empty folder, which must stay (every prefix looked missing once, so it was removed); and a
    folder removed mid-run (by another run's cleanup) is made again when a result is written there."""
    from runtimes import pipeline
    from runtimes.planning import Job

    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep_me_empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    job = Job(0, Path("bad.png"), Path("new/../keep_me_empty/out/bad.png"))
    result = pipeline.run_pipeline(Denoiser(str(onnx_dir / "denoiser.onnx")), [job], workers=1, fsync=False)
    assert result.failed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "keep_me_empty"]
    assert not any((tmp_path / "keep_me_empty").iterdir())
    gone = tmp_path / "gone" / "x.png"  # its folder was never made (or was made, then removed)
    pipeline._save(gone, fmnist_test[0], False, {"source": "x.png"})
    assert read(gone).shape == (28, 28)


def test_add_noise_demo_mode(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    clean = fmnist_test[:40]
    for i, image in enumerate(clean):
        save(tmp_path / "clean" / f"test_{i:05d}.png", image)
    args = [
        "--onnx",
        str(onnx_dir),
        str(tmp_path / "clean"),
        "-o",
        str(tmp_path / "out"),
        "--add-noise",
        "0.3",
    ]
    proc = run_cli(CLI, *args, "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    noisy = np.stack([read(tmp_path / "out" / f"test_{i:05d}.noisy.png") for i in range(40)])
    denoised = np.stack([read(tmp_path / "out" / f"test_{i:05d}.png") for i in range(40)])
    assert np.mean([psnr(d, c) for d, c in zip(denoised, clean, strict=True)]) > np.mean(
        [psnr(n, c) for n, c in zip(noisy, clean, strict=True)]
    )
    # Same seed -> the same noise, whatever the thread timing; another seed -> other noise.
    again = run_cli(CLI, *args, "--seed", "7", "--overwrite", "--quiet")
    assert again.returncode == 0 and again.stderr == ""
    np.testing.assert_array_equal(
        noisy, np.stack([read(tmp_path / "out" / f"test_{i:05d}.noisy.png") for i in range(40)])
    )
    other = run_cli(CLI, *args, "--seed", "8", "--overwrite", "--quiet")
    assert other.returncode == 0
    assert not np.array_equal(noisy[0], read(tmp_path / "out" / "test_00000.noisy.png"))


# ---------------------------------------------------------------------------------------------------------
# Bad files among good ones


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_bad(folder: Path, sample: np.ndarray) -> dict[str, Path]:
    """One file per bad kind; returns kind -> path."""
    data = _png_bytes(sample)
    idat = data.find(b"IDAT") + 4
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8))
    bad = {
        "corrupt": data[: idat + 10] + garbage + data[idat + 210 :],
        "truncated": data[: len(data) // 2],
        "not_an_image": b"these are not the pixels you are looking for\n" * 4,
        "zero_bytes": b"",
    }
    paths = {}
    for kind, content in bad.items():
        paths[kind] = folder / "bad" / f"{kind}.png"
        paths[kind].parent.mkdir(parents=True, exist_ok=True)
        paths[kind].write_bytes(content)
    paths["bomb"] = folder / "bad" / "bomb.png"
    Image.new("L", (6000, 6000)).save(paths["bomb"])  # 36 MP of zeros in ~35 kB: over the 25 MP guard
    paths["dangling_symlink"] = folder / "bad" / "dangling_symlink.png"
    paths["dangling_symlink"].symlink_to(folder / "does-not-exist.png")
    paths["animated"] = folder / "bad" / "animated.png"
    frames = [Image.fromarray(sample), Image.fromarray(255 - sample)]
    frames[0].save(paths["animated"], save_all=True, append_images=frames[1:])  # APNG: 2 frames
    return paths


BAD_REASONS = {
    "corrupt": "corrupt",
    "truncated": "truncated",
    "not_an_image": "not an image",
    "zero_bytes": "empty file (0 bytes)",
    "bomb": "decompression bomb",
    "dangling_symlink": "dangling symbolic link",
    "animated": "holds 2 frames",
}


@pytest.fixture(scope="module")
def mixed_run(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mixed")
    inputs = root / "in"
    good = [save(inputs / ("nested" if i % 2 else "") / f"good_{i}.png", fmnist_test[i]) for i in range(12)]
    bad = _make_bad(inputs, fmnist_test[0])
    (inputs / "README.txt").write_text("not an image\n")
    (inputs / "nested" / "labels.csv").write_text("0\n")
    (inputs / "nested" / "more.csv").write_text("1\n")
    before = snapshot(inputs)
    out = root / "out"
    args = ["--onnx", str(onnx_dir / "denoiser.onnx"), str(inputs), "-o", str(out)]
    first = run_cli(CLI, *args)
    outputs = {p: out / p.relative_to(inputs) for p in good}
    stats_after_first = {p: p.stat() for p in outputs.values() if p.exists()}
    second = run_cli(CLI, *args)
    stats_after_second = {p: p.stat() for p in outputs.values() if p.exists()}
    after_second = snapshot(inputs)
    third = run_cli(CLI, *args, "--overwrite")
    stats_after_third = {p: p.stat() for p in outputs.values() if p.exists()}
    return {
        "inputs": inputs, "out": out, "good": good, "bad": bad, "outputs": outputs, "args": args,
        "first": first, "second": second, "third": third, "before": before, "after": after_second,
        "after_third": snapshot(inputs), "stats": (stats_after_first, stats_after_second, stats_after_third),
    }  # fmt: skip


def test_mixed_exit_code_and_summary(mixed_run: dict) -> None:
    first = mixed_run["first"]
    assert first.returncode == 1, first.stderr
    assert "12 done, 7 failed, 0 skipped" in first.stderr
    # Files left out for their suffix are counted, not silently dropped (and are no failure).
    assert "3 file(s) ignored for their suffix (.csv 2, .txt 1)" in first.stderr


def test_mixed_good_files_written(mixed_run: dict, onnx_dir: Path) -> None:
    for output in mixed_run["outputs"].values():
        assert output.is_file(), output
        assert read(output).shape == (28, 28)
    written = sorted(p.relative_to(mixed_run["out"]) for p in mixed_run["out"].rglob("*") if p.is_file())
    assert written == sorted(
        p.relative_to(mixed_run["inputs"]) for p in mixed_run["good"]
    )  # no temp files left


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
def test_mixed_bad_file_named_with_reason(mixed_run: dict, kind: str) -> None:
    path = mixed_run["bad"][kind]
    lines = [line for line in mixed_run["first"].stderr.splitlines() if str(path) + ":" in line]
    assert len(lines) == 1, mixed_run["first"].stderr
    assert BAD_REASONS[kind] in lines[0]
    assert not (mixed_run["out"] / path.relative_to(mixed_run["inputs"])).exists()


def test_mixed_inputs_untouched(mixed_run: dict) -> None:
    assert mixed_run["after"] == mixed_run["before"]
    assert mixed_run["after_third"] == mixed_run["before"]


def test_mixed_rerun_skips_existing(mixed_run: dict) -> None:
    second = mixed_run["second"]
    assert second.returncode == 1  # the bad files still fail
    assert "0 done, 7 failed, 12 skipped" in second.stderr
    first_stats, second_stats, _ = mixed_run["stats"]
    for path, st in first_stats.items():
        assert (second_stats[path].st_ino, second_stats[path].st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def test_mixed_overwrite_rewrites(mixed_run: dict) -> None:
    third = mixed_run["third"]
    assert third.returncode == 1 and "12 done, 7 failed, 0 skipped" in third.stderr
    _, second_stats, third_stats = mixed_run["stats"]
    for path, st in second_stats.items():
        assert third_stats[path].st_ino != st.st_ino  # a new file renamed into place: written atomically


# ---------------------------------------------------------------------------------------------------------
# Output layout and safety


def test_default_output_layouts(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    a = save(tmp_path / "a" / "x.png", fmnist_test[0])
    save(tmp_path / "b" / "sub" / "y.png", fmnist_test[1])
    single = save(tmp_path / "single.png", fmnist_test[2])
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(a.parent), str(tmp_path / "b"), str(single))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a_denoised" / "x.png").is_file()
    assert (tmp_path / "b_denoised" / "sub" / "y.png").is_file()
    assert (tmp_path / "single_denoised.png").is_file()
    proc = run_cli(
        CLI, "--onnx", str(onnx_dir), str(a.parent), str(tmp_path / "b"), "-o", str(tmp_path / "o")
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "a" / "x.png").is_file() and (tmp_path / "o" / "b" / "sub" / "y.png").is_file()


def test_name_collision_keeps_suffix(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    save(tmp_path / "in" / "p.png", fmnist_test[0])
    save(tmp_path / "in" / "p.bmp", fmnist_test[1])
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.bmp.png", "p.png"]


@pytest.mark.parametrize(
    ("out", "expected"),
    [("out", ["out/p.bmp.png", "out/p.png"]), (None, ["p.bmp_denoised.png", "p_denoised.png"])],
)
def test_file_inputs_colliding_keep_suffix_as_a_folders_files_do(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, out: str | None, expected: list[str]
) -> None:
    """`ae-denoise p.bmp p.png` (what `ae-denoise *` gives): the files are named as in a folder input,
    the one whose suffix is not `.png` keeping it. Before, the run was refused as a collision (exit 2)."""
    save(tmp_path / "in" / "p.png", fmnist_test[0])
    save(tmp_path / "in" / "p.bmp", fmnist_test[1])
    args = [str(tmp_path / "in" / "p.bmp"), str(tmp_path / "in" / "p.png")]
    if out is not None:
        args += ["-o", str(tmp_path / "in" / out)]
    proc = run_cli(CLI, "--onnx", str(onnx_dir), *args)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.relative_to(tmp_path / "in").as_posix() for p in (tmp_path / "in").rglob("*_*.png"))
    written += sorted(p.relative_to(tmp_path / "in").as_posix() for p in (tmp_path / "in").glob("out/*"))
    assert written == expected
    denoiser = Denoiser(onnx_dir, provider="cpu")
    for name, source in zip(expected, ("p.bmp", "p.png"), strict=True):
        assert _denoised_by(tmp_path / "in" / name, tmp_path / "in" / source, denoiser), name


def test_case_differing_suffixes_both_denoised(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """`a.png` and `a.PNG` (distinct on a case-sensitive file system, as tmp_path is here): the one whose
    suffix is not exactly `.png` keeps it. Before, neither was renamed and the whole run was refused."""
    save(tmp_path / "in" / "a.png", fmnist_test[0])
    save(tmp_path / "in" / "a.PNG", fmnist_test[1])
    if len(list((tmp_path / "in").iterdir())) != 2:
        pytest.skip("tmp_path is on a case-insensitive file system")
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.PNG.png", "a.png"]
    denoiser = Denoiser(onnx_dir, provider="cpu")
    for name, image in (("a.png", fmnist_test[0]), ("a.PNG.png", fmnist_test[1])):
        diff = np.abs(read(tmp_path / "out" / name).astype(int) - denoiser(image).astype(int))
        assert diff.max() <= 1, name


def _denoised_by(out: Path, source: Path, denoiser: Denoiser) -> bool:
    """Whether `out` holds `source`'s result (within rounding: batches may differ from one call)."""
    return int(np.abs(read(out).astype(int) - denoiser(load_gray8(source)).astype(int)).max()) <= 1


def test_rerun_after_a_sibling_joins_keeps_each_output_its_own(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """Run 1 writes a.jpg's result as a.png; once a.png joins it, a.jpg's result is named a.jpg.png.
    Before, run 2 then skipped a.png (it existed) and kept a.jpg's picture under a.png, exit 0."""
    denoiser = Denoiser(onnx_dir, provider="cpu")
    inputs, out = tmp_path / "in", tmp_path / "out"
    args = ["--onnx", str(onnx_dir), str(inputs), "-o", str(out)]
    Image.fromarray(fmnist_test[0]).save(_mkdir(inputs) / "a.jpg", quality=95)
    first = run_cli(CLI, *args)
    assert first.returncode == 0 and "1 done" in first.stderr, first.stderr
    assert _denoised_by(out / "a.png", inputs / "a.jpg", denoiser)
    save(inputs / "a.png", fmnist_test[1])
    second = run_cli(CLI, *args)
    assert second.returncode == 0, second.stderr
    assert "2 done, 0 failed, 0 skipped" in second.stderr  # a.png's stale output was denoised again
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.png", "a.png"]
    assert _denoised_by(out / "a.png", inputs / "a.png", denoiser)
    assert _denoised_by(out / "a.jpg.png", inputs / "a.jpg", denoiser)
    third = run_cli(CLI, *args)  # now each output is its own input's: both skipped
    assert third.returncode == 0 and "0 done, 0 failed, 2 skipped" in third.stderr, third.stderr


def test_output_of_an_input_no_longer_there_is_not_replaced(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """a.jpg's result sits at a.png; a.jpg is gone and a new a.png arrives: a.png's output would be
    a.jpg's only result, so it is neither kept silently nor replaced: the file fails, naming both."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    args = ["--onnx", str(onnx_dir), str(inputs), "-o", str(out)]
    Image.fromarray(fmnist_test[0]).save(_mkdir(inputs) / "a.jpg", quality=95)
    assert run_cli(CLI, *args).returncode == 0
    kept = (out / "a.png").read_bytes()
    (inputs / "a.jpg").unlink()
    save(inputs / "a.png", fmnist_test[1])
    proc = run_cli(CLI, *args)
    assert proc.returncode == 1 and "0 done, 1 failed, 0 skipped" in proc.stderr
    line = next(line for line in proc.stderr.splitlines() if str(inputs / "a.png") + ":" in line)
    assert f"output {out / 'a.png'} already holds the result of another input, 'a.jpg'" in line
    assert "--overwrite" in line and (out / "a.png").read_bytes() == kept
    replaced = run_cli(CLI, *args, "--overwrite")
    assert replaced.returncode == 0 and "1 done" in replaced.stderr
    assert _denoised_by(out / "a.png", inputs / "a.png", Denoiser(onnx_dir, provider="cpu"))


def test_existing_file_without_a_source_record_is_skipped(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """A file we did not write (or one an earlier version wrote) is left alone, as before."""
    save(tmp_path / "in" / "a.png", fmnist_test[0])
    foreign = save(tmp_path / "out" / "a.png", fmnist_test[1]).read_bytes()
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0 and "0 done, 0 failed, 1 skipped" in proc.stderr, proc.stderr
    assert (tmp_path / "out" / "a.png").read_bytes() == foreign


def test_a_file_of_the_same_name_from_another_folder_is_not_taken_for_this_ones_result(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """day1/IMG_0001.png and day2/IMG_0001.png, each given as the input folder with one -o: both record
    the label IMG_0001.png, and the second run skipped, keeping day1's result for day2 (exit 0). The
    input's SHA-256 in the record tells them apart: it fails, naming it, and keeps day1's result."""
    out = tmp_path / "out"
    day1 = save(tmp_path / "day1" / "IMG_0001.png", fmnist_test[0])
    day2 = save(tmp_path / "day2" / "IMG_0001.png", fmnist_test[1])
    assert run_cli(CLI, "--onnx", str(onnx_dir), str(day1.parent), "-o", str(out)).returncode == 0
    kept = (out / "IMG_0001.png").read_bytes()
    args = ["--onnx", str(onnx_dir), str(day2.parent), "-o", str(out)]
    proc = run_cli(CLI, *args)
    assert proc.returncode == 1 and "0 done, 1 failed, 0 skipped" in proc.stderr, proc.stderr
    assert (
        f"output {out / 'IMG_0001.png'} already holds the result of another file named 'IMG_0001.png' "
        f"(its SHA-256 is not {day2}'s" in proc.stderr
    )
    assert (out / "IMG_0001.png").read_bytes() == kept
    assert run_cli(CLI, *args, "--overwrite").returncode == 0
    denoiser = Denoiser(onnx_dir, provider="cpu")
    assert _denoised_by(out / "IMG_0001.png", day2, denoiser)
    again = run_cli(CLI, *args)
    assert again.returncode == 0 and "0 done, 0 failed, 1 skipped" in again.stderr, again.stderr


def test_the_same_file_given_from_another_root_is_skipped(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """`src` then `src/sub/x.png` into the matching folder: the record's label differs (sub/x.png vs
    x.png), its SHA-256 does not. This was a failure ('already holds the result of another input')."""
    src, out = tmp_path / "src", tmp_path / "out"
    image = save(src / "sub" / "x.png", fmnist_test[0])
    assert run_cli(CLI, "--onnx", str(onnx_dir), str(src), "-o", str(out)).returncode == 0
    kept = (out / "sub" / "x.png").read_bytes()
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(image), "-o", str(out / "sub"))
    assert proc.returncode == 0 and "0 done, 0 failed, 1 skipped" in proc.stderr, proc.stderr
    assert (out / "sub" / "x.png").read_bytes() == kept


def test_a_star_run_goes_on_when_run_again(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    """`ae-denoise *` again (after Ctrl-C, as the README says) names the first run's a_denoised.png as
    inputs too: every output was "an input file" and the run was refused (exit 2). Results that record
    another input of the run are left out and said so; a file of that name without the record (the
    user's own) is still an input, never written over."""
    for name, image in (("a.png", fmnist_test[0]), ("b.png", fmnist_test[1])):
        save(tmp_path / name, image)
    first = run_cli(CLI, "--onnx", str(onnx_dir), "a.png", "b.png", cwd=tmp_path)
    assert first.returncode == 0 and "2 done" in first.stderr, first.stderr
    star = sorted(p.name for p in tmp_path.iterdir())
    assert star == ["a.png", "a_denoised.png", "b.png", "b_denoised.png"]
    again = run_cli(CLI, "--onnx", str(onnx_dir), *star, cwd=tmp_path)
    assert again.returncode == 0 and "0 done, 0 failed, 2 skipped" in again.stderr, again.stderr
    assert "2 input(s) left out as results of other inputs of this run" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == star
    theirs = save(tmp_path / "c_denoised.png", fmnist_test[2]).read_bytes()
    save(tmp_path / "c.png", fmnist_test[3])
    refused = run_cli(CLI, "--onnx", str(onnx_dir), "c.png", "c_denoised.png", cwd=tmp_path)
    assert (
        refused.returncode == 2 and f"output {tmp_path / 'c_denoised.png'} is an input file" in refused.stderr
    )
    assert (tmp_path / "c_denoised.png").read_bytes() == theirs


@pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a folder no one can write in)"
)
def test_an_output_folder_that_takes_no_file_is_refused_before_any_work(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """A read-only output file system was one failure per file, each after its decode and model run
    (exit 1). /proc takes no new file even for root, as a read-only mount would not."""
    save(tmp_path / "in" / "a.png", fmnist_test[0])
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", "/proc/ae-denoise-out")
    assert proc.returncode == 2, proc.stderr
    assert "refusing to write: output folder /proc/ae-denoise-out: cannot write in /proc" in proc.stderr


def test_threads_beyond_the_cpu_count_are_refused(onnx_dir: Path, tmp_path: Path) -> None:
    """Each thread is an ONNX Runtime session with its own buffers: --threads 99999999999999999999999
    grew to 23 GB before anything ran."""
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path), "--threads", "99999999999999999999999")
    assert proc.returncode == 2
    assert f"--threads: expected 1..{os.cpu_count()} (this machine's CPUs" in proc.stderr


def test_output_path_that_is_no_file_fails_instead_of_being_skipped(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """A folder, a dangling link or a FIFO where an output goes holds no result: each input fails, naming
    it, and the rest are done. Before, the folder and the link counted as skipped (exit 0, no result
    anywhere) and the FIFO hung the run, its record read waiting for a writer."""
    for name in ("a", "b", "c", "d"):
        save(tmp_path / "in" / f"{name}.png", fmnist_test[0])
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)
    (out / "b.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(out / "c.png")
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(out), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "1 done, 3 failed, 0 skipped" in proc.stderr
    assert f"output {out / 'a.png'} is a folder and holds no result" in proc.stderr
    assert (
        f"output {out / 'b.png'} is a symbolic link to the missing {tmp_path / 'missing.png'}" in proc.stderr
    )
    assert f"output {out / 'c.png'} is not a regular file" in proc.stderr
    assert read(out / "d.png").shape == (28, 28)
    assert (
        (out / "a.png").is_dir()
        and (out / "b.png").is_symlink()
        and stat.S_ISFIFO(os.lstat(out / "c.png").st_mode)
    )


def test_longest_legal_file_name(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    """A 249-byte name gives a 249-byte output name; its temporary file must fit in 255 bytes too."""
    name = "x" * 245 + ".png"
    save(tmp_path / "in" / name, fmnist_test[0])
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, umask: int, mode: int
) -> None:
    """Outputs get the mode a plain open() would give them; before, always 0644 (private inputs became
    world-readable outputs)."""
    save(tmp_path / "in" / "a.png", fmnist_test[0])
    code = f"import os, sys; os.umask({umask}); from runtimes.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = run_script(code, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "out" / "a.png").stat().st_mode) == mode


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unsafe_case(case: str, root: Path, image: np.ndarray) -> list[str]:
    inputs = root / "in"
    save(inputs / "x.png", image)
    save(inputs / "deep" / "y.png", image)
    if case == "out_inside_input":
        return [str(inputs), "-o", str(inputs / "results")]
    if case == "out_is_input_folder":
        return [str(inputs), "-o", str(inputs)]
    if case == "output_is_input_file":
        return [str(inputs / "x.png"), "-o", str(inputs)]
    if case == "output_is_hardlink_to_input":
        (root / "out").mkdir()
        os.link(inputs / "x.png", root / "out" / "x.png")
        return [str(inputs / "x.png"), "-o", str(root / "out"), "--overwrite"]
    if case == "input_is_other_inputs_output":
        save(root / "in_denoised" / "z.png", image)
        return [str(inputs), str(root / "in_denoised")]
    if case == "two_inputs_same_name":
        save(root / "other" / "in" / "x.png", image)
        return [str(inputs), str(root / "other" / "in"), "-o", str(root / "out")]
    if case == "same_input_twice":
        return [str(inputs), str(inputs), "-o", str(root / "out")]
    if case == "out_is_a_file":  # `-o clean.png`, read as the output file's name
        (root / "clean.png").write_bytes(b"kept")
        return [str(inputs / "x.png"), "-o", str(root / "clean.png")]
    if case == "out_under_a_file":
        (root / "notes").write_bytes(b"kept")
        return [str(inputs), "-o", str(root / "notes" / "out")]
    if case == "out_through_a_symlink_loop":
        (root / "loop").symlink_to("loop")
        return [str(inputs), "-o", str(root / "loop" / "out")]
    if case == "default_out_is_a_file":
        (root / "in_denoised").write_bytes(b"kept")
        return [str(inputs)]
    raise AssertionError(case)


UNSAFE = {
    "out_inside_input": "inside input folder",
    "out_is_input_folder": "is an input file",
    "output_is_input_file": "is an input file",
    "output_is_hardlink_to_input": "hard link to an input file",
    "input_is_other_inputs_output": "inside input folder",
    "two_inputs_same_name": "both map to output",
    "same_input_twice": "both map to output",
    # A file where an output folder must be: before, every input failed alone on it, exit 1.
    "out_is_a_file": "clean.png cannot be made: {root}/clean.png is not a folder",
    "out_under_a_file": "out/deep and 1 more cannot be made: {root}/notes is not a folder",
    "out_through_a_symlink_loop": "out/deep and 1 more cannot be made: {root}/loop is not a folder",
    "default_out_is_a_file": "in_denoised/deep and 1 more cannot be made: {root}/in_denoised is not a folder",
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_outputs_refused(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, case: str) -> None:
    args = _unsafe_case(case, tmp_path, fmnist_test[0])
    before = snapshot(tmp_path)
    proc = run_cli(CLI, "--onnx", str(onnx_dir), *args)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to write" in proc.stderr and UNSAFE[case].format(root=tmp_path) in proc.stderr
    if UNSAFE[case] == "inside input folder":  # both results land there: one message names the folder once
        assert proc.stderr.count("inside input folder") == 1 and "and 1 more result(s)" in proc.stderr
    assert snapshot(tmp_path) == before  # nothing written anywhere


# ---------------------------------------------------------------------------------------------------------
# Model and argument errors: exit 2 before any work


@pytest.mark.parametrize(
    "case", ["missing", "text", "zero_bytes", "encoder", "folder_without_denoiser", "metadata_of_wrong_type"]
)
def test_bad_model_exits_2(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, case: str) -> None:
    save(tmp_path / "in" / "x.png", fmnist_test[0])
    model = tmp_path / "model.onnx"
    if case == "text":
        model.write_text("hello\n")
    elif case == "zero_bytes":
        model.write_bytes(b"")
    elif case == "encoder":
        model = onnx_dir / "encoder.onnx"
    elif case == "folder_without_denoiser":
        model = tmp_path / "in"
    elif case == "metadata_of_wrong_type":  # was an AttributeError traceback, exit 1
        onnx = pytest.importorskip("onnx")
        proto = onnx.load(str(onnx_dir / "denoiser.onnx"))
        next(p for p in proto.metadata_props if p.key == "ae_export.artifacts").value = '["encoder.onnx"]'
        onnx.save(proto, str(model))
    proc = run_cli(CLI, "--onnx", str(model), str(tmp_path / "in"))
    assert proc.returncode == 2, proc.stderr
    assert "cannot use model" in proc.stderr and str(model) in proc.stderr
    assert not (tmp_path / "in_denoised").exists()


def test_cuda_unavailable_exits_2(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA; the no-CUDA error cannot be exercised")
    save(tmp_path / "in" / "x.png", fmnist_test[0])
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "--provider", "cuda")
    assert proc.returncode == 2 and "CUDA execution provider not available" in proc.stderr
    assert not (tmp_path / "in_denoised").exists()


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--provider", "gpu"], "choose from 'auto', 'cpu', 'cuda'"),
        (["--size-mode", "crop"], "choose from 'exact', 'resize', 'tile'"),
        (["--cuda-conv-search", "fast"], "choose from 'heuristic', 'exhaustive', 'default'"),
        (["--batch-size", "0"], "positive integer"),
        (["--add-noise", "-1"], "number >= 0"),
        (["--add-noise", "nan"], "number >= 0"),
    ],
    ids=["provider", "size_mode", "conv_search", "batch_size", "negative_noise", "nan_noise"],
)
def test_bad_arguments_name_valid_choices(
    onnx_dir: Path, tmp_path: Path, args: list[str], pattern: str
) -> None:
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path), *args)
    assert proc.returncode == 2 and pattern in proc.stderr


def test_threads_help_says_what_it_controls() -> None:
    """--threads sets how many single-threaded sessions run slices of a batch (`OnnxModel`'s default
    parallel="sessions"), yet its help said "onnxruntime intra-op threads", the other design."""
    proc = run_cli(CLI, "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "intra-op" not in text
    assert "--threads THREADS CPU inference: this many single-threaded ONNX Runtime sessions" in text


def test_missing_input_exits_2(onnx_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "input not found" in proc.stderr


def test_quiet_and_no_progress_bar_off_terminal(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    save(tmp_path / "in" / "x.png", fmnist_test[0])
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"))
    assert proc.returncode == 0 and "\r" not in proc.stderr and "img/s" not in proc.stderr  # no tqdm bar
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "--quiet", "--overwrite")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_a_wrong_size_is_refused_from_the_header_before_decoding(onnx_dir: Path, tmp_path: Path) -> None:
    """Exact mode with the 28x28 model: a 64x48 PNG whose pixel data is garbage is refused for its size
    (read from the header), not as corrupt data, so its pixels were never decoded; with a correct header
    size the same garbage is reported as corrupt. Tile mode decodes it (and finds the garbage)."""
    for name, size in (("wide.png", (64, 48)), ("right.png", (28, 28))):
        buf = io.BytesIO()
        Image.fromarray(np.full(size[::-1], 128, np.uint8)).save(buf, format="PNG")
        data = buf.getvalue()
        idat = data.index(b"IDAT")
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data[: idat + 4] + b"\xff" * 40 + data[idat + 44 :])
    model = str(onnx_dir / "denoiser.onnx")
    proc = run_cli(CLI, "--onnx", model, str(tmp_path / "in"))
    assert proc.returncode == 1 and "0 done, 2 failed" in proc.stderr, proc.stderr
    lines = {line.split(": ", 2)[1]: line for line in proc.stderr.splitlines() if ".png: " in line}
    assert (
        "image is 64x48 (width x height) but the model takes only 28x28"
        in lines[str(tmp_path / "in" / "wide.png")]
    )
    assert "corrupt or truncated" in lines[str(tmp_path / "in" / "right.png")]
    proc = run_cli(
        CLI, "--onnx", model, str(tmp_path / "in"), "--size-mode", "tile", "-o", str(tmp_path / "t")
    )
    assert proc.returncode == 1 and proc.stderr.count("corrupt or truncated") == 2, proc.stderr


def test_a_header_refusal_names_the_size_as_shown(onnx_dir: Path, tmp_path: Path) -> None:
    """A 40x30 image stored with EXIF orientation 6 shows as 30x40: the refusal says so (read from the
    header, it once said the stored 40x30), for JPEG and for PNG; without the tag, 40x30."""
    exif = Image.Exif()
    exif[0x0112] = 6
    image = Image.fromarray(np.full((30, 40), 90, np.uint8))
    (tmp_path / "in").mkdir()
    image.save(tmp_path / "in" / "rot6.png", exif=exif.tobytes())
    image.save(tmp_path / "in" / "rot6.jpg", exif=exif.tobytes())
    image.save(tmp_path / "in" / "plain.png")
    proc = run_cli(CLI, "--onnx", str(onnx_dir / "denoiser.onnx"), str(tmp_path / "in"))
    assert proc.returncode == 1, proc.stderr
    for name, shown in (("rot6.png", "30x40"), ("rot6.jpg", "30x40"), ("plain.png", "40x30")):
        line = next(x for x in proc.stderr.splitlines() if f"{name}: " in x)
        assert f"image is {shown} (width x height)" in line, line


def test_tile_mode_keeps_size_and_content(onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path) -> None:
    """A 56x80 mosaic: tile mode keeps the size and the picture (a 4-dim-latent autoencoder of centred
    28x28 objects does not beat the noise on arbitrary crops, so no PSNR claim is made here)."""
    clean = np.block([[fmnist_test[3 * r + c] for c in range(3)] for r in range(2)])[:, :80]  # (56, 80)
    save(tmp_path / "in" / "mosaic.png", noisy_u8(clean))
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "--size-mode", "tile")
    assert proc.returncode == 0, proc.stderr
    out = read(tmp_path / "in_denoised" / "mosaic.png")
    assert out.shape == clean.shape
    assert np.corrcoef(out.ravel(), clean.ravel())[0, 1] > 0.5


# ---------------------------------------------------------------------------------------------------------
# runtimes.images: loading every kind of file, and the size fitting


def _rgba() -> Image.Image:
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 128
    rgba[:, :14, 3] = 0
    return Image.fromarray(rgba)


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(np.where(np.arange(28)[None, :] < 14, 0, 1).astype(np.uint8).repeat(28, 0))
    image = image.convert("P")
    image.putpalette([255, 255, 255, 100, 100, 100] + [0] * 762)
    image.info["transparency"] = 0  # index 0 (white) is transparent
    return image


def _expected_composite() -> np.ndarray:
    expected = np.full((28, 28), (200 * 128 + 127) // 255, np.uint8)
    expected[:, :14] = 0  # fully transparent onto black
    return expected


GRADIENT = np.tile(np.arange(0, 252, 9, dtype=np.uint8), (28, 1))  # (28, 28)


FORMATS = {
    "png_l": ("x.png", lambda: Image.fromarray(GRADIENT), {}, GRADIENT, 0),
    "png_16bit": ("x.png", lambda: Image.fromarray(GRADIENT.astype(np.uint16) * 257), {}, GRADIENT, 0),
    "png_rgba": ("x.png", _rgba, {}, _expected_composite(), 0),
    "png_la": ("x.png", lambda: _rgba().convert("LA"), {}, _expected_composite(), 1),
    "png_palette_transparency": (
        "x.png", _palette_with_transparency, {"transparency": 0},
        np.where(np.arange(28)[None, :] < 14, 0, 100).astype(np.uint8).repeat(28, 0), 0,
    ),
    "jpeg": ("x.jpg", lambda: Image.fromarray(GRADIENT), {"quality": 95}, GRADIENT, 4),
    "bmp": ("x.bmp", lambda: Image.fromarray(GRADIENT), {}, GRADIENT, 0),
    "gif": ("x.gif", lambda: Image.fromarray(GRADIENT), {}, GRADIENT, 0),
    "tiff": ("x.tiff", lambda: Image.fromarray(GRADIENT), {}, GRADIENT, 0),
    "webp_lossless": (
        "x.webp", lambda: Image.fromarray(GRADIENT).convert("RGB"), {"lossless": True}, GRADIENT, 1,
    ),
    "pgm": ("x.pgm", lambda: Image.fromarray(GRADIENT), {}, GRADIENT, 0),
    "ppm_rgb": ("x.ppm", lambda: Image.fromarray(np.stack([GRADIENT] * 3, -1)), {}, GRADIENT, 0),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_load_formats_as_gray8(tmp_path: Path, case: str) -> None:
    name, make, save_kwargs, expected, tolerance = FORMATS[case]
    path = tmp_path / name
    make().save(path, **save_kwargs)
    gray = load_gray8(path)
    assert gray.dtype == np.uint8 and gray.shape == expected.shape
    np.testing.assert_allclose(gray.astype(int), expected.astype(int), atol=tolerance)


RGB = np.stack([GRADIENT, GRADIENT[::-1], np.full((28, 28), 77, np.uint8)], axis=-1)  # (28, 28, 3)
HALF_ALPHA = np.where(np.arange(28)[None, :] < 14, 0, 128).astype(np.uint8).repeat(28, 0)  # (28, 28)
RGB_ON_BLACK = ((RGB.astype(int) * HALF_ALPHA[..., None].astype(int) + 127) // 255).astype(np.uint8)


COLOUR = {  # name: (file, make image, save kwargs, expected load_image8, tolerance)
    "png_rgb": ("x.png", lambda: Image.fromarray(RGB), {}, RGB, 0),
    "png_rgba": ("x.png", lambda: Image.fromarray(np.dstack([RGB, HALF_ALPHA]), "RGBA"), {}, RGB_ON_BLACK, 0),
    "palette": ("x.png", lambda: Image.fromarray(RGB).quantize(64), {}, None, 0),
    "cmyk_jpeg": ("x.jpg", lambda: Image.fromarray(RGB).convert("CMYK"), {"quality": 95}, RGB, 12),
    "webp_lossless": ("x.webp", lambda: Image.fromarray(RGB), {"lossless": True}, RGB, 0),
    "gray_as_rgb": ("x.png", lambda: Image.fromarray(np.dstack([GRADIENT] * 3)), {}, GRADIENT, 0),
    "gray_l": ("x.png", lambda: Image.fromarray(GRADIENT), {}, GRADIENT, 0),
    "gray_16bit": ("x.png", lambda: Image.fromarray(GRADIENT.astype(np.uint16) * 257), {}, GRADIENT, 0),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(COLOUR))
def test_load_image8_keeps_colour_and_gives_gray_as_gray(tmp_path: Path, case: str) -> None:
    name, make, save_kwargs, expected, tolerance = COLOUR[case]
    image = make()
    path = tmp_path / name
    image.save(path, **save_kwargs)
    loaded = load_image8(path)
    if expected is None:  # a palette image: whatever its palette holds, in RGB
        expected = np.asarray(image.convert("RGB"))
    assert loaded.dtype == np.uint8 and loaded.shape == expected.shape
    np.testing.assert_allclose(loaded.astype(int), expected.astype(int), atol=tolerance)
    if loaded.ndim == 2:  # grayscale files load exactly as load_gray8 loads them
        np.testing.assert_array_equal(loaded, load_gray8(path))


def test_rgb_samples_round_trip_and_png(tmp_path: Path) -> None:
    samples, plan = to_model(RGB, None)  # any-size model: one sample per channel
    assert samples.shape == (3, 1, 28, 28) and plan.count == 3
    np.testing.assert_array_equal(samples[1, 0], GRADIENT[::-1] / np.float32(255))
    np.testing.assert_array_equal(from_model(samples, plan), RGB)
    save_png(tmp_path / "c.png", RGB)
    with Image.open(tmp_path / "c.png") as written:
        assert written.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(written), RGB)
    with pytest.raises(ValueError, match="any-size models only"):
        to_model(RGB, (28, 28))  # a fixed-size model is given grayscale
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\) uint8"):
        save_png(tmp_path / "d.png", np.zeros((4, 4, 4), np.uint8))


def test_exif_orientation_applied(tmp_path: Path) -> None:
    wide = np.zeros((10, 20), np.uint8)
    wide[:, :5] = 255  # bright left edge
    image = Image.fromarray(wide)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    gray = load_gray8(tmp_path / "r.jpg")
    assert gray.shape == (20, 10)  # upright: portrait
    assert gray[:5].mean() > 200 and gray[-5:].mean() < 50  # the left edge is now on top


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp", ".tiff"])
def test_multi_frame_refused(tmp_path: Path, suffix: str) -> None:
    """Animations and multi-page files: denoising frame 0 alone would lose the others without a word."""
    path = tmp_path / f"x{suffix}"
    frames = [Image.fromarray(np.full((28, 28), level, np.uint8)) for level in (0, 120, 240)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(BadImageError, match="holds 3 frames"):
        load_gray8(path)


def test_camera_mpo_reads_its_primary_image(tmp_path: Path) -> None:
    """A camera JPEG with an MPO preview is one photograph: frame 0 is it, so it is not refused."""
    path = tmp_path / "camera.jpg"
    primary, preview = Image.fromarray(GRADIENT), Image.fromarray(np.zeros((28, 28), np.uint8))
    primary.save(path, format="MPO", save_all=True, append_images=[preview], quality=95)
    with Image.open(path) as image:
        assert image.format == "MPO" and image.n_frames == 2  # the case under test
    np.testing.assert_allclose(load_gray8(path).astype(int), GRADIENT.astype(int), atol=4)


def test_find_images_recursive_and_filtered(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "sub/c.tif", "sub/deeper/d.webp", "notes.txt", "e.pgm", ".hidden/f.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "missing")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)  # not followed: no cycle
    (tmp_path / ".DS_Store").write_bytes(b"")
    ignored: list[Path] = []
    links: list[Path] = []
    found = find_images(tmp_path, on_ignored=ignored.append, on_folder_link=links.append)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == sorted(
        [".hidden/f.png", "a.png", "b.JPG", "e.pgm", "link.png", "sub/c.tif", "sub/deeper/d.webp"]
    )
    assert ignored == [tmp_path / "notes.txt"]  # hidden files are not reported
    assert links == [tmp_path / "loop"]  # not followed, but handed on to be reported


@pytest.mark.parametrize("given", ["parent", "link"])
def test_symlinked_folder_is_named_not_dropped(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, given: str
) -> None:
    """A symbolic link to a folder inside an input folder is not followed, and the run says so, naming
    it; the link given as an input is denoised. Before, its images were left out without a word."""
    save(tmp_path / "in" / "own.png", fmnist_test[0])
    save(tmp_path / "elsewhere" / "linked.png", fmnist_test[1])
    (tmp_path / "in" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    source = tmp_path / "in" if given == "parent" else tmp_path / "in" / "more"
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(source), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    outputs = sorted(p.name for p in (tmp_path / "out").rglob("*.png"))
    if given == "parent":
        assert outputs == ["own.png"] and "1 done" in proc.stderr
        assert f"1 symbolic link(s) to folders not followed: {tmp_path / 'in' / 'more'}" in proc.stderr
    else:
        assert outputs == ["linked.png"] and "not followed" not in proc.stderr


def test_bad_image_error_carries_path_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"")
    with pytest.raises(BadImageError) as info:
        load_gray8(path)
    assert info.value.path == path and info.value.reason == "empty file (0 bytes)"
    assert isinstance(info.value, ValueError)


def test_bomb_guard_runs_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    with pytest.raises(BadImageError, match="300x200 = 60000 pixels exceeds the limit of 50000"):
        load_gray8(path, max_pixels=50_000)
    assert load_gray8(path, max_pixels=60_000).shape == (200, 300)


@pytest.mark.parametrize("size", [(28, 28), (1, 1), (5, 90), (57, 43), (100, 100)])
def test_tiles_reassemble_exactly(size: tuple[int, int]) -> None:
    """Identity model: blending the unchanged tiles reproduces the image (the window sums to 1)."""
    image = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    samples, plan = to_model(image, (28, 28), "tile")
    assert samples.shape[1:] == (1, 28, 28) and samples.dtype == np.float32
    np.testing.assert_array_equal(from_model(samples, plan), image)


@pytest.mark.parametrize("size", [(28, 28), (56, 84), (20, 10)])
def test_resize_round_trip_shape(size: tuple[int, int]) -> None:
    image = np.full(size, 128, np.uint8)
    samples, plan = to_model(image, (28, 28), "resize")
    assert samples.shape == (1, 1, 28, 28)
    restored = from_model(samples, plan)
    assert restored.shape == size and np.abs(restored.astype(int) - 128).max() <= 1


def test_plan_rejects_missing_input(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="input not found"):
        plan_jobs([tmp_path / "nope"])


@pytest.mark.parametrize("kind", [str, Path])
@pytest.mark.parametrize("what", ["folder", "file"])
def test_plan_takes_one_path_as_one_input(tmp_path: Path, kind: type, what: str) -> None:
    """A string is a sequence too: plan_jobs("photos") planned each letter as an input ("input not found:
    p, h, o, ..."), and a Path was a TypeError traceback ('PosixPath' object is not iterable)."""
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "in" / "a.png")
    source = tmp_path / "in" if what == "folder" else tmp_path / "in" / "a.png"
    plan = plan_jobs(kind(source), kind(tmp_path / "out"))
    assert [(job.source, job.output) for job in plan.jobs] == [
        (tmp_path / "in" / "a.png", tmp_path / "out" / "a.png")
    ]
    assert plan.jobs == plan_jobs([source], tmp_path / "out").jobs


@pytest.mark.parametrize("unlisted", [1, 2])
def test_summary_counts_the_input_folders_that_could_not_be_listed(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, unlisted: int
) -> None:
    """A folder under an input whose path is past PATH_MAX (4096 bytes) cannot be listed: it was named on
    stderr and the run exited 1, but the summary read '1 done, 0 failed, 0 skipped', accounting for
    nothing that went wrong."""
    inputs = tmp_path / "in"
    save(inputs / "good.png", fmnist_test[0])
    for branch in range(unlisted):
        fd = os.open(inputs, os.O_RDONLY)
        try:
            for depth in range(17):  # 17 x 251 bytes: past PATH_MAX, made one level at a time
                name = f"{branch}{'d' * 249}" if depth == 0 else "d" * 250
                os.mkdir(name, dir_fd=fd)
                fd, old = os.open(name, os.O_RDONLY, dir_fd=fd), fd
                os.close(old)
            with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as handle:
                Image.fromarray(fmnist_test[1]).save(handle, format="PNG")
        finally:
            os.close(fd)
    proc = run_cli(CLI, "--onnx", str(onnx_dir / "denoiser.onnx"), str(inputs), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("cannot list folder") == unlisted, proc.stderr
    assert f"1 done, 0 failed, 0 skipped, {unlisted} folder(s) not listed in " in proc.stderr, proc.stderr


def test_file_names_with_a_newline_or_bytes_that_are_not_utf8_are_named_on_one_line(
    onnx_dir: Path, tmp_path: Path
) -> None:
    """A newline in a name split the error over two lines (a log reader sees half a path per line), and
    a name that is not UTF-8 was printed as bad\\udcff.png: escapes now, one line per failed file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad\nname.png").write_text("junk")
    (src / os.fsdecode(b"bad\xff.png")).write_text("junk")
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(src), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1 and "0 done, 2 failed" in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(f"{src}/bad\\nname.png: " in line and "image" in line for line in lines), proc.stderr
    assert any(f"{src}/bad\\xff.png: " in line for line in lines), proc.stderr
