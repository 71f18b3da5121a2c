"""``benchmarks/fort_study.py --report-only``: the study table re-printed from the committed
per-episode records, checked against an independent computation from the same files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from focusvit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fort_study"
CELL = Path("dinov2") / "premise" / "5w1s" / "ssf"  # a committed 150-episode cell (must exist)


def _accuracies(path: Path) -> np.ndarray:
    """Per-episode accuracies in episode order, read with json alone (the reference)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if "episode" in r), key=lambda r: r["episode"])
    return np.array([r["accuracy"] for r in rows])


def _report(fort_study, monkeypatch, capsys, out: Path) -> str:
    def no_backbone(*args, **kwargs):
        raise AssertionError("--report-only must not load (or pretrain) a backbone")

    monkeypatch.setattr(fort_study, "load_backbone", no_backbone)
    argv = ["fort_study.py", "--report-only", "--out", str(out), "--backbones", "dinov2"]
    argv += ["--scenes", "premise", "--settings", "5w1s", "--tuners", "ssf"]
    monkeypatch.setattr(sys, "argv", argv)
    fort_study.main()
    return capsys.readouterr().out


def test_report_matches_an_independent_paired_computation(
    fort_study, monkeypatch, capsys, tmp_path
):
    shutil.copytree(RESULTS / CELL, tmp_path / CELL)
    printed = _report(fort_study, monkeypatch, capsys, tmp_path)

    plain = _accuracies(tmp_path / CELL / "plain.jsonl")
    authors = _accuracies(tmp_path / CELL / "authors.jsonl")
    diff = authors - plain
    half_width = 1.96 * diff.std() / np.sqrt(len(diff))
    wtl = f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()}"
    row = next(line for line in printed.splitlines() if line.startswith("dinov2     premise"))
    fields = row.split()
    assert int(fields[4]) == len(plain) == 150
    assert float(fields[5]) == pytest.approx(100 * plain.mean(), abs=0.051)
    assert float(fields[8]) == pytest.approx(0.1)  # the recipe α stored in authors.jsonl
    assert float(fields[9]) == pytest.approx(100 * diff.mean(), abs=0.051)
    assert float(fields[11]) == pytest.approx(100 * half_width, abs=0.051)
    assert fields[12] == wtl
    # validation chose α = 0 there, so `validated` is `plain`: a zero difference, all ties
    assert fields[13] == "0" and fields[-1] == f"0/{len(plain)}/0"
    assert json.loads((tmp_path / "results.json").read_text())[0]["tuner"] == "ssf"


def test_report_without_records_says_so_and_writes_nothing(
    fort_study, monkeypatch, capsys, tmp_path
):
    printed = _report(fort_study, monkeypatch, capsys, tmp_path)
    assert "no stored cells" in printed and "run without --report-only" in printed
    assert not (tmp_path / "results.json").exists()


def test_report_pairs_rows_by_episode_index(fort_study, monkeypatch, capsys, tmp_path):
    """A record missing from one row drops that episode from the pairing; it does not shift
    every later episode against the wrong one."""
    shutil.copytree(RESULTS / CELL, tmp_path / CELL)
    authors_path = tmp_path / CELL / "authors.jsonl"
    lines = authors_path.read_text().splitlines()
    dropped = next(i for i, line in enumerate(lines) if '"episode": 3,' in line)
    authors_path.write_text("\n".join(lines[:dropped] + lines[dropped + 1 :]) + "\n")
    printed = _report(fort_study, monkeypatch, capsys, tmp_path)

    plain = np.delete(_accuracies(tmp_path / CELL / "plain.jsonl"), 3)
    authors = _accuracies(authors_path)
    diff = authors - plain
    row = next(line for line in printed.splitlines() if line.startswith("dinov2     premise"))
    fields = row.split()
    assert int(fields[4]) == len(plain) == 149
    assert float(fields[5]) == pytest.approx(100 * plain.mean(), abs=0.051)
    assert float(fields[9]) == pytest.approx(100 * diff.mean(), abs=0.051)
    assert fields[12] == f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()}"


def test_filtered_report_keeps_the_other_cells_of_the_summary(
    fort_study, monkeypatch, capsys, tmp_path
):
    shutil.copytree(RESULTS / CELL, tmp_path / CELL)
    other = {"backbone": "pretrained", "scenes": "shipped", "setting": "5w1s", "tuner": "lora"}
    stale = {"backbone": "dinov2", "scenes": "premise", "setting": "5w1s", "tuner": "ssf"}
    (tmp_path / "results.json").write_text(json.dumps([other, stale]))
    _report(fort_study, monkeypatch, capsys, tmp_path)

    summary = json.loads((tmp_path / "results.json").read_text())
    assert len(summary) == 2
    assert other in summary  # not re-read, kept as it was
    fresh = next(c for c in summary if c["backbone"] == "dinov2")
    assert len(fresh["accuracies"]["plain"]) == 150  # the re-read cell replaced the stale one


def test_paired_refuses_rows_of_different_lengths(fort_study):
    with pytest.raises(ConfigError, match="same, non-empty set of episodes"):
        fort_study.paired([0.5, 0.6, 0.7], [0.5, 0.6])
    with pytest.raises(ConfigError, match="non-empty"):
        fort_study.paired([], [])


def test_paired_matches_a_direct_computation(fort_study):
    a, b = [0.6, 0.5, 0.8, 0.4], [0.5, 0.5, 0.6, 0.6]
    diff = np.subtract(a, b)
    result = fort_study.paired(a, b)
    assert result.mean == pytest.approx(diff.mean())
    assert result.ci95 == pytest.approx(1.96 * diff.std() / np.sqrt(len(diff)))
    assert result.wtl == "2/1/1" and (result.wins, result.ties, result.losses) == (2, 1, 1)


def _run(fort_study, monkeypatch, capsys, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["fort_study.py", "--report-only", *argv])
    fort_study.main()
    return capsys.readouterr().out


def _capture_figures(fort_study, monkeypatch) -> list:
    figures, draw = [], fort_study.forest_figure

    def capture(*args, **kwargs):
        figures.append(draw(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(fort_study, "forest_figure", capture)
    return figures


def test_unfiltered_report_draws_every_cell_with_its_paired_intervals(
    fort_study, monkeypatch, capsys, tmp_path
):
    shutil.copytree(RESULTS / CELL, tmp_path / CELL)
    figures = _capture_figures(fort_study, monkeypatch)
    printed = _run(fort_study, monkeypatch, capsys, ["--out", str(tmp_path)])

    assert (tmp_path / "paired_differences.png").stat().st_size > 0
    assert str(tmp_path / "paired_differences.png") in printed
    (axes,) = figures[0].axes
    authors, validated = axes.containers  # one point each per stored cell (here one cell)
    plain = _accuracies(tmp_path / CELL / "plain.jsonl")
    diff = _accuracies(tmp_path / CELL / "authors.jsonl") - plain
    assert authors.lines[0].get_xdata() == pytest.approx([100 * diff.mean()])
    low, high = authors.lines[2][0].get_segments()[0][:, 0]
    assert (high - low) / 2 == pytest.approx(100 * 1.96 * diff.std() / np.sqrt(len(diff)))
    assert validated.lines[0].get_xdata() == pytest.approx([0.0])  # α = 0 chosen: plain itself
    labels = [t.get_text() for t in axes.get_yticklabels()]
    assert labels == ["dinov2 · premise · 5w1s · ssf (150)"]


def test_filtered_report_draws_no_figure_unless_asked(fort_study, monkeypatch, capsys, tmp_path):
    """A filtered report must not replace the figure of every cell with one of its cells."""
    shutil.copytree(RESULTS / CELL, tmp_path / CELL)
    _report(fort_study, monkeypatch, capsys, tmp_path)
    assert not (tmp_path / "paired_differences.png").exists()
    figure = tmp_path / "one_cell.png"
    _run(fort_study, monkeypatch, capsys,
         ["--out", str(tmp_path), "--tuners", "ssf", "--figure", str(figure)])  # fmt: skip
    assert figure.stat().st_size > 0


def test_report_skips_a_cell_whose_test_rows_have_not_started(
    fort_study, monkeypatch, capsys, tmp_path
):
    """A cell stopped (or still running) after its validation holds headers but no common
    test episode: the report names it and goes on instead of failing on an empty row."""
    shutil.copytree(RESULTS / CELL, tmp_path / CELL)
    for row in ("plain", "authors"):
        path = tmp_path / CELL / f"{row}.jsonl"
        path.write_text(path.read_text().splitlines()[0] + "\n")  # the settings header only
    printed = _report(fort_study, monkeypatch, capsys, tmp_path)
    assert "dinov2 · premise · 5w1s · ssf: no test episode in every row yet; skipped" in printed
    assert "no stored cells" in printed
