"""mkdocs hook: let mkdocstrings find the ``focusvit`` sub-packages.

The repository keeps each stage in a top-level folder (``backbones/``, ``finetune/``, ...) that
``[tool.setuptools.package-dir]`` in ``pyproject.toml`` maps into the ``focusvit`` namespace.
griffe (the loader behind mkdocstrings) looks packages up by folder, so it would only find
``focusvit/``. This hook builds a temporary tree of symbolic links shaped like the installed
package (``focusvit/backbones -> ../backbones``, ...) from that table and points the Python
handler at it. Nothing in the repository is changed.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the 'tomli' package (dev extra)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_tree(root: Path = ROOT) -> Path:
    """A temporary directory holding ``focusvit/`` laid out as the installed package."""
    table = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir = table["tool"]["setuptools"]["package-dir"]
    base = Path(tempfile.mkdtemp(prefix="focusvit-docs-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    top = base / "focusvit"
    top.mkdir()
    for entry in (root / package_dir.get("focusvit", "focusvit")).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == "focusvit" and not (top / parts[1]).exists():
            (top / parts[1]).symlink_to(root / folder)
    return base


@event_priority(100)  # before mkdocstrings creates its Python handler
def on_config(config, **kwargs):
    plugin = config.plugins["mkdocstrings"]
    python = plugin.config.handlers.setdefault("python", {})
    python["paths"] = [str(package_tree()), *python.get("paths", [])]
    return config
