"""Nothing focusvit reads from disk is unpickled (issue 14, security): a crafted pickle planted
where a checkpoint, a baseline, a run-folder cache or a pretraining state is expected is refused
with :class:`CheckpointError`, and its payload never runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from focusvit.errors import CheckpointError
from focusvit.runs import RunDir, load_state, save_state


class Payload:
    """Unpickling this creates ``marker``: the proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def plant(path: Path, marker: Path) -> Path:
    """Write a malicious pickle (also in torch.save's zip format) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"model": Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload_ran"


def test_the_payload_would_run_if_unpickled(tmp_path, marker):
    """The planted file is a working exploit: the check below cannot pass by accident."""
    path = plant(tmp_path / "evil.pkl", marker)
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("name", ["state.safetensors", "state.pt", "state.pkl"])
def test_load_state_refuses_a_pickle(tmp_path, marker, name):
    path = plant(tmp_path / name, marker)
    with pytest.raises(CheckpointError, match="damaged or not a focusvit checkpoint"):
        load_state(path)
    assert not marker.exists()


def test_baseline_checkpoint_refuses_a_pickle(tmp_path, marker):
    from focusvit.baselines.common import load_checkpoint

    path = plant(tmp_path / "can.safetensors", marker)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_run_folder_cache_refuses_a_pickle(tmp_path, marker):
    folder = RunDir(tmp_path / "run", {"a": 1})
    folder.path.mkdir()
    plant(folder.checkpoint_file("focus"), marker)
    with pytest.raises(CheckpointError):
        folder.load_checkpoint("focus")
    assert not marker.exists()


def test_load_backbone_refuses_a_pickled_checkpoint(tmp_path, marker):
    import focusvit

    path = plant(tmp_path / "model.safetensors", marker)
    with pytest.raises(CheckpointError):
        focusvit.load_backbone(str(path))
    assert not marker.exists()


def test_a_real_state_still_loads(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "step": 3, "name": "x"}
    loaded = load_state(save_state(tmp_path / "ok.safetensors", state))
    assert loaded["step"] == 3 and loaded["name"] == "x"
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
