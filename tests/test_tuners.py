"""Tuners of the few-shot fine-tuning stage (docs/recipes.md): linear, full, LoRA, SSF, VPT."""

from __future__ import annotations

import pytest
import torch
from conftest import SWIN_MODELS, input_for, tiny_adapter
from torch import nn

from focusvit.backbones import UnsupportedMethodError
from focusvit.finetune import (
    TUNERS,
    LoraConfig,
    VPTConfig,
    applicable_tuners,
    apply_tuner,
    make_tuner,
)

MODELS = ["timm-vit", "timm-vit-reg", "hf-vit", "hf-dinov2", "timm-swin", "hf-swin"]
COLUMNAR = [m for m in MODELS if m not in SWIN_MODELS]
CASES = (
    [(m, t) for m in MODELS for t in ("linear", "full", "lora", "ssf")]
    + [(m, "vpt") for m in COLUMNAR]
    + [("timm-cnn", "linear"), ("timm-cnn", "full")]
)


def all_hooks(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def batch_for(adapter, batch: int = 2) -> torch.Tensor:
    return input_for(adapter, batch, size=(64, 64) if adapter.family == "cnn" else None)


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: (p, p.detach().clone()) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "hooks": all_hooks(model),
    }


def assert_restored(model: nn.Module, before: dict) -> None:
    params = dict(model.named_parameters())
    assert params.keys() == before["params"].keys()
    for name, (obj, saved) in before["params"].items():
        assert params[name] is obj, name
        assert torch.equal(params[name], saved), name
    buffers = dict(model.named_buffers())
    assert buffers.keys() == before["buffers"].keys()
    for name, saved in before["buffers"].items():
        assert torch.equal(buffers[name], saved), name
    assert {n: p.requires_grad for n, p in params.items()} == before["flags"]
    assert {n: m.training for n, m in model.named_modules()} == before["modes"]
    assert all_hooks(model) == before["hooks"]


def is_own(tuner: str, name: str) -> bool:
    return {
        "linear": False,
        "full": True,
        "lora": ".lora_A." in name or ".lora_B." in name,
        "ssf": ".ssf." in name,
        "vpt": name.startswith("vpt."),
    }[tuner]


def train_step(adapter, tuned, x, lr=1e-2) -> None:
    optimiser = torch.optim.AdamW(tuned.trainable_parameters(), lr=lr)
    labels = torch.arange(x.shape[0]) % max(adapter.num_classes, 1)
    loss = nn.functional.cross_entropy(adapter.logits(x), labels)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()


# ----------------------------------------------------------------------------- every tuner
@pytest.mark.parametrize(("name", "tuner"), CASES)
def test_trains_only_its_parameters_and_removal_is_exact(name, tuner):
    adapter = tiny_adapter(name)
    model = adapter.model
    x = batch_for(adapter)
    with torch.no_grad():
        reference = adapter.logits(x)
    before = snapshot(model)

    tuned = apply_tuner(adapter, tuner)
    trainable = [n for n, _ in tuned.named_trainable_parameters()]
    expected = {n for n, _ in model.named_parameters() if is_own(tuner, n)}
    expected |= {n for n, _ in model.named_parameters() if n.startswith(adapter.head_name + ".")}
    assert set(trainable) == expected
    assert tuned.parameter_counts()["trainable"] == sum(
        p.numel() for p in tuned.trainable_parameters()
    )
    if tuner not in ("linear", "full"):
        assert any(is_own(tuner, n) for n in trainable)

    adapter.train()  # BatchNorm statistics move, dropout etc. run: all must be undone
    train_step(adapter, tuned, x)
    adapter.eval()
    frozen_grads = [
        p.grad for n, p in model.named_parameters() if n not in expected and p.grad is not None
    ]
    assert not frozen_grads
    with torch.no_grad():
        assert not torch.allclose(adapter.logits(x), reference, atol=1e-6)

    tuned.remove()
    assert_restored(model, before)
    with torch.no_grad():
        assert torch.equal(adapter.logits(x), reference)
    tuned.remove()  # idempotent


@pytest.mark.parametrize(
    ("name", "tuner", "applies"),
    [
        ("timm-swin", "vpt", "linear, full, lora, ssf"),
        ("hf-swin", "vpt", "linear, full, lora, ssf"),
        ("timm-cnn", "vpt", "linear, full"),
        ("timm-cnn", "lora", "linear, full"),
        ("timm-cnn", "ssf", "linear, full"),
    ],
)
def test_not_applicable_lists_what_applies(name, tuner, applies):
    adapter = tiny_adapter(name)
    before = snapshot(adapter.model)
    with pytest.raises(
        UnsupportedMethodError, match=f"Tuners that apply to this model: {applies}$"
    ):
        apply_tuner(adapter, tuner)
    assert applicable_tuners(adapter) == applies.split(", ")
    assert_restored(adapter.model, before)
    apply_tuner(adapter, "full").remove()  # nothing left half-applied


def test_linear_needs_a_head():
    adapter = tiny_adapter("timm-vit", num_classes=0)
    with pytest.raises(UnsupportedMethodError, match="num_classes"):
        apply_tuner(adapter, "linear")
    with apply_tuner(adapter, "lora") as tuned:  # others train features without a head
        names = [n for n, _ in tuned.named_trainable_parameters()]
        assert names and all(".lora_" in n for n in names)


def test_configs_validate():
    assert set(TUNERS) == {"linear", "full", "lora", "vpt", "ssf"}
    assert make_tuner("lora", rank=8) == LoraConfig(rank=8)
    for bad in ({"rank": 0}, {"rank": 2.5}, {"alpha": 0}, {"dropout": 1.0}, {"targets": []}):
        with pytest.raises(ValueError):
            LoraConfig(**bad)
    for bad in ({"num_tokens": 0}, {"init_std": -1.0}, {"dropout": -0.1}):
        with pytest.raises(ValueError):
            VPTConfig(**bad)
    with pytest.raises(UnsupportedMethodError, match="available: linear, full, lora, vpt, ssf"):
        make_tuner("adapter")
    with pytest.raises(TypeError, match="rnk"):
        make_tuner("lora", rnk=4)


def test_one_tuner_at_a_time_and_fresh_parameters_per_task():
    adapter = tiny_adapter("timm-vit")
    x = batch_for(adapter)
    with apply_tuner(adapter, "lora") as first:
        with pytest.raises(RuntimeError, match="already has an active 'lora' tuner"):
            apply_tuner(adapter, "ssf")
        train_step(adapter, first, x)
        a1 = adapter.model.blocks[0].attn.qkv.lora_A["default"].weight.detach().clone()
    with apply_tuner(adapter, "lora"):
        layer = adapter.model.blocks[0].attn.qkv
        assert not torch.equal(layer.lora_A["default"].weight, a1)
        assert not layer.lora_B["default"].weight.any()  # peft init: B = 0
    for tuner, own in (("ssf", ".ssf.scale"), ("vpt", "vpt.prompts")):
        with apply_tuner(adapter, tuner) as tuned:
            train_step(adapter, tuned, x)
        with apply_tuner(adapter, tuner) as tuned:
            params = dict(tuned.named_trainable_parameters())
            if tuner == "ssf":
                scales = [p for n, p in params.items() if own in n]
                assert scales and all(torch.equal(p, torch.ones_like(p)) for p in scales)
            else:
                assert params[own].abs().max() <= (6 / (3 * 64 + 32)) ** 0.5


def test_head_replaced_during_task_is_restored_and_errors_inside_with_restore():
    adapter = tiny_adapter("hf-vit")
    original = adapter.head
    before = snapshot(adapter.model)
    with pytest.raises(ZeroDivisionError), apply_tuner(adapter, "ssf") as tuned:
        tuned.set_head(nn.Linear(adapter.num_features, 3))
        assert adapter.head is not original and adapter.num_classes == 3
        assert {"classifier.weight", "classifier.bias"} <= {
            n for n, _ in tuned.named_trainable_parameters()
        }
        _ = 1 / 0
    assert adapter.head is original
    assert_restored(adapter.model, before)
    with pytest.raises(RuntimeError, match="removed"):
        tuned.parameter_counts()


# ----------------------------------------------------------------------------- counts
def test_parameter_counts_equal_hand_counts_on_tiny_timm_vit():
    # tiny timm ViT: D=32, 2 blocks, MLP 64, patch 8 at 32 px (16 patches), 5 classes
    d, mlp, blocks, classes = 32, 64, 2, 5
    head = d * classes + classes
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * mlp + mlp) + (mlp * d + d)
    total = (3 * 8 * 8 * d + d) + d + (1 + 16) * d + blocks * block + 2 * d + head
    r = 4
    lora = blocks * (r * d + 3 * d * r + r * d + d * r)  # qkv (32->96) and proj (32->32)
    ssf = 2 * (d + blocks * (d + 3 * d + d + d + mlp + d) + d)
    lora_qkv_r2 = blocks * (2 * d + 3 * d * 2)
    expected = [
        ("linear", {}, head, total),
        ("full", {}, total, total),
        ("lora", {}, lora + head, total + lora),
        ("ssf", {}, ssf + head, total + ssf),
        ("vpt", {}, blocks * 10 * d + head, total + blocks * 10 * d),
        ("vpt", {"deep": False}, 10 * d + head, total + 10 * d),
        ("vpt", {"num_tokens": 3}, blocks * 3 * d + head, total + blocks * 3 * d),
        ("lora", {"rank": 2, "targets": ["qkv"]}, lora_qkv_r2 + head, total + lora_qkv_r2),
    ]
    adapter = tiny_adapter("timm-vit")
    assert sum(p.numel() for p in adapter.model.parameters()) == total == 24069
    for tuner, options, trainable, all_params in expected:
        with apply_tuner(adapter, tuner, **options) as tuned:
            assert tuned.parameter_counts() == {"trainable": trainable, "total": all_params}, (
                tuner,
                options,
            )
            if tuner in ("ssf", "vpt"):
                with pytest.raises(UnsupportedMethodError, match="merge applies to the 'lora'"):
                    tuned.merge()


# ----------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("name", MODELS)
def test_lora_merge_equals_unmerged_and_unmerge_is_exact(name):
    adapter = tiny_adapter(name)
    before = snapshot(adapter.model)
    x = batch_for(adapter)
    tuned = apply_tuner(adapter, "lora", rank=4, alpha=8.0)
    train_step(adapter, tuned, x)
    with torch.no_grad():
        unmerged = adapter.logits(x)
        tuned.merge()
        assert tuned.merged
        merged = adapter.logits(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    tuned.unmerge()
    with torch.no_grad():
        assert torch.equal(adapter.logits(x), unmerged)
    tuned.merge()
    tuned.remove()  # merged at removal: still exact
    assert_restored(adapter.model, before)


@pytest.mark.parametrize("name", ["timm-vit", "hf-dinov2", "timm-swin", "hf-swin"])
def test_capture_attention_sees_lora_updated_projections(name):
    adapter = tiny_adapter(name)
    x = batch_for(adapter)
    with torch.no_grad(), adapter.capture_attention(kind="logits") as original:
        adapter.logits(x)
    with apply_tuner(adapter, "lora", alpha=8.0) as tuned:
        site = adapter.attention_sites()[0]
        assert site.modules and all(hasattr(m, "lora_A") for m in site.modules)  # hooks on LoRA
        with torch.no_grad(), adapter.capture_attention(kind="logits") as at_init:
            adapter.logits(x)
        for a, b in zip(at_init, original, strict=True):
            assert torch.equal(a, b)  # B = 0 at init
        train_step(adapter, tuned, x)
        assert all(layer.lora_B["default"].weight.any() for layer in site.modules)
        with torch.no_grad(), adapter.capture_attention(kind="logits") as trained:
            adapter.logits(x)
        tuned.merge()  # reference: the same projections with the update folded into W
        with torch.no_grad(), adapter.capture_attention(kind="logits") as merged:
            adapter.logits(x)
        for t, m, o in zip(trained, merged, original, strict=True):
            assert (t - o).abs().max() > 1e-4
            torch.testing.assert_close(t, m, atol=1e-5, rtol=0)


def test_lora_targets_stay_inside_the_blocks():
    adapter = tiny_adapter("timm-vit")
    with apply_tuner(adapter, "lora") as tuned:
        names = {n for n, _ in tuned.named_trainable_parameters()}
        assert not any(n.startswith("patch_embed") for n in names)  # 'proj' is also a suffix there
        assert len(tuned.target_names) == 2 * adapter.num_layers
    with pytest.raises(UnsupportedMethodError, match="named: fc1, fc2, proj, qkv"):
        apply_tuner(adapter, "lora", targets=["query"])
    assert all_hooks(adapter.model) == 0 and "peft_config" not in adapter.model.__dict__


# ----------------------------------------------------------------------------- SSF
@pytest.mark.parametrize("name", MODELS)
def test_ssf_sites_identity_at_init_and_gradients(name):
    adapter = tiny_adapter(name)
    x = batch_for(adapter)
    with torch.no_grad():
        reference = adapter.logits(x)
    # per block: norm1, q, k, v (fused qkv in timm), attention output, norm2, fc1, fc2
    per_block = 6 if name.startswith("timm") else 8
    targets = adapter.ssf_targets
    assert len(targets) == 2 + per_block * adapter.num_layers
    with apply_tuner(adapter, "ssf") as tuned:
        modules = tuned.scale_shift_modules
        assert len(modules) == len(targets)
        with torch.no_grad():
            assert torch.equal(adapter.logits(x), reference)
        adapter.logits(x).square().sum().backward()
        for target, module in zip(targets, modules, strict=True):
            assert module.scale.grad is not None and module.scale.grad.abs().sum() > 0, target
            assert module.shift.grad is not None and module.shift.grad.abs().sum() > 0, target
        with torch.no_grad():  # every site is live: perturbing one changes the output
            modules[len(modules) // 2].shift.add_(0.5)
            assert not torch.equal(adapter.logits(x), reference)


# ----------------------------------------------------------------------------- VPT
@pytest.mark.parametrize("name", [*COLUMNAR, "timm-deit-distilled"])
def test_vpt_layout_deep_prompts_and_attention(name):
    adapter = tiny_adapter(name)
    x = batch_for(adapter, batch=3)
    p = adapter.num_prefix_tokens
    n = adapter.geometry(tuple(x.shape[-2:])).num_tokens
    with torch.no_grad():
        tokens, out = adapter.tokens(x), adapter.logits(x)
    t = 4
    with apply_tuner(adapter, "vpt", num_tokens=t, deep=True) as tuned:
        assert tuned.extra_prefix_tokens == t and tuned.attention_prefix_tokens == p + t
        assert adapter.inserted_tokens == t and adapter.inserted_tokens_refreshed
        assert adapter.num_tokens_before_patches == p + t and adapter.num_prefix_tokens == p
        assert tuned.prompts.shape == (adapter.num_layers, t, adapter.embed_dim)
        seen: dict[int, torch.Tensor] = {}
        handles = [
            block.register_forward_pre_hook(
                lambda m, args, kwargs, i=i: seen.__setitem__(
                    i, (args[0] if args else next(iter(kwargs.values()))).detach()
                ),
                with_kwargs=True,
            )
            for i, block in enumerate(adapter.blocks)
        ]
        with torch.no_grad(), adapter.capture_attention() as attention:
            assert adapter.tokens(x).shape == tokens.shape
            assert adapter.logits(x).shape == out.shape
        for h in handles:
            h.remove()
        for i, block_input in seen.items():
            assert block_input.shape == (3, n + t, adapter.embed_dim)
            prompts = tuned.prompts[i].expand(3, -1, -1)
            assert torch.equal(block_input[:, p : p + t], prompts), i
        assert len(attention) == adapter.num_layers
        assert all(a.shape[-2:] == (n + t, n + t) for a in attention)
        grads = torch.autograd.grad(adapter.logits(x).sum(), tuned.prompts)[0]
        assert all(g.abs().sum() > 0 for g in grads)  # every block's prompts matter
    with apply_tuner(adapter, "vpt", num_tokens=t, deep=False) as shallow:
        assert shallow.prompts.shape == (1, t, adapter.embed_dim)
        assert shallow.parameter_counts()["trainable"] == t * adapter.embed_dim + sum(
            p.numel() for p in adapter.head.parameters()
        )
        with torch.no_grad():
            assert adapter.logits(x).shape == out.shape


@pytest.mark.parametrize("name", ["timm-vit", "hf-vit"])
def test_vpt_declares_its_tokens_on_the_adapter_and_resets_them_also_on_error(name, monkeypatch):
    from focusvit.finetune.tuners.vpt import VPTTuned

    adapter = tiny_adapter(name)
    p = adapter.num_prefix_tokens
    with apply_tuner(adapter, "vpt", num_tokens=2, deep=False):
        assert adapter.inserted_tokens == 2 and not adapter.inserted_tokens_refreshed
        assert adapter.num_tokens_before_patches == p + 2
    assert adapter.inserted_tokens == 0 and adapter.num_tokens_before_patches == p
    with pytest.raises(ZeroDivisionError), apply_tuner(adapter, "vpt", num_tokens=3):
        assert adapter.inserted_tokens == 3
        _ = 1 / 0
    assert adapter.inserted_tokens == 0 and not adapter.inserted_tokens_refreshed
    before = snapshot(adapter.model)
    inject = VPTTuned._inject

    def failing_inject(self):
        inject(self)
        assert adapter.inserted_tokens == 4
        raise RuntimeError("injection failed")

    monkeypatch.setattr(VPTTuned, "_inject", failing_inject)
    with pytest.raises(RuntimeError, match="injection failed"):
        apply_tuner(adapter, "vpt", num_tokens=4)
    assert adapter.inserted_tokens == 0 and adapter.num_tokens_before_patches == p
    assert_restored(adapter.model, before)
    for tuner in ("lora", "ssf", "full"):  # tuners that insert no tokens leave it at 0
        with apply_tuner(adapter, tuner):
            assert adapter.inserted_tokens == 0


def test_head_set_during_a_task_on_a_headless_model_is_removed_again():
    adapter = tiny_adapter("hf-dinov2", num_classes=0)
    before = snapshot(adapter.model)
    with apply_tuner(adapter, "lora") as tuned:
        tuned.set_head(nn.Linear(adapter.num_features, 3))
        assert adapter.num_classes == 3
        assert {"classifier.weight", "classifier.bias"} <= {
            n for n, _ in tuned.named_trainable_parameters()
        }
    assert not adapter.head_name and adapter.num_classes == 0
    assert_restored(adapter.model, before)


# ----------------------------------------------------------------------------- fit_task heads
@pytest.mark.parametrize("name", ["hf-vit", "hf-dinov2", "timm-vit"])
@pytest.mark.parametrize("tuner", ["lora", "vpt", "linear"])
def test_fit_task_places_the_head_on_a_model_loaded_without_one(name, tuner):
    from focusvit.backbones import load_backbone
    from focusvit.finetune import fit_task

    adapter = load_backbone(f"tiny:{name}", num_classes=0)
    x = batch_for(adapter, batch=6)
    labels = torch.arange(6) % 3
    before = snapshot(adapter.model)
    with torch.no_grad():
        features = adapter.logits(x)
    with fit_task(adapter, x, labels, tuner=tuner, steps=2) as task:
        assert adapter.num_classes == 3 and task.logits(x).shape == (6, 3)
        # 2 epochs of 2-shot: 2 mini-batches of n_way each (the linear probe: 1 step per epoch)
        assert len(task.losses) == (2 if tuner == "linear" else 4)
        assert all(torch.isfinite(torch.tensor(loss["total"])) for loss in task.losses)
    assert not adapter.head_name and adapter.inserted_tokens == 0
    assert_restored(adapter.model, before)
    with torch.no_grad():
        assert torch.equal(adapter.logits(x), features)


def test_vpt_handles_hf_eager_blocks_and_inserts_before_patches():
    adapter = tiny_adapter("hf-vit")
    adapter.model.set_attn_implementation("eager")
    x = batch_for(adapter)
    captured: list[torch.Tensor] = []
    hook = adapter.blocks[0].register_forward_pre_hook(
        lambda m, a, k: captured.append((a[0] if a else next(iter(k.values()))).detach()),
        with_kwargs=True,
    )
    with torch.no_grad():
        adapter.logits(x)
    hook.remove()
    with apply_tuner(adapter, "vpt", num_tokens=2, deep=False) as tuned:
        hook = adapter.blocks[0].register_forward_pre_hook(
            lambda m, a, k: captured.append((a[0] if a else next(iter(k.values()))).detach()),
            with_kwargs=True,
        )
        with torch.no_grad():
            adapter.logits(x)
        hook.remove()
        original, prompted = captured
        assert torch.equal(prompted[:, :1], original[:, :1])  # CLS first
        assert torch.equal(prompted[:, 1:3], tuned.prompts[0].expand(2, -1, -1))
        assert torch.equal(prompted[:, 3:], original[:, 1:])  # then the patches, unchanged


@pytest.mark.parametrize("tuner", ["ssf", "vpt"])
def test_captured_attention_is_what_the_model_computes(tuner):
    """Capture entered *before* the tuner still sees the tuned q/k (the tuner's hooks go first)."""
    adapter = tiny_adapter("timm-vit")
    for module in adapter.model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    x = batch_for(adapter)
    reference: list[torch.Tensor] = []
    handles = [
        b.attn.attn_drop.register_forward_hook(lambda m, i, o: reference.append(i[0]))
        for b in adapter.blocks
    ]
    with (
        torch.no_grad(),
        adapter.capture_attention() as attention,
        apply_tuner(adapter, tuner) as tuned,
    ):
        if tuner == "ssf":
            for module in tuned.scale_shift_modules:
                module.scale.uniform_(0.5, 1.5)
                module.shift.normal_(0.0, 0.3)
        adapter.logits(x)
    for h in handles:
        h.remove()
    assert len(reference) == len(attention) == adapter.num_layers
    for captured, used in zip(attention, reference, strict=True):
        torch.testing.assert_close(captured, used)
    assert all_hooks(adapter.model) == 0


# ----------------------------------------------------------------------------- no gradient leak
@pytest.mark.parametrize("tuner", ["full", "lora", "ssf", "vpt", "linear"])
def test_fit_task_leaves_no_grad_on_any_parameter(tuner):
    """Issue 14: ``full`` left a ``.grad`` on every backbone parameter after ``fit_task`` (a
    model-sized leak that also accumulated into the user's next backward)."""
    from focusvit.finetune import fit_task

    adapter = tiny_adapter("timm-vit")
    x = batch_for(adapter, batch=6)
    labels = torch.arange(6) % 3
    with fit_task(adapter, x, labels, tuner=tuner, steps=2) as task:
        assert len(task.losses) > 0
        leaked = [n for n, p in adapter.model.named_parameters() if p.grad is not None]
        assert not leaked, f"{tuner}: gradients kept inside the block on {leaked[:3]}"
    leaked = [n for n, p in adapter.model.named_parameters() if p.grad is not None]
    assert not leaked, f"{tuner}: gradients left after fit_task on {leaked[:3]}"

    # the user's next backward gets exactly its own gradient, nothing accumulated from the task
    adapter.zero_grad(set_to_none=False)  # no-op on None grads: nothing to zero
    loss = adapter.logits(x).square().mean()
    loss.backward()
    weight = adapter.model.patch_embed.proj.weight
    (expected,) = torch.autograd.grad(adapter.logits(x).square().mean(), weight)
    torch.testing.assert_close(weight.grad, expected)


@pytest.mark.parametrize("tuner", ["full", "lora", "linear"])
def test_remove_drops_task_gradients_and_restores_those_of_apply_time(tuner):
    adapter = tiny_adapter("timm-vit")
    x = batch_for(adapter)
    norm = adapter.model.norm.weight  # trained by full only; frozen for lora and linear
    earlier = torch.full_like(norm, 0.25)
    norm.grad = earlier.clone()
    tuned = apply_tuner(adapter, tuner)
    train_step(adapter, tuned, x)  # zero_grad, backward, step: the task's own gradients
    extra = adapter.logits(x).sum()
    extra.backward()  # a backward without zero_grad accumulates into existing grads in place
    tuned.remove()
    grads = {n: p.grad for n, p in adapter.model.named_parameters() if p.grad is not None}
    assert list(grads) == ["norm.weight"]
    torch.testing.assert_close(grads["norm.weight"], earlier)
