"""The attention-loss weight: α = 0 is plain fine-tuning, the transferable target scale, and
α chosen on validation classes only (docs/concepts/loss.md)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_adapter
from test_fast_eval import dataset

import focusvit.finetune.selection as selection
from focusvit.errors import ConfigError, NonFiniteError
from focusvit.finetune import (
    AlphaSelection,
    FortConfig,
    evaluate,
    fit_task,
    read_selection,
    select_alpha,
)
from focusvit.finetune.attention_loss import compute_loss
from focusvit.runs import EpisodeSpec, EvaluationResult

SPEC = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=3, seed=2)


def test_alpha_zero_reproduces_plain_fine_tuning_exactly():
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    plain = evaluate(backbone, data, tuner="lora", episodes=SPEC, progress=False, steps=3)
    zero = evaluate(backbone, data, tuner="lora", fort=FortConfig(alpha=0.0), episodes=SPEC,
                    progress=False, steps=3)  # fmt: skip
    assert zero.accuracies == plain.accuracies
    assert [r["final_loss"]["ce"] for r in zero.records] == [
        r["final_loss"]["ce"] for r in plain.records
    ]


def test_unit_targets_make_the_loss_independent_of_the_prompt_size():
    backbone = tiny_adapter("timm-vit")
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([0, 1])
    losses = {}
    for target_sum in ("prompt_size", "one"):
        for k in (2, 8):
            fort = FortConfig(alpha=1.0, tau=1.0, top_k=k, target_sum=target_sum)
            with fit_task(backbone, images, labels, tuner="lora", fort=fort, steps=0) as task:
                with torch.no_grad(), backbone.capture_attention([-1], kind="logits") as record:
                    backbone.logits(images)
                losses[(target_sum, k)] = float(
                    compute_loss(backbone, fort, record, task.prompt_targets)
                )
    # official targets sum to P: the loss grows about in proportion to P
    assert losses[("prompt_size", 8)] > 3 * losses[("prompt_size", 2)]
    # unit targets: a cross-entropy against a distribution, about log(#patches) either way
    ratio = losses[("one", 8)] / losses[("one", 2)]
    assert 0.7 < ratio < 1.3
    with pytest.raises(ValueError, match="target_sum"):
        FortConfig(target_sum="sum")


def test_best_mean_rule_picks_the_best_validation_mean_and_plain_wins_ties(monkeypatch):
    """The rule before issue 31, kept (``rule="best_mean"``) to read the records chosen by it."""
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    data.split = "val"
    means = {"alpha=0": 0.5, "alpha=0.1": 0.7, "alpha=1": 0.6}

    def fake_many(runners, dataset, spec, outputs=None, progress=True, context=None):
        assert dataset is data
        return {r.name: EvaluationResult(r.name, [means[r.name]]) for r in runners}

    monkeypatch.setattr(selection, "evaluate_many", fake_many)
    chosen = select_alpha(backbone, data, "lora", [1.0, 0.1], SPEC, progress=False,
                          rule="best_mean")  # fmt: skip
    assert chosen.alpha == 0.1 and chosen.fort.alpha == 0.1 and chosen.rule == "best_mean"
    assert sorted(chosen.results) == [0.0, 0.1, 1.0] and "<- chosen" in chosen.table()
    means["alpha=0.1"] = means["alpha=0"] = 0.8  # a tie: plain fine-tuning wins
    tie = select_alpha(backbone, data, "lora", [0.1, 1.0], SPEC, progress=False, rule="best_mean")
    assert tie.alpha == 0 and tie.fort is None
    # one episode measures no interval: the paired rule keeps α = 0 whatever the gain
    means["alpha=0.1"] = 0.9
    assert select_alpha(backbone, data, "lora", [0.1, 1.0], SPEC, progress=False).alpha == 0


def test_select_alpha_sees_a_tie_through_float32_episode_accuracies(monkeypatch):
    """The same 40 of 100 correct queries, spread differently over two episodes: the float32
    episode accuracies give means that differ in the last bits; still a tie, plain wins."""
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    data.split = "val"
    as_float32 = [float(torch.tensor(k / 50, dtype=torch.float32)) for k in (20, 21, 19)]
    accuracies = {"alpha=0": as_float32[1:], "alpha=0.1": as_float32[:1] * 2}
    plain_mean, loss_mean = (sum(a) / 2 for a in accuracies.values())
    assert loss_mean > plain_mean  # the float32 rounding favours the loss by ~1e-8

    def fake_many(runners, dataset, spec, outputs=None, progress=True, context=None):
        return {r.name: EvaluationResult(r.name, accuracies[r.name]) for r in runners}

    monkeypatch.setattr(selection, "evaluate_many", fake_many)
    for rule in selection.RULES:
        chosen = select_alpha(backbone, data, "lora", [0.1], SPEC, progress=False, rule=rule)
        assert chosen.alpha == 0 and chosen.fort is None
    accuracies["alpha=0.1"] = [as_float32[1]] * 2  # one more correct query: a higher mean
    best = select_alpha(backbone, data, "lora", [0.1], SPEC, progress=False, rule="best_mean")
    assert best.alpha == 0.1
    # paired: +2 points on one episode, 0 on the other, interval ±2.8: not above zero
    assert select_alpha(backbone, data, "lora", [0.1], SPEC, progress=False).alpha == 0


def test_select_alpha_runs_on_validation_episodes_and_refuses_test_classes():
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    data.split = "val"
    chosen = select_alpha(backbone, data, "lora", [0.5], SPEC, FortConfig(tau=1.0, top_k=4),
                          progress=False)  # fmt: skip
    plain = evaluate(backbone, data, tuner="lora", episodes=SPEC, progress=False)
    assert chosen.results[0.0].accuracies == plain.accuracies  # alpha 0 is plain fine-tuning
    gain = chosen.paired[0.5]  # α = 0.5 − α = 0 on the same 3 episodes
    diff = [a - b for a, b in zip(chosen.results[0.5].accuracies, plain.accuracies, strict=True)]
    assert gain.mean == pytest.approx(sum(diff) / 3)
    assert chosen.alpha == (0.5 if gain.mean - gain.ci95 > selection.TIE_TOLERANCE else 0.0)
    data.split = "novel"
    with pytest.raises(ConfigError, match="never on the test classes"):
        select_alpha(backbone, data, "lora", [0.5], SPEC, progress=False)


def test_select_alpha_over_several_processes_needs_an_output_folder():
    from focusvit.runs import DistContext

    data = dataset()
    data.split = "val"
    two = DistContext(rank=0, world_size=2)  # the refusal comes before any process group is used
    with pytest.raises(ConfigError, match="pass output_dir=FOLDER"):
        select_alpha(tiny_adapter("timm-vit"), data, "lora", [0.5], SPEC, context=two)


# ----------------------------------------------------------------------------- the paired rule
# issue 31: α > 0 only when its paired gain over α = 0 on the same validation episodes has a 95%
# interval above zero (mean − 1.96 · std / √n > 0); else α = 0.
FORT_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fort_study"
PLAIN = [0.40, 0.55, 0.30, 0.62, 0.48, 0.51, 0.37, 0.44, 0.58, 0.35]  # 10 validation episodes


def _results(rows: dict[float, list], order=None) -> dict[float, EvaluationResult]:
    """Validation results with episode records (``None``: a diverged episode)."""
    results = {}
    for alpha, accuracies in rows.items():
        episodes = order or range(len(accuracies))
        records = [
            {"episode": e, "diverged": True} if a is None else {"episode": e, "accuracy": a}
            for e, a in zip(episodes, accuracies, strict=True)
        ]
        results[alpha] = EvaluationResult.from_records(f"alpha={alpha:g}", records)
    return results


def _shifted(shifts: list[float]) -> list[float]:
    return [p + s for p, s in zip(PLAIN, shifts, strict=True)]


def _lower(diff) -> float:
    diff = np.asarray(diff)
    return diff.mean() - 1.96 * diff.std() / np.sqrt(len(diff))


def test_paired_rule_chooses_a_clear_gain():
    shifts = [0.06, 0.04, 0.05, 0.08, 0.02, 0.05, 0.06, 0.03, 0.04, 0.07]  # all wins
    assert _lower(shifts) > 0
    chosen = AlphaSelection.from_results(_results({0.0: PLAIN, 0.1: _shifted(shifts)}))
    assert chosen.rule == "paired" and chosen.alpha == 0.1 and chosen.fort.alpha == 0.1
    gain = chosen.paired[0.1]
    assert gain.mean == pytest.approx(np.mean(shifts))
    assert gain.ci95 == pytest.approx(1.96 * np.std(shifts) / np.sqrt(10))
    assert gain.wtl == "10/0/0"


def test_paired_rule_keeps_plain_on_a_noisy_gain_that_the_best_mean_would_take():
    """The committed failure: a higher validation mean whose paired interval spans zero."""
    shifts = [0.20, -0.10, 0.15, -0.12, 0.18, -0.05, 0.10, -0.08, 0.0, 0.02]
    assert np.mean(shifts) > 0 and _lower(shifts) < 0
    results = _results({0.0: PLAIN, 0.1: _shifted(shifts)})
    assert AlphaSelection.from_results(results, "best_mean").alpha == 0.1
    chosen = AlphaSelection.from_results(results)
    assert chosen.alpha == 0 and chosen.fort is None
    assert chosen.paired[0.1].wtl == "5/1/4"


def test_paired_rule_keeps_plain_on_a_loss():
    shifts = [-0.05, -0.04, -0.06, -0.03, -0.05, -0.02, -0.07, -0.04, -0.05, -0.06]
    for rule in ("paired", "best_mean"):
        chosen = AlphaSelection.from_results(_results({0.0: PLAIN, 0.5: _shifted(shifts)}), rule)
        assert chosen.alpha == 0 and chosen.paired[0.5].wtl == "0/0/10"


def test_paired_rule_skips_a_diverged_candidate():
    big = _shifted([0.2] * 10)
    big[3] = None  # one diverged validation episode: never chosen, however large its gain
    small = _shifted([0.03] * 9 + [0.04])
    chosen = AlphaSelection.from_results(_results({0.0: PLAIN, 0.1: small, 1.0: big}))
    assert chosen.alpha == 0.1 and chosen.paired[1.0] is None
    table = chosen.table()
    assert "diverged on 1 episodes: skipped" in table
    only = AlphaSelection.from_results(_results({0.0: PLAIN, 1.0: big}))
    assert only.alpha == 0 and "skipped" in only.table()


def test_paired_rule_needs_plain_fine_tuning_as_its_reference():
    plain = list(PLAIN)
    plain[0] = None
    results = _results({0.0: plain, 0.1: _shifted([0.05] * 10)})
    with pytest.raises(NonFiniteError, match=r"α = 0 .* diverged"):
        AlphaSelection.from_results(results)
    assert AlphaSelection.from_results(results, "best_mean").alpha == 0.1
    with pytest.raises(NonFiniteError, match="every α candidate diverged"):
        AlphaSelection.from_results(_results({0.0: [None, None], 0.1: [None, 0.5]}))


def test_paired_rule_breaks_ties_to_the_smaller_alpha():
    shifts = [0.06, 0.04, 0.05, 0.08, 0.02, 0.05, 0.06, 0.03, 0.04, 0.07]
    larger = [s + 0.01 for s in shifts]
    results = _results({0.0: PLAIN, 0.05: _shifted(shifts), 0.5: _shifted(larger)})
    assert AlphaSelection.from_results(results).alpha == 0.5  # the largest clear gain wins
    # the same gain (up to float rounding of the sums): the smaller α wins the tie
    results = _results({0.0: PLAIN, 0.05: _shifted(shifts), 0.5: _shifted(list(shifts))})
    assert AlphaSelection.from_results(results).alpha == 0.05
    # a clear small gain beats a larger noisy one: only clear gains compete
    noisy = [0.40, -0.10, 0.30, -0.12, 0.38, -0.05, 0.30, -0.08, 0.0, 0.02]
    results = _results({0.0: PLAIN, 0.05: _shifted(shifts), 0.5: _shifted(noisy)})
    assert AlphaSelection.from_results(results).alpha == 0.05


def test_paired_rule_pairs_by_episode_index():
    """Records are paired by their episode index, not by their position in the file."""
    shifts = [0.06, 0.04, 0.05, 0.08, 0.02, 0.05, 0.06, 0.03, 0.04, 0.07]
    order = [3, 0, 9, 1, 8, 2, 7, 4, 6, 5]
    results = _results({0.0: PLAIN})
    shuffled = _results({0.1: [_shifted(shifts)[e] for e in order]}, order=order)
    chosen = AlphaSelection.from_results({**results, **shuffled})
    assert chosen.paired[0.1].wtl == "10/0/0" and chosen.alpha == 0.1


def test_selection_record_and_table_carry_the_rule_and_the_paired_differences():
    shifts = [0.06, 0.04, 0.05, 0.08, 0.02, 0.05, 0.06, 0.03, 0.04, 0.07]
    loss = [-0.05, -0.04, -0.06, -0.03, -0.05, -0.02, -0.07, -0.04, -0.05, 0.0]
    results = _results({0.0: PLAIN, 0.1: _shifted(shifts), 1.0: _shifted(loss)})
    chosen = AlphaSelection.from_results(results)
    record = json.loads(json.dumps(chosen.record()))  # JSON values only
    assert record["rule"] == "paired" and record["alpha"] == 0.1
    assert record["paired"]["0.1"]["mean"] == pytest.approx(np.mean(shifts))
    assert record["paired"]["1"]["losses"] == 9 and record["paired"]["1"]["ties"] == 1
    assert record["validation"]["0"] == [pytest.approx(np.mean(PLAIN)), pytest.approx(
        1.96 * np.std(PLAIN) / np.sqrt(10))]  # fmt: skip
    table = chosen.table().splitlines()
    assert table[0].startswith("alpha rule paired: α > 0 only when its paired gain")
    ci = 100 * 1.96 * np.std(shifts) / np.sqrt(10)
    assert re.search(rf"^alpha 0\.1 .*\+{100 * np.mean(shifts):.2f} ± {ci:.2f} points vs α = 0, "
                     r"w/t/l 10/0/0  <- chosen$", table[2])  # fmt: skip
    assert "(reference)" in table[1] and "w/t/l 0/1/9" in table[3]
    old = AlphaSelection.from_results(results, "best_mean")
    assert old.record()["rule"] == "best_mean" and old.table().startswith("alpha rule best_mean")


def test_an_unknown_rule_is_refused_before_any_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("no candidate may be evaluated")

    monkeypatch.setattr(selection, "evaluate_many", no_work)
    data = dataset()
    data.split = "val"
    with pytest.raises(ConfigError, match="one of paired, best_mean"):
        select_alpha(tiny_adapter("timm-vit"), data, "lora", [0.1], SPEC, rule="best")


def test_committed_cells_reread_under_both_rules():
    """The committed records were chosen by the best mean (no rule recorded): re-read, that
    rule gives the recorded α; the paired rule keeps α = 0 where the gain was noise."""
    folder = FORT_RESULTS / "dinov2" / "shipped" / "5w1s" / "lora"
    recorded = json.loads((folder / "selection.json").read_text())
    assert "rule" not in recorded and recorded["alpha"] == 0.05
    assert read_selection(folder).rule == "best_mean"
    assert read_selection(folder).alpha == read_selection(folder, "best_mean").alpha == 0.05
    new = read_selection(folder, "paired")
    gain = new.paired[0.05]
    assert gain.mean > 0 and gain.mean - gain.ci95 < 0 and new.alpha == 0


def _report_only(fort_study, monkeypatch, capsys, out: Path, cell: Path) -> str:
    backbone, scenes, setting, tuner = cell.parts
    argv = ["fort_study.py", "--report-only", "--out", str(out), "--backbones", backbone,
            "--scenes", scenes, "--settings", setting, "--tuners", tuner]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    fort_study.main()
    return capsys.readouterr().out


def test_fort_study_report_keeps_the_recorded_alpha_and_rechecks_apart(
    fort_study, monkeypatch, capsys, tmp_path
):
    cell = Path("dinov2", "shipped", "5w1s", "lora")
    shutil.copytree(FORT_RESULTS / cell, tmp_path / cell)
    printed = _report_only(fort_study, monkeypatch, capsys, tmp_path, cell)
    row = next(line for line in printed.splitlines() if line.startswith("dinov2     shipped"))
    assert row.split()[13] == "0.05"  # the recorded choice, as committed
    assert "re-check, paired rule: dinov2 · shipped · 5w1s · lora: val α 0, not the recorded " \
        "0.05 (best_mean rule)" in printed  # fmt: skip
    assert "val α rule:" not in printed  # committed records: unlabelled, the table unchanged
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--alpha-rule", "best_mean"])
    fort_study.main()
    assert "re-check" not in capsys.readouterr().out


def _study_args(fort_study, out: Path, rule: str):
    import argparse

    defaults = {flag[2:].replace("-", "_"): default for flag, default, *_ in fort_study.OPTIONS}
    return argparse.Namespace(**{**defaults, "out": str(out), "alpha_rule": rule,
                                 "prompts": "explainer", "device": "cpu"})  # fmt: skip


class _Vit:
    family = "vit"


def test_fort_study_never_mixes_test_rows_of_two_rules(fort_study, monkeypatch, tmp_path):
    """A cell whose test rows follow the best-mean α is refused under the paired rule when the
    choice differs; where the choice is the same, the selection is re-recorded with its rule."""
    from focusvit.runs import DistContext

    def from_records(*args, output_dir, rule, **kwargs):
        return read_selection(output_dir.parent, rule)  # the stored episodes: no training

    monkeypatch.setattr(fort_study, "select_alpha", from_records)
    where = {"backbone": "dinov2", "scenes": "shipped", "setting": "5w1s", "tuner": "lora"}
    folder = tmp_path / "lora"
    shutil.copytree(FORT_RESULTS / "dinov2" / "shipped" / "5w1s" / "lora", folder)
    args = _study_args(fort_study, tmp_path, "best_mean")
    assert fort_study.select(_Vit(), where, args, folder, DistContext()) == 0.05  # as recorded
    args.alpha_rule = "paired"
    with pytest.raises(SystemExit, match="never mixed"):
        fort_study.select(_Vit(), where, args, folder, DistContext())
    assert "rule" not in json.loads((folder / "selection.json").read_text())  # untouched

    same = tmp_path / "ssf"  # α = 0 under either rule
    shutil.copytree(FORT_RESULTS / "dinov2" / "premise" / "5w1s" / "ssf", same)
    where = {**where, "scenes": "premise", "tuner": "ssf"}
    assert fort_study.select(_Vit(), where, args, same, DistContext()) == 0.0
    stored = json.loads((same / "selection.json").read_text())
    assert stored["rule"] == "paired" and stored["alpha"] == 0.0
    assert set(stored["paired"]) == {"0.01", "0.1"} and stored["paired"]["0.1"]["wins"] == 4
