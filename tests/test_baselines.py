"""CNN cross-attention baselines: CAN (Hou et al. 2019) and CrossTransformers (Doersch et al.
2020) on tiny encoders and random tensors (CPU, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_adapter

from focusvit.backbones import UnsupportedMethodError
from focusvit.baselines import (
    CANConfig,
    CheckpointError,
    Conv4,
    CrossAttentionModule,
    CrossAttentionNetwork,
    CrossTransformer,
    CrossTransformerNetwork,
    CTXConfig,
    EpisodeBatch,
    NonSpatialBackboneError,
    PrototypeNetwork,
    ResNet12,
    TrainConfig,
    aligned_prototypes,
    build_baseline,
    build_encoder,
    class_attention,
    class_features,
    evaluate_baseline,
    load_baseline,
    load_config,
    simclr_episode,
    train_episodic,
    transductive_scores,
)
from focusvit.data import TensorDataset
from focusvit.errors import SettingsMismatchError
from focusvit.explainers.base import Explanation
from focusvit.finetune import evaluate
from focusvit.runs import EpisodeSpec, load_state

SIZE = 48  # Conv-4 at 48 px -> 3x3 maps (9 positions)
REPO = Path(__file__).resolve().parents[1]


def tiny(method: str, **overrides):
    options = {"encoder": "conv4", "widths": [8], "image_size": SIZE, **overrides}
    if method == "can":
        options.setdefault("num_classes", 6)
    if method == "ctx":
        options.update(key_dim=4, value_dim=5)
    return build_baseline(method, **options)


def dataset(classes: int = 6, per_class: int = 5, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.randn(len(labels), 3, SIZE, SIZE, generator=g) * 0.5
    images += (labels.float()[:, None, None, None] - classes / 2) * 0.3  # learnable signal
    return TensorDataset(images, labels)


def episode(n_way: int, k_shot: int, n_query: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(n_way * k_shot, 3, SIZE, SIZE, generator=g)
    query = torch.randn(n_way * n_query, 3, SIZE, SIZE, generator=g)
    return support, torch.arange(n_way).repeat_interleave(k_shot), query


# ----------------------------------------------------------------------------- encoders
def test_encoders_give_spatial_maps_at_84_px():
    x = torch.randn(2, 3, 84, 84)
    assert Conv4(8)(x).shape == (2, 8, 5, 5)
    assert ResNet12((4, 6, 8, 10))(x).shape == (2, 10, 5, 5)
    assert build_encoder("resnet12-narrow").out_channels == 512
    assert build_encoder("resnet12").out_channels == 640


def test_timm_cnn_through_the_adapter_works_with_both_methods():
    encoder = build_encoder(tiny_adapter("timm-cnn"), image_size=64)  # resnet10t: 2x2 maps
    for cls, config in ((CrossAttentionNetwork, CANConfig), (CrossTransformerNetwork, CTXConfig)):
        model = cls(config(image_size=64), encoder=encoder).eval()
        support, labels, query = (
            torch.randn(3, 3, 64, 64),
            torch.arange(3),
            torch.randn(4, 3, 64, 64),
        )
        assert model.predict(support, labels, query).shape == (4,)


def test_non_spatial_backbones_are_refused_with_the_fix():
    with pytest.raises(NonSpatialBackboneError, match="conv4"):
        build_encoder(tiny_adapter("timm-vit"))
    with pytest.raises(NonSpatialBackboneError, match="positions"):
        build_baseline("ctx", encoder="conv4", widths=[4], image_size=16)  # 1x1 map
    with pytest.raises(NonSpatialBackboneError, match="adapt"):
        build_encoder(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("resnet50")


def test_wrong_image_size_names_the_size():
    model = tiny("ctx").eval()
    with pytest.raises(ValueError, match=f"resize the images to {SIZE}"):
        model.predict(torch.randn(2, 3, 64, 64), torch.arange(2), torch.randn(2, 3, 64, 64))


# ----------------------------------------------------------------------------- CAN
@pytest.mark.parametrize(("n_way", "k_shot", "n_query"), [(2, 1, 3), (5, 1, 2), (3, 4, 1)])
def test_can_shapes(n_way, k_shot, n_query):
    model = tiny("can")
    support, labels, query = episode(n_way, k_shot, n_query)
    maps = model.encode(support)
    out = model.cam(class_features(maps, labels, n_way), model.encode(query))
    q = n_way * n_query
    assert out.class_features.shape == out.query_features.shape == (q, n_way, 8, 3, 3)
    assert out.class_attention.shape == out.query_attention.shape == (q, n_way, 3, 3)
    batch = EpisodeBatch(support, labels, query, torch.arange(n_way).repeat_interleave(n_query),
                         torch.randint(0, 6, (q,)))  # fmt: skip
    loss, logs = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and set(logs) >= {"global", "nearest", "acc"}
    model.eval()
    assert model.predict(support, labels, query).shape == (q,)
    assert model.predict(support, labels, query, transductive=True).shape == (q,)


def test_can_attention_rows_sum_to_one_and_match_an_independent_computation():
    torch.manual_seed(1)
    module = CrossAttentionModule(positions=9, reduction=3, temperature=0.5).eval()
    classes, queries = torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3)
    out = module(classes, queries)
    assert torch.allclose(out.class_attention.sum(dim=(-2, -1)), torch.ones(3, 2), atol=1e-5)
    assert torch.allclose(out.query_attention.sum(dim=(-2, -1)), torch.ones(3, 2), atol=1e-5)

    def fusion(g):  # 1x1 convs on an (m,) vector, BN in eval mode
        conv1, bn, _, conv2 = module.fusion
        hidden = conv1.weight[:, :, 0, 0] @ g
        hidden = (hidden - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        hidden = torch.relu(hidden * bn.weight + bn.bias)
        return conv2.weight[:, :, 0, 0] @ hidden + conv2.bias

    def attend(own, other):  # own, other: (c, m) -> reweighted own map and attention (m,)
        r = torch.zeros(9, 9)
        for i in range(9):
            for j in range(9):
                r[i, j] = F.cosine_similarity(own[:, i], other[:, j], dim=0)
        w = fusion(r.mean(dim=0))
        a = torch.softmax(torch.stack([(r[i] * w).mean() for i in range(9)]) / 0.5, dim=0)
        return own * (1 + a), a

    for q in range(3):
        for n in range(2):
            p_map, q_map = classes[n].flatten(1), queries[q].flatten(1)
            p_out, a_p = attend(p_map, q_map)
            q_out, a_q = attend(q_map, p_map)
            assert torch.allclose(out.class_attention[q, n].flatten(), a_p, atol=1e-5)
            assert torch.allclose(out.query_attention[q, n].flatten(), a_q, atol=1e-5)
            assert torch.allclose(out.class_features[q, n].flatten(1), p_out, atol=1e-5)
            assert torch.allclose(out.query_features[q, n].flatten(1), q_out, atol=1e-5)


def test_class_features_average_the_support_maps_of_each_class():
    maps, labels = torch.randn(5, 2, 3, 3), torch.tensor([0, 1, 0, 2, 0])
    means = class_features(maps, labels, 3)
    assert torch.allclose(means[0], maps[[0, 2, 4]].mean(0))
    assert torch.allclose(means[2], maps[3])


def test_transductive_keeps_support_labels_and_takes_the_most_confident_queries():
    model = tiny("can", transductive_counts=[4, 7]).eval()
    support, labels, query = episode(3, 2, 3)
    labels_before = labels.clone()
    with torch.no_grad():
        s_maps, q_maps = model.encode(support), model.encode(query)
        result = transductive_scores(model, s_maps, labels, q_maps, 3, [4, 7])
        scores = model.scores_from_maps(s_maps, labels, q_maps, 3)
        for count, round_ in zip([4, 7], result.rounds, strict=True):
            confidence, pseudo = torch.softmax(scores, -1).max(-1)
            expected = confidence.topk(count).indices
            assert torch.equal(round_.indices, expected)
            assert torch.equal(round_.labels, pseudo[expected])
            assert (round_.confidence[:-1] >= round_.confidence[1:]).all()
            maps = torch.cat([s_maps, q_maps[expected]])
            scores = model.scores_from_maps(maps, torch.cat([labels, pseudo[expected]]), q_maps, 3)
        assert torch.allclose(result.scores, scores)
    assert torch.equal(labels, labels_before) and torch.equal(result.support_labels, labels)
    many = model.transduce(support, labels, query, counts=[100])  # more than Q: clamped
    assert len(many.rounds[0].indices) == len(query)
    assert torch.equal(model.predict(support, labels, query, transductive=True), result.predictions)


def test_can_classifier_must_cover_the_base_classes():
    model = tiny("can", num_classes=3)
    with pytest.raises(ValueError, match="num_classes=6"):
        train_episodic(model, dataset(), config=TrainConfig(episodes=1, n_way=2, n_query=1),
                       progress=False)  # fmt: skip


# ----------------------------------------------------------------------------- CTX
@pytest.mark.parametrize(("n_way", "k_shot", "n_query"), [(2, 1, 3), (5, 1, 2), (3, 4, 1)])
def test_ctx_shapes(n_way, k_shot, n_query):
    model = tiny("ctx")
    support, labels, query = episode(n_way, k_shot, n_query)
    out = model.forward_maps(support, labels, query)
    q, s = n_way * n_query, n_way * k_shot
    assert out.logits.shape == (q, n_way)
    assert out.attention.shape == (q, n_way, 9, s * 9)
    assert out.prototypes.shape == (q, n_way, 9, 5) and out.query_values.shape == (q, 9, 5)
    assert (out.logits <= 0).all()
    batch = EpisodeBatch(support, labels, query, torch.arange(n_way).repeat_interleave(n_query))
    loss, _ = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_ctx_attention_is_a_softmax_over_exactly_one_class_support_positions():
    queries, keys = torch.randn(2, 4, 6), torch.randn(5, 3, 6)
    labels = torch.tensor([1, 0, 2, 1, 0])
    attention = class_attention(queries, keys, labels, 3)  # (2, 3, 4, 15)
    owner = labels.repeat_interleave(3)
    for c in range(3):
        inside = owner == c
        assert (attention[:, c][..., ~inside] == 0).all()
        logits = queries @ keys.reshape(15, 6)[inside].T / np.sqrt(6)
        assert torch.allclose(attention[:, c][..., inside], torch.softmax(logits, -1), atol=1e-6)
    assert torch.allclose(attention.sum(-1), torch.ones(2, 3, 4))


def test_ctx_prototype_with_one_support_image_and_identity_attention_is_the_support_values():
    values = torch.randn(1, 9, 5)  # one support image, 9 positions
    identity = torch.eye(9)[None, None]  # query position p attends to support position p
    assert torch.allclose(aligned_prototypes(identity, values), values[None])


def test_ctx_logits_are_minus_mean_squared_distance():
    head = CrossTransformer(4, 3, 2)
    s_maps, q_maps = torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3)
    out = head(s_maps, torch.tensor([0, 1]), q_maps, 2)
    w = head.value(q_maps).flatten(2).transpose(1, 2)
    expected = -((out.prototypes - w[:, None]) ** 2).sum(-1).mean(-1)
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_simclr_episodes_have_one_class_per_support_image():
    support = torch.randn(6, 3, SIZE, SIZE)
    batch = simclr_episode(support, torch.Generator().manual_seed(0))
    assert batch.kind == "simclr" and batch.query_classes is None
    assert torch.equal(batch.support_labels, torch.arange(6))
    assert torch.equal(batch.query_labels, torch.arange(6))
    assert batch.query.shape == support.shape and not torch.allclose(batch.query, support)
    model = tiny("ctx", simclr_probability=1.0)
    base = EpisodeBatch(support, torch.tensor([0, 0, 1, 1, 2, 2]), support[:3], torch.arange(3))
    assert model.prepare_episode(base, np.random.default_rng(0)).kind == "simclr"
    never = tiny("ctx", simclr_probability=0.0)
    assert never.prepare_episode(base, np.random.default_rng(0)) is base
    with pytest.raises(ValueError, match="two support images"):
        simclr_episode(support[:1], torch.Generator())


def test_ctx_has_no_transductive_inference():
    model = tiny("ctx")
    with pytest.raises(UnsupportedMethodError, match="transductive=False"):
        evaluate_baseline(model, dataset(), EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=1),
                          transductive=True, progress=False)  # fmt: skip


# ----------------------------------------------------------------------------- explanations
@pytest.mark.parametrize("method", ["can", "ctx"])
def test_cross_attention_maps_are_explanations(method):
    model = tiny(method).eval()
    support, labels, query = episode(3, 1, 2)
    with torch.no_grad():
        on_query = model.explain(support, labels, query)
        on_support = model.explain(support, labels, query, side="support")
    assert isinstance(on_query, Explanation) and on_query.scores.shape == (6, 3, 3)
    assert on_query.image_size == (SIZE, SIZE) and on_query.maps().shape == (6, SIZE, SIZE)
    assert torch.equal(on_query.targets, model.predict(support, labels, query))
    assert on_support.scores.shape[1:] == (3, 3) and len(on_support) == 3
    targets = torch.tensor([2, 2, 1, 0, 0, 1])
    assert torch.equal(model.explain(support, labels, query, targets=targets).targets, targets)


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_baseline_uses_the_same_episodes_and_records_as_evaluate(tmp_path):
    data = dataset()
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=3, seed=5)
    kwargs = {"episodes": spec, "progress": False}
    vit = evaluate(tiny_adapter("timm-cnn"), data, solver="prototype", **kwargs)
    out = tmp_path / "can.jsonl"
    can = evaluate_baseline(tiny("can"), data, transductive=True, output=out, **kwargs)
    assert [r["classes"] for r in can.records] == [r["classes"] for r in vit.records]
    assert set(can.records[0]) == set(vit.records[0])
    assert can.method == "can+transductive" and len(out.read_text().splitlines()) == 1 + 3
    resumed = evaluate_baseline(tiny("can"), data, transductive=True, output=out, **kwargs)
    assert resumed.accuracies == can.accuracies and len(out.read_text().splitlines()) == 1 + 3
    with pytest.raises(SettingsMismatchError, match="weights"):  # other weights never resume
        torch.manual_seed(123)
        evaluate_baseline(tiny("can"), data, transductive=True, output=out, **kwargs)
    proto = evaluate_baseline(PrototypeNetwork(tiny("ctx").config), data, **kwargs)
    assert proto.method == "prototype" and 0 <= proto.mean <= 1


# ----------------------------------------------------------------------------- training
def small_run(**overrides) -> TrainConfig:
    options = {"episodes": 4, "n_way": 3, "k_shot": 1, "n_query": 2, "optimizer": "adam",
               "lr": 1e-3, "validate_every": 2, "val_episodes": 2, "val_queries": 2,
               "checkpoint_every": 2, "lr_milestones": []}  # fmt: skip
    return TrainConfig(**{**options, **overrides})


@pytest.mark.parametrize("method", ["can", "ctx"])
def test_training_resumes_to_the_same_weights_and_selects_on_validation(method, tmp_path):
    base, val = dataset(seed=0), dataset(seed=1)
    torch.manual_seed(0)
    whole = tiny(method)
    result = train_episodic(whole, base, val, small_run(), tmp_path / "whole", progress=False)
    assert [v["episode"] for v in result.validations] == [2, 4]
    best = max(result.validations, key=lambda v: v["accuracy"])
    assert result.best_accuracy == best["accuracy"]
    assert (tmp_path / "whole" / "best.safetensors").exists() and (
        tmp_path / "whole" / "last.safetensors"
    ).exists()

    torch.manual_seed(0)
    part = tiny(method)  # the same initial weights as ``whole``
    train_episodic(part, base, val, small_run(episodes=2), tmp_path / "part", progress=False)
    resumed = tiny(method)
    again = train_episodic(resumed, base, val, small_run(), tmp_path / "part", progress=False)
    assert len(again.history) == 4 and again.validations == result.validations
    final_whole = load_state(tmp_path / "whole" / "last.safetensors")["model"]
    final_part = load_state(tmp_path / "part" / "last.safetensors")["model"]
    for key, value in final_whole.items():
        assert torch.allclose(value.float(), final_part[key].float(), atol=1e-5), key

    loaded = load_baseline(tmp_path / "whole" / "best.safetensors")
    assert type(loaded) is type(whole)
    for key, value in whole.state_dict().items():  # the model holds the best weights
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_checkpoint_errors_name_the_fix(tmp_path):
    base = dataset()
    train_episodic(tiny("can"), base, None, small_run(episodes=1), tmp_path / "can", progress=False)
    with pytest.raises(CheckpointError, match="'can' model, not 'ctx'"):
        train_episodic(tiny("ctx"), base, None, small_run(episodes=2), tmp_path / "can",
                       progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="load_baseline"):
        CrossTransformerNetwork.from_checkpoint(tmp_path / "can" / "last.safetensors")
    with pytest.raises(SettingsMismatchError, match="n_way: 3 -> 2"):
        train_episodic(tiny("can"), base, None, small_run(episodes=2, n_way=2), tmp_path / "can",
                       progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="another configuration"):
        train_episodic(tiny("can", temperature=0.1), base, None, small_run(episodes=2),
                       tmp_path / "can", progress=False)  # fmt: skip
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_baseline(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_baseline(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- configs
def test_yaml_configs_load_into_the_dataclasses():
    method, model, train = load_config(REPO / "configs" / "baseline" / "can.yaml")
    assert method == "can" and model == CANConfig() and train == TrainConfig()
    method, model, train = load_config(REPO / "configs" / "baseline" / "ctx.yaml")
    assert method == "ctx" and model == CTXConfig() and train == TrainConfig()
    # the values are read from the node, not taken from the defaults
    method, model, train = load_config(
        {"method": "can", "model": {"temperature": 0.5}, "train": {"episodes": 7}}
    )
    assert method == "can" and model == CANConfig(temperature=0.5)
    assert train == TrainConfig(episodes=7)
    with pytest.raises(ValueError, match="unknown CTXConfig keys"):
        load_config({"method": "ctx", "model": {"temprature": 1}, "train": {}})


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (CANConfig, {"temperature": 0}, "temperature"),
        (CANConfig, {"transductive_counts": [35, 0]}, "transductive_counts"),
        (CANConfig, {"num_classes": 2.5}, "num_classes"),
        (CTXConfig, {"simclr_probability": 1.5}, "simclr_probability"),
        (CTXConfig, {"key_dim": 0}, "key_dim"),
        (TrainConfig, {"optimizer": "lbfgs"}, "optimizer"),
        (TrainConfig, {"n_way": 0}, "n_way"),
    ],
)
def test_configs_validate(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(**options)


def test_support_labels_must_cover_every_class():
    model = tiny("ctx").eval()
    support, _, query = episode(3, 1, 1)
    with pytest.raises(ValueError, match="every class"):
        model.predict(support, torch.tensor([0, 2, 2]), query)


def test_evaluation_records_are_json_lines(tmp_path):
    out = tmp_path / "ctx.jsonl"
    evaluate_baseline(tiny("ctx"), dataset(), EpisodeSpec(n_way=2, k_shot=2, n_query=1, episodes=2),
                      output=out, progress=False)  # fmt: skip
    header, *records = [json.loads(line) for line in out.read_text().splitlines()]
    assert header["method"] == "ctx" and header["settings"]["runner"]["method"] == "ctx"
    assert [r["episode"] for r in records] == [0, 1] and records[0]["method"] == "ctx"


def test_cached_maps_give_the_same_evaluation_as_encoding_every_episode():
    data, model = dataset(), tiny("can")
    kwargs = {"episodes": EpisodeSpec(n_way=3, k_shot=2, n_query=1, episodes=2), "progress": False}
    cached = evaluate_baseline(model, data, transductive=True, **kwargs)
    direct = evaluate_baseline(model, data, transductive=True, cache_features=False, **kwargs)
    assert cached.accuracies == direct.accuracies
    assert model.training  # training flags restored


def test_cached_maps_follow_a_dataset_edited_in_place():
    """Issue 32: the baselines' map cache was keyed by id(dataset) alone, so images edited in
    place kept their old maps; with the cache the accuracies now equal the uncached ones."""
    from focusvit.baselines.evaluate import BaselineRunner
    from focusvit.runs import evaluate as evaluate_runner

    data = dataset()
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=4, seed=5)
    model = tiny("can").eval()
    cached = BaselineRunner(model, torch.device("cpu"), cache_features=True)
    plain = BaselineRunner(model, torch.device("cpu"), cache_features=False)
    before = evaluate_runner(cached, data, spec, progress=False)
    generator = torch.Generator().manual_seed(3)
    data.images.copy_(torch.randn(data.images.shape, generator=generator))  # edit in place
    after = evaluate_runner(cached, data, spec, progress=False)
    expected = evaluate_runner(plain, data, spec, progress=False)
    assert after.accuracies == expected.accuracies
    assert before.accuracies != expected.accuracies  # the edit changes the result
