"""Attention rollout (Abnar & Zuidema, ACL 2020) and its gradient-augmented variant, the position
prompt explainer of FORT ("Focus Your Attention when Few-Shot Classification", Wang, Jie, Deng,
NeurIPS 2023; docs/method.md), re-implemented from the equations.

Both run one forward pass for the whole batch and compute the rollout with batched matrix
products. Only the rows of the rollout that the score needs are formed: ``u R`` for a row vector
``u`` is evaluated as ``((u Â^L) Â^{L-1}) ···``, which equals the corresponding rows of the full
product ``R = Â^L ··· Â^1`` but costs ``O(B T²)`` per layer instead of ``O(B T³)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from focusvit.backbones import BackboneAdapter
from focusvit.errors import ConfigError

from .attention import (
    HEAD_FUSIONS,
    QUERIES,
    Layers,
    block_indices,
    check_choice,
    check_ratio,
    discard_lowest,
    fuse_heads,
    image_size_of,
    query_params,
    resolve_query,
    streamed_attention,
    to_patch_grid,
)
from .base import Explainer, Target, register_explainer, resolve_targets
from .gradcam import gradient_or_zeros

ORDERS = ("official", "paper")


def rollout_rows(start: Tensor, matrices: Sequence[Tensor], order: str = "official") -> Tensor:
    """Rows ``start · R`` of the rollout of row-normalised per-layer matrices.

    Args:
        start: ``(B, T)`` row weights (e.g. one-hot CLS row, or uniform over patch rows).
        matrices: per-layer non-negative ``(B, T, T)`` matrices ``M^1 .. M^L`` in block order,
            NOT yet row-normalised: ``Â^l = rownorm(M^l)`` is applied on the fly, as
            ``v · rownorm(M) = (v / rowsum(M)) · M`` (no normalised copy is built).
        order: ``"official"``: ``R = Â^L ··· Â^1`` (Abnar & Zuidema, FORT code);
            ``"paper"``: ``R = Â^1 ··· Â^L`` (as the FORT paper writes it).

    Returns:
        ``(B, T)`` = ``start @ R``.
    """
    check_choice("order", order, ORDERS)
    ordered = reversed(matrices) if order == "official" else iter(matrices)
    row = start
    for matrix in ordered:
        sums = matrix.sum(dim=-1)
        sums = torch.where(sums > 0, sums, 1.0)  # an all-zero row stays zero
        row = torch.bmm((row / sums)[:, None, :], matrix)[:, 0]
    return row


def rollout_matrix(attention: Tensor, discard_ratio: float, identity: bool) -> Tensor:
    """Abnar & Zuidema's per-layer matrix before row normalisation, ``A + I`` ``(B, T, T)``.

    ``attention`` is head-fused ``(B, T, T)`` and is modified in place (pass a tensor you own);
    ``discard_ratio`` zeroes the lowest fraction of every row first (never the CLS column).
    ``rownorm(A + I)`` is the transition matrix.
    """
    matrix = discard_lowest(attention, discard_ratio, keep_first=True)
    if identity:
        matrix.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return matrix


@register_explainer
class RolloutExplainer(Explainer):
    """Attention rollout (Abnar & Zuidema, ACL 2020).

    Per block: fuse heads, optionally zero the lowest ``discard_ratio`` of each row (the CLS
    column is never discarded), ``A' = rownorm(A + I)`` (``identity=True``, the residual
    connection) or ``rownorm(A)``; ``R = A'^L ··· A'^1`` over all tokens; the score of patch j
    is ``R[0, P + j]`` (``query="cls"``: row of the CLS token, also for models with register or
    distillation tokens) or the mean of ``R[P + i, P + j]`` over patch rows i
    (``query="mean"``), with ``P = backbone.num_tokens_before_patches``. Tokens a tuner inserted
    stay in the product; when they are refreshed at every block (deep VPT) their rows are zeroed
    (they are sources, nothing flows through them to earlier blocks). One no-grad forward;
    columnar ViTs only.

    Args:
        head_fusion: ``"mean"`` | ``"min"`` | ``"max"``.
        discard_ratio: fraction in ``[0, 1)`` of each row zeroed (0: none).
        identity: add the identity before row-normalising.
        query: ``"auto"`` (default: ``"cls"``, or ``"mean"`` for models without a CLS token,
            whose "CLS row" is the mean of the patch query rows) | ``"cls"`` | ``"mean"``; the
            explanation's params record the resolved value and ``cls_row``.
        layers: blocks that enter the product (default every block).
    """

    name: ClassVar[str] = "rollout"
    families: ClassVar[tuple[str, ...]] = ("vit",)

    def __init__(
        self,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        identity: bool = True,
        query: str = "auto",
        layers: Layers = None,
    ):
        check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        check_choice("query", query, QUERIES)
        super().__init__(
            head_fusion=head_fusion,
            discard_ratio=check_ratio(discard_ratio),
            identity=bool(identity),
            query=query,
            layers=layers if layers is None or isinstance(layers, int) else tuple(layers),
        )

    def resolved_params(self, backbone: BackboneAdapter) -> dict:
        return query_params(backbone, self.params)

    def scores(
        self, backbone: BackboneAdapter, images: Tensor, target: Target
    ) -> tuple[Tensor, Tensor]:
        """``(scores (B, h, w), targets (B,))`` from one no-grad forward."""
        p = self.params
        # Tokens a tuner inserted fresh at every block (deep VPT) are sources: what flows into
        # them at block l+1 does not come from block l, so their rows carry nothing backwards.
        refreshed = (
            slice(backbone.num_prefix_tokens, backbone.num_tokens_before_patches)
            if backbone.inserted_tokens_refreshed
            else None
        )

        def reduce(_layer: int, probs: Tensor) -> Tensor:
            fused = fuse_heads(probs, p["head_fusion"])
            matrix = rollout_matrix(fused, p["discard_ratio"], p["identity"])
            if refreshed is not None:
                matrix[:, refreshed] = 0.0
            return matrix

        layers = block_indices(backbone, p["layers"])
        with (
            backbone.evaluating(),
            torch.no_grad(),
            streamed_attention(backbone, layers, reduce) as matrices,
        ):
            logits = backbone.logits(images)
            _, classes = resolve_targets(logits, target)
        prefix = backbone.num_tokens_before_patches
        start = torch.zeros_like(matrices[0][:, 0])
        if resolve_query(backbone, p["query"]) == "cls":
            start[:, 0] = 1.0
        else:
            start[:, prefix:] = 1.0 / (start.shape[1] - prefix)
        rows = rollout_rows(start, matrices, order="official")
        return to_patch_grid(backbone, rows[:, prefix:], image_size_of(images)), classes


# ----------------------------------------------------------------------------- FORT


def leading_component(matrix: Tensor, steps: int = 24) -> Tensor:
    """``X V₁`` for each ``(N, D)`` matrix of a batch ``(B, N, D)``: ``(B, N)``, in float64.

    ``V₁`` is the first right-singular vector of ``X`` (sign arbitrary), so ``X V₁ = σ₁ U₁``:
    the same vector as ``torch.linalg.svd(X, full_matrices=False)`` gives, up to sign. It is
    computed from the smaller Gram matrix ``C`` (``X Xᵀ`` when ``N <= D``, else ``Xᵀ X``) by
    :func:`top_eigenvector`; on CPU this is far cheaper than a batched SVD (ViT-S/16, batch
    32, 2 cores: ``svd`` ~230 ms, ``eigh`` of C ~70 ms, Lanczos ~15 ms, a forward ~1.4 s).
    """
    x = matrix.double()
    n, d = x.shape[-2:]
    if n <= d:
        vector, value = top_eigenvector(x @ x.transpose(1, 2), steps)
        return vector * value.clamp_min(0.0).sqrt()[:, None]
    vector, _ = top_eigenvector(x.transpose(1, 2) @ x, steps)
    return (x @ vector[..., None])[..., 0]


def top_eigenvector(gram: Tensor, steps: int = 24, tol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """Leading eigenpair of symmetric PSD matrices ``(B, K, K)``: ``((B, K), (B,))``.

    Batched Lanczos with full re-orthogonalisation for ``steps`` steps from a fixed start
    vector (seeded generator: deterministic and independent of the batch), then Rayleigh-Ritz.
    A matrix whose Ritz pair has a residual ``‖C v − λ v‖ > tol · λ`` (a tiny gap between its
    first eigenvalues) is solved exactly with ``torch.linalg.eigh``, as are small ones
    (``K <= 2 · steps``). A zero matrix gives ``λ = 0``.
    """
    batch, size, _ = gram.shape
    if size <= 2 * steps:
        values, vectors = torch.linalg.eigh(gram)
        return vectors[..., -1], values[:, -1]
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(size, generator=generator, dtype=gram.dtype).to(gram.device)
    basis = gram.new_zeros(batch, size, steps)
    basis[:, :, 0] = start / start.norm()
    tridiagonal = gram.new_zeros(batch, steps, steps)
    floor = 1e-12 * gram.diagonal(dim1=1, dim2=2).sum(dim=1)  # breakdown: invariant subspace
    for j in range(steps):
        current = basis[:, :, j : j + 1]
        # C v as (vᵀ C)ᵀ (C is symmetric): a row vector times the matrix runs ~5x faster than
        # the matrix times a column vector in batched CPU BLAS (ViT-S/16, batch 32)
        w = torch.bmm(current.transpose(1, 2), gram).transpose(1, 2)
        tridiagonal[:, j, j] = (w * current).sum(dim=(1, 2))
        if j + 1 == steps:
            break
        done = basis[:, :, : j + 1]
        for _ in range(2):  # full re-orthogonalisation, twice for stability
            w = w - done @ (done.transpose(1, 2) @ w)
        beta = w[..., 0].norm(dim=1)
        alive = beta > floor
        beta = torch.where(alive, beta, 0.0)
        basis[:, :, j + 1] = torch.where(
            alive[:, None], w[..., 0] / beta.clamp_min(1e-300)[:, None], 0.0
        )
        tridiagonal[:, j, j + 1] = beta
        tridiagonal[:, j + 1, j] = beta
    values, vectors = torch.linalg.eigh(tridiagonal)
    value, vector = values[:, -1], (basis @ vectors[..., -1:])[..., 0]
    residual = torch.bmm(vector[:, None], gram)[:, 0] - value[:, None] * vector
    unconverged = residual.norm(dim=1) > tol * value.abs()
    if unconverged.any():
        exact_values, exact_vectors = torch.linalg.eigh(gram[unconverged])
        vector[unconverged] = exact_vectors[..., -1]
        value[unconverged] = exact_values[:, -1]
    return vector, value


def orient(component: Tensor, reference: Tensor) -> Tensor:
    """Fix the arbitrary sign of ``component`` ``(B, N)`` against ``reference`` ``(B, N)``.

    The sign is chosen so that the component correlates positively with the reference (the
    patch attention); when the correlation vanishes (|cosine| < 1e-6, e.g. a constant
    reference) the entry of largest magnitude is made positive. Deterministic, per image.
    """
    ref = reference.to(component.dtype)
    ref = ref - ref.mean(dim=1, keepdim=True)
    centred = component - component.mean(dim=1, keepdim=True)
    dot = (centred * ref).sum(dim=1)
    scale = centred.norm(dim=1) * ref.norm(dim=1)
    peak = component.gather(1, component.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(dot.abs() > 1e-6 * scale, dot.sign(), peak.sign())
    return component * torch.where(sign == 0, 1.0, sign)[:, None]


def svd_gradient_term(gradient: Tensor, reference: Tensor, centre: bool = True) -> Tensor:
    """The FORT gradient term ``G`` (docs/method.md, step 3): ``(B, N, D)`` -> ``(B, N)``.

    ``G = (∇ − mean over tokens) · V₁`` with ``V₁`` the first right-singular vector of the
    centred ``∇`` (no centring when ``centre=False``), its sign fixed by :func:`orient` against
    ``reference`` (the patch attention), then L1-normalised per image: ``G / Σ_j |G_j|``.

    Normalisation: with centring, ``Σ_j G_j = 0``, so after L1 normalisation the positive and
    the negative entries each carry a mass of 1/2. A row of ``I + A_pp`` carries a mass of about
    2, so ``λ = 1`` adds a gradient term of the same order as the attention itself, whatever the
    number of patches N (dividing by ``max |G|`` instead would make the term N/4 times larger
    than an attention row).

    Degenerate gradients: an image whose gradient is zero or has a NaN / inf entry (and any
    image whose ``Σ|G|`` underflows) gets ``G = 0``, i.e. plain rollout on the patch block.

    Returns:
        ``(B, N)`` float32, each row summing in absolute value to 1 (or all zeros).
    """
    x = gradient.to(torch.float64, copy=True)  # float64 from here on, worked on in place
    # A NaN / inf entry makes its image's float64 sum non-finite (and a float64 sum of finite
    # float32 values cannot overflow): one reduction, the elementwise test only when needed.
    if not bool(torch.isfinite(x.sum(dim=(1, 2))).all()):
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        x = torch.where(finite[:, None, None], x, 0.0)
    if centre:
        x.sub_(x.mean(dim=1, keepdim=True))
    component = orient(leading_component(x), reference)
    mass = component.abs().sum(dim=1, keepdim=True)
    usable = mass > torch.finfo(torch.float32).tiny
    component = torch.where(usable, component / mass.clamp_min(1e-300), 0.0)
    return component.float()


def fort_matrix(patch_attention: Tensor, discard_ratio: float) -> Tensor:
    """The part of a FORT layer that does not depend on G: ``A_pp + I`` ``(B, N, N)``.

    ``patch_attention`` is the head-fused patch block ``A_pp`` ``(B, N, N)`` (rows and columns
    of the patch tokens) and is modified in place (pass a tensor you own); the lowest
    ``discard_ratio`` of every row is zeroed before the identity is added.
    """
    matrix = discard_lowest(patch_attention, discard_ratio)
    matrix.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return matrix


def fort_transition(base: Tensor, term: Tensor, lam: float) -> Tensor:
    """One FORT layer before row normalisation: ``max(0, A_pp + I + λ·1Gᵀ)`` ``(B, N, N)``.

    ``base`` is :func:`fort_matrix` and is modified in place (pass a tensor you own); ``1Gᵀ``
    adds ``G_j`` (``term`` ``(B, N)``) to every entry of column j. ``Â = rownorm`` of the result
    (done by :func:`rollout_rows`). Negative entries (possible where ``λ G_j < −A_ij``) are
    clamped at 0 before row normalisation; every row sum stays >= 1 (its diagonal is
    ``1 + A_ii + λ G_i`` and, with centring, ``Σ_j G_j = 0``; the clamp only raises entries),
    so no row is ever empty.
    """
    return base.add_(lam * term.to(base.dtype)[:, None, :]).clamp_min_(0.0)


@register_explainer
class RolloutSVDExplainer(Explainer):
    """FORT position-prompt explainer: attention rollout plus an SVD-denoised gradient term
    (Wang, Jie, Deng, NeurIPS 2023; docs/method.md).

    For images x with target scores s ``(B,)``:

    1. ``A^l`` ``(B, H, T, T)`` of every block, fused over heads (``head_fusion``).
    2. ``∇ = ∂s/∂Z^L_in`` on the patch tokens ``(B, N, D)``: the backward crosses only the head
       and the last block (``backbone.frozen()`` + ``backbone.track_block_input(-1)``).
    3. ``G`` = :func:`svd_gradient_term` ``(B, N)``: centred ∇ projected on its first
       right-singular vector, sign fixed to correlate positively with the last layer's patch
       attention (mean over heads and over all query rows), L1-normalised per image.
    4. Per block on the patch block: ``Â^l = rownorm(max(0, I + A^l_pp + λ·1Gᵀ))``
       (:func:`fort_transition`).
    5. ``R = Â^L ··· Â^1`` (``order="official"``) or ``Â^1 ··· Â^L`` (``order="paper"``).
    6. Scores: mean over the rows of R, ``(B, N)`` -> ``(B, h, w)``.

    What the gradient term does beyond the paper's formula ``Â = norm(I + A + λ·1Gᵀ)`` with
    ``G = ∇_c V₁`` (``∇_c`` the token-centred gradient), and why (docs/method.md):

    - **Sign reference.** ``V₁`` (hence G) is defined only up to sign, and the official code
      keeps whatever sign the SVD returns, so its prompts can land on the object or on its
      complement from one run or library version to the next. Here the sign is fixed per image
      so that the centred G has a positive dot product with the last block's patch attention
      (softmax probabilities averaged over heads and over all query rows, CLS and patches,
      restricted to the patch keys): the term reinforces where the model already attends. It
      makes G deterministic and independent of the gradient's sign (``∇`` and ``−∇`` give the
      same G); when that correlation vanishes (|cosine| < 1e-6) the entry of largest magnitude
      is made positive (:func:`orient`).
    - **Per-image L1 normalisation of G:** ``G / Σ_j |G_j|``. Raw G scales with the gradient
      (measured: 10-200x the min-fused attention), so at λ = 1 it swamps the attention and the
      result follows the arbitrary sign alone. With centring ``Σ_j G_j = 0``, so the positive
      and the negative entries each carry a mass of 1/2, while a row of ``I + A_pp`` carries
      about 2: λ = 1 then weighs the gradient like the attention, for any number of patches N
      and any gradient scale, and per image, so the result does not depend on the batch. An
      image whose gradient is zero or not finite gets ``G = 0`` (plain rollout on the patch
      block) instead of NaN.
    - **Clamping before row normalisation:** ``Â = rownorm(max(0, I + A_pp + λ·1Gᵀ))``. The
      negative half of G makes ``I + A_pp + λ·1Gᵀ`` negative wherever ``λ G_j < −A_ij``; a
      row with negative entries is no longer a distribution over patches, and the product of
      such matrices can cancel or flip the sign of the rollout. Clamping at 0 keeps every
      ``Â`` row-stochastic; with centring every row sum before normalisation stays >= 1
      (``Σ_j (A_ij + I_ij + λ G_j) = Σ_j A_ij + 1`` and the clamp only raises entries), so no
      row is ever empty.

    Measured on the base-class-pretrained ViT of docs/method.md: 50-55% of the 5 prompt
    patches on the object with these three changes, 15-23% with the raw official form.

    Args:
        lam: λ, weight of the gradient term (0 gives plain rollout on the patch block).
        head_fusion: ``"mean"`` (paper) | ``"min"`` (official code) | ``"max"``.
        discard_ratio: fraction of each row of ``A_pp`` zeroed before adding I (0: paper,
            0.9: official code).
        order: ``"official"`` | ``"paper"``.
        centre: subtract the mean over tokens from ∇ before the SVD.
        layers: blocks entering the product (default all); the gradient is always taken at the
            input of the last block.
    """

    name: ClassVar[str] = "rollout_svd"
    families: ClassVar[tuple[str, ...]] = ("vit",)
    needs_target: ClassVar[bool] = True

    def __init__(
        self,
        lam: float = 1.0,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        order: str = "official",
        centre: bool = True,
        layers: Layers = None,
    ):
        check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        check_choice("order", order, ORDERS)
        if not torch.isfinite(torch.tensor(float(lam))):
            raise ConfigError(f"lam={lam!r} must be a finite number (default 1.0)")
        super().__init__(
            lam=float(lam),
            head_fusion=head_fusion,
            discard_ratio=check_ratio(discard_ratio),
            order=order,
            centre=bool(centre),
            layers=layers if layers is None or isinstance(layers, int) else tuple(layers),
        )

    def scores(
        self, backbone: BackboneAdapter, images: Tensor, target: Target
    ) -> tuple[Tensor, Tensor]:
        """``(scores (B, h, w), targets (B,))`` from one forward and a last-block backward."""
        p = self.params
        prefix = backbone.num_tokens_before_patches  # + tokens a tuner inserted (VPT)
        layers = block_indices(backbone, p["layers"])
        last = backbone.num_layers - 1
        captured = sorted({*layers, last})

        def reduce(layer: int, probs: Tensor) -> tuple[Tensor, Tensor]:
            # (A_pp + I, reference): the reference, only kept for the last block, is its patch
            # attention averaged over heads and all queries (the sign rule of G).
            if layer == last:
                reference = probs.float().mean(dim=(1, 2))[:, prefix:]
            else:
                reference = probs.new_zeros(probs.shape[0], 0)
            if layer not in layers:
                return probs.new_zeros(probs.shape[0], 0), reference
            fused = fuse_heads(probs[:, :, prefix:, prefix:], p["head_fusion"])
            return fort_matrix(fused, p["discard_ratio"]), reference

        with (
            backbone.evaluating(),
            torch.enable_grad(),
            backbone.frozen(),
            backbone.track_block_input(-1) as block_input,
            streamed_attention(backbone, captured, reduce) as reduced,
        ):
            logits = backbone.logits(images)
            score, classes = resolve_targets(logits, target)
            gradient = gradient_or_zeros(score, block_input.tokens)
        reference = reduced[-1][1]  # captured is sorted: the last entry is the last block
        term = svd_gradient_term(gradient[:, prefix:].detach(), reference, centre=p["centre"])
        matrices = [
            fort_transition(base, term, p["lam"])
            for layer, (base, _) in zip(captured, reduced, strict=True)
            if layer in layers
        ]
        start = torch.full_like(term, 1.0 / term.shape[1])
        rows = rollout_rows(start, matrices, order=p["order"])
        return to_patch_grid(backbone, rows, image_size_of(images)), classes
