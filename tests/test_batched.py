"""Batched tasks (finetune/batched.py): several episodes fine-tuned in one computation give what
the sequential TunerRunner gives, and the backbone comes back bit-identical."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_adapter

from focusvit.finetune import FitOptions, FortConfig, TunerRunner, batched, make_tuner
from focusvit.finetune.batched import (
    BatchingUnsupportedError,
    fit_predict_batched,
    tasks_per_batch,
)

WAYS, SHOTS, QUERIES = 3, 1, 4
SEEDS = [11, 12, 13]
OPTIONS = FitOptions(steps=4, lr=2e-2, head_init="prototype")


def make_tasks(backbone, count=3, shots=None, generator_seed=0):
    """``count`` tasks with different images and label orders."""
    g = torch.Generator().manual_seed(generator_seed)
    size = backbone.data_config["input_size"][1:]
    supports, labels, queries = [], [], []
    for t in range(count):
        k = shots[t] if shots else SHOTS
        perm = torch.randperm(WAYS, generator=g)
        labels.append(perm.repeat_interleave(k))
        supports.append(torch.randn(WAYS * k, 3, *size, generator=g))
        queries.append(torch.randn(WAYS * QUERIES, 3, *size, generator=g))
    return supports, labels, queries


def sequential(backbone, tuner, fort, options, supports, labels, queries, seeds):
    runner = TunerRunner(backbone, tuner, fort, options, torch.device("cpu"))
    out = []
    for t, seed in enumerate(seeds):
        torch.manual_seed(seed)
        out.append(runner.predict(supports[t], labels[t], queries[t]))
    return out


def snapshot(backbone):
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    flags = [p.requires_grad for p in backbone.parameters()]
    modes = [m.training for m in backbone.modules()]
    return state, flags, modes


def assert_untouched(backbone, before):
    state, flags, modes = before
    after = backbone.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert [p.requires_grad for p in backbone.parameters()] == flags
    assert [m.training for m in backbone.modules()] == modes
    assert all(p.grad is None for p in backbone.parameters())
    for module in backbone.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, module
    assert getattr(backbone, "_focusvit_tuner", None) is None


def assert_same(batched_out, sequential_out):
    assert len(batched_out) == len(sequential_out)
    for (pred_b, info_b), (pred_s, info_s) in zip(batched_out, sequential_out, strict=True):
        assert torch.equal(pred_b, pred_s)
        assert info_b["trainable"] == info_s["trainable"]
        for key in ("ce", "attn", "total"):
            assert info_b["final_loss"][key] == pytest.approx(
                info_s["final_loss"][key], rel=1e-4, abs=1e-6
            ), key


@pytest.mark.parametrize("name", ["timm-vit", "hf-vit"])
@pytest.mark.parametrize("tuner", ["lora", "ssf"])
@pytest.mark.parametrize("with_fort", [False, True], ids=["plain", "fort"])
def test_batched_equals_sequential(name, tuner, with_fort):
    backbone = tiny_adapter(name)
    supports, labels, queries = make_tasks(backbone)
    config = make_tuner(tuner)
    fort = FortConfig() if with_fort else None
    before = snapshot(backbone)
    expected = sequential(backbone, config, fort, OPTIONS, supports, labels, queries, SEEDS)
    assert_untouched(backbone, before)
    rng = torch.get_rng_state()
    got = fit_predict_batched(backbone, supports, labels, queries, config, fort, OPTIONS, SEEDS)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert_same(got, expected)
    assert_untouched(backbone, before)
    if with_fort:
        assert all(info["final_loss"]["attn"] > 0 for _, info in got)
    # the tasks trained apart: different losses per task
    assert len({round(info["final_loss"]["ce"], 6) for _, info in got}) == len(got)


@pytest.mark.parametrize("name", ["hf-dinov2", "timm-vit-reg"])
def test_batched_other_vits_and_unequal_tasks(name):
    """Dinov2 (CLS + mean pooling) and register tokens, the default SVM head with the ×20
    scaling, and a head placed on a model without one (timm's reset_classifier draws from the
    RNG). K-shot tasks with K > 1 (reshuffled n_way mini-batches) are refused."""
    backbone = tiny_adapter(name, num_classes=0 if name == "timm-vit-reg" else 5)
    with pytest.raises(BatchingUnsupportedError, match="mini-batches"):
        s, y, q = make_tasks(backbone, shots=[1, 3, 2], generator_seed=1)
        fit_predict_batched(backbone, s, y, q, make_tuner("lora"), None, FitOptions(), SEEDS)
    supports, labels, queries = make_tasks(backbone, generator_seed=1)
    config = make_tuner("lora", rank=2)
    fort = FortConfig(layers="all")
    options = FitOptions(steps=3, lr=2e-2)  # the default (SVM) head init
    before = snapshot(backbone)
    expected = sequential(backbone, config, fort, options, supports, labels, queries, SEEDS)
    got = fit_predict_batched(
        backbone, supports, labels, queries, config, fort, options, SEEDS, predict_batch_size=5
    )
    assert_same(got, expected)
    assert_untouched(backbone, before)


@pytest.mark.parametrize("tuner", ["full", "linear", "vpt"])
def test_unsupported_tuner_names_the_sequential_path(tuner):
    backbone = tiny_adapter("timm-vit")
    supports, labels, queries = make_tasks(backbone, count=2)
    before = snapshot(backbone)
    with pytest.raises(BatchingUnsupportedError, match="sequential path"):
        fit_predict_batched(
            backbone, supports, labels, queries, make_tuner(tuner), None, OPTIONS, SEEDS[:2]
        )
    assert_untouched(backbone, before)


def test_unsupported_family_and_dropout():
    swin = tiny_adapter("timm-swin")
    with pytest.raises(BatchingUnsupportedError, match="sequential path"):
        batched.check_batchable(swin, make_tuner("lora"))
    vit = tiny_adapter("timm-vit")
    with pytest.raises(BatchingUnsupportedError, match="dropout"):
        batched.check_batchable(vit, make_tuner("lora", dropout=0.1))
    vit.model.blocks[0].attn.attn_drop.p = 0.1
    with pytest.raises(BatchingUnsupportedError, match=r"blocks\.0\.attn\.attn_drop"):
        batched.check_batchable(vit, make_tuner("ssf"))
    hf = tiny_adapter("hf-vit")  # HF attention dropout is a float attribute, not a module
    next(m for m in hf.model.modules() if hasattr(m, "attention_dropout")).attention_dropout = 0.1
    with pytest.raises(BatchingUnsupportedError, match="dropout"):
        batched.check_batchable(hf, "lora")


def test_backbone_restored_on_error(monkeypatch):
    backbone = tiny_adapter("hf-vit")
    supports, labels, queries = make_tasks(backbone)
    before = snapshot(backbone)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(batched, "_task_logits", boom)
    with pytest.raises(RuntimeError, match="boom"):
        fit_predict_batched(
            backbone, supports, labels, queries, make_tuner("ssf"), FortConfig(), OPTIONS, SEEDS
        )
    assert_untouched(backbone, before)


def test_tasks_per_batch_grows_with_memory(monkeypatch):
    backbone = tiny_adapter("timm-vit")
    args = (backbone, 5, 75, 32, "cpu")
    assert tasks_per_batch(*args) >= 1  # the real memory reading
    monkeypatch.setattr(batched, "available_memory", lambda device: 1)
    assert tasks_per_batch(*args) == 1
    monkeypatch.setattr(batched, "available_memory", lambda device: 1 << 30)
    small = tasks_per_batch(*args)
    monkeypatch.setattr(batched, "available_memory", lambda device: 4 << 30)
    large = tasks_per_batch(*args)
    assert 1 < small < large and large >= 3 * small
    assert tasks_per_batch(*args, memory_fraction=0.125) == pytest.approx(small, abs=1)
    # LoRA keeps fewer activations than SSF (its hooks save no per-site copy)
    assert tasks_per_batch(*args, tuner="lora") > tasks_per_batch(*args, tuner="ssf")
    assert tasks_per_batch(*args, tuner=None) == tasks_per_batch(*args, tuner="ssf")
    with pytest.raises(ValueError, match="memory_fraction"):
        tasks_per_batch(*args, memory_fraction=0)
