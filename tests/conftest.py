"""Shared fixtures: tiny randomly initialised models of every family (no downloads)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from focusvit.backbones import adapt
from focusvit.backbones.tiny import TINY_MODELS, build_tiny

ROOT = Path(__file__).resolve().parents[1]


def _library_folders() -> tuple[str, ...]:
    """The repository folders holding the package's Python code, as pyproject maps them
    (``package-dir``; the YAML-only ``configs`` left out), ``focusvit`` first."""
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    table = toml.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folders = table["tool"]["setuptools"]["package-dir"].values()
    return tuple(folder for folder in folders if folder != "configs")


#: every folder of library code, for the tests that scan the source (architecture rules)
LIBRARY_FOLDERS = _library_folders()

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


def benchmark_script(file: str, module_name: str) -> Iterator[ModuleType]:
    """``benchmarks/<file>`` as a module (``benchmarks`` is not a package), registered in
    ``sys.modules`` while used (the dataclasses of a script need it); for module fixtures."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / file
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def fort_study():
    """``benchmarks/fort_study.py`` as a module (it imports only the library)."""
    yield from benchmark_script("fort_study.py", "fort_study")


@pytest.fixture(scope="module")
def fewshot_bench():
    """``benchmarks/fewshot.py`` as a module."""
    yield from benchmark_script("fewshot.py", "fewshot_bench")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_adapter(name: str, num_classes: int = 5):
    return adapt(build_tiny(name, num_classes=num_classes), name=f"tiny:{name}")


def input_for(adapter, batch: int = 2, size=None) -> torch.Tensor:
    h, w = size or adapter.data_config["input_size"][1:]
    return torch.randn(batch, 3, h, w)
