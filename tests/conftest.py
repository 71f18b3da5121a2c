"""Shared fixtures: tiny randomly initialised models of every family (no downloads)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from focusvit.backbones import adapt
from focusvit.backbones.tiny import TINY_MODELS, build_tiny

TRANSFORMER_MODELS = [name for name in TINY_MODELS if name != "timm-cnn"]
VIT_MODELS = [name for name in TRANSFORMER_MODELS if "swin" not in name]
SWIN_MODELS = [name for name in TRANSFORMER_MODELS if "swin" in name]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def fort_study():
    """``benchmarks/fort_study.py`` as a module (``benchmarks`` is not a package; the script
    imports only the library, :mod:`focusvit.runs.study`)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fort_study.py"
    spec = importlib.util.spec_from_file_location("fort_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fewshot_bench():
    """``benchmarks/fewshot.py`` as a module (``benchmarks`` is not a package; registered in
    ``sys.modules`` while used, as its dataclasses need)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot.py"
    spec = importlib.util.spec_from_file_location("fewshot_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_adapter(name: str, num_classes: int = 5):
    return adapt(build_tiny(name, num_classes=num_classes), name=f"tiny:{name}")


def input_for(adapter, batch: int = 2, size=None) -> torch.Tensor:
    h, w = size or adapter.data_config["input_size"][1:]
    return torch.randn(batch, 3, h, w)
