# ae-export: two commands set everything up on a fresh machine.
#   make demo   train (if needed) -> export + parity -> denoise sample images with ae-denoise
#   make test   the test suite
# Every target that needs the environment depends on it, so each works from a fresh clone.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= train,dev,bench
ART ?= artifacts
CKPT := $(ART)/checkpoint.pt
ONNX := $(ART)/onnx
DEMO := $(ART)/demo
DATA_DIR := /usr/share/datasets/fashion-mnist
DATA_PKG := dataset-fashion-mnist
TRAIN_ARGS ?=
PYTEST_ARGS ?=
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup setup-gpu data train export parity demo test test-fast bench gpu-check lint clean

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

train: setup
	$(BIN)/ae-train --out $(ART) $(TRAIN_ARGS)

export: setup
	@test -f $(CKPT) || $(MAKE) --no-print-directory train
	$(BIN)/ae-export --checkpoint $(CKPT) --out $(ONNX)

parity: setup
	$(BIN)/ae-export parity --checkpoint $(CKPT) --onnx-dir $(ONNX)

demo: setup
	@test -f $(CKPT) || $(MAKE) --no-print-directory train
	@if [ ! -f $(ONNX)/denoiser.onnx ] || [ $(CKPT) -nt $(ONNX)/denoiser.onnx ]; then $(MAKE) --no-print-directory export; fi
	$(BIN)/python -m train.demo prepare --out $(DEMO)/clean --count 100
	$(BIN)/ae-denoise --onnx $(ONNX)/denoiser.onnx $(DEMO)/clean -o $(DEMO)/denoised --add-noise 0.3 --seed 0 --overwrite
	$(BIN)/python -m train.demo score --clean $(DEMO)/clean --denoised $(DEMO)/denoised --sheet $(DEMO)/demo.png

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	@test -f $(CKPT) || $(MAKE) --no-print-directory train
	@if [ ! -f $(ONNX)/denoiser.onnx ] || [ $(CKPT) -nt $(ONNX)/denoiser.onnx ]; then $(MAKE) --no-print-directory export; fi
	$(BIN)/ae-bench --checkpoint $(CKPT) --onnx-dir $(ONNX) --out $(ART)/bench.json

# Every CUDA path (training, parity on CUDA, ae-denoise --provider cuda, the bench's CUDA rows,
# pytest -m gpu) in one run; report in $(ART)/gpu_check/. Without a GPU it says so and exits 0.
gpu-check: setup
	@if nvidia-smi -L >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory setup-gpu; \
	  test -f $(CKPT) || $(MAKE) --no-print-directory train; \
	  if [ ! -f $(ONNX)/denoiser.onnx ] || [ $(CKPT) -nt $(ONNX)/denoiser.onnx ]; then $(MAKE) --no-print-directory export; fi; \
	fi
	$(BIN)/python -m ae_export.gpu_check --checkpoint $(CKPT) --onnx-dir $(ONNX) --out $(ART)/gpu_check

lint: setup
	$(BIN)/ruff check ae_export train runtimes tests
	$(BIN)/ruff format --check ae_export train runtimes tests

clean:
	rm -rf $(ART) .pytest_cache
