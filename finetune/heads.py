"""Classification heads from a support set, and frozen-feature few-shot solvers.

Head initialisation (docs/recipes.md; the official FORT code solves an SVM-style problem on
the support features; a ridge or logistic solve is a fine substitute and prototypes are the
simplest) and the frozen-feature baselines: nearest prototype, kNN, ridge, SVM and logistic
regression (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusvit.errors import ConfigError, UnsupportedMethodError

if TYPE_CHECKING:
    from focusvit.backbones import BackboneAdapter

HeadInit = Literal["svm", "prototype", "ridge", "logistic"]
#: the prompt :func:`text_head` puts each class name in (CLIP's ImageNet prompt)
TEXT_TEMPLATE = "a photo of a {}."
SOLVERS = ("prototype", "knn", "ridge", "svm", "logistic")


def _check(features: Tensor, labels: Tensor) -> int:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ConfigError(
            f"expected features (M, D) and labels (M,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    return int(labels.max()) + 1


def prototypes(features: Tensor, labels: Tensor) -> Tensor:
    """Class means ``(C, D)`` of ``features (M, D)`` with ``labels (M,)`` in ``0..C-1``."""
    classes = _check(features, labels)
    one_hot = torch.nn.functional.one_hot(labels, classes).to(features.dtype)  # (M, C)
    return (one_hot.T @ features) / one_hot.sum(0)[:, None]


def _linear_from(weight: np.ndarray | Tensor, bias: np.ndarray | Tensor, like: Tensor) -> nn.Linear:
    """A linear layer holding ``weight`` ``(C, D)`` and ``bias`` ``(C,)``. Built on the meta
    device first, so it draws no random numbers: a head computed once per episode and reused
    leaves the torch RNG where computing it again would (the tuners' init draws next)."""
    weight = torch.as_tensor(np.asarray(weight), dtype=like.dtype)
    bias = torch.as_tensor(np.asarray(bias), dtype=like.dtype)
    head = nn.Linear(weight.shape[1], weight.shape[0], device="meta", dtype=like.dtype)
    head = head.to_empty(device=like.device)
    with torch.no_grad():
        head.weight.copy_(weight.to(like.device))
        head.bias.copy_(bias.to(like.device))
    return head


def _sklearn_binary_fix(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn returns one row for 2 classes; expand to two symmetric rows."""
    if coef.shape[0] == 1:
        return np.concatenate([-coef / 2, coef / 2]), np.concatenate(
            [-intercept / 2, intercept / 2]
        )
    return coef, intercept


def _project_rows(values: Tensor, upper: Tensor) -> Tensor:
    """Euclidean projection of each row ``v`` of ``values`` ``(M, C)`` onto
    ``{a : a <= u, sum(a) = 0}`` (``u`` the row of ``upper``, with ``sum(u) >= 0``), exactly:
    ``a = min(v - tau, u)`` with the ``tau`` that makes the row sum zero, found by sorting the
    breakpoints ``v - u`` of the piecewise-linear, decreasing sum."""
    m, c = values.shape
    breaks, _ = torch.sort(values - upper, dim=1)  # tau at which a_k leaves its upper bound
    # with tau in [breaks[j-1], breaks[j]] the k with v_k - u_k <= tau... are free
    order = torch.argsort(values - upper, dim=1)
    v_sorted = torch.gather(values, 1, order)
    u_sorted = torch.gather(upper, 1, order)
    # suppose the first j sorted entries are free (a = v - tau), the rest clamped (a = u):
    # sum = sum_{<j} v - j tau + sum_{>=j} u = 0  ->  tau_j = (S_v(j) + S_u(j)) / j
    prefix_v = torch.cumsum(v_sorted, dim=1)
    suffix_u = torch.flip(torch.cumsum(torch.flip(u_sorted, [1]), dim=1), [1])
    suffix_u = torch.cat([suffix_u[:, 1:], suffix_u.new_zeros(m, 1)], dim=1)
    counts = torch.arange(1, c + 1, device=values.device, dtype=values.dtype)
    taus = (prefix_v + suffix_u) / counts
    low = breaks
    high = torch.cat([breaks[:, 1:], breaks.new_full((m, 1), float("inf"))], dim=1)
    valid = (taus >= low - 1e-12) & (taus <= high + 1e-12)
    index = torch.argmax(valid.to(torch.int8), dim=1, keepdim=True)
    tau = torch.gather(taus, 1, index)
    return torch.minimum(values - tau, upper)


def crammer_singer_dual(
    kernel: Tensor,
    labels: Tensor,
    classes: int,
    c_reg: float = 0.1,
    iterations: int = 5000,
    tolerance: float = 1e-10,
) -> Tensor:
    """Dual coefficients ``alpha`` ``(M, C)`` of the margin-1 Crammer-Singer SVM of FORT's head
    (MetaOptNet's ``SVM_CS``): minimise ``½ Σ_ij K_ij <a_i, a_j> + ½ ||a||² - Σ_i a_{i,y_i}``
    subject to ``a_i <= c_reg · onehot(y_i)`` and ``Σ_k a_ik = 0`` for every support sample i.
    The ``+ ½ ||a||²`` is the identity added to the kernel (docs/recipes.md); it makes the
    problem strongly convex, so accelerated projected gradient (FISTA, exact per-row
    projection) converges to the unique optimum.

    Args:
        kernel: ``(M, M)`` Gram matrix of the support features (float64 recommended).
        labels: ``(M,)`` in ``0..C-1``.
    """
    onehot = F.one_hot(labels, classes).to(kernel.dtype)
    upper = c_reg * onehot
    hessian = kernel + torch.eye(len(kernel), dtype=kernel.dtype, device=kernel.device)
    step = 1.0 / float(torch.linalg.eigvalsh(hessian).max())
    alpha = torch.zeros_like(onehot)
    momentum, t = alpha.clone(), 1.0
    for _ in range(iterations):
        gradient = hessian @ momentum - onehot
        updated = _project_rows(momentum - step * gradient, upper)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = updated + ((t - 1) / t_next) * (updated - alpha)
        change = float((updated - alpha).abs().max())
        alpha, t = updated, t_next
        if change < tolerance:
            break
    return alpha


def init_head(
    features: Tensor, labels: Tensor, method: HeadInit = "svm", strength: float = 1.0
) -> nn.Linear:
    """A linear head ``D -> C`` fitted to the support set.

    Args:
        features: ``(M, D)`` support features (the backbone's pooled features).
        labels: ``(M,)`` episode labels ``0..C-1``.
        method: ``"svm"`` (FORT's official head: the margin-1 Crammer-Singer SVM of
            :func:`crammer_singer_dual`, C = 0.1, no bias; its support cross-entropy stays near
            0.9, so the classification loss still drives fine-tuning), ``"prototype"``
            (logit = −½‖f − μ_c‖² up to a constant), ``"ridge"`` (one-hot regression) or
            ``"logistic"`` (multinomial logistic regression; fits the support set almost
            perfectly and leaves little classification gradient).
        strength: regularisation (ridge α; logistic inverse C).
    """
    classes = _check(features, labels)
    feats = features.detach()
    if method == "svm":
        x = feats.double()
        alpha = crammer_singer_dual(x @ x.T, labels.to(x.device), classes)
        weight = (alpha.T @ x).cpu()  # (C, D): logits = x_q · Σ_i alpha_i x_i
        return _linear_from(weight, torch.zeros(classes, dtype=x.dtype), feats)
    if method == "prototype":
        protos = prototypes(feats, labels)
        return _linear_from(protos, -0.5 * (protos**2).sum(1), feats)
    x, y = feats.cpu().double().numpy(), labels.cpu().numpy()
    if method == "ridge":
        from sklearn.linear_model import Ridge

        targets = np.eye(classes)[y]
        model = Ridge(alpha=strength).fit(x, targets)
        return _linear_from(model.coef_, model.intercept_, feats)
    if method == "logistic":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0 / strength, max_iter=1000).fit(x, y)
        return _linear_from(*_sklearn_binary_fix(model.coef_, model.intercept_), feats)
    if method == "text":
        raise ConfigError(
            "head_init 'text' builds the head from class names, not support features: use "
            "text_head(backbone, class_names), or fit_task(..., class_names=[...])"
        )
    raise ConfigError(f"unknown head init {method!r}; use svm, prototype, ridge or logistic")


def text_head(
    backbone: BackboneAdapter, class_names: Sequence[str], template: str = TEXT_TEMPLATE
) -> nn.Linear:
    """The zero-shot head of a CLIP / SigLIP model from class names (beyond the paper).

    Each name is put in ``template`` and embedded by the text tower
    (``backbone.encode_text``: L2-normalised, in the space of ``backbone.features``). The head
    ``D -> K`` has weight ``text_logit_scale · text embeddings`` ``(K, D)`` and bias
    ``text_logit_bias`` (1 and 0 where the adapter declares none), so over the model's
    L2-normalised image features its logits are the model's own image-text logits (CLIP:
    ``logit_scale.exp() · cos``; SigLIP adds its ``logit_bias``). Usable alone, ``backbone.replace_head(text_head(backbone, names))``, or as
    the starting head of every tuner (``head_init="text"``). Draws no random numbers.

    Raises:
        UnsupportedMethodError: the model has no text tower (naming what to load).
        ConfigError: no class names, or a template without ``{}``.
    """
    names = [class_names] if isinstance(class_names, str) else [str(n) for n in class_names]
    if not names:
        raise ConfigError("text_head got no class names; pass one name per class")
    if "{}" not in template:
        raise ConfigError(
            f"template {template!r} has no '{{}}' for the class name; e.g. {TEXT_TEMPLATE!r}"
        )
    with torch.no_grad():
        embeddings = backbone.encode_text([template.format(name) for name in names]).detach()
    if embeddings.shape != (len(names), backbone.num_features):
        raise UnsupportedMethodError(
            f"{backbone.name}.encode_text returned {tuple(embeddings.shape)} for {len(names)} "
            f"names; the head needs ({len(names)}, {backbone.num_features}) (num_features)"
        )
    scale, bias = backbone.text_logit_scale, backbone.text_logit_bias
    head = nn.Linear(embeddings.shape[1], len(names), device="meta", dtype=embeddings.dtype)
    head = head.to_empty(device=embeddings.device)
    with torch.no_grad():
        head.weight.copy_(embeddings * (1.0 if scale is None else float(scale)))
        head.bias.fill_(0.0 if bias is None else float(bias))
    return head


#: the frozen solvers' default feature transform, chosen on the validation classes by
#: ``benchmarks/eval_speed.py`` (offline DINOv2-S/14, 300 paired episodes per cell, 2026-12-03):
#: cl2n beat none by +1.52 ± 0.43 points for the prototype solver at 5-way 5-shot and +0.49 ±
#: 0.48 for kNN, +0.26 ± 0.42 at 1-shot (see benchmarks/README.md)
DEFAULT_TRANSFORM = "cl2n"

#: feature transforms of the frozen solvers (SimpleShot, Wang et al. 2019): ``none``, ``l2n``
#: (L2-normalise), ``cl2n`` (subtract the support mean, then L2-normalise)
FEATURE_TRANSFORMS = ("none", "l2n", "cl2n")


def transform_features(
    support: Tensor, query: Tensor, transform: str = "none"
) -> tuple[Tensor, Tensor]:
    """SimpleShot feature transform of support ``(M, D)`` and query ``(Q, D)`` features.

    ``cl2n`` centres on the mean of the support features (the only features of the task that
    are not test data; SimpleShot centres on the base-class mean, which a few-shot task does not
    have), then L2-normalises both sets; ``l2n`` only normalises; ``none`` leaves them.
    """
    if transform not in FEATURE_TRANSFORMS:
        raise ConfigError(
            f"unknown feature transform {transform!r}; use one of {', '.join(FEATURE_TRANSFORMS)}"
        )
    if transform == "cl2n":
        mean = support.mean(dim=0, keepdim=True)
        support, query = support - mean, query - mean
    if transform in ("l2n", "cl2n"):
        support, query = F.normalize(support, dim=1), F.normalize(query, dim=1)
    return support, query


def solve(
    method: str,
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    k: int = 1,
    transform: str = "none",
) -> Tensor:
    """Predict query labels ``(Q,)`` from frozen features with a classical solver.

    Args:
        method: one of :data:`SOLVERS`.
        support: ``(M, D)``; support_labels ``(M,)``; query ``(Q, D)``.
        k: neighbours for ``knn``.
        transform: feature transform first (:func:`transform_features`).
    """
    _check(support, support_labels)
    support, query = transform_features(support, query, transform)
    if method == "prototype":
        protos = prototypes(support, support_labels)
        return torch.cdist(query, protos).argmin(dim=1)
    x, y, q = (
        support.cpu().double().numpy(),
        support_labels.cpu().numpy(),
        query.cpu().double().numpy(),
    )
    if method == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        model = KNeighborsClassifier(n_neighbors=min(k, len(y)))
    elif method == "ridge":
        from sklearn.linear_model import RidgeClassifier

        model = RidgeClassifier(alpha=1.0)
    elif method == "svm":
        from sklearn.svm import LinearSVC

        model = LinearSVC(C=1.0, max_iter=5000)
    elif method == "logistic":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(max_iter=1000)
    else:
        raise ConfigError(f"unknown solver {method!r}; use one of {', '.join(SOLVERS)}")
    return torch.as_tensor(model.fit(x, y).predict(q)).long()
