"""Cross Attention Network (Hou, Chang, Ma, Shan, Chen, "Cross Attention Network for Few-shot
Classification", NeurIPS 2019), re-implemented from the equations of docs/baselines.md.

Notation: a class feature map ``P^k`` (the mean of the support maps of class k) and a query map
``Q``, both ``(c, h, w)`` with ``m = h·w`` positions.

1. Correlation: L2-normalise every position's c-vector; ``R^p_ij = cos(P_i, Q_j)`` (m × m) and
   ``R^q = (R^p)ᵀ``.
2. Meta-fusion: ``g_j = mean_i R_ij`` (the paper's global average pooling of the row vectors of
   R) -> 1×1 conv (m -> m/6) + BN + ReLU -> 1×1 conv (m/6 -> m) gives the kernel ``w`` (m,).
3. Attention ``A_i = softmax_i(mean_j(R_ij w_j) / τ)``, τ = 0.025; each row ``A`` sums to 1.
4. Re-weighting ``P̄_i = (1 + A^p_i) P_i`` and ``Q̄_i = (1 + A^q_i) Q_i`` for every class-query
   pair (the module is symmetric: one fusion layer serves both directions).

Training loss per episode: per-position global classification of the query map attended with
its own class (a 1×1 conv over all base classes) + 0.5 · per-position nearest-prototype loss
(cosine between each attended query position and the pooled attended class feature, × 7).
Inference: cosine between pooled attended query and class features. Transductive inference:
rounds of the most confident queries (35, then 70) are added with hard pseudo-labels to the
class features (support labels never change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.checks import is_number
from focusvit.errors import ConfigError
from focusvit.explainers.base import Explanation

from .common import EncoderConfig, EpisodeBatch, EpisodicModel, _positive, check_labels
from .encoders import SpatialEncoder

__all__ = [
    "CANConfig",
    "CrossAttentionModule",
    "CrossAttentionNetwork",
    "CrossAttentionOutput",
    "PseudoLabelRound",
    "TransductiveResult",
    "class_features",
    "transductive_scores",
]


@dataclass
class CANConfig(EncoderConfig):
    """Cross Attention Network settings (defaults: Hou et al. 2019, docs/baselines.md).

    Attributes:
        num_classes: base classes of the global per-position classifier.
        reduction: meta-fusion bottleneck ratio (m -> m / reduction).
        temperature: softmax temperature τ of the attention.
        scale: cosine scale of the nearest-prototype loss and of inference scores.
        nearest_weight: weight of the nearest-prototype loss next to the global loss.
        transductive_counts: queries added with pseudo-labels per transductive round.
    """

    num_classes: int = 64
    reduction: int = 6
    temperature: float = 0.025
    scale: float = 7.0
    nearest_weight: float = 0.5
    transductive_counts: list[int] = field(default_factory=lambda: [35, 70])

    def __post_init__(self) -> None:
        self._check_encoder()
        _positive("num_classes", self.num_classes, integer=True)
        _positive("reduction", self.reduction, integer=True)
        _positive("temperature", self.temperature)
        _positive("scale", self.scale)
        if not is_number(self.nearest_weight) or not self.nearest_weight >= 0:
            raise ConfigError(f"nearest_weight must be >= 0, got {self.nearest_weight!r}")
        self.transductive_counts = [int(c) for c in self.transductive_counts]
        if any(c < 1 for c in self.transductive_counts):
            raise ConfigError(
                f"transductive_counts must be positive query counts per round, got "
                f"{self.transductive_counts}"
            )


@dataclass(frozen=True)
class CrossAttentionOutput:
    """Attended maps of every (query, class) pair.

    Attributes:
        class_features: ``(Q, N, c, h, w)`` class maps re-weighted for each query.
        query_features: ``(Q, N, c, h, w)`` query maps re-weighted for each class.
        class_attention: ``(Q, N, h, w)`` ``A^p`` (each map sums to 1).
        query_attention: ``(Q, N, h, w)`` ``A^q`` (each map sums to 1).
    """

    class_features: Tensor
    query_features: Tensor
    class_attention: Tensor
    query_attention: Tensor


class CrossAttentionModule(nn.Module):
    """The CAN cross attention module for maps with ``positions = h·w``.

    Args:
        positions: m; the meta-fusion layer is sized on it, so inputs must keep that map size.
        reduction: bottleneck ratio of the fusion layer (m -> max(1, m // reduction)).
        temperature: τ of the attention softmax.
    """

    def __init__(self, positions: int, reduction: int = 6, temperature: float = 0.025):
        super().__init__()
        hidden = max(1, positions // reduction)
        self.positions, self.temperature = positions, temperature
        self.fusion = nn.Sequential(
            nn.Conv2d(positions, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, positions, 1),
        )

    def attention(self, correlation: Tensor) -> Tensor:
        """``R (B, m_i, m_j)`` -> attention over the own positions ``A (B, m_i)``, rows sum to 1."""
        pooled = correlation.mean(dim=1)  # g_j = mean_i R_ij: (B, m_j)
        kernel = self.fusion(pooled[:, :, None, None]).flatten(1)  # w: (B, m_j)
        fused = (correlation * kernel[:, None, :]).mean(dim=-1)  # mean_j R_ij w_j: (B, m_i)
        return torch.softmax(fused / self.temperature, dim=-1)

    def forward(self, classes: Tensor, queries: Tensor) -> CrossAttentionOutput:
        """Attend ``classes (N, c, h, w)`` and ``queries (Q, c, h, w)`` pairwise."""
        n, c, h, w = classes.shape
        q, m = queries.shape[0], h * w
        if m != self.positions or tuple(queries.shape[1:]) != (c, h, w):
            raise ConfigError(
                f"cross attention built for {self.positions} positions got class maps "
                f"{tuple(classes.shape)} and query maps {tuple(queries.shape)}; feed images of the "
                "size the model was built for"
            )
        p_flat, q_flat = classes.flatten(2), queries.flatten(2)  # (N, c, m), (Q, c, m)
        p_unit, q_unit = F.normalize(p_flat, dim=1), F.normalize(q_flat, dim=1)
        corr = torch.einsum("nci,qcj->qnij", p_unit, q_unit)  # R^p: (Q, N, m, m)
        a_p = self.attention(corr.reshape(q * n, m, m)).view(q, n, m)
        a_q = self.attention(corr.transpose(-1, -2).reshape(q * n, m, m)).view(q, n, m)
        class_out = p_flat[None] * (1 + a_p[:, :, None, :])
        query_out = q_flat[:, None] * (1 + a_q[:, :, None, :])
        return CrossAttentionOutput(
            class_out.view(q, n, c, h, w),
            query_out.view(q, n, c, h, w),
            a_p.view(q, n, h, w),
            a_q.view(q, n, h, w),
        )


def class_features(maps: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean map per class: ``maps (S, c, h, w)``, ``labels (S,)`` -> ``(N, c, h, w)``."""
    onehot = F.one_hot(labels.long(), n_way).to(maps.dtype)  # (S, N)
    sums = torch.einsum("sn,schw->nchw", onehot, maps)
    return sums / onehot.sum(0).clamp_min(1)[:, None, None, None]


@dataclass(frozen=True)
class PseudoLabelRound:
    """One transductive round: the queries added to the class features.

    Attributes:
        indices: ``(k,)`` query indices, most confident first.
        labels: ``(k,)`` their hard pseudo-labels.
        confidence: ``(k,)`` their softmax confidence under the previous round's scores.
    """

    indices: Tensor
    labels: Tensor
    confidence: Tensor


@dataclass(frozen=True)
class TransductiveResult:
    """Scores ``(Q, N)`` after the last round, the rounds, and the support labels used."""

    scores: Tensor
    rounds: list[PseudoLabelRound]
    support_labels: Tensor

    @property
    def predictions(self) -> Tensor:
        return self.scores.argmax(dim=-1)


class CrossAttentionNetwork(EpisodicModel):
    """CAN: encoder, cross attention module and per-position global classifier.

    Args:
        config: :class:`CANConfig`.
        encoder: an existing encoder (default: built from ``config.encoder``).
    """

    method: ClassVar[str] = "can"
    supports_transduction: ClassVar[bool] = True

    def __init__(self, config: CANConfig | None = None, encoder: SpatialEncoder | None = None):
        config = config or CANConfig()
        super().__init__(config, encoder)
        h, w = self.feature_size
        self.cam = CrossAttentionModule(h * w, config.reduction, config.temperature)
        self.classifier = nn.Conv2d(self.encoder.out_channels, config.num_classes, 1)

    @classmethod
    def config_class(cls) -> type:
        return CANConfig

    def check_train_classes(self, num_classes: int) -> None:
        if num_classes > self.config.num_classes:
            raise ConfigError(
                f"CAN's global classifier has {self.config.num_classes} outputs but the training "
                f"set has {num_classes} classes; build the model with "
                f"CANConfig(num_classes={num_classes})"
            )

    # --------------------------------------------------------------- scores
    def scores_from_maps(
        self, support_maps: Tensor, support_labels: Tensor, query_maps: Tensor, n_way: int
    ) -> Tensor:
        """Inference scores ``(Q, N)``: scale · cos(pooled attended query, pooled attended class)."""
        out = self.cam(class_features(support_maps, support_labels, n_way), query_maps)
        proto = F.normalize(out.class_features.mean(dim=(-2, -1)), dim=-1)
        query = F.normalize(out.query_features.mean(dim=(-2, -1)), dim=-1)
        return self.config.scale * (proto * query).sum(-1)

    def loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Global per-position CE + ``nearest_weight`` · nearest-prototype per-position CE."""
        if batch.query_classes is None:
            raise ConfigError("CAN episodes need the queries' global base-class labels")
        n_way = check_labels(batch.support_labels)
        maps = self.encode(torch.cat([batch.support, batch.query]))
        s_maps, q_maps = maps[: len(batch.support)], maps[len(batch.support) :]
        out = self.cam(class_features(s_maps, batch.support_labels, n_way), q_maps)
        proto = F.normalize(out.class_features.mean(dim=(-2, -1)), dim=-1)  # (Q, N, c)
        local = self.config.scale * torch.einsum(
            "qnc,qnchw->qnhw", proto, F.normalize(out.query_features, dim=2)
        )
        h, w = self.feature_size
        targets = batch.query_labels[:, None, None].expand(-1, h, w)
        nearest = F.cross_entropy(local, targets)
        own = out.query_features[torch.arange(len(q_maps)), batch.query_labels]  # (Q, c, h, w)
        global_targets = batch.query_classes[:, None, None].expand(-1, h, w)
        global_loss = F.cross_entropy(self.classifier(own), global_targets)
        total = global_loss + self.config.nearest_weight * nearest
        accuracy = (local.mean(dim=(-2, -1)).argmax(-1) == batch.query_labels).float().mean()
        return total, {
            "loss": float(total.detach()),
            "global": float(global_loss.detach()),
            "nearest": float(nearest.detach()),
            "acc": float(accuracy),
        }

    # --------------------------------------------------------------- inference
    def predict_maps(
        self,
        support_maps: Tensor,
        support_labels: Tensor,
        query_maps: Tensor,
        transductive: bool = False,
    ) -> Tensor:
        """Episode labels ``(Q,)``; with ``transductive`` the pseudo-label rounds of the config."""
        n_way = check_labels(support_labels)
        if transductive:
            counts = self.config.transductive_counts
            return transductive_scores(
                self, support_maps, support_labels, query_maps, n_way, counts
            ).predictions
        return self.scores_from_maps(support_maps, support_labels, query_maps, n_way).argmax(-1)

    def transduce(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        counts: list[int] | None = None,
    ) -> TransductiveResult:
        """Transductive inference on images (see :func:`transductive_scores`)."""
        n_way = check_labels(support_labels)
        counts = self.config.transductive_counts if counts is None else counts
        return transductive_scores(
            self, self.encode(support), support_labels, self.encode(query), n_way, counts
        )

    def explain(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        targets: Tensor | None = None,
        side: str = "query",
    ) -> Explanation:
        """CAN attention maps as an :class:`Explanation`.

        ``side="query"``: ``A^q`` of each query for class ``targets (Q,)`` (default: the
        predicted class), scores ``(Q, h, w)``. ``side="support"``: ``A^p`` of each class feature
        averaged over the queries, scores ``(N, h, w)``, targets ``0..N-1``.
        """
        if side not in ("query", "support"):
            raise ConfigError(f"side must be 'query' or 'support', got {side!r}")
        n_way = check_labels(support_labels)
        s_maps, q_maps = self.encode(support), self.encode(query)
        out = self.cam(class_features(s_maps, support_labels, n_way), q_maps)
        params = {"side": side, "temperature": self.config.temperature}
        size = tuple(query.shape[-2:])
        if side == "support":
            scores = out.class_attention.mean(dim=0)
            return Explanation(scores, "can-attention", params, size, torch.arange(n_way))
        if targets is None:
            targets = self.scores_from_maps(s_maps, support_labels, q_maps, n_way).argmax(-1)
        scores = out.query_attention[torch.arange(len(query)), targets.long()]
        return Explanation(scores, "can-attention", params, size, targets)


def transductive_scores(
    model: CrossAttentionNetwork,
    support_maps: Tensor,
    support_labels: Tensor,
    query_maps: Tensor,
    n_way: int,
    counts: list[int],
) -> TransductiveResult:
    """Transductive CAN inference (Hou et al. 2019, section 3.4).

    Each round takes the ``count`` queries (at most Q) with the highest softmax confidence under
    the current scores, adds their maps with hard pseudo-labels to the support set, recomputes
    the class features (mean over support and pseudo-labelled maps) and rescores every query.
    Rounds replace, not accumulate, the previous round's pseudo-labels. The support labels are
    never changed.

    Args:
        support_maps: ``(S, c, h, w)``; support_labels ``(S,)``; query_maps ``(Q, c, h, w)``.
        counts: queries per round (default config: ``[35, 70]``).
    """
    scores = model.scores_from_maps(support_maps, support_labels, query_maps, n_way)
    rounds: list[PseudoLabelRound] = []
    for count in counts:
        confidence, pseudo = torch.softmax(scores, dim=-1).max(dim=-1)
        top = confidence.topk(min(int(count), len(query_maps))).indices
        rounds.append(PseudoLabelRound(top, pseudo[top], confidence[top]))
        maps = torch.cat([support_maps, query_maps[top]])
        labels = torch.cat([support_labels, pseudo[top]])
        scores = model.scores_from_maps(maps, labels, query_maps, n_way)
    return TransductiveResult(scores, rounds, support_labels.clone())
