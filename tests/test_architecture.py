"""Architecture rule (docs/families.md): ``focusvit.backbones`` is the only place that knows
timm / Hugging Face internals. No module outside ``backbones/`` (and the tests and benchmarks)
may import ``timm`` or ``transformers`` or any of their submodules; what those modules need
comes from ``focusvit.backbones`` (adapters, ``load_backbone``, ``is_timm_model``,
``suggest_model_names``, ``imagenet_class_names``, ``adapter.reset_head`` ...).

The check reads the source with :mod:`ast` (nothing is imported), so it also sees imports inside
functions, ``TYPE_CHECKING`` blocks and ``importlib.import_module("timm...")`` calls.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from conftest import LIBRARY_FOLDERS

ROOT = Path(__file__).resolve().parents[1]
SCANNED = tuple(folder for folder in LIBRARY_FOLDERS if folder != "backbones")
FORBIDDEN = ("timm", "transformers")


def _forbidden(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in FORBIDDEN


def forbidden_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, statement)`` of every import of timm / transformers (or a submodule) in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _forbidden(node.module):
                names = ", ".join(a.name for a in node.names)
                found.append((node.lineno, f"from {node.module} import {names}"))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _forbidden(first.value)
            ):
                found.append((node.lineno, f"{name}({first.value!r})"))
    return sorted(found)


def scanned_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        files += [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def offenders() -> dict[str, list[tuple[int, str]]]:
    out = {}
    for path in scanned_files():
        hits = forbidden_imports(path)
        if hits:
            out[path.relative_to(ROOT).as_posix()] = hits
    return out


def test_the_scan_covers_the_packages():
    files = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    for folder in SCANNED:
        assert any(f.startswith(f"{folder}/") for f in files), folder
    assert not any(f.startswith(("backbones/", "tests/", "benchmarks/")) for f in files)


def test_only_backbones_import_timm_or_transformers():
    found = offenders()
    report = "\n".join(
        f"  {path}:{line}: {statement}" for path, hits in found.items() for line, statement in hits
    )
    assert not found, (
        "only focusvit.backbones may import timm / transformers; use the adapter API or a "
        f"focusvit.backbones helper instead:\n{report}"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import timm\n", [(1, "import timm")]),
        ("import os, transformers.models.vit as v\n", [(1, "import transformers.models.vit")]),
        ("def f():\n    from timm.data import ImageNetInfo\n", [(2, "from timm.data import ImageNetInfo")]),
        ("import importlib\nimportlib.import_module('transformers')\n", [(2, "import_module('transformers')")]),
        ("from . import timm\nfrom .timm_vit import x\nimport timmy\nfrom focusvit import timm\n", []),
        ("x = 'import timm'  # only a string\n", []),
    ],
)  # fmt: skip
def test_the_scan_finds_every_import_form(tmp_path, source, expected):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert forbidden_imports(path) == expected


# ----------------------------------------------------------------------------- deliberate errors
LIBRARY = LIBRARY_FOLDERS


def plain_value_errors(path: Path) -> list[int]:
    """Lines of ``raise ValueError(...)`` in a file (a deliberate error must be a
    ``FocusVitError`` subclass, e.g. ``ConfigError``, itself a ``ValueError``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", None) == "ValueError"
    ]


def test_library_code_raises_no_plain_value_error():
    """Issue 32: every deliberate error is a FocusVitError, so the CLIs print it as one line
    and ``except focusvit.FocusVitError`` catches every refusal of the library."""
    found = {
        str(path.relative_to(ROOT)): lines
        for folder in LIBRARY
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (lines := plain_value_errors(path))
    }
    assert not found, f"raise ConfigError (or another FocusVitError) instead: {found}"


def test_the_check_sees_a_plain_value_error(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("def f(x):\n    if x:\n        raise ValueError('bad')\n")
    assert plain_value_errors(path) == [3]


def test_every_package_folder_is_listed_in_pyproject():
    """A non-editable install ships only the packages pyproject lists: a new sub-package (e.g.
    ``finetune/tuners/``) missing there imports in the tests but not for users."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: name for name, folder in setuptools["package-dir"].items()}
    missing = []
    for folder, name in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            package = ".".join((name, *relative))
            if "__pycache__" not in relative and package not in setuptools["packages"]:
                missing.append(package)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
