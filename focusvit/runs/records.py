"""The resumable per-method episode file (JSONL).

Line 1 is the settings record ``{"settings": {...}, "method": NAME}``; every further line is one
finished episode ``{"method", "episode", "accuracy", "classes", ...}``. Episodes are appended as
they finish, so an interruption loses at most the episode in flight (a line cut by it is
dropped on the next open). Reopening with other settings refuses (:func:`check_settings`), so
two experiments are never mixed into one result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from focusvit.errors import SettingsMismatchError

from .settings import check_settings, to_plain

#: fields every episode record must have
REQUIRED_FIELDS = ("method", "episode", "accuracy")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parse(path: Path, number: int, line: str, last: bool) -> dict | None:
    """One JSONL line; ``None`` for a cut last line; a clear error for a damaged record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        if last:
            return None  # cut by an interruption: that episode is redone
        raise SettingsMismatchError(
            f"{path} line {number} is not valid JSON (the file was edited or damaged); "
            "delete that line (the episode is then redone) or write to a new output"
        ) from None
    if not isinstance(record, dict):
        raise SettingsMismatchError(
            f"{path} line {number} is not a JSON object; delete that line or write to a new output"
        )
    return record


def _check_record(path: Path, number: int, record: dict) -> None:
    missing = [key for key in REQUIRED_FIELDS if key not in record]
    episode, accuracy = record.get("episode"), record.get("accuracy")
    wrong = [
        f"{key}={value!r}"
        for key, value, ok in (
            ("method", record.get("method"), isinstance(record.get("method"), str)),
            ("episode", episode, type(episode) is int and episode >= 0),
            (
                "accuracy",
                accuracy,
                type(accuracy) in (int, float) and 0.0 <= accuracy <= 1.0,
            ),
        )
        if key not in missing and not ok
    ]
    if missing or wrong:
        what = f"without {', '.join(missing)}" if missing else f"with {', '.join(wrong)}"
        raise SettingsMismatchError(
            f"{path} line {number} is an episode record {what} (the file was edited or written "
            "by something else); delete that line (the episode is then redone) or write to a "
            "new output"
        )


def read_episode_file(path: str | os.PathLike) -> tuple[dict | None, list[dict]]:
    """``(settings header or None, complete episode records)`` of an episode file."""
    path = Path(path)
    if not path.exists():
        return None, []
    if path.is_dir():
        raise SettingsMismatchError(
            f"{path} is a directory, not an episode file; pass a .jsonl file path as output"
        )
    lines = path.read_text().splitlines()
    header, records = None, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse(path, number, line, last=number == len(lines))
        if record is None:
            continue
        if "settings" in record and "episode" not in record:
            header = record
            continue
        _check_record(path, number, record)
        records.append(record)
    return header, records


def merge_records(groups: Iterable[Iterable[dict]]) -> list[dict]:
    """One record per episode (first seen wins), sorted by episode id."""
    merged: dict[int, dict] = {}
    for group in groups:
        for record in group:
            merged.setdefault(int(record["episode"]), record)
    return [merged[k] for k in sorted(merged)]


class EpisodeLog:
    """The episode file of one method under one set of settings.

    Args:
        path: the ``.jsonl`` file (created with its folder on first write).
        method: the method's record name; other methods' lines are ignored.
        settings: every setting that changes this method's result (backbone, tuner, attention
            loss, head init, steps, lr, image size, episodes spec but the count, dataset...).
    """

    def __init__(self, path: str | os.PathLike, method: str, settings: Mapping[str, Any]):
        self.path = Path(path)
        self.method = method
        self.settings = to_plain(dict(settings))

    def open(self) -> dict[int, dict]:
        """Check the stored settings and return the finished episodes ``{episode: record}``.

        Writes the settings line to a new file, and rewrites an existing one without a line cut
        by an interruption, so appends start on a line of their own.

        Raises:
            SettingsMismatchError: the file holds this method's episodes of other settings
                (naming each changed setting), or a damaged record.
        """
        header, records = read_episode_file(self.path)
        mine = [r for r in records if r.get("method") == self.method]
        if header is not None and header.get("method") == self.method:
            check_settings(
                header["settings"],
                self.settings,
                f"{self.path} ({self.method!r})",
                fix="resume with the same settings, or write to a new output file",
            )
        elif mine or header is not None:
            owner = header.get("method") if header else "an older focusvit"
            raise SettingsMismatchError(
                f"{self.path} holds episodes of {owner!r} without a settings record for "
                f"{self.method!r}; write each method to its own new output file"
            )
        self.rewrite(mine)
        return {int(r["episode"]): r for r in mine}

    def append(self, record: dict) -> None:
        """Append one finished episode (flushed at once)."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def rewrite(self, records: Iterable[dict]) -> None:
        """Atomically replace the file: settings line, then one line per episode, sorted."""
        header = {"settings": self.settings, "method": self.method}
        lines = [json.dumps(header)] + [json.dumps(r) for r in merge_records([records])]
        atomic_write_text(self.path, "".join(line + "\n" for line in lines))

    def records(self) -> list[dict]:
        """This method's complete records, sorted by episode."""
        _, records = read_episode_file(self.path)
        return merge_records([[r for r in records if r.get("method") == self.method]])
