"""Overlay figures of explanations and position prompts (focusvit.reports.figures)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from focusvit.explainers.base import Explanation
from focusvit.prompting import make_prompts
from focusvit.reports.figures import plot_explanation, save_overlay_grid


def explanation(scores: torch.Tensor, image_size=(224, 224), method="rollout") -> Explanation:
    return Explanation(scores=scores, method=method, image_size=image_size)


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_save_overlay_grid_writes_png_growing_with_methods(tmp_path):
    plt.close("all")
    images = torch.rand(2, 3, 32, 32)
    methods = {name: explanation(torch.rand(2, 4, 4), (32, 32), name) for name in ("a", "b", "c")}
    prompts = {
        "a": make_prompts(methods["a"], top_k=3),
        "b": make_prompts(methods["b"], top_k=1).mask,
    }
    one = save_overlay_grid(images, {"a": methods["a"]}, None, tmp_path / "one.png")
    three = save_overlay_grid(images, methods, prompts, tmp_path / "sub" / "three.png")
    assert (tmp_path / "one.png").stat().st_size > 1000
    (w1, h1), (w3, h3) = png_size(tmp_path / "one.png"), png_size(tmp_path / "sub" / "three.png")
    assert w3 > w1 and h3 == h1
    assert len(three.axes) == 2 * 4 and len(one.axes) == 2 * 2
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="maps for 3 images"):
        save_overlay_grid(torch.rand(3, 3, 32, 32), methods, None, tmp_path / "bad.png")


def test_plot_explanation_accepts_pil_and_axes():
    plt.close("all")
    image = Image.fromarray((np.random.rand(32, 48, 3) * 255).astype(np.uint8))
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, 2] = mask[2, 2] = True
    scores = torch.zeros(4, 6)
    scores[1, 2] = 1.0
    fig = plot_explanation(image, scores, mask, title="x")
    ax = fig.axes[0]
    assert len(ax.images) == 2 and ax.get_title() == "x"
    picture, heat = (np.asarray(im.get_array()) for im in ax.images)
    np.testing.assert_allclose(picture, np.asarray(image) / 255, atol=1e-6)
    assert heat.shape == (32, 48) and heat.min() == 0 and heat.max() == pytest.approx(1)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert (row // 8, col // 8) == (1, 2)  # the peak sits on the high-scoring 8 px patch
    assert len(ax.collections) >= 1  # contour / markers of the prompt
    fig2, ax2 = plt.subplots()
    assert plot_explanation(torch.rand(3, 32, 48), torch.rand(4, 6), ax=ax2) is fig2
    plt.close(fig2)
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="grid"):
        plot_explanation(image, torch.rand(4, 6), torch.zeros(2, 2, dtype=torch.bool))
