"""``benchmarks/fort_study.py`` under ``torchrun``: two processes share out a cell's validation,
test and focus episodes and leave the files one process writes (on the tiny random ViT)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from focusvit.runs import DistContext, ProbeCache, read_episode_file

ROOT = Path(__file__).resolve().parents[1]
CELL = Path("tiny") / "shipped" / "5w1s" / "lora"
OPTIONS = [
    "--backbones", "tiny", "--scenes", "shipped", "--settings", "5w1s", "--tuners", "lora",
    "--episodes", "3", "--val-episodes", "2", "--n-query", "2", "--focus-episodes", "2",
]  # fmt: skip


def _records(path: Path) -> list[tuple]:
    return [(r["episode"], r["classes"], r["accuracy"]) for r in read_episode_file(path)[1]]


def _torchrun() -> str:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("torchrun not found next to the interpreter")
    return found


def test_two_processes_write_what_one_process_writes(fort_study, monkeypatch, capsys, tmp_path):
    single, multi = tmp_path / "one", tmp_path / "two"
    monkeypatch.setattr(sys, "argv", ["fort_study.py", *OPTIONS, "--out", str(single)])
    fort_study.main()
    capsys.readouterr()
    proc = subprocess.run(
        [_torchrun(), "--standalone", "--nproc-per-node=2", str(ROOT / "benchmarks" / "fort_study.py"),
         *OPTIONS, "--out", str(multi)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    for row in ("plain.jsonl", "authors.jsonl", "validation/alpha=0.jsonl"):
        one, two = _records(single / CELL / row), _records(multi / CELL / row)
        assert [r[0] for r in two] == list(range(len(two))) and len(two) in (2, 3)
        assert one == two, row
    assert {"plain.rank0.jsonl", "plain.rank1.jsonl"} <= {
        p.name for p in (multi / CELL / "shards").iterdir()
    }
    chosen_one = json.loads((single / CELL / "selection.json").read_text())
    chosen_two = json.loads((multi / CELL / "selection.json").read_text())
    assert chosen_two["alpha"] == chosen_one["alpha"]
    assert chosen_two["validation"].keys() == chosen_one["validation"].keys()
    assert len(chosen_one["validation"]) == 3  # α = 0, a tenth of the recipe α, the recipe α
    for alpha, (mean, _) in chosen_one["validation"].items():
        assert chosen_two["validation"][alpha][0] == pytest.approx(mean)
    focus_one = json.loads((single / CELL / "focus.json").read_text())
    focus_two = json.loads((multi / CELL / "focus.json").read_text())
    assert list(focus_two) == ["0", "1"]
    for index, stages in focus_one.items():
        assert set(stages) == set(focus_two[index]) == {"pretrained", "plain", "authors"}
        for stage, numbers in stages.items():
            assert numbers == pytest.approx(focus_two[index][stage], rel=1e-4, abs=1e-6)
    # the tables are printed once, by the main process
    assert proc.stdout.count("attention loss, paired on the same") == 1
    assert "2 processes" in proc.stdout


def test_focus_of_an_interrupted_multi_process_run_is_kept(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "focus.json").write_text(json.dumps({"0": {"plain": {"accuracy": 0.5}}}))
    (tmp_path / "shards" / "focus.rank1.json").write_text(
        json.dumps({"1": {"plain": {"accuracy": 0.7}}, "0": {"authors": {"accuracy": 0.6}}})
    )
    stored = ProbeCache(tmp_path / "focus.json").load()  # the one focus cache of the study layer
    assert list(stored) == [0, 1]
    assert stored[0] == {"plain": {"accuracy": 0.5}, "authors": {"accuracy": 0.6}}
    assert stored[1] == {"plain": {"accuracy": 0.7}}


def test_multi_process_run_refuses_to_pretrain(fort_study, tmp_path):
    args = fort_study.argparse.Namespace(pretrained=str(tmp_path / "missing.safetensors"))
    two = DistContext(rank=0, world_size=2)
    with pytest.raises(SystemExit, match="train it once in one process first"):
        fort_study.load_backbone("pretrained", args, two)
    with pytest.raises(SystemExit, match="choose pretrained, dinov2, tiny"):
        fort_study.load_backbone("vit-huge", args, two)
