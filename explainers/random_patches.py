"""A random-patch baseline: uniform random patch scores, so that localisation tables and figures
can show the chance level next to the real explainers, through the same API
(``focusvit.explain(backbone, x, method="random", seed=0)``).

The scores of an image are drawn from a generator seeded with ``seed`` and a hash of the
image's values (its bytes as float32) and grid, so they are deterministic for a seed, independent
of the batch the image is in (explaining a batch in chunks, or one image alone, gives the same
maps) and independent across different images; a different seed gives different maps.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter
from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError

from .attention import image_size_of
from .base import Explainer, Target, normalise_per_image, register_explainer, resolve_targets


def _image_seed(image: Tensor, grid: tuple[int, int], seed: int) -> int:
    """A 63-bit generator seed from ``seed``, the grid and the values of one image ``(3, H, W)``."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(seed.to_bytes(8, "little", signed=False))
    digest.update(repr((tuple(image.shape), grid)).encode())
    digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def random_patch_scores(images: Tensor, grid: tuple[int, int], seed: int = 0) -> Tensor:
    """Uniform random patch scores ``(B, h, w)`` on ``images``' device, each map min-max
    normalised to [0, 1] (:func:`~focusvit.explainers.normalise_per_image`).

    Image i's map depends only on ``seed``, ``grid`` and the values of ``images[i]`` (see the
    module docstring). Every patch is equally likely to be the top patch, and a top-P prompt is
    a uniformly random set of P patches: the chance level of the localisation metrics.
    """
    h, w = grid
    draws = [
        torch.rand(h * w, generator=torch.Generator().manual_seed(_image_seed(image, grid, seed)))
        for image in images
    ]
    if not draws:
        return torch.zeros(0, h, w, device=images.device)
    scores = normalise_per_image(torch.stack(draws)).view(len(draws), h, w)
    return scores.to(images.device)


def check_seed(seed: object) -> int:
    """``seed`` as a non-negative int (below 2**63); ``ValueError`` naming the fix otherwise."""
    if not is_whole_number(seed, 0) or not seed < 2**63:  # int, numpy integers
        raise ConfigError(
            f"seed={seed!r} must be an integer in [0, 2**63), e.g. seed=0; different seeds give "
            "different random maps, the same seed the same maps"
        )
    return int(seed)


@register_explainer
class RandomExplainer(Explainer):
    """Chance-level baseline: each patch gets a uniform random score (normalised per image to
    [0, 1] like the other maps), on the same patch grid the other explainers use for the model
    (``backbone.grid_size``), for every family.

    One no-grad forward resolves and reports the targets (the scores do not depend on them), as
    for ``attention``; cost about one forward pass. Deterministic for a ``seed`` and independent
    of batching (see :func:`random_patch_scores`).

    Args:
        seed: non-negative integer; different seeds give independent maps.
    """

    name: ClassVar[str] = "random"
    families: ClassVar[tuple[str, ...]] = ("vit", "swin", "cnn")

    def __init__(self, seed: int = 0):
        super().__init__(seed=check_seed(seed))

    def scores(
        self, backbone: BackboneAdapter, images: Tensor, target: Target
    ) -> tuple[Tensor, Tensor]:
        """``(scores (B, h, w), targets (B,))``."""
        with backbone.evaluating(), torch.no_grad():
            logits = backbone.logits(images)
            _, classes = resolve_targets(logits, target)
        grid = backbone.grid_size(image_size_of(images))
        return random_patch_scores(images, grid, self.params["seed"]), classes
