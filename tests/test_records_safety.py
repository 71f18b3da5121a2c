"""Records (issue 32): repeated episode ids refused, several writers of one episode file lose
nothing, symbolic-link / device outputs refused, atomic rewrites leave no temporary file, and a
full disk stops with one clear error while the finished episodes stay in the file."""

from __future__ import annotations

import errno
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from focusvit.errors import ConfigError, FocusVitError
from focusvit.runs import EpisodeLog, RunDir, atomic_write_text, load_state, save_state, shard
from focusvit.runs import records as records_module
from focusvit.runs.distributed import DistContext
from focusvit.runs.records import OutputWriteError, check_episode_ids, check_output_path

SETTINGS = {"backbone": "tiny", "lr": 0.001}


def _record(episode: int, accuracy: float = 0.5) -> dict:
    return {"method": "m", "episode": episode, "accuracy": accuracy}


def _episodes(path: Path) -> list[int]:
    return [r["episode"] for r in EpisodeLog(path, "m", SETTINGS).records()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _disk_full_after(monkeypatch, allowed: int) -> None:
    """``os.write`` writes ``allowed`` more bytes, then fails as on a full disk."""
    real = os.write
    budget = {"left": allowed}

    def write(fd: int, data) -> int:
        if budget["left"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = real(fd, bytes(data[: budget["left"]]))
        budget["left"] -= count
        return count

    monkeypatch.setattr(records_module.os, "write", write)


# ---------------------------------------------------------------- episode ids


def test_repeated_episode_ids_are_refused_naming_them():
    with pytest.raises(ConfigError, match=r"repeats 0, 3 .*more than once.*pass each id once"):
        check_episode_ids([0, 3, 1, 0, 3], episodes=5)


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        ([], "episode_ids is empty"),
        ([0, -1], "-1"),
        ([0, 1.5], "1.5"),
        ([True], "True"),
        ("012", "not a list"),
        (3, "not a list"),
    ],
)
def test_bad_episode_ids_name_the_fix(ids, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_episode_ids(ids, episodes=4)


def test_good_episode_ids_pass_through():
    assert check_episode_ids(None, episodes=3) == [0, 1, 2]
    assert check_episode_ids(np.arange(2, 5), episodes=3) == [2, 3, 4]  # beyond the count is ok
    assert check_episode_ids(shard(range(6), 1, 2), episodes=6) == [1, 3, 5]


# ---------------------------------------------------------------- several writers


def _writer(path: str, ids: list[int], start) -> None:
    """The evaluate loop's use of an episode file: open, append each episode, rewrite."""
    log = EpisodeLog(path, "m", SETTINGS)
    start.wait()
    done = log.open()
    fresh = {}
    for episode in ids:
        time.sleep(0.005)
        fresh[episode] = _record(episode, accuracy=episode / 100)
        log.append(fresh[episode])
    log.rewrite({**done, **fresh}.values())


def test_two_processes_writing_disjoint_episodes_lose_nothing(tmp_path):
    path = tmp_path / "out" / "m.jsonl"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(2)
    workers = [
        context.Process(target=_writer, args=(str(path), list(range(r, 30, 2)), start))
        for r in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert _episodes(path) == list(range(30))
    records = EpisodeLog(path, "m", SETTINGS).records()
    assert all(r["accuracy"] == r["episode"] / 100 for r in records)
    assert _leftovers(path.parent) == []


def test_rewrite_keeps_episodes_another_writer_appended(tmp_path):
    path = tmp_path / "m.jsonl"
    first, second = EpisodeLog(path, "m", SETTINGS), EpisodeLog(path, "m", SETTINGS)
    assert first.open() == {} and second.open() == {}
    second.append(_record(5, 0.25))
    first.rewrite([_record(0), _record(5, 0.75)])  # the rewriter's own record wins a tie
    assert [(r["episode"], r["accuracy"]) for r in first.records()] == [(0, 0.5), (5, 0.75)]


def test_a_second_writer_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    EpisodeLog(path, "m", SETTINGS).open()
    with pytest.raises(FocusVitError, match="lr"):
        EpisodeLog(path, "m", {**SETTINGS, "lr": 0.1}).open()


def test_append_after_a_writer_died_mid_line_drops_the_cut_line(tmp_path):
    path = tmp_path / "m.jsonl"
    log = EpisodeLog(path, "m", SETTINGS)
    log.open()
    log.append(_record(0))
    with path.open("a") as handle:
        handle.write('{"method": "m", "epis')  # a writer killed mid-line
    log.append(_record(1))
    assert _episodes(path) == [0, 1]
    assert path.read_text().endswith("\n")


# ---------------------------------------------------------------- links and devices


def test_symlinked_outputs_are_refused_and_left_alone(tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_text("keep\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    calls = [
        lambda: EpisodeLog(link, "m", SETTINGS).open(),
        lambda: EpisodeLog(link, "m", SETTINGS).append(_record(0)),
        lambda: atomic_write_text(link, "x"),
        lambda: save_state(link, {"step": 1}),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match=r"symbolic link.*pass the real file"):
            call()
    assert link.is_symlink() and target.read_text() == "keep\n"


def test_device_and_special_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="device or special file"):
        check_output_path("/dev/null")  # a check only: nothing is written
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"pipe.jsonl is a device or special file.*new file"):
        EpisodeLog(fifo, "m", SETTINGS).open()
    with pytest.raises(ConfigError, match="is a directory"):
        atomic_write_text(tmp_path, "x")


def test_run_folder_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"is a file, not a folder; choose another out="):
        RunDir(out, {"a": 1}).check()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".settings.json.123.abcd.tmp").write_text("")  # left by a killed write
    assert RunDir(folder, {"a": 1}).check() is False  # still a fresh run folder


# ---------------------------------------------------------------- atomic rewrites, full disk


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    atomic_write_text(path, "old\n")
    _disk_full_after(monkeypatch, allowed=3)
    with pytest.raises(OutputWriteError, match=r"settings.json: the disk is full \(the previous"):
        atomic_write_text(path, "a much longer new text\n")
    assert path.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_atomic_write_interrupted_leaves_no_temp(tmp_path, monkeypatch):
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(records_module.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "a.txt", "text")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_an_append_keeps_the_finished_episodes(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    log = EpisodeLog(path, "m", SETTINGS)
    log.open()
    for episode in range(3):
        log.append(_record(episode))
    before = path.read_bytes()
    _disk_full_after(monkeypatch, allowed=7)  # half a line, then the disk is full
    with pytest.raises(OutputWriteError) as caught:
        log.append(_record(3))
    message = str(caught.value)
    assert str(path) in message and "the disk is full" in message
    assert "the 3 finished episodes in it are kept" in message and "rerun to resume" in message
    assert "\n" not in message and caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before  # no cut line left behind
    with pytest.raises(OutputWriteError, match="3 finished episodes in it are kept"):
        log.rewrite([_record(3)])
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert sorted(log.open()) == [0, 1, 2]  # resumes from the kept episodes


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_state(tmp_path / "focus.safetensors", {"w": torch.ones(2), "step": 1})

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 8)  # partly written, then the disk is full
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputWriteError, match=r"focus.safetensors: the disk is full") as caught:
        save_state(path, {"w": torch.zeros(2), "step": 2})
    assert "previous file is unchanged" in str(caught.value)
    assert load_state(path)["step"] == 1 and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- launcher values


def test_bad_ranks_and_launcher_variables_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="0 <= rank < world_size"):
        shard(range(4), 2, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE='two' is not an integer"):
        DistContext.from_env()


def test_a_file_system_without_locks_warns_and_still_writes(tmp_path, monkeypatch):
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(records_module.fcntl, "flock", no_locks)
    log = EpisodeLog(tmp_path / "m.jsonl", "m", SETTINGS)
    with pytest.warns(UserWarning, match="from one process at a time"):
        log.open()
        log.append(_record(0))
    assert _episodes(log.path) == [0]
