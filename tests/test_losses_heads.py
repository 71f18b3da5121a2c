"""Attention-enhancement loss (docs/concepts/loss.md), head initialisation and frozen solvers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import input_for, tiny_adapter

from focusvit.finetune.attention_loss import FortConfig, swin_attention_loss, vit_attention_loss
from focusvit.finetune.heads import SOLVERS, init_head, prototypes, solve


def reference_vit_loss(logits, targets, prefix, tau, rows):
    """Plain loops over images, query rows and keys."""
    batch, _, tokens, _ = logits.shape
    total, count = 0.0, 0
    for b in range(batch):
        fused = logits[b].mean(0)
        row_ids = [0] if rows == "cls" else [0, *range(prefix, tokens)]
        for r in row_ids:
            keys = [fused[r, k] / tau for k in range(prefix, tokens)]
            log_z = math.log(sum(math.exp(float(v)) for v in keys))
            total += -sum(float(targets[b, i]) * (float(keys[i]) - log_z) for i in range(len(keys)))
            count += 1
    return total / count


@pytest.mark.parametrize("rows", ["all", "cls"])
@pytest.mark.parametrize("prefix", [1, 3])
def test_vit_loss_matches_independent_computation(rows, prefix):
    logits = torch.randn(2, 3, prefix + 6, prefix + 6, dtype=torch.float64)
    targets = torch.rand(2, 6, dtype=torch.float64)
    ours = vit_attention_loss([logits], targets, num_prefix_tokens=prefix, tau=2.0, query_rows=rows)
    assert ours.item() == pytest.approx(
        reference_vit_loss(logits, targets, prefix, 2.0, rows), rel=1e-9
    )


def test_vit_loss_skips_extra_tokens_and_averages_layers():
    logits = torch.randn(1, 2, 1 + 2 + 4, 1 + 2 + 4)
    targets = torch.rand(1, 4)
    without = logits[:, :, [0, 3, 4, 5, 6]][:, :, :, [0, 3, 4, 5, 6]]
    torch.testing.assert_close(
        vit_attention_loss([logits], targets, 1, extra_tokens=2),
        vit_attention_loss([without], targets, 1),
    )
    other = torch.randn_like(logits)
    both = vit_attention_loss([logits, other], targets, 1, extra_tokens=2)
    single = [vit_attention_loss([x], targets, 1, extra_tokens=2) for x in (logits, other)]
    torch.testing.assert_close(both, (single[0] + single[1]) / 2)
    with pytest.raises(ValueError, match="do not match"):
        vit_attention_loss([logits], torch.rand(1, 5), 1)


def test_loss_is_lower_when_attention_sits_on_the_target():
    targets = torch.zeros(1, 4)
    targets[0, 2] = 1
    focused = torch.zeros(1, 1, 5, 5)
    focused[..., 3] = 5.0  # key index 3 = patch 2
    spread = torch.zeros(1, 1, 5, 5)
    assert vit_attention_loss([focused], targets, 1) < vit_attention_loss([spread], targets, 1)


def test_swin_loss_matches_independent_computation():
    logits = [
        torch.randn(2, 4, 2, 9, 9, dtype=torch.float64),
        torch.randn(2, 1, 4, 9, 9, dtype=torch.float64),
    ]
    targets = [(torch.rand(2, 4, 9) > 0.5).double(), (torch.rand(2, 1, 9) > 0.5).double()]
    expected = 0.0
    for lg, tg in zip(logits, targets, strict=True):
        stage, count = 0.0, 0
        for b in range(lg.shape[0]):
            for w in range(lg.shape[1]):
                fused = lg[b, w].mean(0) / 10.0
                for r in range(9):
                    log_p = fused[r] - torch.logsumexp(fused[r], 0)
                    stage += -float((tg[b, w] * log_p).sum())
                    count += 1
        expected += stage / count
    ours = swin_attention_loss(logits, targets, tau=10.0)
    assert ours.item() == pytest.approx(expected, rel=1e-9)


def test_loss_on_a_tiny_model_has_gradient_on_qkv():
    backbone = tiny_adapter("timm-vit")
    x = input_for(backbone)
    n = backbone.geometry(tuple(x.shape[-2:])).num_patches
    targets = torch.zeros(2, n)
    targets[:, :5] = 1
    with backbone.capture_attention(layers=-1, kind="logits") as att:
        backbone.logits(x)
    loss = vit_attention_loss(list(att), targets, backbone.num_prefix_tokens)
    loss.backward()
    assert backbone.model.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    assert backbone.model.blocks[-1].attn.proj.weight.grad is None  # logits do not depend on proj


def test_fort_config_validates():
    assert FortConfig(layers="all").layer_indices(4) == [0, 1, 2, 3]
    assert FortConfig().layer_indices(4) == [3]
    assert FortConfig(layers=[0, -1]).layer_indices(4) == [0, 3]
    assert FortConfig(layers=[0, -1]).layers == (0, -1)  # lists from configs become tuples
    bad_values = (
        {"alpha": -1}, {"tau": 0}, {"query_rows": "patches"}, {"layers": "first"}, {"layers": []},
        {"top_k": 0}, {"top_fraction": 1.5}, {"top_k": 3, "top_fraction": 0.1},
        {"weighting": "soft"},
    )  # fmt: skip
    for bad in bad_values:
        with pytest.raises(ValueError):
            FortConfig(**bad)


def separable(n_classes=3, per_class=4, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=gen) * 5
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[labels] + 0.1 * torch.randn(len(labels), dim, generator=gen), labels, centres


@pytest.mark.parametrize("method", ["prototype", "ridge", "logistic"])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_heads_fit_the_support_set(method, n_classes):
    feats, labels, _ = separable(n_classes)
    head = init_head(feats, labels, method=method)
    assert head.weight.shape == (n_classes, feats.shape[1])
    assert torch.equal(head(feats).argmax(1), labels)


def test_prototype_head_is_nearest_prototype():
    feats, labels, _ = separable()
    query = torch.randn(20, feats.shape[1]) * 5
    head = init_head(feats, labels, method="prototype")
    nearest = torch.cdist(query, prototypes(feats, labels)).argmin(1)
    assert torch.equal(head(query).argmax(1), nearest)


@pytest.mark.parametrize("method", SOLVERS)
def test_solvers_classify_separable_queries(method):
    feats, labels, centres = separable()
    query_labels = torch.tensor([2, 0, 1, 1])
    query = centres[query_labels] + 0.1 * torch.randn(4, feats.shape[1])
    assert torch.equal(solve(method, feats, labels, query), query_labels)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown"):
        solve("lda", torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(M, D\)"):
        init_head(torch.zeros(2, 3, 4), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- SVM head
def test_row_projection_is_the_exact_euclidean_projection():
    from scipy.optimize import minimize

    from focusvit.finetune.heads import _project_rows

    generator = torch.Generator().manual_seed(3)
    values = torch.randn(5, 4, generator=generator, dtype=torch.float64) * 2
    upper = 0.1 * F.one_hot(torch.tensor([0, 3, 1, 1, 2]), 4).double()
    projected = _project_rows(values, upper)
    for row, target, bound in zip(projected, values, upper, strict=True):
        reference = minimize(
            lambda a, t=target: ((a - t.numpy()) ** 2).sum(),
            np.zeros(4),
            method="SLSQP",
            constraints=[
                {"type": "eq", "fun": lambda a: a.sum()},
                {"type": "ineq", "fun": lambda a, b=bound: b.numpy() - a},
            ],
            options={"ftol": 1e-14},
        )
        np.testing.assert_allclose(row.numpy(), reference.x, atol=1e-7)


def test_svm_head_solves_the_crammer_singer_dual_exactly():
    """FORT's head (docs/recipes.md): the dual of the margin-1 Crammer-Singer SVM with
    kernel Gram + identity and C = 0.1, against a generic QP solver."""
    from scipy.optimize import minimize

    from focusvit.finetune.heads import crammer_singer_dual

    features, labels, _ = separable(n_classes=3, per_class=2, dim=5)
    x = features.double()
    kernel, onehot = x @ x.T, F.one_hot(labels, 3).double()
    alpha = crammer_singer_dual(kernel, labels, 3, c_reg=0.1)

    def objective(z):
        a = torch.from_numpy(z).view(6, 3)
        return float(0.5 * ((kernel @ a) * a).sum() + 0.5 * (a * a).sum() - (a * onehot).sum())

    constraints = [{"type": "eq", "fun": lambda z, i=i: z.reshape(6, 3)[i].sum()} for i in range(6)]
    constraints.append({"type": "ineq", "fun": lambda z: (0.1 * onehot).numpy().ravel() - z})
    reference = minimize(objective, np.zeros(18), method="SLSQP", constraints=constraints,
                         options={"ftol": 1e-15, "maxiter": 1000})  # fmt: skip
    np.testing.assert_allclose(alpha.numpy().ravel(), reference.x, atol=1e-6)
    assert objective(alpha.numpy().ravel()) <= reference.fun + 1e-9
    head = init_head(features, labels, "svm")
    torch.testing.assert_close(
        head.weight.double(), (alpha.T @ x).float().double(), atol=1e-5, rtol=1e-5
    )
    assert torch.equal(head.bias, torch.zeros(3))
    assert torch.equal(head(features).argmax(1), labels)  # separable: every support is right
    # margin 1 with C = 0.1 leaves a support cross-entropy far from 0 (unlike logistic)
    ce = F.cross_entropy(head(features), labels).item()
    logistic = F.cross_entropy(init_head(features, labels, "logistic")(features), labels).item()
    assert 0.3 < ce < 1.2 and logistic < ce
