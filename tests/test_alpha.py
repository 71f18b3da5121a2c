"""The attention-loss weight: α = 0 is plain fine-tuning, the transferable target scale, and
α chosen on validation classes only (docs/concepts/loss.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_adapter
from test_fast_eval import dataset

import focusvit.finetune.selection as selection
from focusvit.errors import ConfigError
from focusvit.finetune import FortConfig, evaluate, fit_task, select_alpha
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


def test_select_alpha_picks_the_best_validation_mean_and_plain_wins_ties(monkeypatch):
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    data.split = "val"
    means = {"alpha=0": 0.5, "alpha=0.1": 0.7, "alpha=1": 0.6}

    def fake_many(runners, dataset, spec, outputs=None, progress=True, context=None):
        assert dataset is data
        return {r.name: EvaluationResult(r.name, [means[r.name]]) for r in runners}

    monkeypatch.setattr(selection, "evaluate_many", fake_many)
    chosen = select_alpha(backbone, data, "lora", [1.0, 0.1], SPEC, progress=False)
    assert chosen.alpha == 0.1 and chosen.fort.alpha == 0.1
    assert sorted(chosen.results) == [0.0, 0.1, 1.0] and "<- chosen" in chosen.table()
    means["alpha=0.1"] = means["alpha=0"] = 0.8  # a tie: plain fine-tuning wins
    tie = select_alpha(backbone, data, "lora", [0.1, 1.0], SPEC, progress=False)
    assert tie.alpha == 0 and tie.fort is None


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
    chosen = select_alpha(backbone, data, "lora", [0.1], SPEC, progress=False)
    assert chosen.alpha == 0 and chosen.fort is None
    accuracies["alpha=0.1"] = [as_float32[1]] * 2  # one more correct query: a real gain
    assert select_alpha(backbone, data, "lora", [0.1], SPEC, progress=False).alpha == 0.1


def test_select_alpha_runs_on_validation_episodes_and_refuses_test_classes():
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    data.split = "val"
    chosen = select_alpha(backbone, data, "lora", [0.5], SPEC, FortConfig(tau=1.0, top_k=4),
                          progress=False)  # fmt: skip
    plain = evaluate(backbone, data, tuner="lora", episodes=SPEC, progress=False)
    assert chosen.results[0.0].accuracies == plain.accuracies  # alpha 0 is plain fine-tuning
    best = max(chosen.results.values(), key=lambda r: r.mean).mean
    assert chosen.results[chosen.alpha].mean == pytest.approx(best, abs=selection.TIE_TOLERANCE)
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
