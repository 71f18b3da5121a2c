"""Swin V2 families: Hugging Face Swinv2, timm ``swinv2_*`` and timm ``swinv2_cr_*``.

The reference for captured attention is what each model itself feeds its softmax (recorded
with a ``TorchFunctionMode`` during the model's own forward): cosine logits times the clamped
learned scale, plus the continuous position bias, plus the shift mask as the model adds it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import input_for, tiny_adapter
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import focusvit
from focusvit.backbones import InputSizeError, UnsupportedMethodError, adapt
from focusvit.backbones.base import IMAGENET_MEAN_STD
from focusvit.backbones.loading import _hf_data_config, _timm_architecture, _timm_family_kwargs
from focusvit.backbones.registry import family_of
from focusvit.backbones.swinv2 import HFSwinV2Adapter, mask_repeats
from focusvit.backbones.timm_swinv2 import TimmSwinV2Adapter, TimmSwinV2CrAdapter
from focusvit.backbones.tiny import build_tiny
from focusvit.explainers import EXPLAINERS
from focusvit.finetune import (
    FortConfig,
    applicable_tuners,
    apply_tuner,
    fit_task,
    swin_attention_loss,
)
from focusvit.finetune.tuners.lora import lora_target_names
from focusvit.prompting import swin_window_prompts
from focusvit.prompting.swin import grid_to_windows, window_key_scores, window_valid_mask

NAMES = ["hf-swinv2", "timm-swinv2", "timm-swinv2-cr"]
CLASSES = {
    "hf-swinv2": HFSwinV2Adapter,
    "timm-swinv2": TimmSwinV2Adapter,
    "timm-swinv2-cr": TimmSwinV2CrAdapter,
}
SHIFTED = [1, 3]  # tiny models: two stages of (W-MSA, SW-MSA) blocks
# 72: grids 18x18 / 9x9 (padded windows); 64x96: non-square (64 is covered by test_backbones)
SIZES = [(72, 72), (64, 96)]


class SoftmaxInputs(TorchFunctionMode):
    """Records the input of every softmax over 4-D scores (F.softmax, nn.Softmax and
    Tensor.softmax): the attention logits exactly as the model computes them."""

    def __init__(self) -> None:
        super().__init__()
        self.logits: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.softmax, torch.softmax, Tensor.softmax) and args[0].ndim == 4:
            self.logits.append(args[0].detach().clone())
        return func(*args, **(kwargs or {}))

    def per_image(self, batch: int) -> list[Tensor]:
        """``(B · windows, heads, n, n)`` -> ``(B, windows, heads, n, n)`` per block."""
        return [x.reshape(batch, -1, *x.shape[1:]) for x in self.logits]


def sharpen(adapter) -> None:
    """Logit scales on both sides of the clamp at log(100) and non-zero q / v biases, so a
    wrong scale, clamp or bias cannot pass unnoticed."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.linspace(1.0, 6.0, p.numel()).view_as(p))
            elif name.endswith(("q_bias", "v_bias", "query.bias", "value.bias")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def library_mask(adapter, index: int, size: tuple[int, int]) -> Tensor | None:
    """The shift mask ``(windows, n, n)`` from the library's own API, times the number of
    times the attention adds it (HF adds it twice), or None for blocks without shift."""
    block = adapter.blocks[index]
    hp, wp = adapter.window_geometry(size)[index].padded_grid
    if isinstance(adapter, HFSwinV2Adapter):
        mask = block.get_attn_mask(hp, wp, dtype=torch.float32)
        repeats = mask_repeats(type(block.attention.self))
        return None if mask is None else mask * repeats
    if block.dynamic_mask:
        return block.get_attn_mask(torch.zeros(1, hp, wp, 1))
    return block.attn_mask


def hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def snapshot(adapter) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", NAMES)
def test_adapt_load_and_model_family(name):
    model = build_tiny(name)
    adapter = focusvit.adapt(model)
    assert type(adapter) is CLASSES[name] and adapter.family == "swin"
    assert family_of(model).cls_row == "-" and name in family_of(model).tiny
    assert type(focusvit.load_backbone(f"tiny:{name}")) is CLASSES[name]
    assert focusvit.backbones.model_family(f"tiny:{name}") == "swin"
    assert adapter.default_mean_std == IMAGENET_MEAN_STD


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("swinv2_tiny_window8_256", TimmSwinV2Adapter),
        ("swinv2_cr_tiny_ns_224", TimmSwinV2CrAdapter),
    ],
)
def test_timm_hub_architectures_pick_the_v2_families_without_weights(spec, cls):
    assert _timm_family_kwargs(spec) == {"strict_img_size": False}
    model = _timm_architecture(spec)  # meta device: no download, no allocation
    assert family_of(model).adapter is cls  # not "timm Swin", not a CNN, not refused
    assert focusvit.backbones.model_family(f"timm:{spec}") == "swin"


def test_timm_specs_load_with_any_fitting_input_size():
    tiny = {"embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4), "img_size": 128}
    for spec in ("timm:swinv2_tiny_window8_256", "timm:swinv2_cr_tiny_ns_224"):
        adapter = focusvit.load_backbone(spec, pretrained=False, num_classes=3, **tiny)
        assert adapter.data_config["input_size"] == (3, 128, 128)
        for size in [(128, 128), (96, 160)]:
            assert adapter.logits(torch.randn(1, 3, *size)).shape == (1, 3)


# ----------------------------------------------------------------------------- capture
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_capture_equals_the_models_own_logits_and_softmax(name, size):
    adapter = tiny_adapter(name)
    sharpen(adapter)
    x = input_for(adapter, batch=2, size=size)
    with (
        torch.no_grad(),
        adapter.capture_attention(kind="logits", shift_mask=True) as masked,
        SoftmaxInputs() as seen,
    ):
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(kind="probs", shift_mask=True) as probs:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(kind="logits") as plain:
        adapter.logits(x)
    reference = seen.per_image(2)
    geometry = adapter.window_geometry(size)
    assert len(reference) == len(masked) == adapter.num_layers == 4
    for index, ref in enumerate(reference):
        window = geometry[index].window
        heads = adapter.heads_per_block[index]
        n = window[0] * window[1]
        assert masked[index].shape == ref.shape == (2, geometry[index].num_windows, heads, n, n)
        torch.testing.assert_close(masked[index], ref, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(probs[index], ref.softmax(-1), atol=1e-6, rtol=0)
        # the shift mask is the library's own one, added as often as the model adds it
        mask = library_mask(adapter, index, size)
        added = masked[index] - plain[index]
        if mask is None:
            assert index not in SHIFTED and torch.equal(added, torch.zeros_like(added))
        else:
            assert index in SHIFTED
            torch.testing.assert_close(
                added, mask[None, :, None].expand_as(added), atol=1e-4, rtol=0
            )
            assert (plain[index].softmax(-1) - ref.softmax(-1)).abs().max() > 1e-2


def test_hf_capture_matches_output_attentions_and_adds_the_mask_twice():
    adapter = tiny_adapter("hf-swinv2")
    sharpen(adapter)
    adapter.model.set_attn_implementation("eager")
    x = input_for(adapter, batch=2, size=(64, 96))
    with torch.no_grad(), adapter.capture_attention(kind="probs", shift_mask=True) as probs:
        reference = adapter.model(pixel_values=x, output_attentions=True).attentions
    assert mask_repeats(type(adapter.blocks[0].attention.self)) == 2  # transformers adds it twice
    assert len(reference) == len(SHIFTED)  # HF reports the last block of each stage
    for index, ref in zip(SHIFTED, reference, strict=True):
        torch.testing.assert_close(probs[index].flatten(0, 1), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_training_mode_logits_replay_the_models_random_draws(name):
    """LoRA dropout on the projections (and V2-Cr's dropout in its position-bias MLP) draw
    random masks: the recomputed logits use the same draws as the model's own forward."""
    adapter = tiny_adapter(name)
    adapter.train()
    x = input_for(adapter, batch=2)
    with apply_tuner(adapter, "lora", dropout=0.5):
        with torch.no_grad():
            for param_name, p in adapter.model.named_parameters():
                if "lora_B" in param_name:
                    p.normal_(std=0.5)  # B = 0 at init would hide the dropout
        runs = []
        for _ in range(2):
            with (
                torch.no_grad(),
                adapter.capture_attention(kind="logits", shift_mask=True) as record,
                SoftmaxInputs() as seen,
            ):
                adapter.logits(x)
            runs.append((list(record), seen.per_image(2)))
    assert (runs[0][1][0] - runs[1][1][0]).abs().max() > 1e-3  # the draws matter
    for captured, reference in runs:
        for ours, ref in zip(captured, reference, strict=True):
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_hooks_are_gone_after_capture_also_on_error(name):
    adapter = tiny_adapter(name)
    before = hook_count(adapter)
    x = input_for(adapter)
    with adapter.capture_attention(shift_mask=True), adapter.track_block_input(-1):
        adapter.logits(x)
    with pytest.raises(ZeroDivisionError), adapter.capture_attention(kind="logits"):
        adapter.logits(x)
        raise ZeroDivisionError
    assert hook_count(adapter) == before


@pytest.mark.parametrize("name", NAMES)
def test_captured_logits_are_in_the_graph_of_scale_bias_and_projections(name):
    adapter = tiny_adapter(name)
    with adapter.capture_attention(kind="logits", shift_mask=True) as record:
        adapter.logits(input_for(adapter))
    sum(m.softmax(-1)[..., 0].sum() for m in record).backward()
    for site in adapter.attention_sites():
        attn = site.owner
        bias_mlp = next(
            getattr(attn, n) for n in ("cpb_mlp", "meta_mlp", "continuous_position_bias_mlp")
            if hasattr(attn, n)
        )  # fmt: skip
        for param in (attn.logit_scale, *bias_mlp.parameters(), *(m.weight for m in site.modules)):
            assert param.grad is not None and param.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("name", NAMES)
def test_stages_windows_and_non_square_grids(name):
    adapter = tiny_adapter(name)
    assert adapter.stage_of_block() == [0, 0, 1, 1] and adapter.heads_per_block == [2, 2, 4, 4]
    geometry = adapter.window_geometry((64, 96))
    assert [g.grid for g in geometry] == [(16, 24)] * 2 + [(8, 12)] * 2
    assert [g.shift for g in geometry] == [(0, 0), (2, 2)] * 2
    assert [g.num_windows for g in geometry] == [24, 24, 6, 6]
    assert adapter.grid_size((64, 96)) == (8, 12) and adapter.size_multiple == (8, 8)


@pytest.mark.parametrize("name", NAMES)
def test_window_partition_order_matches_the_models_windows(name):
    """Post-norm blocks feed their input straight to the window attention: the windows the
    attention receives are the block input partitioned in the declared order (72 px: grids
    18x18 and 9x9 need padding, which is where the two orders differ)."""
    adapter = tiny_adapter(name)
    order = adapter.window_partition_order
    assert order == ("pad_then_roll" if name.startswith("hf") else "roll_then_pad")
    x = input_for(adapter, batch=2, size=(72, 72))
    seen: dict[str, Tensor] = {}
    for index in SHIFTED:
        block = adapter.blocks[index]
        handles = [
            block.register_forward_pre_hook(lambda m, a: seen.__setitem__("grid", a[0])),
            adapter._attention_module(block).register_forward_pre_hook(
                lambda m, a: seen.__setitem__("windows", a[0])
            ),
        ]
        with torch.no_grad():
            adapter.logits(x)
        for handle in handles:
            handle.remove()
        geometry = adapter.window_geometry((72, 72))[index]
        assert any(geometry.shift) and geometry.grid[0] % geometry.window[0]
        grid = seen["grid"].reshape(2, *geometry.grid, -1)
        ours = grid_to_windows(grid, geometry, order).flatten(0, 1)
        torch.testing.assert_close(ours, seen["windows"], atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_tokens_grid_features_and_logits_equal_the_models_own(name):
    adapter = tiny_adapter(name)
    model = adapter.model
    x = input_for(adapter, batch=2, size=(64, 96))
    with torch.no_grad():
        tokens = adapter.tokens(x)
        grid = adapter.tokens_to_grid(tokens, (64, 96))
        features = adapter.features(x)
        if name.startswith("hf"):
            out = model(pixel_values=x)
            own_grid = model.swinv2(pixel_values=x).last_hidden_state.transpose(1, 2)
            own_features = model.swinv2(pixel_values=x).pooler_output
        else:
            out = model(x)
            own = model.forward_features(x)  # (B, H, W, C) swinv2, (B, C, H, W) swinv2_cr
            own_grid = own.permute(0, 3, 1, 2) if name == "timm-swinv2" else own
            own_features = own_grid.mean(dim=(2, 3))
        own_logits = out.logits if name.startswith("hf") else out
    assert grid.shape == (2, adapter.num_features, 8, 12)
    torch.testing.assert_close(grid.flatten(2), own_grid.flatten(2), atol=0, rtol=0)
    torch.testing.assert_close(features, own_features, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(adapter.logits(x), own_logits, atol=1e-6, rtol=1e-6)
    # the Grad-CAM layer's output maps onto the same last-stage grid
    seen = []
    handle = adapter.gradcam_layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        adapter.logits(x)
    handle.remove()
    assert adapter.tokens_to_grid(seen[0], (64, 96)).shape == grid.shape


def test_hf_features_equal_the_pooler_of_a_headless_model():
    adapter = tiny_adapter("hf-swinv2", num_classes=0)
    x = input_for(adapter)
    with torch.no_grad():
        pooled = adapter.model(pixel_values=x).pooler_output
        torch.testing.assert_close(adapter.features(x), pooled, atol=1e-6, rtol=1e-6)
    assert adapter.head_name == "" and torch.equal(adapter.logits(x), adapter.features(x))


@pytest.mark.parametrize("name", NAMES)
def test_input_sizes_that_do_not_fit_are_refused_with_the_fix(name):
    adapter = tiny_adapter(name)
    with pytest.raises(InputSizeError, match=r"multiples of 8x8; resize or crop to e\.g\. 64x64"):
        adapter.logits(torch.randn(1, 3, 66, 64))
    with pytest.raises(InputSizeError, match=r"\(B, 3, H, W\)"):
        adapter.logits(torch.randn(1, 1, 64, 64))


def test_fixed_size_timm_models_name_the_size_they_were_built_for():
    from timm.models.swin_transformer_v2 import SwinTransformerV2
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2Cr

    args = {"img_size": 64, "patch_size": 4, "window_size": 4, "embed_dim": 16}
    for cls in (SwinTransformerV2, SwinTransformerV2Cr):
        adapter = adapt(cls(depths=(2, 2), num_heads=(2, 4), **args).eval())
        assert adapter.logits(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        with pytest.raises(InputSizeError, match="built for 64x64 inputs and got 72x72"):
            adapter.logits(torch.randn(1, 3, 72, 72))


# ----------------------------------------------------------------------------- explainers, prompts
@pytest.mark.parametrize("name", NAMES)
def test_explainers_give_finite_grid_maps(name):
    adapter = tiny_adapter(name)
    methods = [m for m, cls in EXPLAINERS.items() if adapter.family in cls.families]
    assert {"cam", "gradcam", "random"} <= set(methods) and "rollout" not in methods
    x = input_for(adapter, batch=2, size=(64, 96))
    for method in methods:
        scores = focusvit.explain(adapter, x, method=method).scores
        assert scores.shape == (2, 8, 12) and torch.isfinite(scores).all(), method
    with pytest.raises(UnsupportedMethodError, match="swin"):
        focusvit.explain(adapter, x, method="rollout")
    # CAM of an average-pooled model: its spatial mean plus the bias is the logit
    explanation = focusvit.explain(adapter, x, method="cam")
    with torch.no_grad():
        logits = adapter.logits(x)
    chosen = logits.gather(1, explanation.targets[:, None])[:, 0]
    bias = adapter.head.bias[explanation.targets]
    torch.testing.assert_close(
        explanation.scores.mean(dim=(1, 2)) + bias, chosen, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", NAMES)
def test_swin_window_prompts_score_the_models_own_unmasked_logits(name):
    adapter = tiny_adapter(name)
    images = input_for(adapter, batch=2, size=(72, 72))
    prompt = swin_window_prompts(adapter, images, top_k=2)
    with torch.no_grad(), SoftmaxInputs() as seen:
        adapter.logits(images)
    reference = seen.per_image(2)
    assert prompt.blocks == SHIFTED and prompt.top_k == 2
    for item in prompt.stages:
        mask = library_mask(adapter, item.block, (72, 72))
        unmasked = reference[item.block] - mask[None, :, None]
        valid = window_valid_mask(item.geometry, item.order)
        torch.testing.assert_close(
            item.scores, window_key_scores(unmasked, valid), atol=1e-4, rtol=0
        )
        assert torch.equal(item.targets[0].sum(-1), valid.sum(-1).clamp_max(2).float())
        assert torch.all(item.targets[:, ~valid] == 0)
        assert item.grid_mask.shape == (2, *item.geometry.grid)


# ----------------------------------------------------------------------------- tuners
@pytest.mark.parametrize("name", NAMES)
def test_lora_and_ssf_sites_act(name):
    adapter = tiny_adapter(name)
    targets = lora_target_names(adapter, adapter.lora_targets)
    allowed = (".query", ".key", ".value") if name.startswith("hf") else (".attn.qkv", ".attn.proj")
    assert len(targets) == adapter.num_layers * len(allowed) and all(
        t.endswith(allowed) for t in targets
    )
    # every SSF site runs in the forward, in the listed (execution) order
    order: list[str] = []
    handles = [
        adapter.model.get_submodule(t).register_forward_hook(
            lambda m, i, o, t=t: order.append(t) if t not in order else None
        )
        for t in adapter.ssf_targets
    ]
    with torch.no_grad():
        adapter.logits(input_for(adapter))
    for handle in handles:
        handle.remove()
    # embedding norm + per block (q, k, v | qkv), attention out, 2 norms, 2 MLP linears + final
    per_block = 8 if name.startswith("hf") else 6
    assert order == adapter.ssf_targets and len(order) == 2 + per_block * adapter.num_layers


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tuner", ["lora", "ssf"])
def test_attention_loss_reaches_the_q_and_k_sites_of_the_tuners(name, tuner):
    adapter = tiny_adapter(name, num_classes=3)
    images = input_for(adapter, batch=3)
    targets = swin_window_prompts(adapter, images, top_k=3).targets
    with apply_tuner(adapter, tuner):
        if tuner == "lora":
            with torch.no_grad():
                for param_name, p in adapter.model.named_parameters():
                    if "lora_B" in param_name:
                        p.normal_(std=0.1)  # B = 0 at init: A would get no gradient
        with adapter.capture_attention(SHIFTED, "logits", shift_mask=True) as record:
            adapter.logits(images)
        swin_attention_loss(list(record), targets, tau=1.0).backward()
        for index in SHIFTED:
            for module in adapter.attention_sites()[index].modules:
                params = (
                    [module.lora_A["default"].weight, module.lora_B["default"].weight]
                    if tuner == "lora"
                    else [module.ssf.scale, module.ssf.shift]
                )
                for p in params:
                    assert p.grad is not None and p.grad.abs().sum() > 0


def test_timm_v2_runs_its_qkv_module_so_lora_trains():
    """timm computes qkv with F.linear on qkv.weight: while a tuner (a LoRA layer, a hook) is
    attached to qkv the adapter runs timm's qkv_bias_separate path (same function) so that the
    module runs; the flags are restored and an untuned model runs its own code bit for bit."""
    model = build_tiny("timm-swinv2")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_bias", "v_bias")):
                p.normal_()
    x = torch.randn(2, 3, 64, 64)
    calls = []
    handle = model.layers[0].blocks[0].attn.qkv.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        before = model(x)
    assert not calls  # the bypass the adapter removes
    adapter = adapt(model)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), before, atol=1e-6, rtol=0)
    assert calls  # a hook listens to qkv: the adapter ran the module
    assert not any(block.attn.qkv_bias_separate for block in adapter.blocks)  # restored
    handle.remove()
    with torch.no_grad():
        assert torch.equal(adapter.logits(x), before)  # untuned: the model's own path
    with apply_tuner(adapter, "lora"):
        F.cross_entropy(adapter.logits(x), torch.tensor([0, 1])).backward()
        grads = [p.grad for n, p in adapter.model.named_parameters() if "qkv.lora_B" in n]
        assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_fit_task_every_tuner_with_and_without_fort_restores_the_backbone(name):
    backbone = tiny_adapter(name)
    assert applicable_tuners(backbone) == ["linear", "full", "lora", "ssf"]
    before = snapshot(backbone)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(2)  # 2-way 1-shot: one step per epoch
    fort = FortConfig(alpha=1.0, tau=1.0, top_k=3)
    cases = [("linear", None)] + [(t, f) for t in ("full", "lora", "ssf") for f in (None, True)]
    cases.append(("lora", fort))
    for tuner, fort in cases:
        with fit_task(backbone, images, labels, tuner=tuner, fort=fort, steps=1) as task:
            assert task.logits(images).shape == (2, 2)
            totals = torch.tensor([step["total"] for step in task.losses])
            assert len(totals) == 1 and torch.isfinite(totals).all(), (tuner, fort)
            if fort is not None:
                attn = torch.tensor([step["attn"] for step in task.losses])
                assert torch.isfinite(attn).all() and (attn > 0).all(), (tuner, fort)
        after = snapshot(backbone)
        assert after.keys() == before.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), (tuner, fort)
    assert backbone.num_classes == 5


# ----------------------------------------------------------------------------- heads, preprocessing
@pytest.mark.parametrize("name", NAMES)
def test_head_slot_on_a_headless_model(name):
    adapter = tiny_adapter(name, num_classes=0)
    x = input_for(adapter)
    assert adapter.head_name == ""
    with torch.no_grad():
        features = adapter.features(x)
    head = nn.Linear(adapter.num_features, 3)
    adapter.replace_head(head)
    assert adapter.head_name == ("classifier" if name.startswith("hf") else "head.fc")
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), head(features))
    adapter.remove_head()
    assert adapter.head_name == "" and adapter.logits(x).shape == features.shape


def test_hf_preprocessing_from_the_saved_processor_or_the_family_default(tmp_path):
    from transformers import ViTImageProcessor

    model = build_tiny("hf-swinv2")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model.save_pretrained(tmp_path / "with")
    ViTImageProcessor(
        image_mean=list(mean), image_std=list(std), size={"height": 64, "width": 64}
    ).save_pretrained(tmp_path / "with")
    model.save_pretrained(tmp_path / "without")
    config = _hf_data_config(str(tmp_path / "with"), model.config, model)
    assert (config["mean"], config["std"], config["input_size"]) == (mean, std, (3, 64, 64))
    fallback = _hf_data_config(str(tmp_path / "without"), model.config, model)
    assert (fallback["mean"], fallback["std"]) == HFSwinV2Adapter.default_mean_std
    loaded = focusvit.load_backbone(str(tmp_path / "with"))
    assert isinstance(loaded, HFSwinV2Adapter) and loaded.data_config["mean"] == mean
    assert focusvit.load_backbone(str(tmp_path / "without")).data_config["std"] == fallback["std"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(x), adapt(model).logits(x))
    assert math.isclose(loaded.data_config["crop_pct"], 1 / 1.15)
