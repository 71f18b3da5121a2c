"""The hostile sweep of issue 32 (``benchmarks/hostile.py``) lists its cases, and a few of its
hostile API inputs are refused cleanly (the whole sweep is a benchmark: run it by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "hostile.py"

#: cheap hostile inputs the library refuses with one focusvit error line
REFUSED = [
    "preprocess.none",
    "loading.num_classes_2p5",
    "explain.target_str_cat",
    "fit_task.class_without_support",
    "configs.episode_spec_seed_minus1",
    "configs.fort_alpha_nan",
]


@pytest.fixture(scope="module")
def hostile():
    """``benchmarks/hostile.py`` as a module."""
    yield from benchmark_script("hostile.py", "hostile_sweep")


def test_list_prints_every_case_once(hostile, capsys):
    assert hostile.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[:-1]]
    cases = hostile.all_cases()
    assert len(cases) >= 100
    assert names == [case.name for case in cases]
    assert len(set(names)) == len(names)
    assert lines[-1] == f"{len(cases)} cases"
    assert {case.category for case in cases} == set(hostile.CATEGORIES)
    assert any(case.expect == hostile.OK for case in cases)  # controls are part of the sweep


def test_hostile_api_inputs_are_refused_cleanly(hostile, tmp_path):
    cases = [case for case in hostile.all_cases() if case.name in REFUSED]
    assert sorted(case.name for case in cases) == sorted(REFUSED)
    results = hostile.run_cases(cases, root=tmp_path)
    assert [(r.case.name, r.outcome) for r in results] == [(c.name, "clean") for c in cases], [
        r.detail for r in results
    ]
    assert all("Error: " in r.detail for r in results)  # the error type and its one line


def test_command_line_outcomes_are_classified(hostile):
    case = hostile.Case("cli_x.case", lambda ws: None, cli=True)
    line = "focusvit-explain: error: report.batch_size must be >= 1"

    def outcome(returncode: int, stderr: str, problem: str | None = None) -> str:
        run = hostile.CliRun("explain", returncode, stderr, problem)
        return hostile.classify_cli(case, run).outcome

    assert outcome(1, line + "\n") == "clean"
    assert outcome(1, "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n") == "traceback"
    assert outcome(1, line + "\nsecond line\n") == "traceback"
    assert outcome(2, line) == "traceback"
    assert outcome(0, "") == "accepted"
    assert outcome(1, line, problem="it wrote settings.json first") == "accepted"
