"""Conformance of every registered backbone family (as timm's model tests run over its registry).

Parametrised over the tiny random-weight model(s) each family registers (``FamilyEntry.tiny``),
so a family added later gets every check here by registering. The reference for attention is the
model's OWN eager computation, read generically: with eager attention forced (HF
``set_attn_implementation("eager")``, timm ``fused_attn = False``) the first softmax each block
computes over a ``(B', heads, N, N)`` tensor is its attention; that softmax's input is its
pre-softmax logits (relative position bias, rotary embeddings, cosine scaling and shift masks
included, whatever the model does).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import focusvit
from focusvit.backbones import FAMILIES, BackboneAdapter, model_family
from focusvit.backbones.tiny import TINY_MODELS, build_tiny
from focusvit.explainers import EXPLAINERS, explain
from focusvit.finetune import applicable_tuners, apply_tuner, fit_task
from focusvit.finetune.attention_loss import (
    FortConfig,
    prompt_targets,
    resolve_fort,
    swin_attention_loss,
    vit_attention_loss,
)

TINY_FAMILY = {name: entry for entry in FAMILIES for name in entry.tiny}
ALL_TINY = list(TINY_FAMILY)
TRANSFORMERS = [name for name in ALL_TINY if TINY_FAMILY[name].adapter.family != "cnn"]
COLUMNAR = [name for name in ALL_TINY if TINY_FAMILY[name].adapter.family == "vit"]


def tiny(name: str, num_classes: int = 5) -> BackboneAdapter:
    return focusvit.adapt(build_tiny(name, num_classes=num_classes), name=f"tiny:{name}")


def non_square(adapter: BackboneAdapter, batch: int = 2) -> Tensor:
    """A non-square batch: one size multiple wider than the model's own input, or the model's
    own size when it takes only one (timm BEiT; its tiny model is built non-square)."""
    height, width = adapter.data_config["input_size"][1:]
    fixed = getattr(adapter, "fixed_input_size", None)
    if fixed is None:
        width += adapter.size_multiple[1]
    assert height != width, (
        f"{adapter.name}: the tiny model of a fixed-size family must be non-square"
    )
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, height, width, generator=generator)


# ----------------------------------------------------------------------------- the reference
class _FirstSoftmax(TorchFunctionMode):
    """Records the input and output of the first softmax over a 4-d tensor while active."""

    def __init__(self) -> None:
        super().__init__()
        self.logits: Tensor | None = None
        self.probs: Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        softmax = func in (F.softmax, torch.softmax, Tensor.softmax)
        if softmax and self.logits is None and args[0].ndim == 4:
            self.logits, self.probs = args[0].detach().float(), out.detach().float()
        return out


@contextmanager
def eager_attention(adapter: BackboneAdapter) -> Iterator[None]:
    """Force the model's own eager attention path (restored on exit)."""
    model = adapter.model
    flags = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for module, _ in flags:
        module.fused_attn = False
    configs = [
        (m.config, m.config._attn_implementation)
        for m in model.modules()
        if hasattr(getattr(m, "config", None), "_attn_implementation")
    ]
    for config, _ in configs:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for module, flag in flags:
            module.fused_attn = flag
        for config, value in configs:
            config._attn_implementation = value


def reference_attention(adapter: BackboneAdapter, x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per block ``(logits, probs)`` as the model's own eager forward computes them, in the
    adapter's public layout (Swin: ``(B, windows, heads, n, n)``)."""
    modes = [_FirstSoftmax() for _ in adapter.blocks]
    handles = []

    def enter(mode: _FirstSoftmax) -> None:  # a pre-hook returning a value would replace args
        mode.__enter__()

    def leave(mode: _FirstSoftmax) -> None:
        mode.__exit__(None, None, None)

    for block, mode in zip(adapter.blocks, modes, strict=True):
        handles.append(block.register_forward_pre_hook(lambda *_, m=mode: enter(m)))
        handles.append(block.register_forward_hook(lambda *_, m=mode: leave(m)))
    try:
        with eager_attention(adapter), torch.no_grad():
            adapter.logits(x)
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for mode in modes:
        assert mode.logits is not None, "the block computed no softmax over a 4-d tensor"
        out.append(
            (
                adapter._reshape_attention(mode.logits, x.shape[0]),
                adapter._reshape_attention(mode.probs, x.shape[0]),
            )
        )
    return out


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


# ----------------------------------------------------------------------------- registry
def test_every_tiny_model_belongs_to_exactly_one_family():
    names = [name for entry in FAMILIES for name in entry.tiny]
    assert len(names) == len(set(names)), "a tiny model is listed by two families"
    assert set(names) == set(TINY_MODELS), (
        f"tiny models without a family: {sorted(set(TINY_MODELS) - set(names))}; "
        f"families naming unknown tiny models: {sorted(set(names) - set(TINY_MODELS))}"
    )
    assert all(entry.examples for entry in FAMILIES), "every family names hub examples"


@pytest.mark.parametrize("name", ALL_TINY)
def test_adapt_picks_the_registered_family(name):
    adapter = tiny(name)
    entry = TINY_FAMILY[name]
    assert type(adapter) is entry.adapter
    assert focusvit.backbones.family_of(adapter.model) is entry
    assert model_family(f"tiny:{name}") == adapter.family
    if adapter.family == "vit":
        layout = adapter.token_layout
        assert layout.has_cls == (entry.cls_row.startswith("cls token"))
        assert adapter.num_heads >= 1 and len(adapter.heads_per_block) == adapter.num_layers


def test_a_model_whose_attention_cannot_be_captured_is_refused():
    class Attention(nn.Module):
        def forward(self, x):
            return x

    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.attention = Attention()

        def forward_features(self, x):
            return self.conv(x)

        def forward_head(self, x, pre_logits=False):
            return x.mean((2, 3))

    with pytest.raises(focusvit.errors.UnsupportedFamilyError, match="supported families"):
        focusvit.adapt(Opaque())


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_captured_attention_equals_the_models_own_eager_attention(name):
    adapter = tiny(name)
    x = non_square(adapter)
    reference = reference_attention(adapter, x)
    swin = adapter.family == "swin"
    hooks = hook_count(adapter.model)
    options = {"shift_mask": True} if swin else {}
    with torch.no_grad(), adapter.capture_attention(kind="probs", **options) as probs:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(kind="logits", **options) as logits:
        adapter.logits(x)
    assert hook_count(adapter.model) == hooks
    for layer, (ref_logits, ref_probs) in enumerate(reference):
        torch.testing.assert_close(probs[layer].float(), ref_probs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits[layer].float(), ref_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", COLUMNAR)
def test_rollout_equals_an_independent_full_matrix_rollout(name):
    adapter = tiny(name)
    x = non_square(adapter)
    reference = reference_attention(adapter, x)
    tokens = reference[0][1].shape[-1]
    product = torch.eye(tokens).expand(x.shape[0], tokens, tokens)
    for _, probs in reference:  # R = Â^L ··· Â^1 with Â = rownorm(mean_heads(A) + I)
        matrix = probs.mean(dim=1) + torch.eye(tokens)
        product = (matrix / matrix.sum(dim=-1, keepdim=True)) @ product
    start = adapter.num_tokens_before_patches
    # the "CLS row" of a model without a CLS token: the mean of the patch query rows
    cls = adapter.has_cls_token
    row = product[:, 0, start:] if cls else product[:, start:, start:].mean(dim=1)
    out = explain(adapter, x, "rollout")
    assert out.params["cls_row"] == ("cls token" if cls else "mean of patch query rows")
    torch.testing.assert_close(out.scores.flatten(1), row, atol=1e-5, rtol=1e-4)
    if not adapter.has_cls_token:
        with pytest.raises(focusvit.errors.FocusVitError, match="no CLS token"):
            explain(adapter, x, "rollout", query="cls")


@pytest.mark.parametrize("name", ALL_TINY)
def test_every_applicable_explainer_is_finite_on_a_non_square_input(name):
    adapter = tiny(name)
    x = non_square(adapter, batch=3)
    methods = [m for m, cls in EXPLAINERS.items() if adapter.family in cls.families]
    assert methods
    hooks = hook_count(adapter.model)
    for method in methods:
        out = explain(adapter, x, method, target=torch.tensor([0, 1, 2]))
        assert out.scores.shape == (3, *adapter.grid_size(tuple(x.shape[-2:]))), method
        assert torch.isfinite(out.scores).all(), method
    assert hook_count(adapter.model) == hooks


# ----------------------------------------------------------------------------- tuners and loss
def _tuner_cases() -> list[tuple[str, str, bool]]:
    cases = []
    for name in ALL_TINY:
        adapter = tiny(name)
        for tuner in applicable_tuners(adapter):
            cases.append((name, tuner, False))
            if adapter.family != "cnn" and tuner in ("full", "lora", "ssf"):
                cases.append((name, tuner, True))
    return cases


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("name", "tuner", "with_loss"), _tuner_cases())
def test_every_applicable_tuner_fits_and_the_backbone_comes_back_bit_identical(
    name, tuner, with_loss
):
    adapter = tiny(name, num_classes=0)
    x = torch.randn(6, 3, *adapter.data_config["input_size"][1:])
    labels = torch.arange(6) % 3
    before = _state(adapter.model)
    hooks = hook_count(adapter.model)
    with fit_task(adapter, x, labels, tuner=tuner, fort=with_loss or None, steps=2) as task:
        assert task.logits(x).shape == (6, 3)
        assert task.losses and all(
            torch.isfinite(torch.tensor(step["total"])) for step in task.losses
        )
        if with_loss:
            assert all(step["attn"] > 0 for step in task.losses)
    after = adapter.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"
    assert hook_count(adapter.model) == hooks


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_attention_loss_is_finite_and_reaches_every_lora_module(name):
    adapter = tiny(name, num_classes=3)
    x = torch.randn(3, 3, *adapter.data_config["input_size"][1:])
    labels = torch.arange(3)
    fort = resolve_fort(adapter, "lora", FortConfig(layers="all"))
    targets = prompt_targets(adapter, x, labels, fort)
    with apply_tuner(adapter, "lora"):
        lora_modules = [m for m in adapter.model.modules() if hasattr(m, "lora_A")]
        assert lora_modules, "LoRA injected nothing"
        ran: set[int] = set()
        handles = [m.register_forward_hook(lambda mod, *_: ran.add(id(mod))) for m in lora_modules]
        for module in lora_modules:  # non-zero B so that every LoRA path carries a gradient
            for b in module.lora_B.values():
                nn.init.normal_(b.weight, std=0.1)
        swin = adapter.family == "swin"
        if swin:
            from focusvit.prompting.swin import last_block_of_each_stage

            layers = last_block_of_each_stage(adapter)
        else:
            layers = list(range(adapter.num_layers))
        options = {"shift_mask": True} if swin else {}
        with adapter.capture_attention(layers=layers, kind="logits", **options) as record:
            adapter.logits(x)
        for handle in handles:
            handle.remove()
        assert ran == {id(m) for m in lora_modules}, (
            "some LoRA modules never ran in the forward (a projection the model bypasses?)"
        )
        if swin:
            loss = swin_attention_loss(list(record), targets, tau=fort.tau)
        else:
            loss = vit_attention_loss(
                list(record), targets, adapter.num_prefix_tokens, fort.tau,
                has_cls=adapter.has_cls_token,
            )  # fmt: skip
        assert torch.isfinite(loss) and loss > 0
        params = [p for n, p in adapter.model.named_parameters() if "lora_" in n]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


# ----------------------------------------------------------------------------- docs
def test_the_families_page_matches_the_registries():
    from focusvit.families import families_table, page_table

    assert page_table() == families_table(), (
        "docs/families.md is out of date: run python -m focusvit.families --write"
    )
