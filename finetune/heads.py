"""Classification heads from a support set, and frozen-feature few-shot solvers.

Head initialisation (DESIGN.md section 6; the official FORT code solves an SVM-style problem on
the support features; a ridge or logistic solve is a fine substitute and prototypes are the
simplest) and the frozen-feature baselines: nearest prototype, kNN, ridge, SVM and logistic
regression (scikit-learn).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HeadInit = Literal["prototype", "ridge", "logistic"]
SOLVERS = ("prototype", "knn", "ridge", "svm", "logistic")


def _check(features: Tensor, labels: Tensor) -> int:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
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


def init_head(
    features: Tensor, labels: Tensor, method: HeadInit = "logistic", strength: float = 1.0
) -> nn.Linear:
    """A linear head ``D -> C`` fitted to the support set.

    Args:
        features: ``(M, D)`` support features (the backbone's pooled features).
        labels: ``(M,)`` episode labels ``0..C-1``.
        method: ``"prototype"`` (logit = −½‖f − μ_c‖² up to a constant), ``"ridge"`` (one-hot
            regression) or ``"logistic"`` (multinomial logistic regression).
        strength: regularisation (ridge α; logistic inverse C).
    """
    classes = _check(features, labels)
    feats = features.detach()
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
    raise ValueError(f"unknown head init {method!r}; use prototype, ridge or logistic")


#: the frozen solvers' default feature transform, chosen on validation classes by
#: ``benchmarks/eval_speed.py`` (see benchmarks/README.md)
DEFAULT_TRANSFORM = "none"

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
        raise ValueError(
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
        raise ValueError(f"unknown solver {method!r}; use one of {', '.join(SOLVERS)}")
    return torch.as_tensor(model.fit(x, y).predict(q)).long()
