"""A run folder: the settings record of a whole run, one episode file per method, atomic
checkpoints, and the refusal to mix runs of other settings (the CLI's ``out=``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from focusvit.errors import ConfigError, SettingsMismatchError

from .checkpoint import load_state, save_state
from .records import atomic_write_text
from .settings import check_settings, to_plain
from .study import episode_file_name

#: the settings record of a run folder
SETTINGS_FILE = "settings.json"


def refuse_file(path: Path) -> None:
    """Refuse an output folder path that is an existing file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"out={path} is a file, not a folder; choose another out=... (a folder, new or "
            "holding this run)"
        )


def check_out_folder(out: str | os.PathLike) -> None:
    """Refuse an output folder that cannot be one, before anything is written: an existing
    file, or a folder (or the nearest existing parent of a new one) that is not writable."""
    path = Path(out).expanduser()
    refuse_file(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"out={out} cannot be created: {existing} is a file; pick another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"out={out} cannot be written ({existing} is read-only for this user); pick a "
            "writable folder, e.g. out=outputs/run1"
        )


class RunDir:
    """A run folder.

    Layout: ``settings.json`` (every setting of the run), ``episodes/<method>.jsonl`` (one
    resumable episode file per method), ``shards/`` (per-rank files of multi-process runs),
    ``checkpoints/<name>.safetensors`` (:func:`~focusvit.runs.checkpoint.save_state`).

    Args:
        path: the folder.
        settings: the run's settings (nested dicts / dataclasses / OmegaConf containers).
        resumable: dotted keys (or prefixes) that may change when the run is resumed, e.g.
            the episode count, the list of methods or report options.
        ignored_files: names in a fresh folder that do not make it "another run" (e.g. the
            ``.hydra`` folder and log files Hydra writes before the run starts).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        settings: Mapping[str, Any],
        resumable: Iterable[str] = (),
        ignored_files: Iterable[str] = (".hydra",),
    ):
        self.path = Path(path)
        self.settings = to_plain(dict(settings))
        self.resumable = tuple(resumable)
        self.ignored_files = tuple(ignored_files)

    @property
    def settings_file(self) -> Path:
        return self.path / SETTINGS_FILE

    def check(self) -> bool:
        """True when the folder holds this run already (to resume); False for a new run.

        Raises:
            SettingsMismatchError: the folder holds a run of other settings (naming them), or
                is not empty and not a focusvit run folder.
            ConfigError: the path is a file, not a folder.
        """
        refuse_file(self.path)
        if self.settings_file.exists():
            try:
                stored = json.loads(self.settings_file.read_text())
            except json.JSONDecodeError as error:
                raise SettingsMismatchError(
                    f"{self.settings_file} is damaged ({error}); delete the folder to start again"
                ) from None
            check_settings(
                stored,
                self.settings,
                str(self.path),
                ignore=self.resumable,
                fix="choose another out=..., or delete the folder to start again",
            )
            return True
        if self.path.exists():
            others = sorted(
                p.name
                for p in self.path.iterdir()
                if p.name not in self.ignored_files
                and p.suffix not in (".log", ".tmp", ".lock")
                and not p.name.startswith("multirun")
            )
            if others:
                raise SettingsMismatchError(
                    f"{self.path} exists and is not a focusvit run folder (it holds "
                    f"{', '.join(others[:5])}); choose another out=..."
                )
        return False

    def write_settings(self) -> None:
        """Record this run's settings (after :meth:`check`; atomic, refuses a symbolic link)."""
        atomic_write_text(self.settings_file, json.dumps(self.settings, indent=2) + "\n")

    def episode_file(self, method: str) -> Path:
        return self.path / "episodes" / episode_file_name(method)

    def checkpoint_file(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{name}.safetensors"

    def save_checkpoint(self, name: str, state: Any) -> Path:
        return save_state(self.checkpoint_file(name), state)

    def load_checkpoint(self, name: str) -> Any | None:
        """The checkpoint ``name``, or ``None`` when there is none yet."""
        path = self.checkpoint_file(name)
        return load_state(path) if path.exists() else None
