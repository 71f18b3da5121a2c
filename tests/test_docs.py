"""The documentation site stays true: its Python blocks run, it builds strictly, and nothing in
the repository points at a file outside it.

Every ```python block of every ``docs/**/*.md`` page runs with the machinery and rules of
``tests/test_readme.py`` (read its docstring): blocks in page order, one shared namespace per
``##`` section of a page, each section in its own temporary working directory, ``# needs:``
blocks skipped (or run on a :data:`~test_readme.STAND_INS` stand-in), blocks that take more than
a few seconds listed in :data:`SLOW` with the reason. Test ids are ``<page>::<heading>-<n>``.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing from the navigation
or a docstring the API pages cannot render.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import Block, SectionState, _slug, extract_blocks, run_block

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

#: "<page>::<block id>" -> reason, for blocks too slow for the default run
SLOW: dict[str, str] = {
    "recipes.md::choosing-on-validation-classes-1": (
        "selects alpha by fine-tuning 4 candidates on 2 validation episodes, then evaluates: "
        "about 70 s on 2 shared cores"
    ),
    "concepts/runs.md::many-tasks-1": (
        "fine-tunes LoRA on 2 episodes twice (with and without the loss) and fits a solver: "
        "about 30 s on 2 shared cores"
    ),
    "concepts/runs.md::fast-evaluation-1": (
        "fine-tunes two LoRA methods and a solver on 2 episodes: about 15 s on 2 shared cores"
    ),
    "getting-started.md::fine-tune-on-one-few-shot-task-1": (
        "the README's few-shot block again (LoRA with the loss on the offline DINOv2, which the "
        "default run already covers): about 40 s on 2 shared cores"
    ),
    "baselines.md::training-and-evaluating-1": (
        "trains CAN for 10 episodes and evaluates transductively: about 10 s on 2 shared cores"
    ),
}


def _page(path: Path) -> str:
    return path.relative_to(DOCS).as_posix()


BLOCKS: dict[str, list[Block]] = {
    _page(path): extract_blocks(path.read_text(encoding="utf-8")) for path in PAGES
}
_STATES: dict[tuple[str, str], SectionState] = {}


def _params():
    for page, blocks in BLOCKS.items():
        for block in blocks:
            key = f"{page}::{block.id}"
            marks = [pytest.mark.slow] if key in SLOW else []
            yield pytest.param(page, block, id=key, marks=marks)


@pytest.fixture(autouse=True)
def _quiet_environment(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize(("page", "block"), _params())
def test_docs_block(page: str, block: Block, tmp_path_factory: pytest.TempPathFactory) -> None:
    state = _STATES.get((page, block.section))
    if state is None:
        name = _slug(f"{page} {block.section}")[:60]
        state = _STATES[(page, block.section)] = SectionState(tmp_path_factory.mktemp(name))
    run_block(block, BLOCKS[page], state, f"docs/{page}")


def test_docs_pages_and_slow_list() -> None:
    keys = [f"{page}::{b.id}" for page, blocks in BLOCKS.items() for b in blocks]
    assert len(set(keys)) == len(keys), f"duplicate block ids: {keys}"
    assert set(SLOW) <= set(keys), (
        f"SLOW names blocks that no longer exist: {set(SLOW) - set(keys)}"
    )
    assert "families.md" in BLOCKS, "docs/families.md (generated) must stay at that path"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if (
        importlib.util.find_spec("mkdocs") is None
        or importlib.util.find_spec("mkdocstrings") is None
    ):
        pytest.skip("mkdocs / mkdocstrings not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    )


def test_readme_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in ("docs/getting-started.md", "docs/concepts/loss.md", "docs/study.md"):
        assert f"]({target}" in readme, f"README.md should link to {target}"


def test_no_tracked_file_mentions_the_private_design_notes() -> None:
    name = "DESIGN" + ".md"  # spelled in two parts so this file does not match itself
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    offenders = []
    for relative in filter(None, tracked):
        path = ROOT / relative
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if name in text:
            offenders.append(relative)
    assert not offenders, f"{len(offenders)} tracked files mention {name}: {offenders[:20]}"
