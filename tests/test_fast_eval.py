"""Fast episodic evaluation (docs/benchmarks.md): cached frozen features, SimpleShot feature
transforms, and per-episode work shared by every method, each equal to the plain path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_adapter

import focusvit.finetune.trainer as trainer
from focusvit.data import TensorDataset
from focusvit.errors import ConfigError, SettingsMismatchError
from focusvit.finetune import FortConfig, evaluate, make_runner
from focusvit.finetune.features import FeatureCache
from focusvit.finetune.heads import solve, transform_features
from focusvit.runs import EpisodeSpec, evaluate_many

SPEC = EpisodeSpec(n_way=3, k_shot=2, n_query=2, episodes=4, seed=3)


class CountingDataset(TensorDataset):
    """A tensor dataset that counts how often each image is loaded (decoded)."""

    def __init__(self, images, labels):
        super().__init__(images, labels)
        self.loads: dict[int, int] = {}

    def load(self, index: int):
        self.loads[index] = self.loads.get(index, 0) + 1
        return super().load(index)


def dataset(classes: int = 5, per_class: int = 6, size: int = 32) -> CountingDataset:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, 3, 1, 1, generator=generator)
    images = centres.repeat_interleave(per_class, 0) + 0.7 * torch.randn(
        classes * per_class, 3, size, size, generator=generator
    )
    return CountingDataset(images, torch.arange(classes).repeat_interleave(per_class))


# ----------------------------------------------------------------------------- feature cache
@pytest.mark.parametrize("solver", ["prototype", "knn", "ridge", "logistic"])
def test_cached_features_give_the_uncached_accuracies(solver):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = dataset()
    cached = evaluate(backbone, data, solver=solver, episodes=SPEC, progress=False)
    direct = evaluate(backbone, data, solver=solver, episodes=SPEC, progress=False,
                      cache_features=False)  # fmt: skip
    assert cached.accuracies == direct.accuracies
    assert [r["classes"] for r in cached.records] == [r["classes"] for r in direct.records]


def test_each_image_is_encoded_once_per_run_and_backbone():
    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = dataset()
    for solver in ("prototype", "ridge", "svm"):  # three solvers share one cache
        evaluate(backbone, data, solver=solver, episodes=SPEC, progress=False)
    assert data.loads and max(data.loads.values()) == 1
    touched = {i for e in range(SPEC.episodes) for i in _episode_indices(data, e)}
    assert set(data.loads) == touched


def _episode_indices(data, index: int) -> list[int]:
    from focusvit.data.episodes import sample_episode

    episode = sample_episode(data.labels, index, SPEC.n_way, SPEC.k_shot, SPEC.n_query, SPEC.seed)
    return [*episode.support, *episode.query]


def test_feature_cache_matches_the_backbone_and_persists_keyed_by_weights(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = dataset()
    cache = FeatureCache(backbone, data, directory=tmp_path)
    features = cache([3, 0, 3])
    with torch.no_grad(), backbone.evaluating():
        reference = backbone.features(torch.stack([data.images[3], data.images[0]]))
    torch.testing.assert_close(features[[0, 1]], reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(features[0], features[2]) and len(cache) == 2
    path = cache.save()
    again = FeatureCache(backbone, data, directory=tmp_path)
    assert len(again) == 2 and torch.equal(again([0]), cache([0]))  # read from disk
    with torch.no_grad():
        next(backbone.model.parameters()).add_(1.0)  # other weights: another cache file
    other = FeatureCache(backbone, data, directory=tmp_path)
    assert len(other) == 0 and other.path != path


# ----------------------------------------------------------------------------- SimpleShot
def test_cl2n_centres_on_the_support_mean_then_normalises():
    generator = torch.Generator().manual_seed(1)
    support, query = torch.randn(6, 5, generator=generator), torch.randn(4, 5, generator=generator)
    s, q = transform_features(support, query, "cl2n")
    mean = support.mean(0)
    expected_s = (support - mean) / (support - mean).norm(dim=1, keepdim=True)
    expected_q = (query - mean) / (query - mean).norm(dim=1, keepdim=True)
    torch.testing.assert_close(s, expected_s)
    torch.testing.assert_close(q, expected_q)
    s, q = transform_features(support, query, "l2n")
    torch.testing.assert_close(q, F.normalize(query, dim=1))
    with pytest.raises(ValueError, match="cl2n"):
        transform_features(support, query, "zca")


def test_transform_changes_the_prototype_decision_as_computed_by_hand():
    # two classes; the query is nearer class 1 in Euclidean distance but in direction to class 0
    support = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[2.0, 0.1]])
    assert solve("prototype", support, labels, query).tolist() == [1]
    centred = F.normalize(support - support.mean(0), dim=1)
    q = F.normalize(query - support.mean(0), dim=1)
    expected = torch.cdist(q, centred).argmin(dim=1).tolist()
    assert solve("prototype", support, labels, query, transform="cl2n").tolist() == expected


def test_solver_options_are_refused_on_tuners_and_the_other_way_round():
    backbone = tiny_adapter("timm-vit", num_classes=0)
    with pytest.raises(ConfigError, match="frozen solvers"):
        make_runner(backbone, tuner="lora", feature_transform="cl2n")
    with pytest.raises(ConfigError, match="solver has none"):
        make_runner(backbone, solver="ridge", tasks_per_batch=4)
    with pytest.raises(ConfigError, match="cl2n"):
        make_runner(backbone, solver="prototype", feature_transform="whiten")


def test_the_transform_is_part_of_the_settings_record(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = dataset()
    out = tmp_path / "proto.jsonl"
    evaluate(backbone, data, solver="prototype", episodes=SPEC, output=out, progress=False,
             feature_transform="none")  # fmt: skip
    with pytest.raises(SettingsMismatchError, match="transform"):
        evaluate(backbone, data, solver="prototype", episodes=SPEC, output=out, progress=False,
                 feature_transform="cl2n")  # fmt: skip


# ----------------------------------------------------------------------------- shared work
def test_methods_evaluated_together_equal_methods_evaluated_alone(monkeypatch):
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    fort = FortConfig(alpha=0.5, tau=1.0, top_k=4)

    def runners():
        return [
            make_runner(backbone, solver="prototype", cache_features=False),
            make_runner(backbone, tuner="lora", options=None),
            make_runner(backbone, tuner="lora", fort=fort),
            make_runner(backbone, tuner="ssf", fort=fort),
        ]

    alone = {}
    for runner in runners():
        alone.update(evaluate_many([runner], data, SPEC, progress=False))
    prompt_calls = []
    original = trainer.prompt_targets
    monkeypatch.setattr(
        trainer,
        "prompt_targets",
        lambda *args, **kwargs: prompt_calls.append(1) or original(*args, **kwargs),
    )
    data.loads.clear()
    together = evaluate_many(runners(), data, SPEC, progress=False)
    for name, result in alone.items():
        assert together[name].accuracies == result.accuracies, name
        for a, b in zip(together[name].records, result.records, strict=True):
            if name == "prototype":
                assert "final_loss" not in a and "final_loss" not in b
                continue
            assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-5), name
    # every image decoded once per episode for all four methods; the prompts made once per
    # episode for lora+fort and ssf+fort (same head init and prompt settings)
    expected_loads = sum(len(_episode_indices(data, e)) for e in range(SPEC.episodes))
    assert sum(data.loads.values()) == expected_loads
    assert len(prompt_calls) == SPEC.episodes


def test_batched_tasks_through_the_loop_equal_one_task_at_a_time(tmp_path):
    backbone = tiny_adapter("timm-vit")
    data = dataset()
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=5, seed=1)  # 5 = 3 + a rest of 2
    fort = FortConfig(alpha=0.5, tau=1.0, top_k=4)
    one = evaluate(backbone, data, tuner="lora", fort=fort, episodes=spec, progress=False, steps=3)
    out = tmp_path / "batched.jsonl"
    batched = evaluate(backbone, data, tuner="lora", fort=fort, episodes=spec, progress=False,
                       steps=3, tasks_per_batch=3, output=out)  # fmt: skip
    assert batched.accuracies == one.accuracies
    for a, b in zip(batched.records, one.records, strict=True):
        assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4)
    with pytest.raises(ConfigError, match="sequential path"):
        make_runner(backbone, tuner="vpt", tasks_per_batch=2)
