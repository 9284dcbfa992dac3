"""Training on real data: it learns to denoise, is reproducible, resumes exactly, writes its artifacts."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests.helpers import REPO, run_cli, running_cli, stop_cli, tiny_photo_config, train_tiny_photo_model
from train.checkpoint import CheckpointError, load_checkpoint
from train.data import fixed_noisy, to_float, write_idx
from train.loop import TrainConfig, TrainingInterrupted, _epoch_generator, evaluate, train
from train.metrics import mse_per_image, psnr_per_image, ssim_per_image
from train.model import DenoisingAutoencoder, ModelConfig
from train.photo_train import PhotoTrainConfig, train_photos

TINY = {"limit": 512, "batch_size": 64, "device": "cpu"}


def test_short_training_denoises(trained_checkpoint, fmnist) -> None:
    """The briefly trained model's output is closer to the clean image than its noisy input is."""
    checkpoint = load_checkpoint(trained_checkpoint)
    model = checkpoint.build_model()
    clean_u8 = fmnist.val.images[:1000]
    clean = to_float(clean_u8)
    noisy = fixed_noisy(clean_u8, 0.3, seed=99)
    with torch.no_grad():
        denoised = model(noisy)
    assert float(mse_per_image(denoised, clean).mean()) < float(mse_per_image(noisy, clean).mean())
    assert float(psnr_per_image(denoised, clean).mean()) > float(psnr_per_image(noisy, clean).mean()) + 1.0
    last = checkpoint.metrics[-1]
    assert last["psnr"] > last["noisy_psnr"] and last["mse"] < checkpoint.metrics[0]["train_loss"]


def test_metrics_match_scikit_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=gen)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    ours_ssim = ssim_per_image(x, y).numpy()
    ours_psnr = psnr_per_image(x, y).numpy()
    for i in range(6):
        a, b = x[i, 0].numpy(), y[i, 0].numpy()
        assert ours_ssim[i] == pytest.approx(structural_similarity(a, b, data_range=1.0), abs=1e-5)
        assert ours_psnr[i] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-3)


def test_same_seed_same_losses(fmnist, tmp_path) -> None:
    runs = []
    for name in ("a", "b"):
        ckpt = train(
            TrainConfig(out=str(tmp_path / name), epochs=1, **TINY),
            quiet=True,
            dataset=fmnist,
            log=lambda _: None,
        )
        runs.append(ckpt)
    assert runs[0].metrics[0]["train_loss"] == runs[1].metrics[0]["train_loss"]
    for key, value in runs[0].model_state.items():
        assert torch.equal(value, runs[1].model_state[key]), key
    other = train(
        TrainConfig(out=str(tmp_path / "c"), epochs=1, seed=1, **TINY),
        quiet=True,
        dataset=fmnist,
        log=lambda _: None,
    )
    assert other.metrics[0]["train_loss"] != runs[0].metrics[0]["train_loss"]


def test_resume_equals_uninterrupted(fmnist, tmp_path) -> None:
    straight = train(
        TrainConfig(out=str(tmp_path / "s"), epochs=2, **TINY), quiet=True, dataset=fmnist, log=lambda _: None
    )
    train(
        TrainConfig(out=str(tmp_path / "r"), epochs=1, **TINY), quiet=True, dataset=fmnist, log=lambda _: None
    )
    resumed = train(
        TrainConfig(out=str(tmp_path / "r"), epochs=2, **TINY),
        resume=True,
        quiet=True,
        dataset=fmnist,
        log=lambda _: None,
    )
    assert resumed.epoch == 2 and [m["epoch"] for m in resumed.metrics] == [1, 2]
    assert resumed.metrics[1]["train_loss"] == straight.metrics[1]["train_loss"]
    for key, value in straight.model_state.items():
        assert torch.equal(value, resumed.model_state[key]), key


def test_noisy_target_reproduces_seed_recipe(fmnist, tmp_path) -> None:
    """--target noisy (the lecture's slide) trains against the noisy input: with the same seed, init and noise
    draws, only the target differs, so the losses must differ from the clean-target run's."""
    kwargs = {"epochs": 1, **TINY}
    noisy = train(
        TrainConfig(out=str(tmp_path / "n"), target="noisy", **kwargs),
        quiet=True,
        dataset=fmnist,
        log=lambda _: None,
    )
    clean = train(
        TrainConfig(out=str(tmp_path / "c"), target="clean", **kwargs),
        quiet=True,
        dataset=fmnist,
        log=lambda _: None,
    )
    assert noisy.train_config["target"] == "noisy"
    assert noisy.metrics[0]["train_loss"] != clean.metrics[0]["train_loss"]


def test_evaluate_reports_noisy_baseline(trained_checkpoint, fmnist) -> None:
    model = load_checkpoint(trained_checkpoint).build_model()
    scores = evaluate(model, fmnist.val.head(500), 0.3, 1234, torch.device("cpu"))
    assert 12.0 < scores["noisy_psnr"] < 13.6  # the noise model's own PSNR on Fashion-MNIST, ~12.8 dB
    assert scores["psnr"] > scores["noisy_psnr"]
    assert 0.0 < scores["ssim"] <= 1.0


@pytest.mark.slow
def test_ae_train_cli_writes_loadable_artifacts_and_resumes(tmp_path) -> None:
    out = tmp_path / "run"
    done = run_cli("train.cli", "--limit", "300", "--epochs", "1", "--batch-size", "50", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "EPOCH 1/1 train loss" in done.stdout and "val psnr" in done.stdout
    raw = torch.load(out / "checkpoint.pt", weights_only=True)  # the plain loader, no helper
    assert raw["epoch"] == 1 and raw["model_config"] == ModelConfig().to_dict()  # the lecture shape
    assert raw["train_config"]["preset"] == "lecture"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1]
    assert metrics["config"]["limit"] == 300
    with Image.open(out / "samples.png") as im:
        assert im.mode == "L" and im.width > im.height > 3 * 28
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp"))

    again = run_cli("train.cli", "--out", str(out), "--epochs", "2", "--resume")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout and "EPOCH 2/2" in again.stdout
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_ae_train_cli_bad_input_exits_2(tmp_path) -> None:
    done = run_cli(
        "train.cli", "--dataset", "folder", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2
    assert "no readable images" in done.stderr
    done = run_cli("train.cli", "--resume", "--out", str(tmp_path / "none"))
    assert done.returncode == 2 and "checkpoint not found" in done.stderr
    done = run_cli("train.cli", "--loss", "huber")
    assert done.returncode == 2 and "mse" in done.stderr and "bce" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume"], "checkpoint not found"),
        (["--dataset", "folder", "--data-dir", "{empty}"], "no readable images"),
        (["--lr", "1e6", "--limit", "256", "--batch-size", "64", "--epochs", "1"], "this run wrote nothing"),
        (["--preset", "photo", "--data-dir", "{empty}"], "ae-train: error:"),
        pytest.param(
            ["--device", "cuda"],
            "torch sees no CUDA device",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="the refusal needs a machine without CUDA"
            ),
        ),
    ],
    ids=["resume-without-checkpoint", "no-images", "diverged", "photo-no-images", "cuda-without-cuda"],
)
def test_a_refused_run_leaves_no_out_folder_behind(tmp_path, args, message) -> None:
    """A run refused before it saved anything left an empty --out folder (it was made up front, so that a
    file at --out failed at once); the folder is now made with the first checkpoint, and a file at --out
    still fails before any work, naming it."""
    (tmp_path / "empty").mkdir()
    out = tmp_path / "new" / "run"
    args = [a.format(empty=tmp_path / "empty") for a in args]
    done = run_cli("train.cli", *args, "--out", str(out), "--quiet")
    assert done.returncode in (2, 3) and message in done.stderr, done.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("preset", ["lecture", "photo"])
def test_a_file_at_out_is_refused_before_any_work(tmp_path, preset) -> None:
    (tmp_path / "taken").write_text("keep")
    out = tmp_path / "taken" / "run"
    done = run_cli("train.cli", "--preset", preset, "--out", str(out), "--quiet", timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"ae-train: error: --out {out} must be a folder (an existing one or a new path): "
        f"{tmp_path / 'taken'} is not one"
    )
    assert (tmp_path / "taken").read_text() == "keep"


def test_samples_and_metrics_values_are_finite(trained_checkpoint) -> None:
    metrics = json.loads((trained_checkpoint.parent / "metrics.json").read_text())
    for row in metrics["epochs"]:
        assert all(np.isfinite(v) for v in row.values() if isinstance(v, float))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_run_leaves_last_epoch_loadable(tmp_path, sig) -> None:
    """Stop ae-train mid-epoch: checkpoint.pt still loads and holds the last whole epoch."""
    out = tmp_path / "run"
    args = ["--limit", "2000", "--batch-size", "16", "--epochs", "50", "--out", str(out), "--quiet"]
    with running_cli("train.cli", *args) as proc:
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "metrics.json").exists(), "no epoch finished in time"
        time.sleep(0.5)  # well inside the next epoch
        stderr = stop_cli(proc, sig).stderr
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert f"interrupted: {out / 'checkpoint.pt'} holds epoch {checkpoint.epoch}" in stderr
    assert 1 <= checkpoint.epoch < 50
    assert [row["epoch"] for row in checkpoint.metrics] == list(range(1, checkpoint.epoch + 1))
    checkpoint.build_model()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 64.5, "bad train_config: batch_size must be int; got float 64.5"),
        ("lr", "abc", "bad train_config: lr must be float; got str 'abc'"),
        ("lr", float("nan"), "bad train_config: lr must be a finite number; got nan"),
        ("seed", "x", "bad train_config: seed must be int; got str 'x'"),
        ("limit", 2.5, "bad train_config: limit must be int | None; got float 2.5"),
        ("data_dir", 5, "train_config data_dir must be a string; got 5"),
    ],
)
def test_resume_from_a_train_config_of_wrong_types_names_the_field(
    trained_checkpoint, tmp_path, field, value, message
) -> None:
    """A checkpoint's train_config comes back as whatever it holds: a float batch size or a string lr
    ended `ae-train --resume` in a TypeError traceback from deep in torch (exit 1)."""
    raw = torch.load(trained_checkpoint, weights_only=True)
    raw["train_config"][field] = value
    (tmp_path / "run").mkdir()
    torch.save(raw, tmp_path / "run" / "checkpoint.pt")
    done = run_cli("train.cli", "--resume", "--epochs", "99", "--quiet", "--out", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"ae-train: error: {tmp_path / 'run' / 'checkpoint.pt'}: {message}")


@pytest.mark.parametrize(
    "flag, value",
    [("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--weight-decay", "-1"), ("--weight-decay", "nan")],
)
@pytest.mark.parametrize("preset", ["lecture", "photo"])
def test_learning_rate_and_weight_decay_are_finite_numbers(tmp_path, flag, value, preset) -> None:
    """`--lr inf` trained until it 'diverged' (exit 3) and `--lr nan` was torch's 'Invalid learning rate:
    nan', naming no flag; `--lr 0` trained nothing."""
    done = run_cli("train.cli", "--preset", preset, flag, value, "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and f"argument {flag}: expected a finite number" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_without_epochs_finishes_the_interrupted_runs_own_count(tmp_path, schedule) -> None:
    """A 12-epoch run stopped early and resumed with `--resume` alone goes on to its 12 epochs, on its own
    schedule: --epochs fell back to the preset's 10, so the run ended at epoch 10 (exit 0, nothing said)
    and a cosine run was switched to a 10-epoch schedule."""
    out = tmp_path / "run"
    args = ["--limit", "512", "--batch-size", "64", "--schedule", schedule, "--out", str(out), "--quiet"]
    with running_cli("train.cli", "--epochs", "12", *args) as proc:
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stderr = stop_cli(proc).stderr
    stopped = load_checkpoint(out / "checkpoint.pt").epoch
    assert proc.returncode == 130 and 1 <= stopped < 10, stderr
    done = run_cli("train.cli", "--resume", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "checkpoint.pt").epoch == 12
    assert "EPOCH 12/12" in done.stdout and "planned over" not in done.stdout


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_diverging_run_is_an_error_line_not_a_traceback(tmp_path, loss) -> None:
    """lr 1e6 gives a NaN loss (MSE) or NaN outputs (which BCE would reject with an unrelated message):
    exit 3 with one line saying so, and nothing of the diverged epoch on disk."""
    out = tmp_path / "run"
    args = ["--lr", "1e6", "--loss", loss, "--epochs", "2", "--limit", "256", "--batch-size", "64"]
    done = run_cli("train.cli", *args, "--out", str(out), "--quiet")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        "ae-train: error: training diverged: epoch 1" in done.stderr
        and "this run wrote nothing" in done.stderr
    )
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()


def test_diverging_photo_run_is_an_error_line_and_writes_nothing(tmp_path) -> None:
    """The photo loop stops at the first NaN step (before any evaluation): the tiny model in-process, then
    the CLI's default model (20 steps of 2 crops), which must end in the error line, exit 3."""
    tiny = {"crop": 32, "fcn_width": 4, "fcn_levels": 2, "fcn_depth": 1, "eval_every": 20}
    config = PhotoTrainConfig(steps=20, batch_size=2, lr=1e6, out=str(tmp_path / "a"), **tiny)
    with pytest.raises(FloatingPointError, match="training loss is nan.*this run wrote nothing"):
        train_photos(config, log=lambda _: None)
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    args = ("--preset", "photo", "--lr", "1e6", "--steps", "20", "--batch-size", "2")
    done = run_cli("train.cli", *args, "--out", str(tmp_path / "b"))
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "ae-train: error: training diverged: step" in done.stderr


@pytest.mark.parametrize("earlier", [False, True], ids=["empty-out", "earlier-run-in-out"])
def test_photo_run_stopped_before_its_first_save_says_it_wrote_nothing(tmp_path, earlier) -> None:
    """Ctrl-C before the photo loop's first evaluation (step 400): exit 130 and the line says this run
    wrote nothing (and that an earlier run's checkpoint.pt is untouched), not that the file holds a step."""
    out = tmp_path / "photo"
    before = train_tiny_photo_model(out).read_bytes() if earlier else None
    with running_cli("train.cli", "--preset", "photo", "--batch-size", "1", "--out", str(out)) as proc:
        assert "training arithmetic" in proc.stdout.readline()  # the steps have begun
        done = stop_cli(proc)
    # 130, or death by SIGINT, which a shell reports as the same 130: about 1 run in 10 of the photo loop,
    # after this very message and `return 130`, ends that way (inside torch's exit; the lecture loop never).
    assert done.returncode in (130, -signal.SIGINT), done.stderr
    assert "interrupted: this run wrote nothing" in done.stderr
    if earlier:
        assert f"({out / 'checkpoint.pt'} is an earlier run's, untouched)" in done.stderr
        assert (out / "checkpoint.pt").read_bytes() == before
    else:
        assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("stop_at", ["training arithmetic", "STEP 3/"], ids=["before-first-save", "after-it"])
def test_interrupted_photo_run_says_which_step_checkpoint_holds(tmp_path, stop_at) -> None:
    """Ctrl-C (here raised from the log line) comes out as TrainingInterrupted naming the saved step."""
    config = tiny_photo_config(tmp_path, steps=6)

    def log(line: str) -> None:
        if line.startswith(stop_at):
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        train_photos(config, log=log)
    if stop_at.startswith("STEP"):
        assert str(caught.value) == f"{tmp_path / 'checkpoint.pt'} holds step 3"
        assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == 3
    else:
        assert str(caught.value) == "this run wrote nothing"


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_photo_run_takes_device_as_the_lecture_loop_does(tmp_path, device) -> None:
    """--device auto is CUDA where torch sees it (the photo loop once trained on the CPU whatever the
    machine had), and cuda without CUDA is ae-train's own one-line refusal naming the choices (it was
    torch's 'Found no NVIDIA driver on your system')."""
    out = tmp_path / "photo"
    args = ("--preset", "photo", "--steps", "1", "--batch-size", "1", "--device", device)
    done = run_cli("train.cli", *args, "--out", str(out))
    if device == "cuda" and not torch.cuda.is_available():
        assert done.returncode == 2, done.stderr
        assert (
            "ae-train: error: --device cuda: torch sees no CUDA device; valid choices: auto, cpu, cuda"
            in (done.stderr)
        )
        assert not (out / "checkpoint.pt").exists()
        return
    assert done.returncode == 0, done.stderr
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_checkpoint(out / "checkpoint.pt").train_config["device"] == expected


def test_photo_preset_refuses_flags_it_would_ignore(tmp_path) -> None:
    out = tmp_path / "photo"
    flags = ["--noise-factor", "0.05", "--loss", "bce", "--target", "noisy", "--width", "4", "--limit", "10"]
    done = run_cli("train.cli", "--preset", "photo", "--steps", "2", *flags, "--out", str(out))
    assert done.returncode == 2, done.stderr
    for flag in flags[::2]:
        assert f"{flag}: " in done.stderr, flag
    assert not out.exists()  # refused before anything ran
    done = run_cli("train.cli", "--dataset", "photos", "--preset", "quality", "--out", str(out))
    assert done.returncode == 2 and "--preset quality does not apply" in done.stderr
    done = run_cli("train.cli", "--steps", "5", "--precision", "bf16", "--out", str(out))
    assert done.returncode == 2 and "--steps: " in done.stderr and "--precision: " in done.stderr
    assert not out.exists()


def test_resume_refuses_flags_that_differ_from_the_checkpoint(fmnist, tmp_path) -> None:
    out = tmp_path / "run"
    config = TrainConfig(out=str(out), epochs=1, latent_dim=7, hidden_dim=5, loss="bce", **TINY)
    train(config, quiet=True, dataset=fmnist, log=lambda _: None)
    before = (out / "checkpoint.pt").read_bytes()
    other = ("--latent-dim", "16", "--loss", "mse", "--lr", "0.5")
    done = run_cli("train.cli", "--resume", "--epochs", "2", *other, "--out", str(out), "--quiet")
    assert done.returncode == 2, done.stderr
    for named in (
        "--latent-dim 16 (the checkpoint has 7)",
        "--loss 'mse' (the checkpoint has 'bce')",
        "--lr 0.5",
    ):
        assert named in done.stderr, named
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing trained
    same = ["--latent-dim", "7", "--loss", "bce", "--lr", "0.001", "--limit", "512"]  # the checkpoint's own
    done = run_cli("train.cli", "--resume", "--epochs", "2", *same, "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "checkpoint.pt").epoch == 2


MALFORMED = {
    "model-list": ({"model": [1, 2]}, "'model' is a list"),
    "model-none": ({"model": None}, "'model' is a NoneType"),
    "model-not-tensors": ({"model": {"encoder.cnn.0.weight": 1.0}}, "not a state dict"),
    "metrics-dict": ({"metrics": {"a": 1}}, "'metrics' is a dict"),
    "metrics-rows": ({"metrics": [1, 2]}, "'metrics' must be a list of dicts"),
    "epoch-str": ({"epoch": "ten"}, "'epoch' is a str"),
    "epoch-negative": ({"epoch": -1}, "'epoch' is a int"),
    "train-config-list": ({"train_config": ["lr"]}, "'train_config' is a list"),
    "model-config-str": ({"model_config": "lecture"}, "'model_config' is a str"),
}


@pytest.mark.parametrize(("fields", "message"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_checkpoint_fields_are_checkpoint_errors(tmp_path, fields, message) -> None:
    path = tmp_path / "bad.pt"
    good = {"format": 1, "model_config": {}, "model": DenoisingAutoencoder().state_dict()}
    torch.save({**good, **fields}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize(("height", "width"), [(5, 6), (1, 300), (300, 1), (6, 100)])
def test_photo_folder_with_an_image_smaller_than_ssims_window_trains(tmp_path, height, width) -> None:
    """A folder of photographs holding an icon or a 1-pixel strip: the run trained every step, then its
    first validation failed inside torch's pooling (naming no file, writing nothing). The image is now
    skipped with its size and why, and the run ends with a checkpoint."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.camera()[:128, :160]).save(folder / "camera.png")
    Image.fromarray(data.coins()[:height, :width]).save(folder / "icon.png")  # both sides: a tiny folder
    out = tmp_path / "run"
    done = run_cli(
        "train.cli", "--preset", "photo", "--data-dir", str(folder), "--steps", "1", "--batch-size", "2",
        "--threads", "1", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"icon.png: {width}x{height} pixels, smaller than the 7x7 window" in done.stdout
    dataset = json.loads((out / "metrics.json").read_text())["dataset"]
    assert dataset["train"] == dataset["val"] == ["camera.png"] and dataset["skipped_files"] == 1


@pytest.mark.parametrize("run", [("--preset", "photo"), ("--dataset", "folder")], ids=["photo", "folder"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_max_pixels_under_one_is_refused_naming_the_flag(tmp_path, run, value) -> None:
    """0 ended in "max_pixels must be >= 1; got 0", naming the config's field rather than the flag typed.
    The folder does not exist: the flag is refused before any data is looked for."""
    args = (
        *run,
        "--data-dir",
        str(tmp_path / "missing"),
        "--max-pixels",
        value,
        "--out",
        str(tmp_path / "o"),
    )
    refused = run_cli("train.cli", *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    error = f"ae-train: error: argument --max-pixels: expected a positive integer, got {value}"
    assert refused.stderr.strip().splitlines()[-1] == error, refused.stderr
    assert not (tmp_path / "o").exists()


def test_photo_folder_takes_photographs_past_the_default_guard_with_max_pixels(tmp_path) -> None:
    """The guard's message says to raise the limit with --max-pixels, which ae-train did not have: a
    folder of large photographs could not be trained on. The limit is a photo run's flag now, and the
    export's int8 gate reads the same photographs as the training run did."""
    from skimage import data

    from ae_export.export import export_all
    from ae_export.photo_variants import export_photo_int8

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.camera()[:400, :500]).save(folder / "large.png")  # 200,000 pixels
    Image.fromarray(data.coins()[:100, :120]).save(folder / "small.png")
    base = ("train.cli", "--preset", "photo", "--data-dir", str(folder), "--steps", "1", "--batch-size", "2")
    low = run_cli(*base, "--threads", "1", "--max-pixels", "100000", "--out", str(tmp_path / "low"))
    assert low.returncode == 0, low.stderr
    assert "large.png: decompression bomb guard" in low.stdout and "--max-pixels" in low.stdout
    high = run_cli(*base, "--threads", "1", "--max-pixels", "300000", "--out", str(tmp_path / "high"))
    assert high.returncode == 0, high.stderr
    dataset = json.loads((tmp_path / "high" / "metrics.json").read_text())["dataset"]
    assert sorted(dataset["train"] + dataset["val"]) >= ["large.png", "small.png"]
    for flags, named in (
        (("--preset", "photo"), "--max-pixels applies to --data-dir's images"),
        (("--preset", "lecture"), "--max-pixels applies to image files: --dataset folder or --preset photo"),
    ):
        refused = run_cli("train.cli", *flags, "--max-pixels", "300000", "--out", str(tmp_path / "no"))
        assert refused.returncode == 2 and named in refused.stderr, refused.stderr
    assert not (tmp_path / "no").exists()

    # The export reads the photographs with the training run's limit: here one that leaves large.png
    # out, so the int8 gate judges on small.png alone (with the default limit it judged on large.png).
    tiny = {"crop": 32, "fcn_width": 4, "fcn_levels": 2, "fcn_depth": 1, "eval_every": 2}
    config = PhotoTrainConfig(
        data_dir=str(folder), max_pixels=100000, steps=2, batch_size=2, out=str(tmp_path / "t"), **tiny
    )
    checkpoint = train_photos(config, log=lambda _: None)
    assert checkpoint.dataset["val"] == ["small.png"]
    export_all(checkpoint, tmp_path / "onnx", log=lambda _: None)
    result = export_photo_int8(checkpoint, tmp_path / "onnx", budget_db=100.0, log=lambda _: None)
    assert result.rejected is None and result.worst_photo["photo"] == "small.png"


def test_photo_validation_runs_a_large_photograph_as_halo_tiles_with_the_whole_images_scores() -> None:
    """Validation ran every photograph whole: ~0.65 GB per megapixel for the default model, so a 24 MP
    photograph of a --data-dir folder needed ~16 GB at every validation. Large ones now run as halo tiles
    of at most EVAL_TILE_PIXELS, and the scores are the whole image's."""
    from skimage import data

    from train.fcn import denoise_any_size
    from train.model import build_model
    from train.photo_train import evaluate_photos
    from train.photos import PhotoSet, noisy_8bit

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="fcn", fcn_width=4, fcn_levels=2, fcn_depth=1)).eval()
    photo = np.asarray(Image.fromarray(data.camera()).resize((1000, 1100), Image.Resampling.BICUBIC))
    seen: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[-2] * args[0].shape[-1])
    )
    scores = evaluate_photos(model, PhotoSet("t", ("large",), (photo,)), 25 / 255, 7, torch.device("cpu"))
    hook.remove()
    assert len(seen) > 1 and max(seen) < photo.size  # tiles (of at most 1 MP), never the whole photograph

    clean = torch.from_numpy(photo.astype(np.float32) / 255.0)[None, None]
    noisy = torch.from_numpy(noisy_8bit(clean.numpy(), 25 / 255, np.random.default_rng(7)))
    with torch.no_grad():
        whole = torch.round(denoise_any_size(model, noisy) * 255.0) / 255.0  # (1, 1, 1100, 1000)
    assert scores["psnr"] == pytest.approx(float(psnr_per_image(whole, clean)[0]), abs=1e-4)
    assert scores["ssim"] == pytest.approx(float(ssim_per_image(whole, clean)[0]), abs=1e-5)


def test_lecture_folder_dataset_takes_images_past_the_guard_with_max_pixels(tmp_path) -> None:
    """The folder dataset's guard says to raise the limit with --max-pixels, but the lecture loop refused
    the flag as photo-only: a folder holding a large photograph could not be trained on whole. The flag
    now reaches the folder dataset and is recorded in the run's train_config."""
    from skimage import data

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(data.camera()[:400, :500]).save(folder / "large.png")  # 200,000 pixels
    for i in range(3):
        Image.fromarray(data.coins()[i * 28 : i * 28 + 28, :28]).save(folder / f"small{i}.png")
    base = ("train.cli", "--dataset", "folder", "--data-dir", str(folder), "--epochs", "1", "--quiet")
    low = run_cli(*base, "--max-pixels", "100000", "--out", str(tmp_path / "low"))
    assert low.returncode == 0, low.stderr
    assert "large.png: decompression bomb guard" in low.stdout and "--max-pixels" in low.stdout
    high = run_cli(*base, "--max-pixels", "300000", "--out", str(tmp_path / "high"))
    assert high.returncode == 0, high.stderr
    assert "large.png" not in high.stdout
    metrics = json.loads((tmp_path / "high" / "metrics.json").read_text())
    assert metrics["config"]["max_pixels"] == 300000
    assert metrics["dataset"]["train_size"] + metrics["dataset"]["val_size"] == 4


def test_photo_model_trained_on_a_relative_folder_exports_its_int8_twin_from_anywhere(tmp_path) -> None:
    """`ae-train --data-dir photos` recorded the folder as typed, so `ae-export` run from another folder
    wrote denoiser.onnx and then stopped at 'photos: not a folder'. The folder is recorded absolute now,
    and a folder that has since moved is named, with --data-dir, before the export replaces anything."""
    from skimage import data

    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    Image.fromarray(data.camera()[:96, :128]).save(work / "photos" / "a.png")
    Image.fromarray(data.coins()[:80, :96]).save(work / "photos" / "b.png")
    flags = (
        "--preset",
        "photo",
        "--data-dir",
        "photos",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--threads",
        "1",
    )
    trained = run_cli("train.cli", *flags, "--out", "run", cwd=work)
    assert trained.returncode == 0, trained.stderr
    checkpoint = str(work / "run" / "checkpoint.pt")
    export = ("ae_export.cli", "--checkpoint", checkpoint, "--no-parity", "--psnr-budget", "int8=100")
    done = run_cli(*export, "--out", str(tmp_path / "onnx"))  # from the repository, not from `work`
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "onnx" / "denoiser.int8.onnx").is_file()

    (work / "photos").rename(tmp_path / "moved")
    moved = run_cli(*export, "--out", str(tmp_path / "onnx2"))
    assert moved.returncode == 2 and "pass --data-dir DIR where they are now" in moved.stderr, moved.stderr
    assert str(work / "photos") in moved.stderr and not (tmp_path / "onnx2").exists()


def test_photo_crops_weigh_each_photograph_by_its_own_pixels_not_its_padding() -> None:
    """CropSampler promises every pixel equally likely, but weighed each photograph by its size after
    padding to the crop: a 16x16 thumbnail counted as 64x64, 16 times its pixels."""
    from train.photos import CropSampler, PhotoSet

    rng = np.random.default_rng(0)
    thumb, photo = rng.integers(0, 256, (16, 16), np.uint8), rng.integers(0, 256, (256, 256), np.uint8)
    sampler = CropSampler(PhotoSet("t", ("thumb", "photo"), (thumb, photo)), 64, rng)
    assert sampler.weights.tolist() == pytest.approx([256 / (256 + 65536), 65536 / (256 + 65536)])
    assert sampler.sample(4).shape == (4, 1, 64, 64)  # the thumbnail is still padded up to a crop


@pytest.mark.parametrize("epochs", ["2", "50"])
def test_resume_refuses_a_photo_checkpoint(tmp_path, epochs) -> None:
    """`ae-train --resume --out artifacts/photo` once printed 'already trained 3 epochs' and 'wrote
    checkpoint.pt' with exit 0 (--epochs below its step count) or 'unknown dataset photos' (above): the
    lecture loop read a photo checkpoint's steps as epochs. It is refused, naming the photo model."""
    ckpt = train_tiny_photo_model(tmp_path / "photo")
    before = ckpt.read_bytes()
    done = run_cli("train.cli", "--resume", "--epochs", epochs, "--out", str(ckpt.parent), "--quiet")
    assert done.returncode == 2, done.stderr
    assert "photo model's checkpoint (arch fcn, step 3)" in done.stderr and "--preset photo" in done.stderr
    assert "Traceback" not in done.stderr and "wrote" not in done.stdout
    assert ckpt.read_bytes() == before and not (ckpt.parent / "samples.png").exists()


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("when", ["in epoch 1", "in epoch 1, over an earlier run", "after epoch 1"])
def test_interrupt_says_what_checkpoint_holds(fmnist, tmp_path, when) -> None:
    """Ctrl-C in a fresh run's first epoch once printed 'checkpoint.pt holds the last whole epoch' where
    there was no checkpoint.pt, or only an earlier run's; the message names what is on disk."""
    out = tmp_path / "run"
    ckpt = out / "checkpoint.pt"
    if "earlier" in when:
        train(TrainConfig(out=str(out), epochs=1, **TINY), quiet=True, dataset=fmnist, log=lambda _: None)
    before = ckpt.read_bytes() if ckpt.exists() else None
    # In-epoch cases need an epoch that outlasts the 0.5 s timer (2,500 steps of 8 images); "after epoch 1"
    # only needs one whole epoch, so it trains a short one (a long one took 2 minutes beside another test).
    limit = 800 if when == "after epoch 1" else 20000
    config = TrainConfig(out=str(out), epochs=3, seed=5, limit=limit, batch_size=8, device="cpu")

    def log(line: str) -> None:
        if when == "after epoch 1" and line.startswith("EPOCH 1/"):
            raise KeyboardInterrupt

    # Adam's first construction in a process imports torch._dynamo (about a second): a Ctrl-C inside that
    # import would leave a half-imported module behind for every later test in this process (the order of
    # tests decides which one pays it), so it is paid here, before the timer is armed.
    importlib.import_module("torch._dynamo")
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        if when != "after epoch 1":
            signal.setitimer(signal.ITIMER_REAL, 0.5)  # before epoch 1 ends: 2,500 steps of 8 images
        with pytest.raises(TrainingInterrupted) as caught:
            train(config, quiet=True, dataset=fmnist, log=log)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    message = str(caught.value)
    if when == "after epoch 1":
        assert message == f"{ckpt} holds epoch 1" and load_checkpoint(ckpt).train_config["seed"] == 5
    elif before is None:
        assert message == "this run wrote nothing" and not ckpt.exists()
    else:
        assert message == f"this run wrote nothing ({ckpt} is an earlier run's, untouched)"
        assert ckpt.read_bytes() == before


def _stop_after_epoch_1(line: str) -> None:
    if line.startswith("EPOCH 1/"):
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("schedule", "planned", "resumed", "notice"),
    [("cosine", 1, 2, True), ("cosine", 2, 2, False), ("constant", 1, 2, False)],
    ids=["cosine, more epochs", "cosine, same epochs", "constant, more epochs"],
)
def test_resume_says_when_the_schedule_is_replanned(fmnist, tmp_path, schedule, planned, resumed, notice):
    """A cosine run resumed with another --epochs follows a schedule over the new count from the resumed
    epoch on (a jump in learning rate), which the loop's comment promised to log and did not."""
    config = TrainConfig(out=str(tmp_path), epochs=planned, schedule=schedule, **TINY)
    with contextlib.suppress(TrainingInterrupted):  # a run of `planned` epochs stopped after its first
        train(config, quiet=True, dataset=fmnist, log=_stop_after_epoch_1 if planned > 1 else lambda _: None)
    lines: list[str] = []
    resumed_config = TrainConfig(out=str(tmp_path), epochs=resumed, device="cpu")
    checkpoint = train(resumed_config, resume=True, quiet=True, dataset=fmnist, log=lines.append)
    assert checkpoint.epoch == resumed
    said = [line for line in lines if "learning-rate schedule was planned over" in line]
    assert bool(said) == notice, lines
    if notice:
        assert said[0].endswith(f"from epoch 2 it follows the {resumed}-epoch schedule, so the weights will "
                                f"differ from an uninterrupted {resumed}-epoch run")  # fmt: skip


@pytest.mark.parametrize(("moved_to", "count"), [("same data", 300), ("other data", 299)])
def test_resume_takes_the_data_from_another_data_dir(fmnist, tmp_path, moved_to, count) -> None:
    """A run whose data has moved could not be told where it is now (--data-dir refused as a recipe
    change). --data-dir may now change on resume; a folder whose splits differ in size from the
    checkpoint's is refused."""
    for where, n in (("data", 300), ("moved", count)):
        folder = tmp_path / "work" / where
        folder.mkdir(parents=True)
        write_idx(folder / "train-images-idx3-ubyte", fmnist.train.images[:n].numpy())
        write_idx(folder / "t10k-images-idx3-ubyte", fmnist.val.images[:100].numpy())
    out = tmp_path / "run"
    first = ("--dataset", "mnist", "--data-dir", "data", "--epochs", "1", "--batch-size", "64", "--quiet")
    done = run_cli("train.cli", *first, "--out", str(out), cwd=tmp_path / "work")
    assert done.returncode == 0, done.stderr
    (tmp_path / "work" / "data").rename(tmp_path / "work" / "gone")
    again = ("--resume", "--epochs", "2", "--out", str(out), "--quiet")
    done = run_cli("train.cli", *again, cwd=tmp_path)  # the recorded folder is gone
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'work' / 'data'}: no train-images-idx3-ubyte" in done.stderr, done.stderr
    done = run_cli("train.cli", *again, "--data-dir", str(tmp_path / "work" / "moved"), cwd=tmp_path)
    if moved_to == "same data":
        assert done.returncode == 0, done.stderr
        assert load_checkpoint(out / "checkpoint.pt").epoch == 2
    else:
        assert done.returncode == 2, done.stderr
        assert (
            "299 training and 100 test images, but" in done.stderr and "trained on 300 and 100" in done.stderr
        )
        assert load_checkpoint(out / "checkpoint.pt").epoch == 1


@pytest.mark.parametrize("dataset", ["mnist", "folder"])
def test_a_relative_data_dir_is_recorded_absolute_and_resumes_from_anywhere(
    fmnist, tmp_path, dataset
) -> None:
    """`--data-dir data` was recorded as 'data' (train_config and the dataset's source), so --resume, or
    ae-export reading the images for parity and the int8 calibration, from any other folder found no
    data there ('pass --data-dir'); the photo loop already recorded its folder absolute."""
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    if dataset == "mnist":
        write_idx(data / "train-images-idx3-ubyte", fmnist.train.images[:200].numpy())
        write_idx(data / "t10k-images-idx3-ubyte", fmnist.val.images[:50].numpy())
    else:
        for i in range(60):
            Image.fromarray(fmnist.train.images[i].numpy()).save(data / f"{i}.png")
    out = tmp_path / "run"
    first = ("--dataset", dataset, "--data-dir", "data", "--epochs", "1", "--batch-size", "32", "--quiet")
    done = run_cli("train.cli", *first, "--out", str(out), cwd=tmp_path / "work")
    assert done.returncode == 0, done.stderr
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint.train_config["data_dir"] == str(data)
    assert checkpoint.dataset["source"] == str(data)
    again = ("--resume", "--epochs", "2", "--out", str(out), "--quiet")
    done = run_cli("train.cli", *again, cwd=tmp_path)  # another folder, no --data-dir
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "checkpoint.pt").epoch == 2


@pytest.mark.parametrize("epochs", ["1", "2"])
def test_resume_already_at_epochs_writes_nothing_and_says_so(fmnist, tmp_path, epochs) -> None:
    """`ae-train --resume --epochs N` on a checkpoint already at N or more printed 'wrote checkpoint.pt
    (epoch ...), metrics.json, samples.png' though it wrote nothing; it says it is already trained."""
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), epochs=2, **TINY), quiet=True, dataset=fmnist, log=lambda _: None)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    done = run_cli("train.cli", "--resume", "--epochs", epochs, "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"already trained 2 epochs (>= --epochs {epochs})" in done.stdout
    assert "wrote" not in done.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_any_seed_trains_and_seeds_that_fitted_keep_their_streams(fmnist, tmp_path) -> None:
    """A 20-digit seed stopped the lecture loop with 'Overflow when unpacking long long' (its epoch
    generator is seeded with seed * 1_000_003 + epoch, beyond torch's int64 for seeds past ~9.2e12). Seeds
    are now reduced modulo 2**64 first, as torch itself does, so a seed that fitted keeps its stream."""
    for seed, epoch in ((0, 1), (7, 3), (-5, 2)):
        reference = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        assert torch.equal(
            torch.rand(8, generator=_epoch_generator(seed, epoch)), torch.rand(8, generator=reference)
        )
    out = tmp_path / "run"
    config = TrainConfig(out=str(out), epochs=1, seed=10**20 + 3, **TINY)
    checkpoint = train(config, quiet=True, dataset=fmnist, log=lambda _: None)
    assert checkpoint.epoch == 1 and np.isfinite(checkpoint.metrics[-1]["train_loss"])


@pytest.mark.parametrize("preset", ["lecture", "photo"])
def test_a_negative_seed_is_refused_naming_the_flag(tmp_path, preset) -> None:
    """--seed -1 ran the lecture loop but stopped the photo run with numpy's bare 'expected non-negative
    integer' (exit 2, no flag named); both now refuse it as ae-denoise does: an integer >= 0."""
    done = run_cli("train.cli", "--preset", preset, "--seed", "-1", "--out", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    assert "argument --seed: expected an integer >= 0, got -1" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "variables,lecture,photo",
    [
        (("TRAIN_ARGS=--epochs 3",), "--epochs 3", ""),
        (("PHOTO_TRAIN_ARGS=--steps 9",), "", "--steps 9"),
        (("TRAIN_ARGS=--epochs 3", "PHOTO_TRAIN_ARGS=--steps 9"), "--epochs 3", "--steps 9"),
    ],
)
def test_make_gives_the_lecture_and_photo_runs_their_own_flags(tmp_path, variables, lecture, photo) -> None:
    """The photo targets once took TRAIN_ARGS/EXPORT_ARGS too, so `make train photo TRAIN_ARGS="--epochs 3"`
    gave the photo run --epochs, which it refuses (exit 2): each model has its own variables now."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    art = tmp_path / "art"
    dry = subprocess.run(
        ["make", "-n", "-C", str(REPO), f"ART={art}", f"VENV={tmp_path / 'venv'}", "AE_NO_APT=1",
         "train", "photo", *variables, "EXPORT_ARGS=--variants none", "PHOTO_EXPORT_ARGS=--budget int8=0.5"],
        capture_output=True, text=True, env={**os.environ, "AE_NO_APT": "1"}, timeout=60,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    train_line = next(line for line in lines if f"ae-train --out {art} " in line + " ")
    photo_line = next(line for line in lines if "ae-train --preset photo" in line)
    photo_export = next(line for line in lines if f"--out {art}/photo/onnx" in line)
    assert train_line.split(f"--out {art}")[1].strip() == lecture
    assert photo_line.split(f"--out {art}/photo")[1].strip() == photo
    assert photo_export.endswith("--budget int8=0.5") and "--variants none" not in photo_export


COUNT_FLAGS = (
    "--epochs",
    "--batch-size",
    "--latent-dim",
    "--hidden-dim",
    "--width",
    "--steps",
    "--limit",
    "--threads",
)


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        *((flag, value, "a positive integer") for flag in COUNT_FLAGS for value in ("0", "-1")),
        ("--blocks", "-1", "an integer >= 0"),
    ],
)
def test_count_flags_are_refused_as_the_flags_own_error(capsys, flag: str, value: str, expected: str) -> None:
    """A count under its minimum reached the config and was refused naming fields the user never typed
    ("epochs, batch_size and latent_dim must be >= 1", "limit must be >= 1"), or, for --threads, by torch
    ("set_num_threads expects a positive integer"); now argparse names the flag, before any work."""
    from train.cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([flag, value])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"ae-train: error: argument {flag}: expected {expected}, got {value}"


def test_zero_blocks_is_a_valid_count() -> None:
    """--blocks counts residual blocks per stage: 0 (the lecture layout) stays valid."""
    from train.cli import build_parser

    assert build_parser().parse_args(["--blocks", "0"]).blocks == 0


def test_a_photo_run_into_a_lecture_runs_folder_leaves_no_sample_sheet_of_the_other_model(tmp_path) -> None:
    """checkpoint.pt and metrics.json were the photo run's, samples.png still the lecture run's: one
    folder holding files of two runs. The photo run's first save removes it (photo runs write none)."""
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), epochs=1, **TINY), quiet=True, log=lambda _: None)
    assert (out / "samples.png").exists()
    train_tiny_photo_model(out)
    assert not (out / "samples.png").exists() and (out / "checkpoint.pt").exists()
    assert load_checkpoint(out / "checkpoint.pt").model_config.arch == "fcn"
