"""Backbone adapter contract (docs/families.md) on tiny models of every family."""

from __future__ import annotations

import pytest
import torch
from conftest import SWIN_MODELS, TRANSFORMER_MODELS, VIT_MODELS, input_for, tiny_adapter
from convert import timm_swin_to_hf, timm_vit_to_hf
from torch import nn

import focusvit
from focusvit.backbones import (
    HFSwinAdapter,
    InputSizeError,
    TimmSwinAdapter,
    UnknownModelError,
    UnsupportedFamilyError,
    UnsupportedMethodError,
    imagenet_class_names,
    is_timm_model,
    suggest_model_names,
)
from focusvit.backbones.tiny import build_tiny


def all_hooks(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def set_eager(adapter) -> None:
    """Switch a model to its explicit (non-fused) attention path."""
    if hasattr(adapter.model, "config"):
        adapter.model.set_attn_implementation("eager")
    else:
        for m in adapter.model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False


# ----------------------------------------------------------------------------- capture
@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_capture_probs_shapes_and_rows_sum_to_one(name):
    adapter = tiny_adapter(name)
    x = input_for(adapter, batch=3)
    with torch.no_grad(), adapter.capture_attention(kind="probs") as att:
        adapter.logits(x)
    assert len(att) == adapter.num_layers
    for layer, probs in enumerate(att):
        if adapter.family == "vit":
            n = adapter.geometry(tuple(x.shape[-2:])).num_tokens
            assert probs.shape == (3, adapter.heads_per_block[layer], n, n)
        else:
            geo = adapter.window_geometry(tuple(x.shape[-2:]))[layer]
            n = geo.window[0] * geo.window[1]
            assert probs.shape[0] == 3 and probs.shape[1] == geo.num_windows
            assert probs.shape[-2:] == (n, n)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_logits_softmax_equals_probs(name):
    adapter = tiny_adapter(name)
    x = input_for(adapter)
    with torch.no_grad(), adapter.capture_attention(layers=[0, -1], kind="logits") as logits:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(layers=[0, -1], kind="probs") as probs:
        adapter.logits(x)
    assert len(logits) == 2
    for lg, pr in zip(logits, probs, strict=True):
        assert not torch.allclose(lg.sum(-1), torch.ones_like(lg.sum(-1)))
        torch.testing.assert_close(lg.softmax(-1), pr)


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_fused_and_eager_paths_capture_identical_maps(name):
    fused = tiny_adapter(name)
    eager = tiny_adapter(name)
    set_eager(eager)
    x = input_for(fused)
    with torch.no_grad():
        with fused.capture_attention() as a_fused:
            out_fused = fused.logits(x)
        with eager.capture_attention() as a_eager:
            out_eager = eager.logits(x)
    torch.testing.assert_close(out_fused, out_eager, atol=1e-5, rtol=1e-5)
    for f, e in zip(a_fused, a_eager, strict=True):
        torch.testing.assert_close(f, e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["timm-vit", "timm-vit-reg", "timm-deit-distilled", "timm-swin"])
def test_capture_matches_timm_eager_softmax(name):
    """Reference: the probabilities timm's own eager path feeds to attn_drop."""
    adapter = tiny_adapter(name)
    set_eager(adapter)
    reference: list[torch.Tensor] = []
    blocks = [b for b in adapter.blocks if not any(getattr(b, "shift_size", (0,)))]
    handles = [
        b.attn.attn_drop.register_forward_hook(lambda m, i, o: reference.append(i[0]))
        for b in blocks
    ]
    x = input_for(adapter)
    with torch.no_grad(), adapter.capture_attention() as att:
        adapter.logits(x)
    for h in handles:
        h.remove()
    indices = [i for i, b in enumerate(adapter.blocks) if b in blocks]
    assert reference and len(reference) == len(indices)
    for i, ref in zip(indices, reference, strict=True):
        torch.testing.assert_close(att[i].reshape(ref.shape), ref)


@pytest.mark.parametrize("name", ["hf-vit", "hf-dinov2"])
def test_capture_matches_hf_output_attentions(name):
    adapter = tiny_adapter(name)
    set_eager(adapter)
    x = input_for(adapter)
    with torch.no_grad(), adapter.capture_attention() as att:
        adapter.logits(x)
        reference = adapter.model(pixel_values=x, output_attentions=True).attentions
    assert len(reference) == adapter.num_layers
    for ours, ref in zip(att, reference, strict=True):
        torch.testing.assert_close(ours, ref)


def test_hf_swin_capture_matches_output_attentions():
    """HF reports the last block of each stage (a shifted one): add its shift mask to our logits."""
    adapter = tiny_adapter("hf-swin")
    set_eager(adapter)
    x = input_for(adapter)
    with torch.no_grad(), adapter.capture_attention(kind="logits") as att:
        adapter.logits(x)
        reference = adapter.model(pixel_values=x, output_attentions=True).attentions
    geometry = adapter.window_geometry(tuple(x.shape[-2:]))
    last_of_stage = [
        i
        for i, g in enumerate(geometry)
        if i + 1 == len(geometry) or geometry[i + 1].stage != g.stage
    ]
    assert len(reference) == len(last_of_stage) == 2
    for index, ref in zip(last_of_stage, reference, strict=True):
        geo, block = geometry[index], adapter.blocks[index]
        assert geo.shift != (0, 0)
        mask = block.get_attn_mask(*geo.padded_grid, dtype=x.dtype, device=x.device)
        probs = (att[index] + mask[None, :, None]).softmax(-1)
        torch.testing.assert_close(probs.flatten(0, 1), ref)


def test_capture_records_chosen_layers_only_and_latest_forward():
    adapter = tiny_adapter("timm-vit")
    x1, x2 = input_for(adapter, batch=1), input_for(adapter, batch=4)
    with torch.no_grad(), adapter.capture_attention(layers=-1) as att:
        adapter.logits(x1)
        adapter.logits(x2)
    assert len(att) == 1 and att[0].shape[0] == 4
    with pytest.raises(IndexError, match="out of range"), adapter.capture_attention(layers=7):
        pass


def test_record_read_before_forward_says_what_to_do():
    adapter = tiny_adapter("timm-vit")
    with adapter.capture_attention(layers=0) as att, pytest.raises(RuntimeError, match="forward"):
        att[0]


# ----------------------------------------------------------------------------- hooks and flags
@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_hooks_removed_and_flags_restored_also_after_exception(name):
    adapter = tiny_adapter(name)
    adapter.train()
    before = all_hooks(adapter)
    flags = [(m, getattr(m, "fused_attn", None)) for m in adapter.modules()]
    x = input_for(adapter)
    with adapter.capture_attention(), adapter.track_block_input(-1):
        adapter.logits(x)
    assert all_hooks(adapter) == before
    with (
        pytest.raises(ZeroDivisionError),
        adapter.capture_attention(),
        adapter.track_block_input(-1),
        adapter.frozen(),
    ):
        adapter.logits(x)
        raise ZeroDivisionError
    assert all_hooks(adapter) == before
    assert all(getattr(m, "fused_attn", None) == f for m, f in flags)
    assert all(p.requires_grad for p in adapter.parameters())
    assert all(m.training for m in adapter.modules())


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
@pytest.mark.parametrize("reduce", [False, True])
def test_same_block_named_twice_is_captured_once_and_flags_restored(name, reduce):
    """Issue 14: ``layers=[-1, n-1]`` installed the block's capture twice; the second install
    saved the ``fused_attn`` flag the first had switched off, and restored that."""
    adapter = tiny_adapter(name)
    n = adapter.num_layers
    flags = [(m, getattr(m, "fused_attn", None)) for m in adapter.modules()]
    before = all_hooks(adapter)
    x = input_for(adapter)
    with torch.no_grad(), adapter.capture_attention(layers=-1) as single:
        adapter.logits(x)
    options = {"reduce": lambda _layer, maps: maps.float().mean(dim=-3)} if reduce else {}
    with torch.no_grad(), adapter.capture_attention(layers=[-1, n - 1, 0], **options) as twice:
        adapter.logits(x)
    assert twice.layers == [n - 1, n - 1, 0] and len(twice) == 3
    assert twice[0] is twice[1]  # one capture fills both slots
    if not reduce:
        torch.testing.assert_close(twice[0], single[0])
    assert all_hooks(adapter) == before
    assert all(getattr(m, "fused_attn", None) == f for m, f in flags)


@pytest.mark.parametrize("name", [n for n in VIT_MODELS if n.startswith("timm")])
def test_timm_probs_capture_runs_only_the_captured_blocks_eagerly(name):
    """kind="probs" reads the eager path's own softmax on the chosen blocks (no second q kᵀ);
    the other blocks stay fused, and kind="logits" changes no flag at all."""
    adapter = tiny_adapter(name)
    x = input_for(adapter, batch=2)
    fused = [block.attn.fused_attn for block in adapter.blocks]
    assert all(fused), "the tiny timm ViT should start on the fused path"
    seen: list[list[bool]] = []
    handle = adapter.blocks[-1].register_forward_pre_hook(
        lambda *_: seen.append([b.attn.fused_attn for b in adapter.blocks])
    )
    try:
        with torch.no_grad(), adapter.capture_attention(layers=[0, -1], kind="probs") as probs:
            adapter.logits(x)
        with torch.no_grad(), adapter.capture_attention(layers=[0, -1], kind="logits") as logits:
            adapter.logits(x)
    finally:
        handle.remove()
    eager_during = [i in (0, adapter.num_layers - 1) for i in range(adapter.num_layers)]
    assert seen[0] == [not e for e in eager_during]
    assert seen[1] == fused
    assert [block.attn.fused_attn for block in adapter.blocks] == fused
    for p, lg in zip(probs, logits, strict=True):
        torch.testing.assert_close(p, lg.softmax(-1), atol=1e-5, rtol=1e-4)


class CountAttentionCalls(torch.overrides.TorchFunctionMode):
    """Counts the ``F.scaled_dot_product_attention`` calls that reach the fused kernel."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def head_mean_and_cls_row(_layer: int, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return probs.mean(dim=1), probs[:, :, 0]  # a view of the maps: must stay valid


@pytest.mark.parametrize("name", VIT_MODELS)
@pytest.mark.parametrize("path", ["fused", "eager"])
def test_reduced_probs_capture_computes_the_attention_call_itself(name, path):
    """kind="probs" with ``reduce``: on a block whose attention is one fused SDPA call the
    capture computes that call itself, chunk by chunk, and reduces the softmax it computed (no
    second q kᵀ next to the kernel); the other blocks keep the kernel. The model's output and
    the reduced maps equal those of an uncaptured forward and of the full maps, also on the
    eager path (there the maps are recomputed from the projections)."""
    adapter = tiny_adapter(name).eval()
    if path == "eager":
        set_eager(adapter)
    x = input_for(adapter, batch=5)
    with torch.no_grad():
        with CountAttentionCalls() as uncaptured:
            expected = adapter.logits(x)
        with adapter.capture_attention(layers=[0, -1]) as full:
            adapter.logits(x)
        with (
            CountAttentionCalls() as counter,
            adapter.capture_attention(layers=-1, reduce=head_mean_and_cls_row, chunk=2) as reduced,
        ):
            out = adapter.logits(x)
    fused_blocks = uncaptured.calls  # blocks whose attention is one SDPA call
    assert fused_blocks == (adapter.num_layers if path == "fused" and fused_blocks else 0)
    assert counter.calls == max(fused_blocks - 1, 0)  # only the block not captured
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    mean, cls_row = reduced[0]
    assert mean.shape == (5, *full[1].shape[-2:]) and cls_row.shape == full[1][:, :, 0].shape
    torch.testing.assert_close(mean, full[1].mean(dim=1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cls_row, full[1][:, :, 0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["timm-vit", "hf-vit"])
def test_reduced_capture_keeps_the_gradient_of_a_tracked_block(name):
    """The block a gradient is taken at stays differentiable when the capture computes its
    attention: ∂logit/∂(block input) equals the gradient without capture."""
    adapter = tiny_adapter(name).eval()
    x = input_for(adapter, batch=3)
    grads = []
    for capture in (False, True):
        with adapter.frozen(), adapter.track_block_input(-1) as block_input:
            if capture:
                with adapter.capture_attention(reduce=head_mean_and_cls_row) as reduced:
                    logits = adapter.logits(x)
                assert all(not r[0].requires_grad for r in reduced)
            else:
                logits = adapter.logits(x)
            grads.append(torch.autograd.grad(logits[:, 1].sum(), block_input.tokens)[0])
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["timm-vit", "hf-dinov2"])
def test_reduced_capture_cleans_up_after_an_error_inside_the_attention(name):
    adapter = tiny_adapter(name).eval()
    before = all_hooks(adapter)
    modes = torch._C._len_torch_function_stack()

    def broken(_layer: int, _probs: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError

    with (
        pytest.raises(ZeroDivisionError),
        torch.no_grad(),
        adapter.capture_attention(layers=0, reduce=broken),
    ):
        adapter.logits(input_for(adapter))
    assert all_hooks(adapter) == before
    assert torch._C._len_torch_function_stack() == modes
    with CountAttentionCalls() as counter, torch.no_grad():
        adapter.logits(input_for(adapter))
    assert counter.calls == adapter.num_layers  # every block is back on the fused kernel


def test_evaluating_restores_mixed_training_flags():
    adapter = tiny_adapter("timm-vit")
    adapter.train()
    adapter.model.blocks[0].eval()
    with adapter.evaluating():
        assert not any(m.training for m in adapter.modules())
    assert not adapter.model.blocks[0].training
    assert adapter.model.blocks[1].training and adapter.training


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_gradients_flow_through_captured_attention(name):
    adapter = tiny_adapter(name)
    x = input_for(adapter)
    with adapter.capture_attention(layers=-1, kind="logits") as att:
        adapter.logits(x)
    att[0][..., 0].sum().backward()
    site = adapter.attention_sites()[-1]
    grads = [p.grad for m in site.modules for p in m.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["timm-vit", "hf-vit", "timm-swin", "hf-swin"])
def test_track_block_input_gives_the_full_graph_gradient_and_cuts_earlier_blocks(name):
    adapter = tiny_adapter(name)
    x = input_for(adapter)
    inputs: list[torch.Tensor] = []

    def keep(_m, args, kwargs):
        tensor = args[0] if args else next(iter(kwargs.values()))
        tensor.retain_grad()
        inputs.append(tensor)

    handle = adapter.blocks[-1].register_forward_pre_hook(keep, with_kwargs=True)
    adapter.logits(x)[:, 1].sum().backward()
    handle.remove()
    full = inputs[0].grad
    adapter.zero_grad()
    with adapter.frozen(), adapter.track_block_input(-1) as block_input:
        score = adapter.logits(x)[:, 1].sum()
        (grad,) = torch.autograd.grad(score, block_input.tokens)
    torch.testing.assert_close(grad, full)
    assert all(p.grad is None for p in adapter.blocks[0].parameters())


# ----------------------------------------------------------------------------- timm vs HF
def test_timm_and_hf_vit_with_same_weights_agree():
    timm_adapter = tiny_adapter("timm-vit")
    hf_adapter = tiny_adapter("hf-vit")
    hf_adapter.model.load_state_dict(timm_vit_to_hf(timm_adapter.model.state_dict()), strict=True)
    x = input_for(timm_adapter)
    with torch.no_grad():
        with timm_adapter.capture_attention(layers=-1) as a_timm:
            out_timm = timm_adapter.logits(x)
        with hf_adapter.capture_attention(layers=-1) as a_hf:
            out_hf = hf_adapter.logits(x)
        torch.testing.assert_close(
            timm_adapter.features(x), hf_adapter.features(x), atol=1e-5, rtol=1e-4
        )
    torch.testing.assert_close(out_timm, out_hf, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a_timm[0], a_hf[0], atol=1e-6, rtol=1e-4)
    for size in [(32, 32), (24, 40)]:
        assert timm_adapter.grid_size(size) == hf_adapter.grid_size(size)
        assert timm_adapter.geometry(size) == hf_adapter.geometry(size)


def test_timm_and_hf_swin_with_same_weights_agree():
    timm_adapter = tiny_adapter("timm-swin")
    hf_adapter = tiny_adapter("hf-swin")
    hf_adapter.model.load_state_dict(timm_swin_to_hf(timm_adapter.model.state_dict()), strict=True)
    x = input_for(timm_adapter)
    with torch.no_grad():
        with timm_adapter.capture_attention(kind="logits") as a_timm:
            out_timm = timm_adapter.logits(x)
        with hf_adapter.capture_attention(kind="logits") as a_hf:
            out_hf = hf_adapter.logits(x)
    torch.testing.assert_close(out_timm, out_hf, atol=1e-5, rtol=1e-4)
    for t, h in zip(a_timm, a_hf, strict=True):
        torch.testing.assert_close(t, h, atol=1e-5, rtol=1e-4)
    size = tuple(x.shape[-2:])
    assert timm_adapter.grid_size(size) == hf_adapter.grid_size(size) == (8, 8)
    assert timm_adapter.window_geometry(size) == hf_adapter.window_geometry(size)


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("name", VIT_MODELS)
def test_non_square_input_grid_and_tokens_to_grid(name):
    adapter = tiny_adapter(name)
    ph, pw = adapter.patch_size
    fixed = getattr(adapter, "fixed_input_size", None)  # timm BEiT: one (non-square) size
    size = fixed if fixed is not None else (3 * ph, 5 * pw)
    x = input_for(adapter, size=size)
    with torch.no_grad():
        tokens = adapter.tokens(x)
    h, w = size[0] // ph, size[1] // pw
    assert h != w
    geometry = adapter.geometry(size)
    assert geometry.grid == (h, w)
    assert tokens.shape[1] == geometry.num_tokens
    grid = adapter.tokens_to_grid(tokens, size)
    assert grid.shape == (2, tokens.shape[-1], h, w)
    p = adapter.num_prefix_tokens
    torch.testing.assert_close(grid[:, :, 1, w - 1], tokens[:, p + 1 * w + w - 1])
    torch.testing.assert_close(grid[:, :, 2, 0], tokens[:, p + 2 * w])


@pytest.mark.parametrize("name", ["timm-vit-reg", "hf-vit"])
def test_inserted_tokens_shift_the_patches_inside_the_blocks(name):
    adapter = tiny_adapter(name)
    p, size = adapter.num_prefix_tokens, (32, 32) if name == "hf-vit" else (28, 28)
    tokens = torch.randn(2, p + 16, 8)
    inside = torch.cat([tokens[:, :p], torch.randn(2, 3, 8), tokens[:, p:]], dim=1)
    assert adapter.inserted_tokens == 0 and adapter.num_tokens_before_patches == p
    with pytest.raises(InputSizeError, match="do not fill a 4x4"):
        adapter.tokens_to_grid(inside, size)
    adapter.set_inserted_tokens(3, refreshed=True)
    assert adapter.num_prefix_tokens == p and adapter.num_tokens_before_patches == p + 3
    assert adapter.inserted_tokens_refreshed
    geometry = adapter.geometry(size)
    assert (geometry.num_tokens, geometry.num_block_tokens) == (p + 16, p + 3 + 16)
    assert adapter.patch_start(p + 16, size) == p and adapter.patch_start(p + 19, size) == p + 3
    final, in_blocks = adapter.tokens_to_grid(tokens, size), adapter.tokens_to_grid(inside, size)
    torch.testing.assert_close(final, in_blocks)
    with pytest.raises(InputSizeError, match="3 tokens inserted by a tuner"):
        adapter.tokens_to_grid(tokens[:, 1:], size)
    adapter.set_inserted_tokens(0)
    assert adapter.inserted_tokens == 0 and not adapter.inserted_tokens_refreshed
    with pytest.raises(ValueError, match=">= 0"):
        adapter.set_inserted_tokens(-1)


@pytest.mark.parametrize("name", [*SWIN_MODELS, "timm-cnn"])
def test_only_columnar_vits_take_inserted_tokens(name):
    adapter = tiny_adapter(name)
    with pytest.raises(UnsupportedMethodError, match="columnar ViTs"):
        adapter.set_inserted_tokens(2)
    adapter.set_inserted_tokens(0)
    assert adapter.num_tokens_before_patches == 0


def test_prefix_token_counts():
    assert tiny_adapter("timm-vit").num_prefix_tokens == 1
    assert tiny_adapter("timm-vit-reg").num_prefix_tokens == 3
    assert tiny_adapter("timm-deit-distilled").num_prefix_tokens == 2
    assert tiny_adapter("hf-dinov2").num_prefix_tokens == 1


@pytest.mark.parametrize("name", SWIN_MODELS)
def test_swin_window_geometry(name):
    adapter = tiny_adapter(name)
    geometry = adapter.window_geometry((64, 64))
    assert [g.stage for g in geometry] == [0, 0, 1, 1]
    assert [g.shift for g in geometry] == [(0, 0), (2, 2), (0, 0), (2, 2)]
    assert geometry[0].num_windows == 16 and geometry[2].num_windows == 4
    tokens = adapter.tokens(input_for(adapter))
    assert adapter.tokens_to_grid(tokens, (64, 64)).shape == (2, 32, 8, 8)


def test_swin_window_partition_order_is_declared_as_data():
    assert TimmSwinAdapter.window_partition_order == "roll_then_pad"
    assert HFSwinAdapter.window_partition_order == "pad_then_roll"
    assert tiny_adapter("hf-swin").window_partition_order == "pad_then_roll"


# ----------------------------------------------------------------------------- heads
HEAD_MODELS = [*TRANSFORMER_MODELS, "timm-cnn"]


def head_input(adapter) -> torch.Tensor:
    return input_for(adapter, size=(64, 64) if adapter.family == "cnn" else None)


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_replace_and_remove_head_on_a_headless_model(name):
    adapter = tiny_adapter(name, num_classes=0)
    x = head_input(adapter)
    keys = set(adapter.model.state_dict())
    with torch.no_grad():
        features = adapter.features(x)
        assert not adapter.head_name and torch.equal(adapter.logits(x), features)
    head = nn.Linear(adapter.num_features, 3)
    adapter.replace_head(head)
    assert adapter.head is head and adapter.head_name and adapter.num_classes == 3
    assert any(p is head.weight for p in adapter.model.parameters())  # tuners see and train it
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), head(features))
        other = nn.Linear(adapter.num_features, 4)
        adapter.replace_head(other)
        assert adapter.head is other and adapter.logits(x).shape == (2, 4)
    adapter.remove_head()
    assert not adapter.head_name and adapter.num_classes == 0
    assert set(adapter.model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), features)
    adapter.remove_head()  # no head: nothing to do


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_reset_remove_and_restore_the_pretrained_head(name):
    adapter = tiny_adapter(name)
    x = head_input(adapter)
    pretrained = adapter.head
    with torch.no_grad():
        reference = adapter.logits(x)
    adapter.remove_head()
    assert adapter.num_classes == 0 and adapter.logits(x).shape == (2, adapter.num_features)
    adapter.reset_head(7)
    assert adapter.num_classes == 7 and adapter.logits(x).shape == (2, 7)
    adapter.replace_head(pretrained)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), reference)
    adapter.reset_head(0)
    assert adapter.num_classes == 0
    with pytest.raises(ValueError, match=">= 0"):
        adapter.reset_head(-1)


def test_timm_reset_head_initialises_like_timm():
    adapter = tiny_adapter("timm-vit", num_classes=0)
    torch.manual_seed(3)
    adapter.reset_head(4)
    reference = build_tiny("timm-vit", num_classes=0)
    torch.manual_seed(3)
    reference.reset_classifier(4)
    assert torch.equal(adapter.head.weight, reference.head.weight)
    assert adapter.model.num_classes == 4


def test_hf_deit_with_distillation_head_cannot_take_one_head():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    adapter = focusvit.adapt(DeiTForImageClassificationWithTeacher(config).eval())
    with pytest.raises(UnsupportedMethodError, match="distillation"):
        adapter.replace_head(nn.Linear(adapter.num_features, 3))


# ----------------------------------------------------------------------------- catalogues
@pytest.mark.parametrize("name", ["timm-vit", "hf-vit", "timm-swin", "hf-swin", "timm-cnn"])
def test_head_class_names_imagenet_own_labels_or_none(name):
    from focusvit.backbones.catalog import head_class_names

    imagenet = head_class_names(tiny_adapter(name, num_classes=1000))
    assert imagenet == imagenet_class_names()
    assert head_class_names(tiny_adapter(name, num_classes=5)) is None  # unknown: indices
    assert head_class_names(tiny_adapter(name, num_classes=0)) is None  # no head: features
    if name.startswith("hf"):  # the model's own labels win
        adapter = tiny_adapter(name, num_classes=3)
        adapter.model.config.id2label = {0: "ant", 1: "bee", 2: "cat"}
        assert head_class_names(adapter) == ["ant", "bee", "cat"]


def test_timm_names_and_imagenet_classes_without_importing_timm_elsewhere():
    assert is_timm_model("vit_small_patch16_224") and not is_timm_model("no_such_model_xyz")
    close = suggest_model_names("vit_small_patch16", limit=3)
    assert 0 < len(close) <= 3 and all("vit_small_patch16" in n for n in close)
    assert suggest_model_names("swin_tiny_*", limit=0)[0].startswith("swin_tiny_")
    assert suggest_model_names("no_such_model_xyz") == []
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0].startswith("tench") and "tabby" in names[281]
    names.append("x")  # a copy: the cached list is not changed
    assert len(imagenet_class_names()) == 1000


@pytest.mark.parametrize("name", [*TRANSFORMER_MODELS, "timm-cnn"])
def test_structure_as_data(name):
    adapter = tiny_adapter(name)
    assert isinstance(adapter.gradcam_layer, nn.Module)
    assert adapter.num_classes == 5
    assert isinstance(adapter.head, nn.Linear) or name == "timm-deit-distilled"
    # a target is a leaf name or a dotted suffix (Data2Vec's ``attention.output.dense``, so
    # that the MLP's ``output.dense`` is not matched); each must name a module of the model
    modules = [n for n, _ in adapter.model.named_modules()]
    for target in adapter.lora_targets:
        assert any(n == target or n.endswith("." + target) for n in modules), target
    assert adapter.features(input_for(adapter)).shape == (2, adapter.num_features)


def test_cnn_gradcam_layer_is_the_final_feature_map():
    adapter = tiny_adapter("timm-cnn")
    x = input_for(adapter, batch=1, size=(64, 64))
    out = []
    handle = adapter.gradcam_layer.register_forward_hook(lambda m, i, o: out.append(o))
    with torch.no_grad():
        tokens = adapter.tokens(x)
    handle.remove()
    torch.testing.assert_close(out[-1], tokens)
    assert adapter.grid_size((64, 64)) == tuple(tokens.shape[-2:])
    with pytest.raises(UnsupportedMethodError, match="cam"), adapter.capture_attention():
        pass


# ----------------------------------------------------------------------------- loading and errors
def test_load_backbone_timm_and_hf_by_spec_without_downloads(tmp_path):
    adapter = focusvit.load_backbone(
        "timm:vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=1
    )
    assert adapter.family == "vit" and adapter.num_classes == 3
    assert adapter.logits(torch.randn(1, 3, 48, 32)).shape == (1, 3)  # dynamic size enabled
    swin = focusvit.load_backbone(
        "timm:swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=2,
        depths=(2, 2),
        num_heads=(3, 6),
        embed_dim=48,
    )
    assert swin.family == "swin" and swin.logits(torch.randn(1, 3, 224, 224)).shape == (1, 2)
    build_tiny("hf-vit").save_pretrained(tmp_path / "hfvit")
    hf = focusvit.load_backbone(f"hf:{tmp_path / 'hfvit'}")
    assert hf.family == "vit" and hf.num_classes == 5
    hf_dir = focusvit.load_backbone(tmp_path / "hfvit", num_classes=3)
    assert hf_dir.num_classes == 3


def test_save_and_load_backbone_roundtrip(tmp_path):
    adapter = focusvit.load_backbone("tiny:timm-vit", num_classes=4)
    path = focusvit.save_backbone(
        adapter, tmp_path / "model.safetensors", {"spec": "tiny:timm-vit", "num_classes": 4}
    )
    loaded = focusvit.load_backbone(path)
    x = input_for(adapter)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(x), adapter.logits(x))
    assert loaded.data_config["input_size"] == adapter.data_config["input_size"]


@pytest.mark.parametrize(
    ("spec", "family"),
    [
        ("tiny:timm-vit", "vit"),
        ("tiny:hf-dinov2", "vit"),
        ("tiny:timm-swin", "swin"),
        ("tiny:hf-swin", "swin"),
        ("tiny:timm-cnn", "cnn"),
        # hub architectures on the meta device: no download (this machine has no hub access)
        ("timm:vit_large_patch14_dinov2", "vit"),
        ("timm:swin_base_patch4_window7_224", "swin"),
        ("resnet50", "cnn"),
    ],
)
def test_model_family_is_the_loaded_adapters_without_weights(spec, family):
    from focusvit.backbones import model_family

    assert model_family(spec) == family
    if spec.startswith("tiny:"):  # the family load_backbone gives the same spec
        assert focusvit.load_backbone(spec).family == family


def test_model_family_of_local_files_and_what_it_cannot_tell(tmp_path):
    from focusvit.backbones import model_family

    build_tiny("hf-swin").save_pretrained(tmp_path / "hfswin")
    assert model_family(tmp_path / "hfswin") == model_family(f"hf:{tmp_path / 'hfswin'}") == "swin"
    path = focusvit.save_backbone(
        focusvit.load_backbone("tiny:timm-cnn"),
        tmp_path / "m.safetensors",
        {"spec": "tiny:timm-cnn"},
    )
    assert model_family(path) == "cnn"
    # not told cheaply: offline weights, an uncached hub id, unknown names, missing files
    assert model_family("offline:dinov2-s14-imgfocus") is None
    assert model_family("hf:nobody/not-cached-anywhere") is None
    assert model_family("not-a-model-anywhere") is None
    assert model_family(tmp_path / "missing.safetensors") is None


def test_unknown_model_errors_name_the_fix(tmp_path):
    with pytest.raises(UnknownModelError, match="timm:NAME"):
        focusvit.load_backbone("not-a-model-anywhere")
    with pytest.raises(UnknownModelError, match="similar names"):
        focusvit.load_backbone("timm:vit_smal_patch16_224")
    with pytest.raises(UnknownModelError, match="available"):
        focusvit.load_backbone("tiny:nope")
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"x")
    with pytest.raises(UnknownModelError, match="safetensors"):
        focusvit.load_backbone(bogus)


def test_unsupported_family_lists_supported_ones():
    with pytest.raises(UnsupportedFamilyError) as error:
        focusvit.adapt(nn.Sequential(nn.Linear(3, 3)))
    for family in focusvit.supported_families():
        assert family in str(error.value)


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_input_not_fitting_patch_size_is_rejected_with_fix(name):
    adapter = tiny_adapter(name)
    h, w = adapter.data_config["input_size"][1:]
    with pytest.raises(InputSizeError, match="multiples"):
        adapter.logits(torch.randn(1, 3, h + 1, w))
    with pytest.raises(InputSizeError, match=r"\(B, 3, H, W\)"):
        adapter.logits(torch.randn(1, 1, h, w))


def test_peft_wrapped_model_is_unwrapped():
    from peft import LoraConfig, get_peft_model

    model = build_tiny("timm-vit")
    adapter = tiny_adapter("timm-vit")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=adapter.lora_targets))
    wrapped = focusvit.adapt(peft_model)
    x = input_for(wrapped)
    with torch.no_grad(), wrapped.capture_attention(layers=-1) as att:
        out = wrapped.logits(x)
    torch.testing.assert_close(out, adapter.logits(x).detach())  # LoRA B starts at zero
    assert att[0].shape[0] == 2
