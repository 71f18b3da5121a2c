"""Explanation metrics: deletion / insertion (RISE), attention focus, prompt precision, pointing
game, confidence intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import tiny_adapter
from torch import nn

from focusvit.backbones import UnsupportedMethodError
from focusvit.explainers.base import Explanation
from focusvit.explainers.metrics import (
    attention_mass,
    causal_curve,
    cls_attention,
    coverage_count,
    deletion,
    insertion,
    make_baseline,
    pointing_game,
    prompt_precision,
)
from focusvit.prompting import make_prompts
from focusvit.runs import mean_and_ci


# ----------------------------------------------------------------------------- attention focus
def brute_force_count(mass: np.ndarray, fraction: float) -> int:
    total = mass.sum()
    for size in range(1, len(mass) + 1):
        best = max(sum(mass[list(s)]) for s in itertools.combinations(range(len(mass)), size))
        if best / total >= fraction - 1e-9:
            return size
    raise AssertionError("unreachable")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_coverage_count_matches_brute_force(fraction):
    attention = torch.rand(5, 8, generator=torch.Generator().manual_seed(3)) ** 2
    counts = coverage_count(attention, fraction)
    assert counts.dtype == torch.long and counts.shape == (5,)
    expected = [brute_force_count(a.double().numpy(), fraction) for a in attention]
    assert counts.tolist() == expected


@pytest.mark.parametrize("n", [10, 16, 20, 49, 196])
def test_uniform_attention_needs_ceil_of_fraction(n):
    assert coverage_count(torch.full((2, n), 1.0 / n)).tolist() == [math.ceil(0.95 * n)] * 2


def test_coverage_count_on_grids_and_peaked_attention():
    peaked = torch.zeros(1, 4, 4)
    peaked[0, 2, 3] = 1.0
    assert coverage_count(peaked).tolist() == [1]
    with pytest.raises(ValueError, match="negative"):
        coverage_count(torch.tensor([[0.5, -0.1, 0.6]]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        coverage_count(torch.rand(1, 4), fraction=1.5)


def test_attention_mass():
    attention = torch.softmax(torch.randn(3, 16), dim=1)
    full = torch.ones(3, 16, dtype=torch.bool)
    torch.testing.assert_close(attention_mass(attention, full), torch.ones(3))
    torch.testing.assert_close(attention_mass(attention, ~full), torch.zeros(3))
    half = torch.zeros(3, 16, dtype=torch.bool)
    half[:, :8] = True
    torch.testing.assert_close(attention_mass(attention, half), attention[:, :8].sum(1))
    # grids and prompts work too
    prompt = make_prompts(attention.view(3, 4, 4), top_k=2)
    top2 = attention.topk(2, dim=1).values.sum(1)
    torch.testing.assert_close(attention_mass(attention.view(3, 4, 4), prompt), top2)
    with pytest.raises(ValueError, match="same patches"):
        attention_mass(attention, half[:, :4])


def test_cls_attention_is_the_renormalised_cls_row():
    adapter = tiny_adapter("timm-vit-reg")  # 1 CLS + 2 registers
    images = torch.randn(2, 3, 28, 28)
    attention = cls_attention(adapter, images)
    assert attention.shape == (2, 16)
    torch.testing.assert_close(attention.sum(1), torch.ones(2))
    with torch.no_grad(), adapter.capture_attention(layers=-1) as probs:
        adapter.logits(images)
    row = probs[0][:, :, 0, 3:].mean(1)
    torch.testing.assert_close(attention, row / row.sum(1, keepdim=True))
    with pytest.raises(UnsupportedMethodError, match="ViT"):
        cls_attention(tiny_adapter("timm-swin"), torch.randn(1, 3, 64, 64))


# ----------------------------------------------------------------------------- localisation
def half_mask(batch: int = 1, size: int = 32) -> torch.Tensor:
    gt = torch.zeros(batch, size, size, dtype=torch.bool)
    gt[:, :, : size // 2] = True  # left half
    return gt


def test_prompt_precision_inside_outside_and_partial():
    gt = half_mask()  # 32 px, grid 4x4 -> patches of 8 px; columns 0, 1 inside
    inside = torch.zeros(1, 4, 4, dtype=torch.bool)
    inside[0, :, 0] = True
    outside = torch.zeros(1, 4, 4, dtype=torch.bool)
    outside[0, 1:3, 3] = True
    assert prompt_precision(inside, gt).tolist() == [1.0]
    assert prompt_precision(outside, gt).tolist() == [0.0]
    assert prompt_precision(inside | outside, gt).tolist() == [pytest.approx(4 / 6)]
    # a patch with a quarter of its pixels inside
    quarter = torch.zeros(1, 32, 32, dtype=torch.bool)
    quarter[0, :8, :2] = True  # 16 of the 64 pixels of patch (0, 0)
    corner = torch.zeros(1, 4, 4, dtype=torch.bool)
    corner[0, 0, 0] = True
    assert prompt_precision(corner, quarter, min_overlap=0.5).tolist() == [0.0]
    assert prompt_precision(corner, quarter, min_overlap=0.25).tolist() == [1.0]
    assert prompt_precision(corner, quarter, min_overlap=0.0).tolist() == [1.0]
    assert math.isnan(prompt_precision(torch.zeros(1, 4, 4, dtype=torch.bool), gt).item())
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        prompt_precision(inside, gt[:, None])


def test_prompt_precision_batched_with_position_prompts():
    scores = torch.zeros(2, 4, 4)
    scores[0, :, 0] = 1.0  # image 0 points left (inside)
    scores[1, :, 3] = 1.0  # image 1 points right (outside)
    prompt = make_prompts(scores, top_k=4)
    values = prompt_precision(prompt, half_mask(2))
    assert values.tolist() == [1.0, 0.0]
    for b in range(2):
        assert prompt_precision(prompt.mask[b], half_mask(1)[0]).tolist() == [values[b].item()]


def test_pointing_game_area_center_and_tolerance():
    gt = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt[0, 4:6, 4:6] = True  # a small blob in the corner of patch (0, 0)
    scores = torch.zeros(1, 4, 4)
    scores[0, 0, 0] = 1.0
    assert pointing_game(scores, gt).tolist() == [1.0]  # the area overlaps the blob
    # centre pixel of patch (0, 0) is (3, 3); the blob starts at (4, 4): distance sqrt(2)
    assert pointing_game(scores, gt, point="center").tolist() == [0.0]
    assert pointing_game(scores, gt, point="center", tolerance=1.0).tolist() == [0.0]
    assert pointing_game(scores, gt, point="center", tolerance=1.5).tolist() == [1.0]
    far = torch.zeros(1, 4, 4)
    far[0, 3, 3] = 1.0  # patch pixels 24..31; blob ends at 5: gap 19 px per axis
    assert pointing_game(far, gt).tolist() == [0.0]
    assert pointing_game(far, gt, tolerance=15).tolist() == [0.0]
    assert pointing_game(far, gt, tolerance=19 * math.sqrt(2) + 1e-3).tolist() == [1.0]
    assert pointing_game(far, gt, tolerance=19 * math.sqrt(2) - 1e-2).tolist() == [0.0]
    batched = pointing_game(torch.cat([scores, far]), gt.expand(2, -1, -1))
    assert batched.tolist() == [1.0, 0.0]
    empty = pointing_game(scores, torch.zeros(1, 32, 32, dtype=torch.bool))
    assert math.isnan(empty.item())


def test_pointing_game_takes_explanations():
    scores = torch.zeros(2, 4, 4)
    scores[0, 1, 1] = 2.0
    scores[1, 2, 3] = 2.0
    exp = Explanation(scores=scores, method="cam", image_size=(32, 32))
    assert pointing_game(exp, half_mask(2)).tolist() == [1.0, 0.0]


def test_mean_and_ci():
    mean, half = mean_and_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert half == pytest.approx(1.96 * np.std([1, 2, 3, 4]) / 2)
    _, half1 = mean_and_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]), ddof=1)
    assert half1 == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert mean_and_ci([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(1.96 / math.sqrt(2)))
    assert mean_and_ci([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        mean_and_ci([1.0, float("nan")], nan_policy="raise")
    with pytest.raises(ValueError, match="at least one"):
        mean_and_ci([])


# ----------------------------------------------------------------------------- deletion / insertion
class OnePatchModel(nn.Module):
    """Logits (gain · (mean of channel 0 over one 8x8 patch − 1), 0): only that patch matters."""

    def __init__(self, row: int = 1, col: int = 2, gain: float = 4.0):
        super().__init__()
        self.row, self.col, self.gain = row, col, gain
        self.dropout = nn.Dropout(0.5)  # must be off during the metric

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        region = images[:, 0, 8 * self.row : 8 * self.row + 8, 8 * self.col : 8 * self.col + 8]
        evidence = self.dropout(self.gain * (region.mean(dim=(1, 2)) - 1.0))
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def one_patch_images(batch: int = 3) -> torch.Tensor:
    images = 0.1 * torch.randn(batch, 3, 32, 32)
    images[:, 0, 8:16, 16:24] += 2.0  # the patch the model reads
    return images


def test_deletion_below_insertion_when_the_explanation_is_right():
    model = OnePatchModel().train()
    images = one_patch_images()
    good = torch.rand(3, 4, 4)
    good[:, 1, 2] = 10.0  # the known patch first
    dele = deletion(model, images, good, target=0, steps=16)
    ins = insertion(model, images, good, target=0, steps=16)
    assert model.training and model.dropout.training  # mode restored
    assert dele.curve.shape == ins.curve.shape == (3, 17)
    assert torch.all(dele.auc < 0.15) and torch.all(ins.auc > 0.9)
    assert torch.all(dele.auc < ins.auc)
    # deletion removes the patch in step 1; insertion adds it in step 1
    assert torch.all(dele.curve[:, 0] > 0.95) and torch.all(dele.curve[:, 1:] < 0.1)
    assert torch.all(ins.curve[:, 0] < 0.1) and torch.all(ins.curve[:, 1:] > 0.95)
    torch.testing.assert_close(dele.auc, torch.trapezoid(dele.curve, dx=1 / 16, dim=1))
    # the reversed ranking is worse on both
    bad = deletion(model, images, -good, target=0, steps=16)
    assert torch.all(bad.auc > dele.auc + 0.5)


def test_curve_fractions_targets_and_baselines():
    model = OnePatchModel().eval()
    images = one_patch_images(2)
    scores = torch.rand(2, 4, 4)
    result = causal_curve(lambda x: model(x), images, scores, mode="insertion", steps=4)
    torch.testing.assert_close(result.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert result.targets.tolist() == [0, 0]  # predicted on the untouched images
    assert result.mode == "insertion"
    # step k of insertion with the full set is the untouched image
    full = torch.softmax(model(images), 1)[:, 0]
    torch.testing.assert_close(result.curve[:, -1], full)
    base = make_baseline(images, "mean")
    torch.testing.assert_close(base[:, :, 5, 7], images.mean(dim=(2, 3)))
    blurred = make_baseline(images, "blur", blur_sigma=2.0)
    assert blurred.shape == images.shape and blurred.std() < images.std()
    torch.testing.assert_close(
        make_baseline(images, "blur").mean(), images.mean(), atol=0.02, rtol=0
    )
    assert make_baseline(images, "zeros").abs().sum() == 0
    exp = Explanation(scores=scores, method="m", image_size=(32, 32), targets=torch.tensor([1, 1]))
    assert deletion(model, images, exp, steps=2).targets.tolist() == [1, 1]
    with pytest.raises(ValueError, match="4 maps for 2 images"):
        deletion(model, images, torch.rand(4, 4, 4))
    with pytest.raises(ValueError, match="baseline"):
        deletion(model, images, scores, baseline="noise")


def test_batched_curves_equal_per_image_curves_on_a_vit():
    adapter = tiny_adapter("timm-vit")
    adapter.train()
    images = torch.randn(3, 3, 32, 32)
    scores = torch.rand(3, 4, 4)
    batched = deletion(adapter, images, scores, steps=8)
    assert adapter.training
    for b in range(3):
        single = deletion(adapter, images[b : b + 1], scores[b : b + 1], steps=8)
        torch.testing.assert_close(single.curve[0], batched.curve[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.auc[0], batched.auc[b], atol=1e-5, rtol=1e-5)
        assert single.targets[0] == batched.targets[b]
    ins = insertion(adapter, images, scores, steps=8, baseline="blur")
    assert ins.auc.shape == (3,) and torch.all((ins.auc >= 0) & (ins.auc <= 1))
    assert not ins.curve.requires_grad


def test_swin_coarse_grid_regions():
    """A 2x2 last-stage grid on 64 px images: each score cell is a 32x32 pixel region."""
    adapter = tiny_adapter("timm-swin")
    images = torch.randn(2, 3, 64, 64)
    result = deletion(adapter, images, torch.rand(2, 8, 8), steps=4)
    assert result.curve.shape == (2, 5)

    def probability(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(adapter.logits(x), 1).gather(1, result.targets[:, None])[:, 0]

    torch.testing.assert_close(result.curve[:, 0], probability(images))
    # the last step has every region replaced by the (default, mean-colour) baseline
    torch.testing.assert_close(result.curve[:, -1], probability(make_baseline(images, "mean")))
