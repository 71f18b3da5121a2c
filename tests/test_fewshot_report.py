"""``benchmarks/fewshot.py --report-only``: the few-shot grid re-printed from the committed
per-episode records (``benchmarks/results/fewshot_quick``) without loading a model, checked
against an independent computation from the same files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fewshot_quick"
FOLDER = Path("5w1s") / "dinov2"  # committed 10-episode rows (must exist)


def _accuracies(path: Path) -> dict[int, float]:
    """Episode index -> accuracy, read with json alone (the reference)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["episode"]: r["accuracy"] for r in rows if "episode" in r}


def _report(bench, monkeypatch, capsys, out: Path, *options: str) -> str:
    def refuse(*args, **kwargs):
        raise AssertionError("--report-only must not load a backbone or train a baseline")

    monkeypatch.setattr(bench, "load_backbone", refuse)
    monkeypatch.setattr(bench, "baseline_models", refuse)
    argv = ["fewshot.py", "--report-only", "--out", str(out), "--backbones", "dinov2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--settings", "5w1s", *options])
    bench.main()
    return capsys.readouterr().out


def _paired_line(printed: str, tuner: str) -> list[str]:
    return next(line for line in printed.splitlines() if line.split()[:2] == ["dinov2", tuner])


def test_report_matches_an_independent_computation(fewshot_bench, monkeypatch, capsys, tmp_path):
    shutil.copytree(RESULTS / FOLDER, tmp_path / FOLDER)
    printed = _report(fewshot_bench, monkeypatch, capsys, tmp_path, "--quick")

    plain = _accuracies(tmp_path / FOLDER / "lora.jsonl")
    fort = _accuracies(tmp_path / FOLDER / "lora_fort.jsonl")
    assert len(plain) == len(fort) == 10
    diff = np.array([fort[i] - plain[i] for i in sorted(plain)])
    fields = _paired_line(printed, "lora").split()
    assert float(fields[2]) == pytest.approx(100 * np.mean(list(plain.values())), abs=0.051)
    assert float(fields[3]) == pytest.approx(100 * np.mean(list(fort.values())), abs=0.051)
    assert float(fields[4]) == pytest.approx(100 * diff.mean(), abs=0.051)
    assert float(fields[6]) == pytest.approx(100 * 1.96 * diff.std() / np.sqrt(10), abs=0.051)
    assert fields[7] == f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()}"
    # accuracy table: mean ± interval of one row, and the focus table read from focus.json
    ridge = np.array(list(_accuracies(tmp_path / FOLDER / "ridge.jsonl").values()))
    row = next(line for line in printed.splitlines() if line.startswith("ridge "))
    assert row.split()[1:4] == [
        f"{100 * ridge.mean():.1f}",
        "±",
        f"{196 * ridge.std() / 10**0.5:.1f}",
    ]
    focus = json.loads((tmp_path / FOLDER / "focus.json").read_text())["0"]["lora+fort"]
    line = next(
        x
        for x in printed.splitlines()
        if x.split()[:2] == ["dinov2", "lora+fort"] and len(x.split()) == 7
    )
    assert float(line.split()[5]) == pytest.approx(focus["support_mass_on_prompt"], abs=5e-4)
    assert "re-printed from the episode records" in printed


def test_report_pairs_rows_by_episode_index(fewshot_bench, monkeypatch, capsys, tmp_path):
    """A record missing from one row drops that episode from the pairing; it does not shift
    every later episode against the wrong one."""
    shutil.copytree(RESULTS / FOLDER, tmp_path / FOLDER)
    path = tmp_path / FOLDER / "lora_fort.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(x for x in lines if '"episode": 3,' not in x) + "\n")
    printed = _report(fewshot_bench, monkeypatch, capsys, tmp_path, "--quick")

    plain = _accuracies(tmp_path / FOLDER / "lora.jsonl")
    fort = _accuracies(path)
    assert sorted(fort) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    diff = np.array([fort[i] - plain[i] for i in sorted(fort)])
    fields = _paired_line(printed, "lora").split()
    assert float(fields[4]) == pytest.approx(100 * diff.mean(), abs=0.051)
    assert fields[7] == f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()}"


def test_report_refuses_records_of_another_episode_setting(
    fewshot_bench, monkeypatch, capsys, tmp_path
):
    shutil.copytree(RESULTS / FOLDER, tmp_path / FOLDER)
    with pytest.raises(SystemExit, match="--quick"):  # the full mode's 15 queries, not 5
        _report(fewshot_bench, monkeypatch, capsys, tmp_path)


def test_report_without_records_names_the_fix(fewshot_bench, monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit, match="run without --report-only"):
        _report(fewshot_bench, monkeypatch, capsys, tmp_path, "--quick")
