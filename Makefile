# ae-export: two commands set everything up on a fresh machine.
#   make demo   train (if needed) -> export + parity -> denoise sample images with ae-denoise
#   make test   the test suite
# Files are real make targets: the ONNX export is rebuilt when the checkpoint is newer, the checkpoint is
# trained when missing (and resumed when a run make started was interrupted), the environment is installed
# when pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= train,dev,bench
ART ?= artifacts
CKPT := $(ART)/checkpoint.pt
ONNX := $(ART)/onnx
DENOISER := $(ONNX)/denoiser.onnx
DEMO := $(ART)/demo
DATA_DIR := /usr/share/datasets/fashion-mnist
DATA_PKG := dataset-fashion-mnist
# Extra flags: TRAIN_ARGS/EXPORT_ARGS for the lecture model's targets (train, export, demo, the presets'
# exports), PHOTO_TRAIN_ARGS/PHOTO_EXPORT_ARGS for the photo model's (photo, photo-bench): the two take
# different flags (--epochs vs --steps), so one never reaches the other's ae-train.
TRAIN_ARGS ?=
EXPORT_ARGS ?=
PHOTO_TRAIN_ARGS ?=
PHOTO_EXPORT_ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist): `auto` is one per physical core, at most TEST_MAX_WORKERS, since each
# worker trains and exports its own session fixtures; TEST_WORKERS=0 runs every test in one process.
TEST_WORKERS ?= auto
TEST_MAX_WORKERS ?= 4
XDIST := -n $(TEST_WORKERS) --maxprocesses $(TEST_MAX_WORKERS)
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
LINT_PATHS := ae_export train runtimes bench tests

PRESETS := lecture balanced quality
PRESET_DIR := $(ART)/presets
FRONTIER_ARGS ?=

.PHONY: setup setup-gpu data train export parity demo test test-fast bench frontier gpu-check lint clean photo photo-bench photo-picture

setup: $(STAMP) data

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

# CUDA provider: onnxruntime-gpu ships the same `onnxruntime` module, so swap rather than add.
setup-gpu: $(STAMP)
	$(BIN)/python -m pip uninstall --quiet -y onnxruntime
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS),gpu]'

# Fashion-MNIST from Debian's package where we may install it; otherwise say how to get it.
data:
	@if [ -d $(DATA_DIR) ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$${AE_NO_APT:-0}" != 1 ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  echo "installing $(DATA_PKG) (Fashion-MNIST idx files -> $(DATA_DIR))"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DATA_PKG) >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DATA_PKG) >/dev/null; } \
	  || echo "note: could not install $(DATA_PKG); ae-train will try torchvision's download or use --data-dir"; \
	else echo "note: $(DATA_DIR) absent; ae-train will try torchvision's download (or pass --data-dir)"; fi

# `make train` always trains (it is what the user asked for); the file target trains only when missing.
train: setup
	$(BIN)/ae-train --out $(ART) $(TRAIN_ARGS)

# A file target whose command may stop half-way and still leave the file: $(1) the target, $(2) the
# command. The target is marked unfinished ($(1).unfinished) until the command exits 0, and while the mark
# is there `$(call unfinished,TARGET)` makes the target out of date. For a checkpoint: ae-train keeps the
# last whole epoch on Ctrl-C, and `make demo` then finishes the run rather than exporting the epochs
# trained so far (the checkpoints are .PRECIOUS, below, or make would delete that file itself). For an
# export: ae-export exits 1 when a variant misses its quality budget but keeps denoiser.onnx, which made the
# next `make demo` take the failed export as done and exit 0.
unfinished = $(if $(wildcard $(1).unfinished),FORCE)
define until_done
@mkdir -p $(dir $(1)) && touch $(1).unfinished
$(2)
@rm -f $(1).unfinished
endef
# A checkpoint's recipe: $(1) the checkpoint, $(2) ae-train's flags, $(3) the flag that continues an
# interrupted run (--resume; empty where runs cannot resume: a photo run is a step budget and trains afresh).
train_checkpoint = $(call until_done,$(1),$(BIN)/ae-train $(2)$(if $(3),$(if $(call unfinished,$(1)),$(if $(wildcard $(1)), $(3)))))

$(CKPT): $(call unfinished,$(CKPT)) | setup
	$(call train_checkpoint,$(CKPT),--out $(ART) $(TRAIN_ARGS),--resume)

$(DENOISER): $(CKPT) $(call unfinished,$(DENOISER)) | setup
	$(call until_done,$(DENOISER),$(BIN)/ae-export --checkpoint $(CKPT) --out $(ONNX) $(EXPORT_ARGS))

# `make train export` exports the checkpoint just trained: a phony export always runs after its prerequisites.
# ae-export writes the fp32 files and, by default, the fp16/int8/.ort variants, the portable twins (for CUDA
# and OpenCV) and manifest.json; exit 1 if a variant missed its PSNR budget (EXPORT_ARGS="--variants none"
# for the fp32 files only).
export: setup $(CKPT)
	$(BIN)/ae-export --checkpoint $(CKPT) --out $(ONNX) $(EXPORT_ARGS)

parity: setup $(DENOISER)
	$(BIN)/ae-export parity --checkpoint $(CKPT) --onnx-dir $(ONNX)

demo: setup $(DENOISER)
	$(BIN)/python -m train.demo prepare --out $(DEMO)/clean --count 100
	$(BIN)/ae-denoise --onnx $(DENOISER) $(DEMO)/clean -o $(DEMO)/denoised --add-noise 0.3 --seed 0 --overwrite
	$(BIN)/python -m train.demo score --clean $(DEMO)/clean --denoised $(DEMO)/denoised --sheet $(DEMO)/demo.png

test: setup
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

bench: setup $(DENOISER)
	$(BIN)/ae-bench --checkpoint $(CKPT) --onnx-dir $(ONNX) --out $(ART)/bench.json

# The quality/cost frontier: train the presets that are missing (artifacts/presets/NAME/checkpoint.pt),
# export each (with parity), then measure them all, draw docs/frontier.png and refresh README's table.
# (Second expansion: a pattern rule's `unfinished` test needs the target's name, $$@.)
.SECONDEXPANSION:
$(PRESET_DIR)/%/checkpoint.pt: $$(call unfinished,$$@) | setup
	$(call train_checkpoint,$@,--preset $* --out $(PRESET_DIR)/$* --quiet,--resume)

$(PRESET_DIR)/%/onnx/denoiser.onnx: $(PRESET_DIR)/%/checkpoint.pt $$(call unfinished,$$@) | setup
	$(call until_done,$@,$(BIN)/ae-export --checkpoint $< --out $(PRESET_DIR)/$*/onnx $(EXPORT_ARGS))

.PRECIOUS: $(PRESET_DIR)/%/checkpoint.pt

frontier: setup $(foreach p,$(PRESETS),$(PRESET_DIR)/$(p)/onnx/denoiser.onnx)
	$(BIN)/python -m bench.frontier_cli --presets-dir $(PRESET_DIR) --presets $(subst $(eval) ,$(comma),$(PRESETS)) \
	  --out $(ART)/frontier --picture docs/frontier.png --readme README.md $(FRONTIER_ARGS)

# Every CUDA path (training, parity on CUDA, ae-denoise --provider cuda, the bench's CUDA rows, the photo
# model's CUDA path on a short model trained there, cuDNN's algorithm search, pytest -m gpu) in one run;
# report in $(ART)/gpu_check/. Without a GPU it says so and exits 0 (and
# trains or exports nothing); with one it first swaps in onnxruntime-gpu and brings the export up to date.
gpu-check: setup
	@if nvidia-smi -L >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory setup-gpu $(DENOISER); \
	fi
	$(BIN)/python -m ae_export.gpu_check --checkpoint $(CKPT) --onnx-dir $(ONNX) --out $(ART)/gpu_check

# Photographs: the fully convolutional denoiser (any size), trained on scikit-image's bundled photos.
PHOTO := $(ART)/photo
PHOTO_CKPT := $(PHOTO)/checkpoint.pt
PHOTO_DENOISER := $(PHOTO)/onnx/denoiser.onnx

$(PHOTO_CKPT): $(call unfinished,$(PHOTO_CKPT)) | setup
	$(call train_checkpoint,$(PHOTO_CKPT),--preset photo --out $(PHOTO) $(PHOTO_TRAIN_ARGS),)

.PRECIOUS: $(CKPT) $(PHOTO_CKPT)
FORCE:

# denoiser.onnx, and its int8 twin where it keeps its quality on the validation photographs (exit 1 if not).
$(PHOTO_DENOISER): $(PHOTO_CKPT) $(call unfinished,$(PHOTO_DENOISER)) | setup
	$(call until_done,$(PHOTO_DENOISER),$(BIN)/ae-export --checkpoint $(PHOTO_CKPT) --out $(PHOTO)/onnx $(PHOTO_EXPORT_ARGS))

photo: setup $(PHOTO_DENOISER)

# Quality table (ours vs NL-means vs BM3D at sigma 15, 25, 50) and the picture, in one run; then large
# photographs whole vs in halo tiles (time, peak memory).
photo-bench: setup $(PHOTO_DENOISER)
	$(BIN)/python -m bench.photo --onnx $(PHOTO)/onnx --out $(ART)/bench/photo.json --picture $(PHOTO)/photo.png
	$(BIN)/python -m bench.photo_tiles --onnx $(PHOTO)/onnx --out $(ART)/bench/photo_tiles.json

photo-picture: setup $(PHOTO_DENOISER)
	$(BIN)/python -m bench.photo --onnx $(PHOTO)/onnx --picture $(PHOTO)/photo.png --picture-only

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

clean:
	rm -rf $(ART) .pytest_cache
