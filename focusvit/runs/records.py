"""The resumable per-method episode file (JSONL).

Line 1 is the settings record ``{"settings": {...}, "method": NAME}``; every further line is one
finished episode ``{"method", "episode", "accuracy", "classes", ...}``. Episodes are appended as
they finish, so an interruption loses at most the episode in flight (a line cut by it is
dropped on the next open or append). Reopening with other settings refuses
(:func:`check_settings`), so two experiments are never mixed into one result.

Several processes may write one file (e.g. disjoint ``episode_ids``): every change is made under
an exclusive lock on ``<file>.lock`` beside it, and a rewrite merges the episodes other writers
put in the file meanwhile, so nothing is lost. Rewrites go through a temporary file that is
flushed, synced and renamed (removed again on any error); an output that is a symbolic link or a
device file is refused; a full disk stops with one :class:`OutputWriteError` that says the
finished episodes are kept.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from focusvit.checks import is_whole_number
from focusvit.data import manifest_changes
from focusvit.errors import ConfigError, FocusVitError, SettingsMismatchError

from .settings import check_settings, to_plain

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one writer per output
    fcntl = None

#: fields every episode record must have
REQUIRED_FIELDS = ("method", "episode", "accuracy")

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class OutputWriteError(FocusVitError, OSError):
    """An output file that cannot be written (disk full, read-only folder); what was already
    finished stays in the file."""


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` when a file may be (re)written there.

    Raises:
        ConfigError: ``path`` is a symbolic link (a rewrite would replace the link, not its
            target), a directory, or a device / FIFO / socket (e.g. ``/dev/null``).
    """
    path = Path(path)
    if path.is_symlink():
        raise ConfigError(
            f"output {path} is a symbolic link (to {os.readlink(path)}); a rewrite would replace "
            f"the link: pass the real file ({path.resolve()}) or a new path"
        )
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "a device or special file"
        raise ConfigError(
            f"output {path} is {kind}, not a regular file; pass a new file path (e.g. "
            "runs/method.jsonl)"
        )
    return path


def check_episode_ids(episode_ids: Iterable[int] | None, episodes: int) -> list[int]:
    """The episode ids to evaluate: ``range(episodes)`` when ``episode_ids`` is ``None``.

    Raises:
        ConfigError: ``episode_ids`` is empty, not a list of integers >= 0, or repeats an id
            (a repeated episode would count more than once in the mean and interval).
    """
    if episode_ids is None:
        return list(range(episodes))
    if isinstance(episode_ids, str | bytes) or not isinstance(episode_ids, Iterable):
        raise ConfigError(
            f"episode_ids={episode_ids!r} is not a list of episode ids; pass e.g. [0, 1, 2] or "
            "leave it unset"
        )
    ids = list(episode_ids)
    if not ids:
        raise ConfigError(
            "episode_ids is empty, so there is nothing to evaluate; pass ids in "
            f"0..{episodes - 1}, or leave episode_ids unset for all {episodes} episodes"
        )
    wrong = [i for i in ids if not is_whole_number(i, 0)]
    if wrong:
        raise ConfigError(
            f"episode_ids holds {', '.join(map(repr, wrong[:5]))}, not episode ids; pass "
            f"integers >= 0 (e.g. 0..{episodes - 1})"
        )
    repeated = sorted(int(i) for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ConfigError(
            f"episode_ids repeats {', '.join(map(str, repeated[:10]))} (a repeated episode would "
            "count more than once in the mean and interval); pass each id once, e.g. "
            "sorted(set(episode_ids))"
        )
    return [int(i) for i in ids]


def write_error(path: Path, error: OSError, kept: str) -> OutputWriteError:
    """One clear error for a failed write of ``path``; ``kept`` says what is still there."""
    if error.errno in _FULL:
        reason, fix = "the disk is full", "free some disk space"
    else:
        reason = error.strerror or str(error)
        fix = "make the folder writable"
    failure = OutputWriteError(
        f"cannot write {path}: {reason} ({kept}); {fix} and rerun to resume, or write to "
        "another output"
    )
    failure.errno = error.errno
    return failure


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_new_file(tmp: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``tmp``, flushed to disk."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or, best effort, a folder) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, sync it and rename it over ``path``.

    On any error the temporary file is removed and ``path`` is unchanged; the error (an
    ``OSError`` for a failed write) propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file and a rename (never half
    written, no temporary file left behind).

    Raises:
        ConfigError: ``path`` is a symbolic link or not a regular file (:func:`check_output_path`).
        OutputWriteError: the write failed (e.g. disk full); ``path`` is unchanged.
    """
    path = check_output_path(path)
    existed = path.exists()
    try:
        replace_atomically(path, lambda tmp: _write_new_file(tmp, text.encode()))
    except OSError as error:
        kept = "the previous file is unchanged" if existed else "nothing was written"
        raise write_error(path, error, kept) from error


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (shared by every process writing ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(
        path.with_name(path.name + ".lock"),
        os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
        0o666,
    )
    try:
        _lock(fd, path)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, path: Path) -> None:
    """Exclusive lock on ``fd``; without one (no ``fcntl``, a file system without locks) a warning
    and no lock: a single writer is still safe."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        warnings.warn(
            f"cannot lock {path}.lock ({error.strerror}); write {path} from one process at a time",
            stacklevel=4,
        )


def _complete_length(fd: int) -> int:
    """Bytes of the file up to the end of its last complete line."""
    position = os.fstat(fd).st_size
    while position > 0:
        start = max(0, position - 65536)
        cut = os.pread(fd, position - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        position = start
    return 0


def _parse(path: Path, number: int, line: str, last: bool) -> dict | None:
    """One JSONL line; ``None`` for a cut last line (``last``: the file's final line, with no
    ``"\n"`` after it); a clear error for a damaged record or a complete line that is no JSON
    (e.g. notes written into the file, which a rewrite would otherwise drop)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        if last:
            return None  # cut by an interruption: that episode is redone
        raise SettingsMismatchError(
            f"{path} line {number} is not valid JSON ({line[:40]!r}): it is no episode file of "
            "focusvit, or it was edited or damaged; write to a new output, or delete that line "
            "(an episode on it is then redone)"
        ) from None
    if not isinstance(record, dict):
        raise SettingsMismatchError(
            f"{path} line {number} is not a JSON object; delete that line or write to a new output"
        )
    return record


def _check_record(path: Path, number: int, record: dict) -> None:
    """An episode record: ``method``, ``episode`` and an ``accuracy`` in [0, 1], or a diverged
    episode (``"diverged": true`` with its ``error``, and no accuracy)."""
    diverged = record.get("diverged") is True
    required = ("method", "episode", "error") if diverged else REQUIRED_FIELDS
    missing = [key for key in required if key not in record]
    episode, accuracy = record.get("episode"), record.get("accuracy")
    accuracy_ok = (
        "accuracy" not in record
        if diverged
        else type(accuracy) in (int, float) and 0.0 <= accuracy <= 1.0
    )
    wrong = [
        f"{key}={value!r}"
        for key, value, ok in (
            ("method", record.get("method"), isinstance(record.get("method"), str)),
            ("episode", episode, type(episode) is int and episode >= 0),
            ("accuracy", accuracy, accuracy_ok),
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
    text = path.read_text()
    lines = text.splitlines()
    cut = not text.endswith("\n")  # a last line without its "\n": an interrupted write
    header, records = None, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse(path, number, line, last=cut and number == len(lines))
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
        path: the ``.jsonl`` file (created with its folder on first write; ``<path>.lock``
            beside it serialises the processes that write it).
        method: the method's record name; other methods' lines are ignored.
        settings: every setting that changes this method's result (backbone, tuner, attention
            loss, head init, steps, lr, image size, episodes spec but the count, dataset...).
        manifest: for a dataset read from files, a function giving its
            ``{file: [size, mtime ns]}`` (:func:`focusvit.data.dataset_manifest`); kept in
            ``<path>.files.json`` when the file is started, so that a resume refused because the
            dataset's content changed names the files that changed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        method: str,
        settings: Mapping[str, Any],
        manifest: Callable[[], Mapping[str, Any] | None] | None = None,
    ):
        self.path = Path(path)
        self.method = method
        self.settings = to_plain(dict(settings))
        self.manifest = manifest
        self.manifest_path = self.path.with_name(self.path.name + ".files.json")

    def open(self) -> dict[int, dict]:
        """Check the stored settings and return the finished episodes ``{episode: record}``.

        Writes the settings line to a new file, and rewrites an existing one without a line cut
        by an interruption, so appends start on a line of their own.

        Raises:
            SettingsMismatchError: the file holds this method's episodes of other settings
                (naming each changed setting), or a damaged record.
            ConfigError: the path is a symbolic link, a directory or a device file.
            OutputWriteError: the file cannot be written (e.g. disk full).
        """
        with self._writing():
            started = read_episode_file(self.path)[0] is None
            stored = self._stored()
            self._replace(stored.values())
            if started:
                self._write_manifest()
        return stored

    def append(self, record: dict) -> None:
        """Append one finished episode (written at once, under the lock).

        A line cut by an interrupted writer is dropped first; a failed write (e.g. disk full)
        is undone, so the file keeps exactly the finished episodes.
        """
        with self._writing():
            self._append_line(json.dumps(record) + "\n")

    def rewrite(self, records: Iterable[dict]) -> None:
        """Atomically replace the file: settings line, then one line per episode, sorted.

        Episodes already in the file (e.g. appended by another process) are kept; for an
        episode in both, ``records`` wins.
        """
        with self._writing():
            stored = self._stored()
            self._replace(merge_records([records, stored.values()]))

    def records(self) -> list[dict]:
        """This method's complete records, sorted by episode."""
        _, records = read_episode_file(self.path)
        return merge_records([[r for r in records if r.get("method") == self.method]])

    def _header_line(self) -> str:
        return json.dumps({"settings": self.settings, "method": self.method}) + "\n"

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Check the path, hold the lock, and turn a failed write into :class:`OutputWriteError`."""
        check_output_path(self.path)
        try:
            with _locked(self.path):
                yield
        except OSError as error:
            if isinstance(error, FocusVitError):
                raise
            raise write_error(self.path, error, self._kept()) from error

    def _kept(self) -> str:
        try:
            count = len(self.records())
        except (OSError, FocusVitError):
            return "the finished episodes already in it are kept"
        if count == 0:
            return "it holds no finished episode yet"
        return f"the {count} finished episode{'s' * (count != 1)} in it are kept"

    def _stored(self) -> dict[int, dict]:
        """This method's finished episodes in the file, after checking its settings record."""
        header, records = read_episode_file(self.path)
        mine = [r for r in records if r.get("method") == self.method]
        if header is not None and header.get("method") == self.method:
            try:
                check_settings(
                    header["settings"],
                    self.settings,
                    f"{self.path} ({self.method!r})",
                    fix="resume with the same settings, or write to a new output file",
                )
            except SettingsMismatchError as error:
                raise SettingsMismatchError(f"{error}{self._changed_files()}") from None
        elif mine or header is not None:
            owner = header.get("method") if header else "an older focusvit"
            raise SettingsMismatchError(
                f"{self.path} holds episodes of {owner!r} without a settings record for "
                f"{self.method!r}; write each method to its own new output file"
            )
        return {int(r["episode"]): r for r in mine}

    def _write_manifest(self) -> None:
        """Keep the dataset's file manifest beside the episode file (when it has one)."""
        manifest = self.manifest() if self.manifest is not None else None
        if manifest is not None:
            text = json.dumps(dict(manifest), sort_keys=True)
            replace_atomically(self.manifest_path, lambda tmp: _write_new_file(tmp, text.encode()))

    def _changed_files(self) -> str:
        """``"; files changed since ...: changed a.png, added b.png"`` when the stored and the
        current manifests differ, else ``""`` (no manifest kept, or the dataset has none)."""
        current = self.manifest() if self.manifest is not None else None
        if current is None or not self.manifest_path.is_file():
            return ""
        try:
            stored = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ""
        changes = manifest_changes(stored, current)
        if not changes:
            return ""
        shown = ", ".join(changes[:10])
        more = f" and {len(changes) - 10} more" if len(changes) > 10 else ""
        return f"; files changed since {self.manifest_path.name} was written: {shown}{more}"

    def _replace(self, records: Iterable[dict]) -> None:
        lines = [self._header_line()] + [json.dumps(r) + "\n" for r in merge_records([records])]
        data = "".join(lines).encode()
        replace_atomically(self.path, lambda tmp: _write_new_file(tmp, data))

    def _append_line(self, line: str) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o666)
        try:
            length = _complete_length(fd)
            if length < os.fstat(fd).st_size:
                os.ftruncate(fd, length)  # a line cut by an interrupted writer
            data = ((self._header_line() if length == 0 else "") + line).encode()
            try:
                _write_all(fd, data)
            except OSError:
                os.ftruncate(fd, length)  # no partial line: the file keeps the finished episodes
                raise
        finally:
            os.close(fd)
