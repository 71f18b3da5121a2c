"""Position prompts (docs/concepts/prompts.md): top-P / coverage sets, targets, Swin window prompts,
window layout round trips and upsampling (the overlay figures are tested in test_figures.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import SWIN_MODELS, tiny_adapter
from torch import nn

from focusvit.backbones import (
    HFSwinAdapter,
    NonFiniteError,
    UnsupportedMethodError,
    WindowGeometry,
    adapt,
)
from focusvit.backbones.swinv2 import HFSwinV2Adapter
from focusvit.backbones.timm_swinv2 import TimmSwinV2Adapter, TimmSwinV2CrAdapter
from focusvit.explainers.base import Explanation
from focusvit.prompting import (
    PositionPrompt,
    coverage_counts,
    coverage_mask,
    grid_to_windows,
    importance_targets,
    make_prompts,
    mass_distribution,
    partition_order,
    prompt_count,
    swin_window_prompts,
    top_k_mask,
    upsample_mask,
    upsample_scores,
    window_valid_mask,
    windows_to_grid,
)


def explanation(scores: torch.Tensor, image_size=(224, 224), method="rollout") -> Explanation:
    return Explanation(scores=scores, method=method, image_size=image_size)


# ----------------------------------------------------------------------------- top-P
def test_top_p_picks_exactly_the_p_highest():
    scores = torch.rand(3, 14, 14)
    prompt = make_prompts(explanation(scores), top_k=14)
    flat = scores.flatten(1)
    assert prompt.mask.shape == (3, 14, 14) and prompt.mask.dtype == torch.bool
    assert prompt.counts.tolist() == [14, 14, 14]
    for b in range(3):
        chosen = flat[b][prompt.mask[b].flatten()]
        others = flat[b][~prompt.mask[b].flatten()]
        assert chosen.min() > others.max()
        expected = torch.topk(flat[b], 14).indices
        assert set(prompt.indices[b].tolist()) == set(expected.tolist())
        # indices sorted by descending score
        assert torch.all(flat[b][prompt.indices[b]].diff() <= 0)


def test_ties_go_to_the_lower_index():
    scores = torch.zeros(1, 4, 4)
    assert top_k_mask(scores, 3).flatten().nonzero().flatten().tolist() == [0, 1, 2]
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5, 2.0]])
    assert top_k_mask(scores, 2).nonzero()[:, 1].tolist() == [1, 2]
    assert make_prompts(scores.view(1, 2, 3), top_k=2).indices[0].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("fraction", "n", "expected"), [(0.07, 196, 14), (0.3, 16, 5), (1.0, 9, 9)]
)
def test_fraction_is_rounded_share_of_patches(fraction, n, expected):
    assert prompt_count(n, top_fraction=fraction) == expected == round(fraction * n)
    grid = math.isqrt(n)
    prompt = make_prompts(torch.rand(2, grid, grid), top_fraction=fraction)
    assert prompt.counts.tolist() == [expected, expected]


def test_count_and_fraction_are_two_names_never_one_overload():
    """1 as a count is one patch and 1.0 as a fraction is every patch, under two names."""
    scores = torch.rand(1, 4, 4)
    assert make_prompts(scores, top_k=1).counts.tolist() == [1]
    assert make_prompts(scores, top_fraction=1.0).counts.tolist() == [16]
    assert make_prompts(torch.rand(1, 14, 14)).counts.tolist() == [14]  # the official default
    with pytest.raises(TypeError):
        make_prompts(scores, top_p=1)  # the old overloaded name is gone
    with pytest.raises(ValueError, match="not both"):
        make_prompts(scores, top_k=2, top_fraction=0.5)
    with pytest.raises(ValueError, match="coverage"):
        make_prompts(scores, top_k=2, coverage=0.5)


@pytest.mark.parametrize(
    ("size", "match"),
    [({"top_k": 0}, "top_k"), ({"top_k": 197}, "top_k"), ({"top_k": True}, "top_k"),
     ({"top_k": 2.5}, "top_k"), ({"top_fraction": 0.0}, "top_fraction"),
     ({"top_fraction": 1.5}, "top_fraction"), ({"top_fraction": -0.1}, "top_fraction")],
)  # fmt: skip
def test_bad_prompt_size_raises(size, match):
    with pytest.raises(ValueError, match=match):
        make_prompts(torch.rand(1, 14, 14), **size)


# ----------------------------------------------------------------------------- targets
def test_importance_targets_sum_to_p_and_follow_scores():
    scores = torch.rand(4, 7, 7) + 0.1
    prompt = make_prompts(explanation(scores), top_k=5, weighting="importance")
    flat = scores.flatten(1)
    assert prompt.target.shape == (4, 49)
    torch.testing.assert_close(prompt.target.sum(1), torch.full((4,), 5.0))
    inside = prompt.mask.flatten(1)
    assert torch.all(prompt.target[~inside] == 0)
    for b in range(4):
        ratio = prompt.target[b][inside[b]] / flat[b][inside[b]]
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))
    # not multi-hot: the weights differ
    assert not torch.allclose(prompt.target[inside], torch.ones(20))


def test_multi_hot_targets_and_row_major_layout():
    scores = torch.zeros(2, 3, 4)
    scores[0, 1, 2] = 5.0  # row 1, col 2 -> token 6
    scores[1, 2, 0] = 5.0  # row 2, col 0 -> token 8
    prompt = make_prompts(scores, top_k=1, weighting="multi_hot")
    assert prompt.target.sum(1).tolist() == [1.0, 1.0]
    assert prompt.target[0, 6] == 1.0 and prompt.target[1, 8] == 1.0
    assert torch.equal(prompt.mask.flatten(1), prompt.target > 0)
    assert torch.equal(prompt.target.view(2, 3, 4) > 0, prompt.mask)
    prompt = make_prompts(torch.rand(2, 5, 5), top_k=6, weighting="multi_hot")
    assert prompt.target.sum(1).tolist() == [6.0, 6.0]
    assert set(prompt.target.unique().tolist()) == {0.0, 1.0}


def test_importance_falls_back_to_multi_hot_without_positive_mass():
    scores = -torch.rand(1, 9)
    mask = top_k_mask(scores, 3)
    torch.testing.assert_close(importance_targets(scores, mask), mask.float())


def brute_force_min_cover(mass: np.ndarray, fraction: float) -> int:
    n = len(mass)
    for size in range(1, n + 1):
        if any(
            mass[list(s)].sum() >= fraction - 1e-9 for s in itertools.combinations(range(n), size)
        ):
            return size
    return n


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.95])
def test_coverage_set_is_the_smallest_reaching_the_fraction(fraction):
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(6, 8, generator=gen) ** 3
    mask = coverage_mask(scores, fraction)
    for b in range(6):
        mass = (scores[b] / scores[b].sum()).double().numpy()
        assert int(mask[b].sum()) == brute_force_min_cover(mass, fraction)
        assert mass[mask[b].numpy()].sum() >= fraction - 1e-9
        # the chosen set is the top of the ranking
        assert scores[b][mask[b]].min() >= scores[b][~mask[b]].max()


def test_coverage_clamps_negative_scores_and_sets_targets():
    scores = torch.tensor([[4.0, -10.0, 3.0, 2.0, 1.0, -1.0]])
    mask = coverage_mask(scores, 0.7)  # masses 0.4, 0.3, 0.2, 0.1 -> 2 patches reach 0.7
    assert mask.nonzero()[:, 1].tolist() == [0, 2]
    prompt = make_prompts(scores.view(1, 2, 3), coverage=0.7)
    assert prompt.indices[0].tolist() == [0, 2]
    torch.testing.assert_close(prompt.target.sum(1), torch.tensor([2.0]))
    torch.testing.assert_close(prompt.target[0, [0, 2]], torch.tensor([8 / 7, 6 / 7]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_scores_raise_instead_of_being_zeroed(bad):
    scores = torch.rand(3, 4, 4)
    scores[2, 1, 3] = bad
    for build in (
        lambda: mass_distribution(scores.flatten(1)),
        lambda: coverage_counts(scores, 0.9),
        lambda: coverage_mask(scores, 0.9),
        lambda: make_prompts(scores, top_k=3),
        lambda: make_prompts(scores, coverage=0.9),
    ):
        with pytest.raises(NonFiniteError, match=r"NaN or \+Inf.*\[2\]"):
            build()


def test_minus_inf_scores_mean_no_evidence():
    scores = torch.tensor([[2.0, float("-inf"), 1.0, 1.0]])
    torch.testing.assert_close(
        mass_distribution(scores), torch.tensor([[0.5, 0.0, 0.25, 0.25]], dtype=torch.float64)
    )
    prompt = make_prompts(scores.view(1, 2, 2), top_k=2)
    assert prompt.indices[0].tolist() == [0, 2]


def test_single_image_behaves_as_batch_of_one():
    scores = torch.rand(2, 6, 6)
    batched = make_prompts(scores, top_k=4)
    single = make_prompts(scores[1], top_k=4)
    assert single.mask.shape == (1, 6, 6) and single.target.shape == (1, 36)
    assert torch.equal(single.mask[0], batched.mask[1])
    torch.testing.assert_close(single.target[0], batched.target[1])


def test_prompt_records_source_and_geometry():
    prompt = make_prompts(explanation(torch.rand(1, 4, 4), (32, 32), "gradcam"), top_k=2)
    assert isinstance(prompt, PositionPrompt)
    assert (prompt.grid, prompt.image_size, prompt.method) == ((4, 4), (32, 32), "gradcam")
    pixels = prompt.pixel_mask()
    assert pixels.shape == (1, 32, 32) and int(pixels.sum()) == 2 * 64
    with pytest.raises(ValueError, match="weighting"):
        make_prompts(torch.rand(1, 4, 4), weighting="soft")
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        make_prompts(torch.rand(1, 2, 4, 4))


# ----------------------------------------------------------------------------- upsampling
def test_upsampling_masks_nearest_and_scores_bilinear():
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True
    up = upsample_mask(mask, (8, 8))
    assert up.dtype == torch.bool and up.shape == (1, 8, 8)
    assert up[0, :4, 4:].all() and int(up.sum()) == 16
    scores = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    maps = upsample_scores(scores, 8)
    assert maps.shape == (1, 8, 8)
    assert maps[0, :, 0].eq(0).all() and maps[0, :, -1].eq(1).all()
    assert 0 < float(maps[0, 0, 4]) < 1  # interpolated, not nearest


# ----------------------------------------------------------------------------- window layout
GEOMETRIES = [
    WindowGeometry((8, 8), (4, 4), (0, 0), 0),
    WindowGeometry((8, 8), (4, 4), (2, 2), 0),
    WindowGeometry((9, 7), (4, 4), (0, 0), 1),
    WindowGeometry((9, 7), (4, 4), (2, 2), 1),
    WindowGeometry((10, 6), (4, 3), (2, 1), 1),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("order", ["roll_then_pad", "pad_then_roll"])
def test_window_partition_round_trip(geometry, order):
    grid = torch.randn(2, *geometry.grid)
    windows = grid_to_windows(grid, geometry, order)
    n = geometry.window[0] * geometry.window[1]
    assert windows.shape == (2, geometry.num_windows, n)
    assert torch.equal(windows_to_grid(windows, geometry, order), grid)
    # every real token appears once, padding is zero
    valid = window_valid_mask(geometry, order)
    assert int(valid.sum()) == geometry.grid[0] * geometry.grid[1]
    assert torch.all(windows[:, ~valid] == 0)
    # trailing channel dims travel along
    features = torch.randn(2, *geometry.grid, 5)
    assert torch.equal(
        windows_to_grid(grid_to_windows(features, geometry, order), geometry, order), features
    )


def test_unshifted_windows_are_plain_blocks():
    geometry = WindowGeometry((8, 8), (4, 4), (0, 0), 0)
    grid = torch.arange(64.0).view(1, 8, 8)
    windows = grid_to_windows(grid, geometry)
    assert windows[0, 1].tolist() == grid[0, :4, 4:].flatten().tolist()  # window 1 = top right
    shifted = WindowGeometry((8, 8), (4, 4), (2, 2), 0)
    first = grid_to_windows(grid, shifted)[0, 0].view(4, 4)
    assert first[0, 0] == grid[0, 2, 2]  # windows are formed on the grid rolled by -shift


def test_shift_and_pad_orders_differ_on_non_multiple_grids():
    geometry = WindowGeometry((9, 7), (4, 4), (2, 2), 1)
    grid = torch.randn(1, 9, 7)
    a = grid_to_windows(grid, geometry, "roll_then_pad")
    b = grid_to_windows(grid, geometry, "pad_then_roll")
    assert not torch.equal(a, b)


def _model_windows(adapter, images: torch.Tensor, block_index: int):
    """(the grid the block partitions into windows, the windows fed to its attention),
    recorded from the model: the normed block input of pre-norm Swin blocks, the block input
    itself of post-norm Swin V2 blocks (their norms follow the attention)."""
    block = adapter.blocks[block_index]
    seen: dict[str, torch.Tensor] = {}
    if isinstance(adapter, (HFSwinV2Adapter, TimmSwinV2Adapter, TimmSwinV2CrAdapter)):
        source = block.register_forward_pre_hook(lambda m, i: seen.__setitem__("grid", i[0]))
    else:
        norm = block.layernorm_before if isinstance(adapter, HFSwinAdapter) else block.norm1
        source = norm.register_forward_hook(lambda m, i, o: seen.__setitem__("grid", o))
    attention = adapter._attention_module(block)
    handles = [
        source,
        attention.register_forward_pre_hook(lambda m, i: seen.__setitem__("windows", i[0])),
    ]
    try:
        with torch.no_grad():
            adapter.logits(images)
    finally:
        for handle in handles:
            handle.remove()
    return seen["grid"], seen["windows"]


def test_partition_order_is_read_from_the_adapter():
    class Declared:
        window_partition_order = "pad_then_roll"

    assert partition_order(Declared()) == "pad_then_roll"
    Declared.window_partition_order = "sideways"
    with pytest.raises(ValueError, match="order must be one of"):
        partition_order(Declared())
    with pytest.raises(UnsupportedMethodError, match="window_partition_order"):
        partition_order(tiny_adapter("timm-vit"))


@pytest.mark.parametrize("name", SWIN_MODELS)
def test_partition_matches_the_models_own_windows(name):
    """72 px -> grids 18x18 and 9x9, not multiples of the window 4, with shifted blocks."""
    if name == "timm-swin":
        from timm.models.swin_transformer import SwinTransformer

        torch.manual_seed(0)
        model = SwinTransformer(
            img_size=72, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
            num_heads=(2, 4), num_classes=5, strict_img_size=False,
        ).eval()  # fmt: skip
        adapter = adapt(model, name="timm-swin-72")
    else:
        adapter = tiny_adapter(name)
    images = torch.randn(2, 3, 72, 72)
    order = partition_order(adapter)
    assert order == ("pad_then_roll" if name.startswith("hf") else "roll_then_pad")
    for block_index in (1, 3):  # shifted blocks of both stages
        normed, model_windows = _model_windows(adapter, images, block_index)
        geometry = adapter.window_geometry((72, 72))[block_index]
        assert any(geometry.shift) and geometry.grid[0] % geometry.window[0]
        grid = normed.reshape(2, *geometry.grid, -1)
        ours = grid_to_windows(grid, geometry, order)
        torch.testing.assert_close(ours.flatten(0, 1), model_windows)


# ----------------------------------------------------------------------------- Swin prompts
def hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("name", SWIN_MODELS)
def test_swin_window_prompts(name):
    adapter = tiny_adapter(name)
    adapter.train()
    images = torch.randn(2, 3, 64, 64)
    hooks = hook_count(adapter)
    prompt = swin_window_prompts(adapter, images, top_k=7)
    assert adapter.training and all(m.training for m in adapter.modules())
    assert hook_count(adapter) == hooks
    assert prompt.blocks == [1, 3] and len(prompt) == 2 and prompt.top_k == 7
    geometries = adapter.window_geometry((64, 64))
    with torch.no_grad(), adapter.evaluating():
        with adapter.capture_attention(layers=prompt.blocks, kind="logits") as logits:
            adapter.logits(images)
        maps = list(logits)
    for stage, (item, captured) in enumerate(zip(prompt.stages, maps, strict=True)):
        geometry = geometries[item.block]
        n = geometry.window[0] * geometry.window[1]
        assert item.stage == stage and item.geometry == geometry
        assert item.targets.shape == item.scores.shape == (2, geometry.num_windows, n)
        assert torch.all(item.targets.sum(-1) == 7)
        assert set(item.targets.unique().tolist()) == {0.0, 1.0}
        # independent computation: mean over heads (dim 2) and queries (dim 3)
        expected = captured.mean(dim=(2, 3))
        torch.testing.assert_close(item.scores, expected)
        top = torch.topk(expected, 7, dim=-1).indices
        assert torch.equal(
            item.targets.bool(), torch.zeros_like(item.targets).scatter(-1, top, 1).bool()
        )
        # grid maps are the window values put back on the stage grid
        assert item.grid_scores.shape == item.grid_mask.shape == (2, *geometry.grid)
        torch.testing.assert_close(
            grid_to_windows(item.grid_scores, geometry, item.order), item.scores
        )
        assert torch.equal(
            grid_to_windows(item.grid_mask.float(), geometry, item.order), item.targets
        )
        assert int(item.grid_mask.sum()) == 2 * 7 * geometry.num_windows


def test_swin_prompts_skip_padding_and_reject_vits():
    adapter = tiny_adapter("hf-swin")
    prompt = swin_window_prompts(adapter, torch.randn(1, 3, 72, 72), top_k=7)
    for item in prompt.stages:
        valid = window_valid_mask(item.geometry, item.order)
        assert torch.all(item.targets[:, ~valid] == 0)
        expected = valid.sum(-1).clamp_max(7).float()
        assert torch.equal(item.targets[0].sum(-1), expected)
        assert int(item.grid_mask.sum()) == int(expected.sum())
    with pytest.raises(UnsupportedMethodError, match="Swin"):
        swin_window_prompts(tiny_adapter("timm-vit"), torch.randn(1, 3, 32, 32))
