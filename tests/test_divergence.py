"""Divergence is never silent (issue 32, "Divergence"): settings that can only diverge are
refused up front, a NaN / inf loss or parameter stops the task with NonFiniteError naming the
step and the setting to change (the backbone restored bit-identically), and the evaluation loop
records such an episode as diverged, never as an accuracy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_adapter
from hydra import compose, initialize_config_module

import focusvit.runconfig as rc
from focusvit.cli import validate_fewshot
from focusvit.data import SyntheticScenes
from focusvit.errors import ConfigError, NonFiniteError
from focusvit.finetune import FitOptions, FortConfig, evaluate, fit_task, resolve_fort
from focusvit.finetune.batched import fit_predict_batched
from focusvit.finetune.recipes import recipe_for
from focusvit.finetune.trainer import check_finite_step
from focusvit.runs import EpisodeSpec, EvaluationResult
from focusvit.runs import loop as loop_module

INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def vit():
    return tiny_adapter("timm-vit")


def _support(backbone, n_way: int = 3):
    h, w = backbone.data_config["input_size"][1:]
    images = torch.randn(n_way, 3, h, w, generator=torch.Generator().manual_seed(1))
    return images, torch.arange(n_way)


def _state(backbone) -> dict:
    return {
        "weights": {k: v.detach().clone() for k, v in backbone.model.state_dict().items()},
        "modes": [m.training for m in backbone.modules()],
        "flags": [p.requires_grad for p in backbone.parameters()],
        "head": backbone.head,
    }


def _assert_restored(backbone, before: dict) -> None:
    after = _state(backbone)
    assert after["weights"].keys() == before["weights"].keys()
    for key, value in before["weights"].items():
        assert torch.equal(after["weights"][key], value), key
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert after["head"] is before["head"]
    assert all(p.grad is None for p in backbone.parameters())


# ----------------------------------------------------------------------------- up front
@pytest.mark.parametrize("lr", [0, -1.0, INF, -INF, NAN, True, "1e-3"])
def test_fit_options_refuse_a_learning_rate_that_cannot_train(lr):
    with pytest.raises(ConfigError, match=r"lr must be > 0 and finite.*lr=5e-3"):
        FitOptions(lr=lr)


def test_fit_options_keep_valid_values_and_refuse_non_finite_others():
    assert FitOptions(lr=1e-3, steps=3.0).steps == 3
    with pytest.raises(ConfigError, match="weight_decay"):
        FitOptions(weight_decay=NAN)
    with pytest.raises(ConfigError, match="steps"):
        FitOptions(steps=2.5)
    with pytest.raises(ConfigError, match="momentum"):
        FitOptions(momentum=NAN)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("alpha", NAN, "alpha must be >= 0 and finite"),
        ("alpha", INF, "alpha must be >= 0 and finite"),
        ("alpha", -0.1, "alpha must be >= 0 and finite"),
        ("tau", NAN, "tau must be > 0 and finite"),
        ("tau", INF, "tau must be > 0 and finite"),
        ("tau", 0.0, "tau must be > 0 and finite"),
    ],
)
def test_fort_config_refuses_alpha_and_tau_that_cannot_train(field, value, match):
    with pytest.raises(ConfigError, match=match):
        FortConfig(**{field: value})


@pytest.mark.parametrize("override", ["trainer.lr=inf", "trainer.lr=nan", "fort.alpha=nan"])
def test_cli_refuses_non_finite_lr_and_alpha(override):
    with initialize_config_module(rc.CONFIG_MODULE, version_base="1.3"):
        cfg = compose("fewshot", overrides=[override])
    with pytest.raises(ConfigError, match=r"must be .* and finite"):
        validate_fewshot(cfg)


def test_layers_outside_the_model_are_refused_with_the_valid_range(vit):
    assert vit.num_layers == 2
    assert FortConfig(layers=[-1, 0]).layer_indices(2) == [1, 0]
    for layers in ([5], [2], [-3]):
        with pytest.raises(ConfigError, match=r"-2\.\.1"):
            FortConfig(layers=layers).layer_indices(2)
        with pytest.raises(ConfigError, match="2-block"):
            resolve_fort(vit, "lora", FortConfig(layers=layers))
    before = _state(vit)
    images, labels = _support(vit)
    with (
        pytest.raises(ConfigError, match="layers"),
        fit_task(vit, images, labels, tuner="lora", fort=FortConfig(layers=[5])),
    ):
        pass
    _assert_restored(vit, before)


# ----------------------------------------------------------------------------- fit_task
def test_diverging_full_fine_tuning_stops_and_restores_the_backbone(vit):
    before = _state(vit)
    images, labels = _support(vit)
    with (
        pytest.raises(NonFiniteError) as caught,
        fit_task(vit, images, labels, tuner="full", lr=1e6),
    ):
        pytest.fail("a diverged task must not be handed out")
    message = str(caught.value)
    assert "\n" not in message
    assert "diverged at step" in message
    assert "ce=" in message and "total=" in message
    assert "lr=1e+06 now" in message and "alpha" not in message
    _assert_restored(vit, before)


def test_diverging_with_the_attention_loss_names_alpha(vit):
    before = _state(vit)
    images, labels = _support(vit)
    with (
        pytest.raises(NonFiniteError, match=r"attn=.*lr=.*alpha=0\.03 now"),
        fit_task(vit, images, labels, tuner="full", fort=FortConfig(), lr=1e6),
    ):
        pass
    _assert_restored(vit, before)


def test_a_sane_learning_rate_trains_without_error(vit):
    images, labels = _support(vit)
    with fit_task(vit, images, labels, tuner="full", lr=1e-4, steps=2) as task:
        assert len(task.losses) == 2
        assert torch.isfinite(task.logits(images)).all()


def test_non_finite_parameter_with_a_finite_loss_is_caught():
    recipe = recipe_for("vit", "lora")
    finite = {"ce": 1.0, "attn": 0.0, "total": 1.0}
    check_finite_step(3, finite, [torch.ones(4)], recipe)  # nothing wrong: no error
    with pytest.raises(NonFiniteError, match=r"step 3: 1 trainable parameter tensor"):
        check_finite_step(3, finite, [torch.ones(4), torch.tensor([1.0, INF])], recipe)
    with pytest.raises(NonFiniteError, match=r"step 7: the loss is not finite .*ce=nan"):
        check_finite_step(7, {"ce": NAN, "attn": 0.0, "total": NAN}, [torch.ones(2)], recipe)


def test_non_finite_query_logits_are_refused(vit):
    images, labels = _support(vit)
    with fit_task(vit, images, labels, tuner="lora", steps=0) as task:
        with torch.no_grad():
            vit.head.weight.fill_(NAN)
        with pytest.raises(NonFiniteError, match=r"non-finite .*logits"):
            task.predict(images)


def test_diverging_batched_fine_tuning_stops_and_restores_the_backbone(vit):
    before = _state(vit)
    images, labels = _support(vit)
    supports = [images, images.flip(0)]
    with pytest.raises(NonFiniteError, match=r"task \d of a batch of 2: .*diverged at step"):
        fit_predict_batched(
            vit, supports, [labels, labels], supports, "lora", None, FitOptions(lr=1e6), [0, 1]
        )
    _assert_restored(vit, before)


# ----------------------------------------------------------------------------- the loop
class _FakeRunner:
    """A runner that diverges on chosen episodes and counts its runs."""

    name = "fake"

    def __init__(self, diverge: set[int], batch: bool = False):
        self.diverge, self.calls = diverge, []
        if batch:
            self.tasks_per_batch = 3

    def settings(self) -> dict:
        return {"diverge": sorted(self.diverge)}

    def run(self, data):
        index = data.episode.index
        self.calls.append(index)
        if index in self.diverge:
            raise NonFiniteError(f"fine-tuning diverged at step 2 (episode {index})")
        labels = data.episode.query_labels
        predictions = labels.clone() if index % 2 == 0 else torch.zeros_like(labels)
        return predictions, labels, {}

    def run_batch(self, datas):
        self.calls.append(tuple(d.episode.index for d in datas))
        if any(d.episode.index in self.diverge for d in datas):
            raise NonFiniteError("task 1 of a batch of 3: fine-tuning diverged at step 2")
        return [self.run(d) for d in datas]


def _scenes():
    return SyntheticScenes("novel", images_per_class=3, num_classes=3, seed=3)


SPEC = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=3)


def test_a_diverged_episode_is_recorded_and_never_counted_as_accuracy():
    runner = _FakeRunner({1})
    result = loop_module.evaluate(runner, _scenes(), SPEC, progress=False)
    assert result.diverged == 1 and result.episodes == 3
    assert len(result.accuracies) == 2
    record = result.records[1]
    assert record["diverged"] is True and "accuracy" not in record
    assert "step 2" in record["error"] and record["episode"] == 1
    finished = [r["accuracy"] for r in result.records if "accuracy" in r]
    assert result.mean == pytest.approx(sum(finished) / 2)
    assert str(result).endswith("(3 episodes, 1 diverged)")


def test_a_result_where_every_episode_diverged_says_so():
    result = loop_module.evaluate(_FakeRunner({0, 1, 2}), _scenes(), SPEC, progress=False)
    assert (result.diverged, result.accuracies) == (3, [])
    assert str(result) == "fake: all 3 episodes diverged (no accuracy; see the records' error)"
    assert "nan" not in str(result).lower()


def test_from_records_skips_diverged_records():
    records = [
        {"method": "m", "episode": 0, "accuracy": 0.5},
        {"method": "m", "episode": 1, "diverged": True, "error": "x"},
        {"method": "m", "episode": 2, "accuracy": 1.0},
    ]
    result = EvaluationResult.from_records("m", records)
    assert result.accuracies == [0.5, 1.0] and result.diverged == 1
    assert math.isclose(result.mean, 0.75)
    assert str(result).startswith("m: 75.00 ± ")


def test_a_diverged_batch_is_rerun_one_episode_at_a_time():
    runner = _FakeRunner({1}, batch=True)
    result = loop_module.evaluate(runner, _scenes(), SPEC, progress=False)
    assert runner.calls == [(0, 1, 2), 0, 1, 2]
    assert [r.get("diverged", False) for r in result.records] == [False, True, False]


def test_resuming_keeps_diverged_episodes_without_rerunning_them(tmp_path):
    output = tmp_path / "fake.jsonl"
    first = loop_module.evaluate(_FakeRunner({1}), _scenes(), SPEC, output, progress=False)
    lines = [json.loads(line) for line in output.read_text().splitlines()[1:]]
    assert [line.get("diverged", False) for line in lines] == [False, True, False]
    again = _FakeRunner({1})
    resumed = loop_module.evaluate(again, _scenes(), SPEC, output, progress=False)
    assert again.calls == []
    assert str(resumed) == str(first)
    assert resumed.diverged == 1


# ----------------------------------------------------------------------------- end to end
def test_evaluate_records_lr_1e6_as_diverged(vit):
    before = _state(vit)
    result = evaluate(vit, _scenes(), tuner="full", lr=1e6, episodes=SPEC, progress=False)
    assert result.diverged == 3 and result.accuracies == []
    assert all(
        "accuracy" not in r and "lower the learning rate" in r["error"] for r in result.records
    )
    assert "all 3 episodes diverged" in str(result)
    _assert_restored(vit, before)


def test_evaluate_refuses_lr_inf_before_training(vit):
    with pytest.raises(ConfigError, match="lr must be > 0 and finite"):
        evaluate(vit, _scenes(), tuner="full", lr=INF, episodes=SPEC, progress=False)
