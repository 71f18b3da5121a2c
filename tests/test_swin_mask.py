"""Swin: the shifted-window mask in captured attention logits and in the FORT loss.

The authors' attention-enhancement loss on Swin reads the logits with the shift mask (0 / -100
per window, query and key) added; ``capture_attention(..., shift_mask=True)`` gives them, and
the trainer uses them unless ``FortConfig(shift_mask=False)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import input_for, tiny_adapter

from focusvit.backbones import UnsupportedMethodError, adapt
from focusvit.finetune import FortConfig, swin_attention_loss
from focusvit.finetune.attention_loss import prompt_targets
from focusvit.finetune.trainer import training_step

SHIFTED, UNSHIFTED = [1, 3], [0, 2]  # tiny Swins: two stages of (W-MSA, SW-MSA) blocks


def _static_mask_timm_swin():
    """A tiny timm Swin with a fixed input size: its shifted blocks hold an ``attn_mask``
    buffer instead of building the mask per forward (``dynamic_mask``)."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(
        img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
        num_heads=(2, 4), num_classes=5,
    ).eval()  # fmt: skip
    assert (
        model.layers[0].blocks[1].attn_mask is not None
        and not model.layers[0].blocks[1].dynamic_mask
    )
    return adapt(model, name="timm-swin-static-mask")


def _adapter(name: str):
    return _static_mask_timm_swin() if name == "timm-swin-static" else tiny_adapter(name)


# 64 px: stage grids 16x16 and 8x8 (multiples of the 4x4 window); 72 px: 18x18 and 9x9, padded
CASES = [
    ("timm-swin", 64),
    ("timm-swin", 72),
    ("timm-swin-static", 64),
    ("hf-swin", 64),
    ("hf-swin", 72),
]


def _model_probabilities(adapter, x, blocks):
    """The softmax each block computes itself, read from the model's eager attention path:
    ``(B, windows, heads, n, n)`` per block."""
    seen, handles = {}, []
    for index in blocks:
        block = adapter.blocks[index]
        if hasattr(block, "attention"):  # Hugging Face SwinLayer
            adapter.model.set_attn_implementation("eager")

            def hook(_m, _i, output, index=index):
                seen[index] = output[1]

            handles.append(block.attention.register_forward_hook(hook))
        else:
            block.attn.fused_attn = False

            def hook(_m, _i, output, index=index):
                seen[index] = output

            handles.append(block.attn.softmax.register_forward_hook(hook))
    try:
        with torch.no_grad():
            adapter.logits(x)
    finally:
        for handle in handles:
            handle.remove()
    return {i: p.reshape(x.shape[0], -1, *p.shape[1:]) for i, p in seen.items()}


def _model_mask(adapter, index: int, size: int) -> torch.Tensor:
    """The block's shift mask ``(windows, n, n)`` built by the library's own API."""
    block = adapter.blocks[index]
    geometry = adapter.window_geometry((size, size))[index]
    hp, wp = geometry.padded_grid
    if hasattr(block, "attention"):  # Hugging Face SwinLayer
        return block.get_attn_mask(hp, wp, dtype=torch.float32, device=torch.device("cpu"))
    if block.dynamic_mask:
        return block.get_attn_mask(torch.zeros(1, hp, wp, 1))
    return block.attn_mask


@pytest.mark.parametrize(("name", "size"), CASES)
def test_softmax_of_masked_logits_is_the_models_attention(name, size):
    adapter = _adapter(name)
    x = input_for(adapter, batch=2, size=(size, size))
    with torch.no_grad(), adapter.capture_attention(SHIFTED, "logits", shift_mask=True) as masked:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(SHIFTED, "probs", shift_mask=True) as probs:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(SHIFTED, "logits") as unmasked:
        adapter.logits(x)
    reference = _model_probabilities(adapter, x, SHIFTED)
    for slot, index in enumerate(SHIFTED):
        expected = reference[index]
        assert masked[slot].shape == expected.shape
        torch.testing.assert_close(masked[slot].softmax(-1), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(probs[slot], expected, atol=1e-5, rtol=0)
        # the case exercises the mask: without it the softmax is not the model's attention
        assert (unmasked[slot].softmax(-1) - expected).abs().max() > 1e-2
        # the added term is the mask of the library's own API, per window
        mask = _model_mask(adapter, index, size)
        added = masked[slot] - unmasked[slot]  # (B, windows, heads, n, n)
        torch.testing.assert_close(added, mask[None, :, None].expand_as(added), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("name", "size"), CASES)
def test_blocks_without_shift_are_unchanged(name, size):
    adapter = _adapter(name)
    x = input_for(adapter, batch=2, size=(size, size))
    with torch.no_grad(), adapter.capture_attention(UNSHIFTED, "logits", shift_mask=True) as masked:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(UNSHIFTED, "logits") as unmasked:
        adapter.logits(x)
    for a, b in zip(masked, unmasked, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["timm-swin", "hf-swin"])
def test_masked_capture_with_reduce_and_repeated_layers(name):
    adapter = tiny_adapter(name)
    x = input_for(adapter, batch=3, size=(72, 72))
    with torch.no_grad(), adapter.capture_attention([3, -1], "logits", shift_mask=True) as full:
        adapter.logits(x)
    with (
        torch.no_grad(),
        adapter.capture_attention(
            3, "logits", reduce=lambda _layer, maps: maps.mean(dim=2), chunk=2, shift_mask=True
        ) as reduced,
    ):
        adapter.logits(x)
    assert torch.equal(full[0], full[1])
    torch.testing.assert_close(reduced[0], full[0].mean(dim=2))
    # hooks are gone after the capture: a plain capture is unmasked again
    with torch.no_grad(), adapter.capture_attention(3, "logits") as plain:
        adapter.logits(x)
    assert (full[0] - plain[0]).abs().max() == pytest.approx(100.0, abs=1e-3)


def test_masked_logits_stay_in_the_graph():
    adapter = tiny_adapter("timm-swin")
    x = input_for(adapter, batch=2)
    with adapter.capture_attention(SHIFTED, "logits", shift_mask=True) as masked:
        adapter.logits(x)
    sum(m.softmax(-1)[..., 0].sum() for m in masked).backward()
    assert adapter.blocks[3].attn.qkv.weight.grad.abs().sum() > 0


def test_columnar_vits_refuse_shift_mask():
    adapter = tiny_adapter("timm-vit")
    with (
        pytest.raises(UnsupportedMethodError, match="Swin"),
        adapter.capture_attention(-1, "logits", shift_mask=True),
    ):
        pass


@pytest.mark.parametrize("name", ["timm-swin", "hf-swin"])
def test_trainer_loss_reads_the_masked_logits(name):
    adapter = tiny_adapter(name, num_classes=3)
    size = 72 if name == "timm-swin" else 64
    images = input_for(adapter, batch=3, size=(size, size))
    labels = torch.arange(3)
    fort = FortConfig(alpha=1.0, tau=1.0, top_k=3)
    assert fort.shift_mask  # the authors' logits are the default
    targets = prompt_targets(adapter, images, labels, fort)
    blocks = [1, 3]  # the last block of each stage: both shifted
    with torch.no_grad(), adapter.capture_attention(blocks, "logits") as unmasked:
        adapter.logits(images)
    with_mask = [
        m + _model_mask(adapter, index, size)[None, :, None]
        for m, index in zip(unmasked, blocks, strict=True)
    ]
    expected_masked = float(swin_attention_loss(with_mask, targets, tau=1.0))
    expected_unmasked = float(swin_attention_loss(list(unmasked), targets, tau=1.0))
    assert abs(expected_masked - expected_unmasked) > 1e-3

    params = [p for p in adapter.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # the weights stay as they are
    masked_step = training_step(adapter, optimizer, images, labels, fort, targets)
    unmasked_fort = FortConfig(alpha=1.0, tau=1.0, top_k=3, shift_mask=False)
    plain_step = training_step(adapter, optimizer, images, labels, unmasked_fort, targets)
    assert masked_step["attn"] == pytest.approx(expected_masked, rel=1e-5)
    assert plain_step["attn"] == pytest.approx(expected_unmasked, rel=1e-5)
    ce = F.cross_entropy(adapter.logits(images).detach(), labels)
    assert masked_step["ce"] == pytest.approx(float(ce), rel=1e-5)


def test_fort_config_shift_mask_validates():
    assert FortConfig().shift_mask is True
    assert FortConfig(shift_mask=False).shift_mask is False
    with pytest.raises(ValueError, match="shift_mask"):
        FortConfig(shift_mask="yes")
