"""Rotary-embedding families: HF DINOv3 ViT (``hf_dinov3.py``) and timm EVA / rotary ViTs /
timm DINOv3 (``timm_eva.py``), on tiny random-weight models.

References are the libraries' own eager attention: HF ``output_attentions=True`` with eager
attention, timm's eager path (``fused_attn = False``, the softmax fed to ``attn_drop``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import focusvit
from focusvit.backbones import (
    TimmViTAdapter,
    TokenLayout,
    UnsupportedFamilyError,
    family_of,
    model_family,
)
from focusvit.backbones.hf_dinov3 import HFDINOv3Adapter
from focusvit.backbones.loading import _hf_data_config
from focusvit.backbones.timm_eva import TimmEvaAdapter
from focusvit.backbones.tiny import TINY_VIT, build_tiny
from focusvit.explainers import EXPLAINERS, explain
from focusvit.finetune import FortConfig, applicable_tuners, apply_tuner, fit_task
from focusvit.finetune.attention_loss import prompt_targets, resolve_fort, vit_attention_loss
from focusvit.prompting import make_prompts

TINY = ["hf-dinov3", "timm-eva-rope", "timm-dinov3"]
SIZES = [(32, 32), (24, 40)]  # square and non-square (3x5 patches)

#: timm Eva layouts beyond the two tiny models: (name, Eva kwargs)
EVA_VARIANTS = {
    "eva02-fused-linear-bias": {"swiglu_mlp": True, "scale_mlp": True, "ref_feat_shape": (4, 4)},
    "dinov3": {
        "qkv_bias": False, "init_values": 0.1, "rope_type": "dinov3", "rope_temperature": 100,
        "rope_rotate_half": True, "use_abs_pos_emb": False, "num_reg_tokens": 2,
    },
    "separate-qkv": {"qkv_fused": False},
    "rope-attention-gqa": {"attn_type": "rope", "qkv_fused": False, "num_kv_heads": 1},
    "mixed-rope": {"rope_type": "mixed"},
    "post-norm": {"use_post_norm": True},
    "registers-no-cls": {"class_token": False, "num_reg_tokens": 1},
    "eva01-no-rope": {"use_rot_pos_emb": False},
}  # fmt: skip


def tiny(name: str, num_classes: int = 5):
    return focusvit.adapt(build_tiny(name, num_classes=num_classes), name=f"tiny:{name}")


def eva(variant: str, num_classes: int = 5, seed: int = 0) -> TimmEvaAdapter:
    from timm.models.eva import Eva

    torch.manual_seed(seed)
    options = {"use_rot_pos_emb": True, **EVA_VARIANTS[variant]}
    model = Eva(img_size=32, patch_size=8, num_classes=num_classes, dynamic_img_size=True,
                **TINY_VIT, **options).eval()  # fmt: skip
    return focusvit.adapt(model)


def images(batch: int = 2, size=(24, 40), seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def eager_reference(adapter, x: Tensor) -> list[Tensor]:
    """Per block the probabilities ``(B, heads, N, N)`` the library's eager path computes."""
    if isinstance(adapter, HFDINOv3Adapter):
        adapter.model.set_attn_implementation("eager")
        with torch.no_grad():
            return list(adapter.model(pixel_values=x, output_attentions=True).attentions)
    seen: list[Tensor] = []
    attns = [block.attn for block in adapter.blocks]
    handles = [a.attn_drop.register_forward_hook(lambda m, i, o: seen.append(i[0])) for a in attns]
    for attn in attns:
        attn.fused_attn = False
    try:
        with torch.no_grad():
            adapter.logits(x)
    finally:
        for attn, handle in zip(attns, handles, strict=True):
            attn.fused_attn = True
            handle.remove()
    return seen


def captured(adapter, x: Tensor, kind: str) -> list[Tensor]:
    with torch.no_grad(), adapter.capture_attention(kind=kind) as record:
        adapter.logits(x)
    return list(record)


def unrotated_logits(adapter, x: Tensor) -> list[Tensor]:
    """What a capture that ignores the rotation would report: the family's own recomputation
    with ``rope=None`` (timm) or ``q kᵀ · scale`` straight from the projections (HF)."""
    from focusvit.backbones.timm_eva import rotary_logits

    rows: list[Tensor] = []

    def timm_hook(module, args, kwargs):
        rows.append(rotary_logits(module)(args, {**kwargs, "rope": None}))

    def hf_hook(attn, args, kwargs):
        h = args[0]
        shape = (h.shape[0], h.shape[1], attn.num_heads, attn.head_dim)
        q = attn.q_proj(h).view(shape).transpose(1, 2)
        k = attn.k_proj(h).view(shape).transpose(1, 2)
        rows.append((q @ k.transpose(2, 3)) * attn.scaling)

    hf = isinstance(adapter, HFDINOv3Adapter)
    handles = [
        (b.attention if hf else b.attn).register_forward_pre_hook(
            hf_hook if hf else timm_hook, with_kwargs=True
        )
        for b in adapter.blocks
    ]
    try:
        with torch.no_grad():
            adapter.logits(x)
    finally:
        for handle in handles:
            handle.remove()
    return rows


# ----------------------------------------------------------------------------- 1. registry
@pytest.mark.parametrize(
    ("name", "adapter_class", "layout"),
    [
        ("hf-dinov3", HFDINOv3Adapter, TokenLayout(cls=1, registers=2)),
        ("timm-eva-rope", TimmEvaAdapter, TokenLayout(cls=1)),
        ("timm-dinov3", TimmEvaAdapter, TokenLayout(cls=1, registers=2)),
    ],
)
def test_adapt_and_load_pick_the_rope_family(name, adapter_class, layout):
    adapter = focusvit.load_backbone(f"tiny:{name}")
    assert type(adapter) is adapter_class and type(tiny(name)) is adapter_class
    assert model_family(f"tiny:{name}") == "vit"
    assert adapter.prefix_layout() == layout
    assert adapter.heads_per_block == [2, 2] and adapter.patch_size == (8, 8)
    assert adapter.data_config["mean"] == (0.485, 0.456, 0.406)


@pytest.mark.parametrize(
    "spec",
    [
        "timm:eva02_tiny_patch14_224",
        "timm:vit_small_patch16_dinov3",
        "timm:vit_base_patch16_rope_reg1_gap_256",
        "timm:vit_pe_core_tiny_patch16_384",
    ],
)
def test_timm_hub_architectures_are_eva_family(spec):
    from focusvit.backbones.loading import _timm_architecture

    assert model_family(spec) == "vit"
    assert family_of(_timm_architecture(spec[5:])).adapter is TimmEvaAdapter


def test_registers_without_cls_token_and_hf_backbone_refused():
    adapter = eva("registers-no-cls")
    assert adapter.prefix_layout() == TokenLayout(cls=0, registers=1)
    assert not adapter.has_cls_token and adapter.num_prefix_tokens == 1
    from transformers import DINOv3ViTBackbone

    backbone = DINOv3ViTBackbone(build_tiny("hf-dinov3").config)
    with pytest.raises(UnsupportedFamilyError, match="supported families"):
        focusvit.adapt(backbone)


# ----------------------------------------------------------------------------- 2. attention
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", TINY)
def test_captured_attention_equals_the_libraries_eager_attention(name, size):
    adapter = tiny(name)
    x = images(size=size)
    hooks = hook_count(adapter.model)
    probs, logits = captured(adapter, x, "probs"), captured(adapter, x, "logits")
    assert hook_count(adapter.model) == hooks
    reference = eager_reference(adapter, x)
    tokens = adapter.geometry(size).num_tokens
    assert len(reference) == len(probs) == len(logits) == adapter.num_layers
    for p, lg, ref in zip(probs, logits, reference, strict=True):
        assert p.shape == lg.shape == ref.shape == (2, 2, tokens, tokens)
        torch.testing.assert_close(p, ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(lg.softmax(-1), ref, atol=1e-6, rtol=1e-5)
    # not vacuous: leaving out the rotation changes the maps far beyond the tolerance
    for wrong, ref in zip(unrotated_logits(adapter, x), reference, strict=True):
        assert (wrong.softmax(-1) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("variant", list(EVA_VARIANTS))
def test_every_eva_layout_captures_its_eager_attention(variant):
    adapter = eva(variant)
    x = images()
    reference = eager_reference(adapter, x)
    logits = captured(adapter, x, "logits")
    with (
        torch.no_grad(),
        adapter.capture_attention(
            layers=-1, reduce=lambda _layer, maps: maps[:, :, -1], chunk=1
        ) as record,
    ):
        adapter.logits(x)
    reduced_rows = record[0]
    for lg, ref in zip(logits, reference, strict=True):
        torch.testing.assert_close(lg.softmax(-1), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(reduced_rows, reference[-1][:, :, -1], atol=1e-6, rtol=1e-5)


def test_the_generic_timm_vit_capture_was_wrong_on_rotary_eva():
    """The bug this family fixes: timm's generic site recomputes ``q kᵀ`` from ``qkv`` without
    the rotation (wrong logits), and records nothing where EVA bypasses ``qkv`` via F.linear."""
    adapter = eva("dinov3")
    with torch.no_grad():
        for block in adapter.blocks:  # peaked attention, as in pretrained models
            block.attn.qkv.weight.mul_(10)
    x = images()
    reference = eager_reference(adapter, x)
    old = captured(TimmViTAdapter(adapter.model), x, "logits")
    for wrong, ref in zip(old, reference, strict=True):
        assert (wrong.softmax(-1) - ref).abs().max() > 0.1
    for right, ref in zip(captured(adapter, x, "logits"), reference, strict=True):
        torch.testing.assert_close(right.softmax(-1), ref, atol=1e-6, rtol=1e-5)
    eva02 = eva("eva02-fused-linear-bias")
    old_eva02 = TimmViTAdapter(eva02.model)
    with pytest.raises(RuntimeError, match="no attention was recorded"):
        captured(old_eva02, x, "logits")


# ----------------------------------------------------------------------------- 3. explainers
@pytest.mark.parametrize("name", TINY)
def test_explainers_and_rollout(name):
    adapter = tiny(name)
    x = images(batch=3)
    hooks = hook_count(adapter.model)
    methods = [m for m, cls in EXPLAINERS.items() if adapter.family in cls.families]
    assert {"rollout", "attention", "gradcam"} <= set(methods)
    for method in methods:
        out = explain(adapter, x, method, target=torch.tensor([0, 1, 2]))
        assert out.scores.shape == (3, 3, 5) and torch.isfinite(out.scores).all(), method
    assert hook_count(adapter.model) == hooks
    reference = eager_reference(adapter, x)  # R = Â^L ··· Â^1, Â = rownorm(mean_heads(A) + I)
    tokens = reference[0].shape[-1]
    product = torch.eye(tokens).expand(3, tokens, tokens)
    for probs in reference:
        matrix = probs.mean(dim=1) + torch.eye(tokens)
        product = (matrix / matrix.sum(dim=-1, keepdim=True)) @ product
    rollout = explain(adapter, x, "rollout").scores.flatten(1)
    torch.testing.assert_close(rollout, product[:, 0, adapter.num_prefix_tokens :])


# ----------------------------------------------------------------------------- 4. prompts
@pytest.mark.parametrize("name", TINY)
def test_position_prompts(name):
    adapter = tiny(name)
    explanation = explain(adapter, images(), "rollout")
    prompt = make_prompts(explanation, top_k=2)
    assert prompt.mask.shape == (2, 3, 5) and prompt.target.shape == (2, 15)
    assert prompt.mask.flatten(1).sum(-1).tolist() == [2, 2]
    top = explanation.scores.flatten(1).topk(2).indices
    assert prompt.mask.flatten(1).gather(1, top).all()


# ----------------------------------------------------------------------------- 5. tuners
# every tuner with the attention-enhancement loss (the linear probe takes none), and without it
# for the linear probe and LoRA (tests/test_families.py runs the full matrix)
TUNER_CASES = [
    (name, tuner, loss)
    for name in TINY
    for tuner, loss in [("linear", False), ("lora", False)]
    + [(t, True) for t in ("full", "lora", "ssf", "vpt")]
]


@pytest.mark.parametrize(("name", "tuner", "with_loss"), TUNER_CASES)
def test_tuners_fit_and_restore_the_backbone(name, tuner, with_loss):
    adapter = tiny(name)
    assert applicable_tuners(adapter) == ["linear", "full", "lora", "vpt", "ssf"]
    x, labels = images(batch=6, size=(32, 32)), torch.arange(6) % 3
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    flags = [getattr(b.attn, "qkv_bias_separate", None) for b in adapter.model.modules()
             if hasattr(b, "attn")]  # fmt: skip
    fort = None
    if with_loss:
        fort = FortConfig(alpha=1.0, tau=1.0, top_k=2) if tuner == "vpt" else True
    with fit_task(adapter, x, labels, tuner=tuner, fort=fort, steps=2) as task:
        assert task.logits(x).shape == (6, 3)
        assert all(torch.isfinite(torch.tensor(s["total"])) for s in task.losses)
        if with_loss:
            assert all(
                s["attn"] > 0 and torch.isfinite(torch.tensor(s["attn"])) for s in task.losses
            )
    after = adapter.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert flags == [getattr(b.attn, "qkv_bias_separate", None) for b in adapter.model.modules()
                     if hasattr(b, "attn")]  # fmt: skip
    assert adapter.inserted_tokens == 0


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("tuner", ["lora", "ssf"])
def test_attention_loss_reaches_every_lora_and_qk_ssf_parameter(name, tuner):
    """EVA-02's qkv is applied via F.linear on its weight; LoRA / SSF on it would train
    nothing. The adapter routes it through the module while one is attached."""
    adapter = tiny(name, num_classes=3)
    x, labels = images(batch=3, size=(32, 32)), torch.arange(3)
    fort = resolve_fort(adapter, "lora", FortConfig(layers="all", alpha=1.0, tau=1.0, top_k=2))
    targets = prompt_targets(adapter, x, labels, fort)
    with apply_tuner(adapter, tuner) as tuned:
        if tuner == "lora":
            for module in adapter.model.modules():
                for b in getattr(module, "lora_B", {}).values():
                    nn.init.normal_(b.weight, std=0.1)
            params = {n: p for n, p in adapter.model.named_parameters() if "lora_" in n}
            attention = ("qkv", "q_proj", "k_proj")
        else:
            params = dict(tuned.named_trainable_parameters())
            attention = ("qkv.ssf", "q_proj.ssf", "k_proj.ssf")
        qk = {n: p for n, p in params.items() if any(f".{a}." in n for a in attention)}
        assert len(qk) >= 2 * adapter.num_layers
        with adapter.capture_attention(kind="logits") as record:
            adapter.logits(x)
        loss = vit_attention_loss(list(record), targets, adapter.num_prefix_tokens, fort.tau)
        assert torch.isfinite(loss) and loss > 0
        grads = torch.autograd.grad(loss, list(qk.values()), allow_unused=True)
        for param_name, grad in zip(qk, grads, strict=True):
            assert grad is not None and grad.abs().sum() > 0, param_name
    for module in adapter.model.modules():
        assert not getattr(module, "qkv_bias_separate", False)  # the flag is restored


def test_eva_vpt_prompts_stay_unrotated_and_the_prefix_is_restored():
    adapter = tiny("timm-dinov3")
    x = images()
    p, t = adapter.num_prefix_tokens, 3
    with apply_tuner(adapter, "vpt", num_tokens=t):
        assert [b.attn.num_prefix_tokens for b in adapter.blocks] == [p + t] * 2
        reference = eager_reference(adapter, x)
        for lg, ref in zip(captured(adapter, x, "logits"), reference, strict=True):
            assert lg.shape[-1] == adapter.geometry((24, 40)).num_tokens + t
            torch.testing.assert_close(lg.softmax(-1), ref, atol=1e-6, rtol=1e-5)
    assert [b.attn.num_prefix_tokens for b in adapter.blocks] == [p] * 2


def test_lora_on_a_linear_bias_qkv_runs_and_removal_is_exact():
    adapter = tiny("timm-eva-rope")
    x = images()
    with torch.no_grad():
        reference = adapter.logits(x)
    with apply_tuner(adapter, "lora") as tuned:
        ran: list[str] = []
        for name, module in adapter.model.named_modules():
            if name.endswith("attn.qkv"):
                module.register_forward_hook(lambda *_, n=name: ran.append(n))
        opt = torch.optim.SGD(tuned.trainable_parameters(), lr=0.5)
        adapter.logits(x).square().mean().backward()
        opt.step()
        assert ran == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
        with torch.no_grad():
            assert not torch.allclose(adapter.logits(x), reference, atol=1e-6)
    assert all(not b.attn.qkv_bias_separate for b in adapter.blocks)
    with torch.no_grad():
        assert torch.equal(adapter.logits(x), reference)


# ----------------------------------------------------------------------------- 6. features
@pytest.mark.parametrize("name", TINY)
def test_features_equal_the_models_own_pooled_output(name):
    adapter = tiny(name)
    x = images()
    with torch.no_grad():
        features, logits = adapter.features(x), adapter.logits(x)
        model = adapter.model
        if isinstance(adapter, HFDINOv3Adapter):
            pooled = model(pixel_values=x).pooler_output
            own = model.classifier(pooled)
        else:
            pooled = model.forward_head(model.forward_features(x), pre_logits=True)
            own = model(x)
    assert features.shape == (2, adapter.num_features) == (2, 32)
    assert torch.equal(features, pooled) and torch.equal(logits, own)


# ----------------------------------------------------------------------------- 7. preprocessing
def test_hf_dinov3_preprocessing_from_a_saved_processor_and_fallback(tmp_path):
    from transformers import DINOv3ViTImageProcessor

    model = build_tiny("hf-dinov3", num_classes=0)
    model.save_pretrained(tmp_path)
    fallback = _hf_data_config(str(tmp_path), model.config, model)
    assert (fallback["mean"], fallback["std"]) == HFDINOv3Adapter.default_mean_std
    DINOv3ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(
        tmp_path
    )
    config = _hf_data_config(str(tmp_path), model.config, model)
    assert config["mean"] == (0.1, 0.2, 0.3) and config["std"] == (0.4, 0.5, 0.6)
    loaded = focusvit.load_backbone(str(tmp_path))
    assert type(loaded) is HFDINOv3Adapter and loaded.data_config["mean"] == (0.1, 0.2, 0.3)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(x), focusvit.adapt(model).features(x))


def test_timm_eva_loads_with_dynamic_size_and_takes_non_square_inputs():
    from focusvit.backbones.loading import _timm_family_kwargs

    assert _timm_family_kwargs("vit_small_patch16_dinov3") == {"dynamic_img_size": True}
    adapter = focusvit.load_backbone(
        "timm:eva02_tiny_patch14_224", pretrained=False, num_classes=3, depth=1
    )
    assert type(adapter) is TimmEvaAdapter and adapter.model.dynamic_img_size
    x = torch.randn(1, 3, 112, 140)
    with torch.no_grad(), adapter.capture_attention(kind="logits") as record:
        assert adapter.logits(x).shape == (1, 3)
    assert record[0].shape == (1, 3, 1 + 8 * 10, 1 + 8 * 10)
    torch.testing.assert_close(record[0].softmax(-1), eager_reference(adapter, x)[0])


def test_a_new_head_on_a_family_without_a_classification_class(tmp_path):
    """transformers has no DINOv3 ``*ForImageClassification``: ``num_classes=K`` loads the bare
    model and the adapter adds the head slot (it raised a raw ValueError before)."""
    build_tiny("hf-dinov3", num_classes=0).save_pretrained(tmp_path)
    adapter = focusvit.load_backbone(str(tmp_path), num_classes=4)
    assert adapter.head_name == "classifier" and adapter.num_classes == 4
    x = torch.randn(2, 3, 32, 32)
    assert adapter.logits(x).shape == (2, 4)
    torch.testing.assert_close(adapter.logits(x), adapter.head(adapter.features(x)))
