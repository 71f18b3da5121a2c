"""CrossTransformers (Doersch, Gupta, Zisserman, "CrossTransformers: spatially-aware few-shot
transfer", NeurIPS 2020), re-implemented from the equations of docs/baselines.md.

With spatial maps (no final pooling), one shared 1×1 projection Γ gives the support *keys* and
the query *queries*, one shared 1×1 projection Λ gives the *values* of both. For query position
p and class c, the attention is a softmax of ``k·q_p / √d_k`` over every position m of every
support image of class c; the query-aligned prototype is ``t^c_p = Σ_m a^c_pm v_m`` and the
logit is ``−Σ_p ‖t^c_p − w_p‖² / (H·W)`` with ``w_p`` the query's value at p.

SimCLR episodes: during training, with probability ``simclr_probability`` (0.5) an episode
becomes instance discrimination: every support image is its own class and the queries are
augmented copies of the support images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.errors import ConfigError
from focusvit.explainers.base import Explanation

from .common import EncoderConfig, EpisodeBatch, EpisodicModel, _fraction, _positive, check_labels
from .encoders import SpatialEncoder

__all__ = [
    "CTXConfig",
    "CTXOutput",
    "CrossTransformer",
    "CrossTransformerNetwork",
    "aligned_prototypes",
    "augment_images",
    "class_attention",
    "simclr_episode",
]


@dataclass
class CTXConfig(EncoderConfig):
    """CrossTransformers settings (defaults: Doersch et al. 2020, docs/baselines.md).

    Attributes:
        key_dim: d_k of the shared key/query projection.
        value_dim: d_v of the shared value projection.
        simclr_probability: chance that a training episode is a SimCLR episode.
        simclr_crop: smallest area fraction of the random resized crop of SimCLR queries.
    """

    key_dim: int = 128
    value_dim: int = 128
    simclr_probability: float = 0.5
    simclr_crop: float = 0.5

    def __post_init__(self) -> None:
        self._check_encoder()
        _positive("key_dim", self.key_dim, integer=True)
        _positive("value_dim", self.value_dim, integer=True)
        _fraction("simclr_probability", self.simclr_probability)
        _fraction("simclr_crop", self.simclr_crop)
        if self.simclr_crop == 0:
            raise ConfigError("simclr_crop must be > 0 (the smallest crop area fraction)")


@dataclass(frozen=True)
class CTXOutput:
    """CrossTransformer outputs for Q queries, N classes, P query positions, M support positions.

    Attributes:
        logits: ``(Q, N)`` = −Σ_p ‖t_p − w_p‖² / P.
        attention: ``(Q, N, P, S·M)``; zero outside the support positions of class n, a softmax
            over them inside (each row sums to 1).
        prototypes: ``(Q, N, P, d_v)`` query-aligned prototypes t.
        query_values: ``(Q, P, d_v)`` w.
    """

    logits: Tensor
    attention: Tensor
    prototypes: Tensor
    query_values: Tensor

    @property
    def distances(self) -> Tensor:
        """Per-position squared distances ``(Q, N, P)``."""
        return ((self.prototypes - self.query_values[:, None]) ** 2).sum(-1)


def class_attention(queries: Tensor, keys: Tensor, support_labels: Tensor, n_way: int) -> Tensor:
    """Per-class attention of query positions over support positions.

    Args:
        queries: ``(Q, P, d)`` projected query positions.
        keys: ``(S, M, d)`` projected support positions.
        support_labels: ``(S,)`` in ``0..N-1``.

    Returns:
        ``(Q, N, P, S·M)``: for class n a softmax of ``q·k/√d`` over exactly the positions of the
        support images of class n (support-major order), zero elsewhere.
    """
    s, m, d = keys.shape
    logits = torch.einsum("qpd,kd->qpk", queries, keys.reshape(s * m, d)) / math.sqrt(d)
    owner = support_labels.long().repeat_interleave(m)  # (S·M,) class of each support position
    mask = owner[None, :] == torch.arange(n_way, device=owner.device)[:, None]  # (N, S·M)
    masked = logits[:, None].masked_fill(~mask[None, :, None, :], float("-inf"))
    return torch.softmax(masked, dim=-1)


def aligned_prototypes(attention: Tensor, values: Tensor) -> Tensor:
    """``t_p = Σ a_pm v_m``: ``attention (Q, N, P, S·M)``, ``values (S, M, d_v)`` -> ``(Q, N, P, d_v)``."""
    return attention @ values.reshape(-1, values.shape[-1])


class CrossTransformer(nn.Module):
    """The CTX head on feature maps ``(B, C, H, W)``.

    Args:
        in_channels: C of the encoder maps.
        key_dim: d_k of the shared key/query projection Γ.
        value_dim: d_v of the shared value projection Λ.
    """

    def __init__(self, in_channels: int, key_dim: int = 128, value_dim: int = 128):
        super().__init__()
        self.key = nn.Conv2d(in_channels, key_dim, 1, bias=False)
        self.value = nn.Conv2d(in_channels, value_dim, 1, bias=False)

    def forward(
        self, support_maps: Tensor, support_labels: Tensor, query_maps: Tensor, n_way: int
    ) -> CTXOutput:
        """``support_maps (S, C, H, W)``, ``support_labels (S,)``, ``query_maps (Q, C, H, W)``."""
        keys = self.key(support_maps).flatten(2).transpose(1, 2)  # (S, M, d_k)
        queries = self.key(query_maps).flatten(2).transpose(1, 2)  # (Q, P, d_k)
        values = self.value(support_maps).flatten(2).transpose(1, 2)  # (S, M, d_v)
        query_values = self.value(query_maps).flatten(2).transpose(1, 2)  # (Q, P, d_v)
        attention = class_attention(queries, keys, support_labels, n_way)
        prototypes = aligned_prototypes(attention, values)
        distance = ((prototypes - query_values[:, None]) ** 2).sum(dim=(-2, -1))
        return CTXOutput(-distance / queries.shape[1], attention, prototypes, query_values)


class CrossTransformerNetwork(EpisodicModel):
    """CrossTransformers: encoder plus :class:`CrossTransformer` head.

    Args:
        config: :class:`CTXConfig`.
        encoder: an existing encoder (default: built from ``config.encoder``).
    """

    method: ClassVar[str] = "ctx"

    def __init__(self, config: CTXConfig | None = None, encoder: SpatialEncoder | None = None):
        config = config or CTXConfig()
        super().__init__(config, encoder)
        self.head = CrossTransformer(self.encoder.out_channels, config.key_dim, config.value_dim)

    @classmethod
    def config_class(cls) -> type:
        return CTXConfig

    def forward_maps(self, support: Tensor, support_labels: Tensor, query: Tensor) -> CTXOutput:
        """Encode the images of one episode and run the head."""
        n_way = check_labels(support_labels)
        maps = self.encode(torch.cat([support, query]))
        return self.head(maps[: len(support)], support_labels, maps[len(support) :], n_way)

    def loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the CTX logits over the episode's classes."""
        out = self.forward_maps(batch.support, batch.support_labels, batch.query)
        loss = F.cross_entropy(out.logits, batch.query_labels)
        accuracy = (out.logits.argmax(-1) == batch.query_labels).float().mean()
        return loss, {
            "loss": float(loss.detach()),
            "acc": float(accuracy),
            "simclr": batch.kind == "simclr",
        }

    def predict_maps(
        self,
        support_maps: Tensor,
        support_labels: Tensor,
        query_maps: Tensor,
        transductive: bool = False,
    ) -> Tensor:
        """Episode labels ``(Q,)`` (CTX is inductive only)."""
        self._no_transduction(transductive)
        n_way = check_labels(support_labels)
        return self.head(support_maps, support_labels, query_maps, n_way).logits.argmax(-1)

    def prepare_episode(self, batch: EpisodeBatch, rng: np.random.Generator) -> EpisodeBatch:
        """With probability ``simclr_probability`` replace the episode by a SimCLR episode."""
        if rng.random() >= self.config.simclr_probability:
            return batch
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return simclr_episode(batch.support, generator, self.config.simclr_crop)

    def explain(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        targets: Tensor | None = None,
        side: str = "query",
    ) -> Explanation:
        """CTX maps as an :class:`Explanation`.

        ``side="query"``: per query position the negative squared distance to the aligned
        prototype of class ``targets (Q,)`` (default: predicted), i.e. each position's share of
        the logit, scores ``(Q, H, W)``. ``side="support"``: the attention each support position
        receives from all query positions, scores ``(S, H, W)``, targets the support labels.
        """
        if side not in ("query", "support"):
            raise ConfigError(f"side must be 'query' or 'support', got {side!r}")
        out = self.forward_maps(support, support_labels, query)
        h, w = self.feature_size
        size = tuple(query.shape[-2:])
        params = {"side": side}
        if side == "support":
            scores = out.attention.sum(dim=(0, 1, 2)).view(len(support), h, w)
            return Explanation(scores, "ctx-attention", params, size, support_labels.clone())
        if targets is None:
            targets = out.logits.argmax(-1)
        local = -out.distances[torch.arange(len(query)), targets.long()]
        return Explanation(local.view(len(query), h, w), "ctx-distance", params, size, targets)


def augment_images(images: Tensor, generator: torch.Generator, min_crop: float = 0.5) -> Tensor:
    """SimCLR-style augmentation of normalised images ``(B, 3, H, W)`` -> same shape.

    Per image: a random resized crop (area in ``[min_crop, 1]``, aspect in ``[3/4, 4/3]``),
    a random horizontal flip, and brightness / contrast jitter applied in normalised space.
    """
    out = []
    h, w = images.shape[-2:]
    for image in images:
        u = torch.rand(6, generator=generator).tolist()
        area = min_crop + (1 - min_crop) * u[0]
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        ch = min(h, max(1, round(h * math.sqrt(area / aspect))))
        cw = min(w, max(1, round(w * math.sqrt(area * aspect))))
        top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
        crop = image[None, :, top : top + ch, left : left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        if u[4] < 0.5:
            crop = crop.flip(-1)
        jitter = torch.rand(2, generator=generator) * 0.8 + 0.6  # contrast, brightness factors
        mean = crop.mean(dim=(-2, -1), keepdim=True)
        out.append((crop - mean) * jitter[0] + mean * jitter[1] + (u[5] - 0.5) * 0.4)
    return torch.stack(out)


def simclr_episode(
    support: Tensor, generator: torch.Generator, min_crop: float = 0.5
) -> EpisodeBatch:
    """Instance-discrimination episode from support images ``(S, 3, H, W)``.

    Every support image is its own class (labels ``0..S-1``); the queries ``(S, 3, H, W)`` are
    one augmented copy of each support image, with the same label.
    """
    if len(support) < 2:
        raise ConfigError("a SimCLR episode needs at least two support images (N·K >= 2)")
    labels = torch.arange(len(support), device=support.device)
    query = augment_images(support.cpu(), generator, min_crop).to(support.device)
    return EpisodeBatch(support, labels, query, labels.clone(), None, "simclr")
