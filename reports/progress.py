"""Progress bars of the report steps (``focusvit-explain``, the few-shot attention focus).

Bars go to stderr and are shown only when asked for (``progress=True``) and stderr is a
terminal, so logs, pipes and CI output stay free of carriage-return lines.
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    total: int, desc: str, unit: str, progress: bool = True, file: IO[str] | None = None
) -> tqdm:
    """A tqdm bar over ``total`` units on ``file`` (default ``sys.stderr``), disabled when
    ``progress`` is false or the stream is not a terminal (a disabled bar accepts the same
    calls and prints nothing)."""
    stream = sys.stderr if file is None else file
    show = bool(progress) and _is_terminal(stream)
    return tqdm(
        total=total, desc=desc, unit=unit, file=stream, disable=not show, dynamic_ncols=True
    )
