"""Every ```python block of README.md runs, so the README cannot rot.

Blocks are executed in README order with one shared namespace per top-level (``##``) section:
a block may use what an earlier block of the same section defined (as a reader following the
section would), never what another section defined. Each section runs in its own temporary
working directory, so files a block writes (``grid.png``, ``runs/*.jsonl``) land there.

A block whose first line is ``# needs: WHAT`` (e.g. ``# needs: hub`` for a model-hub download)
is skipped with that reason; later blocks of its section must not depend on it. When WHAT is
the user's own data and starts with a key of :data:`STAND_INS` (``your dataset``), the test
writes a small stand-in of that data into the working directory and runs the block. Every other
block must run offline, on the offline weights or tiny models, and in a few seconds; a block
that cannot is listed in :data:`SLOW` with the reason (run by ``make test-all``). A block that
raises fails its test (and every later block of its section fails with a pointer to it).

Test ids are ``<heading>-<n>``: the slug of the nearest heading above the block and the
block's number under that heading.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: block id -> reason, for blocks too slow for the default run (``-m "not slow"``)
SLOW: dict[str, str] = {}


def _mask_dataset(root: Path) -> None:
    """``images/<class>/<i>.png`` and their ``masks/<class>/<i>.png``: 2 classes x 4 images,
    a coloured square (the object) on grey."""
    from PIL import Image, ImageDraw

    for label, (name, colour) in enumerate((("red", (200, 40, 40)), ("blue", (40, 40, 200)))):
        for i in range(4):
            box = (8 + 6 * i, 10 + 4 * label, 40 + 6 * i, 42 + 4 * label)
            image = Image.new("RGB", (80, 64), (120, 120, 120))
            ImageDraw.Draw(image).rectangle(box, fill=colour)
            mask = Image.new("L", (80, 64), 0)
            ImageDraw.Draw(mask).rectangle(box, fill=255)
            for folder, picture in (("images", image), ("masks", mask)):
                (root / folder / name).mkdir(parents=True, exist_ok=True)
                picture.save(root / folder / name / f"{i}.png")


#: start of a ``# needs:`` reason -> writes a stand-in of that data into the working directory
STAND_INS: dict[str, Callable[[Path], None]] = {"your dataset": _mask_dataset}


@dataclass(frozen=True)
class Block:
    id: str
    section: str  # the enclosing ``##`` heading (the namespace shared by its blocks)
    index: int  # position among the section's blocks
    code: str
    line: int  # 1-based line of the opening fence in the Markdown file
    needs: str | None  # "# needs: ..." reason, or None


def _slug(heading: str) -> str:
    words = re.findall(r"[a-z0-9]+", heading.lower())
    return "-".join(words) or "top"


def extract_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text (indented ones included, dedented)."""
    blocks: list[Block] = []
    section = heading = "top"
    per_heading: dict[str, int] = {}
    per_section: dict[str, int] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            language = stripped[3:].strip().lower()
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"README line {start + 1}: code fence is never closed")
            if language in ("python", "py"):
                code = textwrap.dedent("\n".join(body)) + "\n"
                first = code.lstrip().splitlines()[0] if code.strip() else ""
                match = re.match(r"#\s*needs:\s*(.+)", first)
                per_heading[heading] = per_heading.get(heading, 0) + 1
                per_section[section] = per_section.get(section, 0) + 1
                blocks.append(
                    Block(
                        id=f"{_slug(heading)}-{per_heading[heading]}",
                        section=section,
                        index=per_section[section] - 1,
                        code=code,
                        line=start + 1,
                        needs=match.group(1).strip() if match else None,
                    )
                )
        elif match := re.match(r"(#{1,6})\s+(.*)", lines[i]):
            heading = match.group(2).strip()
            if len(match.group(1)) <= 2:
                section = heading
        i += 1
    return blocks


@dataclass
class SectionState:
    """The shared namespace of one ``##`` section and how far it has run."""

    workdir: Path
    namespace: dict[str, Any] = field(default_factory=dict)
    done: int = 0  # blocks run (or skipped) so far
    failed: str | None = None  # id of the block that raised


def run_block(
    block: Block,
    blocks: list[Block],
    state: SectionState,
    path: str,
    stand_ins: Mapping[str, Callable[[Path], None]] = STAND_INS,
) -> None:
    """Run ``block`` after any earlier blocks of its section that have not run yet.

    Raises whatever the block raises; ``pytest.skip`` for a ``# needs:`` block without a
    stand-in.
    """
    section = [b for b in blocks if b.section == block.section]
    for earlier in section[state.done : block.index + 1]:
        if state.failed is not None:
            pytest.fail(
                f"{earlier.id}: an earlier block of section {block.section!r} failed "
                f"({state.failed}); fix that one first",
                pytrace=False,
            )
        state.done = earlier.index + 1
        stand_in = None
        if earlier.needs is not None:
            stand_in = next((f for k, f in stand_ins.items() if earlier.needs.startswith(k)), None)
            if stand_in is None:
                if earlier is block:
                    pytest.skip(f"needs: {earlier.needs}")
                continue
        old = Path.cwd()
        os.chdir(state.workdir)
        try:
            if stand_in is not None:
                stand_in(state.workdir)
            compiled = compile(earlier.code, f"{path}:{earlier.line} [{earlier.id}]", "exec")
            exec(compiled, state.namespace)
        except BaseException:
            state.failed = earlier.id
            raise
        finally:
            os.chdir(old)


BLOCKS = extract_blocks(README.read_text(encoding="utf-8"))
_STATES: dict[str, SectionState] = {}


def _params():
    for block in BLOCKS:
        marks = [pytest.mark.slow] if block.id in SLOW else []
        yield pytest.param(block, id=block.id, marks=marks)


@pytest.fixture(autouse=True)
def _quiet_environment(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("block", _params())
def test_readme_block(block: Block, tmp_path_factory: pytest.TempPathFactory) -> None:
    state = _STATES.get(block.section)
    if state is None:
        state = _STATES[block.section] = SectionState(tmp_path_factory.mktemp(_slug(block.section)))
    run_block(block, BLOCKS, state, README.name)


def test_readme_has_blocks() -> None:
    ids = [b.id for b in BLOCKS]
    assert len(ids) >= 2, "no ```python blocks found in README.md"
    assert len(set(ids)) == len(ids), f"duplicate block ids: {ids}"
    assert set(SLOW) <= set(ids), f"SLOW names blocks that no longer exist: {set(SLOW) - set(ids)}"


# ------------------------------------------------------------------------ the harness itself
SAMPLE = """
# title

## Good

```python
value = 1
```

### Sub

```python
assert value == 1   # shares the section's namespace
```

## Hub

```python
# needs: hub
import focusvit
focusvit.load_backbone("hf:facebook/dinov2-small")
```

## Broken

- a list item

  ```python
  undefined_name + 1
  ```

```python
after = 2
```

## Separate

```python
assert "value" not in globals()
```

```python
# needs: your photos (photos/)
assert open("photos/one.txt").read() == "stand-in"
```
"""


def _write_photo(root: Path) -> None:
    (root / "photos").mkdir()
    (root / "photos" / "one.txt").write_text("stand-in")


def _run_sample(tmp_path: Path) -> dict[str, str]:
    """Run every block of SAMPLE through the harness; id -> outcome."""
    blocks = extract_blocks(SAMPLE)
    states: dict[str, SectionState] = {}
    outcomes = {}
    for block in blocks:
        state = states.setdefault(block.section, SectionState(tmp_path))
        try:
            run_block(block, blocks, state, "SAMPLE.md", {"your photos": _write_photo})
            outcomes[block.id] = "passed"
        except pytest.skip.Exception as skip:
            outcomes[block.id] = f"skipped: {skip.msg}"
        except pytest.fail.Exception as failure:
            outcomes[block.id] = f"failed: {failure.msg}"
        except Exception as error:
            outcomes[block.id] = f"raised {type(error).__name__}"
    return outcomes


def test_harness_extracts_and_names_blocks() -> None:
    blocks = extract_blocks(SAMPLE)
    assert [b.id for b in blocks] == [
        "good-1",
        "sub-1",
        "hub-1",
        "broken-1",
        "broken-2",
        "separate-1",
        "separate-2",
    ]
    sections = ["Good", "Good", "Hub", "Broken", "Broken", "Separate", "Separate"]
    assert [b.section for b in blocks] == sections
    assert blocks[3].code == "undefined_name + 1\n"  # indented block, dedented
    assert blocks[2].needs == "hub"


def test_harness_fails_broken_blocks_and_skips_marked_ones(tmp_path: Path) -> None:
    outcomes = _run_sample(tmp_path)
    assert outcomes["good-1"] == outcomes["sub-1"] == "passed"
    assert outcomes["hub-1"] == "skipped: needs: hub"
    assert outcomes["broken-1"] == "raised NameError"  # a failure, not a skip
    assert outcomes["broken-2"].startswith("failed:") and "broken-1" in outcomes["broken-2"]
    assert outcomes["separate-1"] == "passed"
    assert outcomes["separate-2"] == "passed"  # its data written by the stand-in, then run


def test_harness_refuses_unclosed_fence() -> None:
    with pytest.raises(ValueError, match="never closed"):
        extract_blocks("```python\nx = 1\n")
