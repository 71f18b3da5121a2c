"""Explainers (CAM, Grad-CAM, attention, rollout, FORT rollout + SVD) on tiny models of every
family: shapes, batch invariance, hooks and flags, errors, and agreement with independent
re-computations (plain loops, eager attention, full-graph gradients, captum)."""

from __future__ import annotations

import pytest
import torch
from conftest import SWIN_MODELS, VIT_MODELS, input_for, tiny_adapter
from PIL import Image
from torch import nn

from focusvit.backbones import InputSizeError, NonFiniteError, UnsupportedMethodError
from focusvit.explainers import EXPLAINERS, Explanation, explain, svd_gradient_term
from focusvit.explainers.base import Explainer
from focusvit.explainers.metrics import cls_attention, deletion
from focusvit.explainers.rollout import leading_component, rollout_rows
from focusvit.finetune import apply_tuner

ALL_METHODS = ["cam", "gradcam", "attention", "rollout", "rollout_svd", "random"]
VIT_ONLY = ["attention", "rollout", "rollout_svd"]
CASES = [(name, method) for name in VIT_MODELS for method in ALL_METHODS] + [
    (name, method) for name in [*SWIN_MODELS, "timm-cnn"] for method in ["cam", "gradcam", "random"]
]


def all_hooks(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def small_input(adapter, batch: int = 3) -> torch.Tensor:
    size = (64, 64) if adapter.family == "cnn" else None  # keep the CNN cheap
    return input_for(adapter, batch=batch, size=size)


# ----------------------------------------------------------------------------- shapes and batches
@pytest.mark.parametrize(("name", "method"), CASES)
def test_shapes_finite_and_one_image_equals_its_row_in_the_batch(name, method):
    adapter = tiny_adapter(name)
    x = small_input(adapter)
    out = explain(adapter, x, method)
    size = tuple(x.shape[-2:])
    assert isinstance(out, Explanation) and out.method == method
    assert out.scores.shape == (3, *adapter.grid_size(size))
    assert torch.isfinite(out.scores).all()
    assert out.image_size == size and out.targets.shape == (3,)
    maps = out.maps()
    assert maps.shape == (3, *size) and maps.min() >= 0 and maps.max() <= 1
    for i in range(3):
        alone = explain(adapter, x[i : i + 1], method, target=out.targets[i : i + 1])
        assert alone.scores.shape == (1, *out.grid)  # a batch of one is never squeezed
        torch.testing.assert_close(alone.scores[0], out.scores[i], atol=1e-5, rtol=1e-4)


def test_params_recorded_with_defaults_and_explanation_is_frozen():
    adapter = tiny_adapter("timm-vit")
    out = explain(adapter, small_input(adapter), "rollout_svd", lam=0.5, layers=[0, 1])
    assert out.params == {
        "lam": 0.5,
        "head_fusion": "mean",
        "discard_ratio": 0.0,
        "order": "official",
        "centre": True,
        "layers": (0, 1),
    }
    with pytest.raises(AttributeError):
        out.method = "x"


@pytest.mark.parametrize("method", ALL_METHODS)
def test_non_square_input_uses_the_grid_of_the_input(method):
    adapter = tiny_adapter("timm-vit-reg")
    ph, pw = adapter.patch_size
    out = explain(adapter, torch.randn(2, 3, 3 * ph, 5 * pw), method)
    assert out.scores.shape == (2, 3, 5)


# ----------------------------------------------------------------------------- targets and inputs
def test_target_forms_and_callable_on_headless_features():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    predicted = explain(adapter, x, "gradcam")
    as_int = explain(adapter, x, "gradcam", target=int(predicted.targets[0]))
    as_tensor = explain(adapter, x, "gradcam", target=predicted.targets)
    torch.testing.assert_close(as_tensor.scores, predicted.scores)
    assert (as_int.targets == predicted.targets[0]).all()

    headless = tiny_adapter("timm-vit", num_classes=0)
    prototype = torch.randn(headless.num_features)

    def similarity(features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(features, prototype[None], dim=1)

    for method in ALL_METHODS:
        out = explain(headless, x, method, target=similarity)
        assert torch.isfinite(out.scores).all() and (out.targets == -1).all()


def test_target_out_of_range_raises_and_restores_everything():
    adapter = tiny_adapter("timm-vit")
    adapter.train()
    hooks = all_hooks(adapter)
    for method in ALL_METHODS:
        with pytest.raises(ValueError, match="out of range"):
            explain(adapter, small_input(adapter), method, target=7)
    assert all_hooks(adapter) == hooks
    assert all(m.training for m in adapter.modules())
    assert all(p.requires_grad for p in adapter.parameters())


def test_mixed_sizes_are_rejected_with_the_fix():
    adapter = tiny_adapter("timm-vit")
    images = [torch.randn(3, 32, 32), torch.randn(3, 40, 32)]
    with pytest.raises(InputSizeError, match=r"resize.*preprocess"):
        explain(adapter, images, "rollout")


def test_image_containers_tensor_list_single_and_pil():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter, batch=2)
    reference = explain(adapter, x, "rollout").scores
    torch.testing.assert_close(explain(adapter, list(x), "rollout").scores, reference)
    single = explain(adapter, x[0], "rollout")
    assert single.scores.shape == (1, 4, 4)
    torch.testing.assert_close(single.scores[0], reference[0])
    pil = [Image.new("RGB", (50, 40), color) for color in ("red", "white")]
    assert explain(adapter, pil, "gradcam").scores.shape == (2, 4, 4)


def test_unknown_method_and_option_errors_list_the_choices():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    with pytest.raises(ValueError, match="rollout_svd") as error:
        explain(adapter, x, "saliency")
    assert all(name in str(error.value) for name in EXPLAINERS)
    with pytest.raises(ValueError, match="lam"):
        explain(adapter, x, "rollout_svd", lamda=1.0)
    with pytest.raises(ValueError, match="'mean', 'min', 'max'"):
        explain(adapter, x, "rollout", head_fusion="median")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        explain(adapter, x, "rollout_svd", discard_ratio=1.0)
    with pytest.raises(ValueError, match="'official', 'paper'"):
        explain(adapter, x, "rollout_svd", order="reverse")


def test_families_are_declared_correctly():
    assert EXPLAINERS["cam"].families == ("vit", "swin", "cnn")
    assert EXPLAINERS["gradcam"].families == ("vit", "swin", "cnn")
    assert EXPLAINERS["random"].families == ("vit", "swin", "cnn")
    for method in VIT_ONLY:
        assert EXPLAINERS[method].families == ("vit",)


@pytest.mark.parametrize("name", [*SWIN_MODELS, "timm-cnn"])
@pytest.mark.parametrize("method", VIT_ONLY)
def test_method_not_for_family_names_the_methods_that_apply(name, method):
    adapter = tiny_adapter(name)
    with pytest.raises(UnsupportedMethodError) as error:
        explain(adapter, small_input(adapter), method)
    usable = str(error.value).split("use one of:")[1]
    assert {"cam", "gradcam", "random"} == {item.strip() for item in usable.split(",")}


# ----------------------------------------------------------------------------- hooks and flags
@pytest.mark.parametrize(("name", "method"), CASES[::3] + [("timm-vit", m) for m in ALL_METHODS])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_hooks_removed_and_flags_restored(name, method, mode):
    adapter = tiny_adapter(name)
    adapter.train(mode == "train")
    first = next(adapter.parameters())
    first.requires_grad_(False)  # a user-frozen parameter must stay frozen
    flags = [p.requires_grad for p in adapter.parameters()]
    hooks = all_hooks(adapter)
    explain(adapter, small_input(adapter, batch=2), method)
    assert all_hooks(adapter) == hooks
    assert [p.requires_grad for p in adapter.parameters()] == flags
    assert all(m.training == (mode == "train") for m in adapter.modules())
    assert all(p.grad is None for p in adapter.parameters())  # no gradient leaks into params


def live_tensors() -> int:
    import gc
    import warnings

    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_explaining_many_batches_keeps_no_tensor_alive(method):
    """docs/benchmarks.md: memory never grows from batch to batch (no record, graph or
    gradient of an earlier batch survives in the adapter, its hooks or the explainer)."""
    adapter = tiny_adapter("timm-vit")
    batches = [small_input(adapter, batch=2) + 0.1 * i for i in range(4)]
    explain(adapter, batches[0], method)  # warm-up: lazily built buffers, caches
    before = live_tensors()
    for x in batches[1:]:
        out = explain(adapter, x, method)
        del out
    assert live_tensors() == before


@pytest.mark.parametrize("method", ALL_METHODS)
def test_hooks_removed_when_the_target_raises(method):
    adapter = tiny_adapter("timm-vit")
    adapter.train()
    hooks = all_hooks(adapter)

    def broken(_logits: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        explain(adapter, small_input(adapter), method, target=broken)
    assert all_hooks(adapter) == hooks
    assert all(m.training for m in adapter.modules())
    assert all(p.requires_grad for p in adapter.parameters())


@pytest.mark.parametrize("name", ["timm-vit", "hf-dinov2", "timm-swin", "timm-cnn"])
def test_graph_only_where_the_method_needs_it(name):
    """No-grad methods build no graph; gradient methods only from the last block on (CNN: from
    the Grad-CAM layer's output, so nothing before it, e.g. the stem, is in the graph)."""
    adapter = tiny_adapter(name)
    assert adapter.gradcam_layer is not None  # the CNN adapter locates it with one forward
    if adapter.family == "cnn":
        first = next(m for m in adapter.modules() if isinstance(m, nn.Conv2d))
        last = adapter.head
    else:
        first, last = adapter.blocks[0], adapter.blocks[-1]
    seen: dict[str, list[bool]] = {"first": [], "last": []}
    handles = [
        first.register_forward_hook(lambda m, i, o: seen["first"].append(o.requires_grad)),
        last.register_forward_hook(lambda m, i, o: seen["last"].append(o.requires_grad)),
    ]
    try:
        for method in ALL_METHODS:
            if adapter.family not in EXPLAINERS[method].families:
                continue
            seen["first"].clear(), seen["last"].clear()
            explain(adapter, small_input(adapter, batch=2), method)
            assert seen["first"] == [False]  # one forward, nothing recorded before the last block
            assert seen["last"] == [method in ("gradcam", "rollout_svd")]
    finally:
        for handle in handles:
            handle.remove()


def test_gradient_methods_work_inside_no_grad():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    expected = explain(adapter, x, "rollout_svd").scores
    with torch.no_grad():
        torch.testing.assert_close(explain(adapter, x, "rollout_svd").scores, expected)
        assert explain(adapter, x, "gradcam").scores.abs().sum() > 0


# ----------------------------------------------------------------------------- FORT sign and SVD
def test_rollout_svd_is_deterministic_and_independent_of_batch_order():
    adapter = tiny_adapter("timm-vit-reg")
    x = small_input(adapter, batch=4)
    first = explain(adapter, x, "rollout_svd", target=1).scores
    torch.testing.assert_close(explain(adapter, x, "rollout_svd", target=1).scores, first)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = explain(adapter, x[order], "rollout_svd", target=1).scores
    torch.testing.assert_close(shuffled, first[order], atol=1e-6, rtol=1e-5)


def test_svd_term_sign_follows_the_attention_and_ignores_the_gradient_sign():
    torch.manual_seed(1)
    gradient = torch.randn(5, 16, 8)
    reference = torch.rand(5, 16)
    term = svd_gradient_term(gradient, reference)
    centred = reference - reference.mean(dim=1, keepdim=True)
    assert ((term * centred).sum(dim=1) > 0).all()
    torch.testing.assert_close(term.abs().sum(dim=1), torch.ones(5))
    torch.testing.assert_close(term.sum(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(svd_gradient_term(-gradient, reference), term)
    torch.testing.assert_close(svd_gradient_term(gradient[2:3], reference[2:3]), term[2:3])


@pytest.mark.parametrize("shape", [(3, 196, 96), (2, 60, 200), (2, 12, 5)])
def test_leading_component_equals_the_svd(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    x[0] += 4 * torch.randn(shape[1], 1, dtype=torch.float64) @ torch.randn(1, shape[2]).double()
    ours = leading_component(x)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    expected = u[..., 0] * s[:, :1]
    sign = torch.sign((ours * expected).sum(dim=1, keepdim=True))
    torch.testing.assert_close(ours * sign, expected, atol=1e-8, rtol=1e-8)
    assert leading_component(torch.zeros(2, 196, 96)).abs().max() == 0


@pytest.mark.parametrize("kind", ["zero", "nan"])
def test_degenerate_gradient_falls_back_to_plain_patch_rollout(kind):
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)

    def degenerate(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0] * (0.0 if kind == "zero" else float("nan"))

    out = explain(adapter, x, "rollout_svd", target=degenerate)
    plain = explain(adapter, x, "rollout_svd", lam=0.0)
    assert torch.isfinite(out.scores).all()
    torch.testing.assert_close(out.scores, plain.scores)


# ----------------------------------------------------------------------------- independent references
def eager_attention_and_gradient(adapter, image, target):
    """Per image: attention probs of every block from timm's eager path (input of attn_drop) and
    ∂logit/∂(input of the last block) from a full-graph backward. Own code, no focusvit helpers
    beyond ``adapter.model``."""
    model = adapter.model
    for block in model.blocks:
        block.attn.fused_attn = False
    probs: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []

    def keep_input(_module, args):
        args[0].retain_grad()
        inputs.append(args[0])

    handles = [
        b.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(i[0]))
        for b in model.blocks
    ]
    handles.append(model.blocks[-1].register_forward_pre_hook(keep_input))
    try:
        logits = model(image[None])
        logits[0, target].backward()
    finally:
        for handle in handles:
            handle.remove()
        for block in model.blocks:
            block.attn.fused_attn = True
        model.zero_grad(set_to_none=True)
    return [p[0].detach().double() for p in probs], inputs[0].grad[0].double()


def fuse(att: torch.Tensor, how: str) -> torch.Tensor:
    return {"mean": att.mean(0), "min": att.min(0).values, "max": att.max(0).values}[how]


def discard_rows(matrix: torch.Tensor, ratio: float, keep_first: bool) -> torch.Tensor:
    out = matrix.clone()
    first = 1 if keep_first else 0
    k = int((matrix.shape[1] - first) * ratio)
    for row in range(matrix.shape[0]):
        order = torch.argsort(matrix[row, first:])[:k] + first
        out[row, order] = 0.0
    return out


@pytest.mark.parametrize(
    ("head_fusion", "discard_ratio", "query"),
    [("mean", 0.0, "cls"), ("min", 0.5, "cls"), ("max", 0.0, "mean"), ("mean", 0.3, "mean")],
)
def test_rollout_matches_an_independent_loop(head_fusion, discard_ratio, query):
    adapter = tiny_adapter("timm-vit-reg")
    x = small_input(adapter)
    params = {"head_fusion": head_fusion, "discard_ratio": discard_ratio, "query": query}
    out = explain(adapter, x, "rollout", **params)
    prefix = adapter.num_prefix_tokens
    for b in range(x.shape[0]):
        attention, _ = eager_attention_and_gradient(adapter, x[b], int(out.targets[b]))
        tokens = attention[0].shape[-1]
        rollout = torch.eye(tokens, dtype=torch.float64)
        for att in attention:
            a = discard_rows(fuse(att, head_fusion), discard_ratio, keep_first=True)
            a = a + torch.eye(tokens, dtype=torch.float64)
            a = a / a.sum(dim=1, keepdim=True)
            rollout = a @ rollout
        expected = rollout[0, prefix:] if query == "cls" else rollout[prefix:, prefix:].mean(0)
        torch.testing.assert_close(out.scores[b].flatten().double(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("lam", "head_fusion", "discard_ratio", "order", "centre", "layers"),
    [
        (1.0, "mean", 0.0, "official", True, None),
        (3.0, "min", 0.5, "official", True, None),
        (1.0, "max", 0.0, "paper", True, None),
        (0.5, "mean", 0.25, "paper", False, None),
        (1.0, "mean", 0.0, "official", True, [0]),
    ],
)
def test_rollout_svd_matches_an_independent_loop(
    lam, head_fusion, discard_ratio, order, centre, layers
):
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    params = dict(lam=lam, head_fusion=head_fusion, discard_ratio=discard_ratio, order=order)
    out = explain(adapter, x, "rollout_svd", centre=centre, layers=layers, **params)
    prefix = adapter.num_prefix_tokens
    for b in range(x.shape[0]):
        attention, gradient = eager_attention_and_gradient(adapter, x[b], int(out.targets[b]))
        grad = gradient[prefix:]
        if centre:
            grad = grad - grad.mean(dim=0, keepdim=True)
        _, _, vh = torch.linalg.svd(grad, full_matrices=False)
        g = grad @ vh[0]
        reference = attention[-1].mean(dim=(0, 1))[prefix:]
        if ((g - g.mean()) * (reference - reference.mean())).sum() < 0:
            g = -g
        g = g / g.abs().sum()
        n = g.shape[0]
        rollout = torch.eye(n, dtype=torch.float64)
        for layer, att in enumerate(attention):
            if layers is not None and layer not in layers:
                continue
            a = discard_rows(fuse(att, head_fusion)[prefix:, prefix:], discard_ratio, False)
            a = torch.eye(n, dtype=torch.float64) + a + lam * torch.ones(n, 1).double() @ g[None]
            a = a.clamp_min(0.0)
            a = a / a.sum(dim=1, keepdim=True)
            rollout = a @ rollout if order == "official" else rollout @ a
        expected = rollout.mean(dim=0)
        torch.testing.assert_close(out.scores[b].flatten().double(), expected, atol=1e-5, rtol=1e-4)


def full_rollout(matrices: list[torch.Tensor], order: str) -> torch.Tensor:
    """``R`` as a product of full row-normalised matrices (``matrices`` in block order)."""
    rollout = torch.eye(matrices[0].shape[0], dtype=torch.float64)
    for matrix in matrices:
        a = matrix / matrix.sum(dim=1, keepdim=True)
        rollout = a @ rollout if order == "official" else rollout @ a
    return rollout


@pytest.mark.parametrize("order", ["official", "paper"])
def test_rollout_rows_equals_rows_of_the_full_product(order):
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.rand(3, 7, 7, generator=generator, dtype=torch.float64) for _ in range(5)]
    for m in matrices:
        m.diagonal(dim1=-2, dim2=-1).add_(1.0)
    start = torch.rand(3, 7, generator=generator, dtype=torch.float64)
    rows = rollout_rows(start, matrices, order=order)
    for b in range(3):
        expected = start[b] @ full_rollout([m[b] for m in matrices], order)
        torch.testing.assert_close(rows[b], expected, atol=1e-12, rtol=1e-10)
    # an all-zero row stays zero instead of dividing by 0
    matrices[2][1, 4] = 0.0
    expected = start[1] @ full_rollout([m[1] for m in matrices[:2]], order)
    first = rollout_rows(start[1:2], [m[1:2] for m in matrices[:2]], order=order)[0]
    torch.testing.assert_close(first, expected, atol=1e-12, rtol=1e-10)
    assert torch.isfinite(rollout_rows(start, matrices, order=order)).all()


@pytest.mark.parametrize("order", ["official", "paper"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.9])
@pytest.mark.parametrize("head_fusion", ["mean", "min"])
def test_row_vector_rollout_equals_the_full_matrix_rollout(head_fusion, discard_ratio, order):
    """The explainers push the mean over query rows into the chain (``s = ((u Â^L) Â^{L-1}) ···``,
    vector-matrix products on maps reduced while the forward runs); here every layer's full
    matrix is built from timm's eager attention, the full products ``R`` are formed and their
    rows averaged afterwards (plain rollout: ``R = Â^L ··· Â^1``, its only order)."""
    adapter = tiny_adapter("timm-vit-reg")  # 1 CLS + 4 register tokens before the patches
    x = small_input(adapter)
    prefix = adapter.num_prefix_tokens
    params = {"head_fusion": head_fusion, "discard_ratio": discard_ratio}
    plain = explain(adapter, x, "rollout", query="mean", **params)
    cls = explain(adapter, x, "rollout", query="cls", **params)
    fort = explain(adapter, x, "rollout_svd", lam=1.0, order=order, **params)
    for b in range(x.shape[0]):
        attention, gradient = eager_attention_and_gradient(adapter, x[b], int(fort.targets[b]))
        tokens = attention[0].shape[-1]
        if order == "official":
            layers = [
                discard_rows(fuse(att, head_fusion), discard_ratio, keep_first=True)
                + torch.eye(tokens, dtype=torch.float64)
                for att in attention
            ]
            rollout = full_rollout(layers, "official")
            for out, expected in (
                (plain, rollout[prefix:, prefix:].mean(dim=0)),
                (cls, rollout[0, prefix:]),
            ):
                torch.testing.assert_close(
                    out.scores[b].flatten().double(), expected, atol=1e-5, rtol=1e-4
                )
        grad = gradient[prefix:] - gradient[prefix:].mean(dim=0, keepdim=True)
        g = grad @ torch.linalg.svd(grad, full_matrices=False)[2][0]
        reference = attention[-1].mean(dim=(0, 1))[prefix:]
        if ((g - g.mean()) * (reference - reference.mean())).sum() < 0:
            g = -g
        g = g / g.abs().sum()
        n = g.shape[0]
        layers = [
            (
                torch.eye(n, dtype=torch.float64)
                + discard_rows(fuse(att, head_fusion)[prefix:, prefix:], discard_ratio, False)
                + g[None, :]
            ).clamp_min(0.0)
            for att in attention
        ]
        expected = full_rollout(layers, order).mean(dim=0)
        torch.testing.assert_close(
            fort.scores[b].flatten().double(), expected, atol=1e-5, rtol=1e-4
        )


def test_cnn_gradcam_matches_captum_layer_gradcam():
    from captum.attr import LayerGradCam

    adapter = tiny_adapter("timm-cnn")
    x = small_input(adapter, batch=3)
    targets = torch.tensor([0, 3, 4])
    ours = explain(adapter, x, "gradcam", target=targets).scores
    reference = LayerGradCam(adapter.logits, adapter.gradcam_layer).attribute(
        x, target=targets, relu_attributions=True
    )
    assert reference.shape == (3, 1, *ours.shape[-2:])
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, reference[:, 0].detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["timm-vit", "timm-vit-reg", "hf-vit", "timm-swin", "hf-swin"])
def test_leaf_gradcam_equals_full_graph_gradcam(name):
    adapter = tiny_adapter(name)
    x = small_input(adapter)
    ours = explain(adapter, x, "gradcam", target=2).scores
    kept: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        kept.append(output)

    handle = adapter.gradcam_layer.register_forward_hook(keep)
    try:
        adapter.logits(x)[:, 2].sum().backward()
    finally:
        handle.remove()
    size = tuple(x.shape[-2:])
    activation = adapter.tokens_to_grid(kept[0].detach(), size)
    gradient = adapter.tokens_to_grid(kept[0].grad, size)
    expected = (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(1).clamp_min(0)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["timm-cnn", "timm-swin", "hf-swin"])
def test_cam_mean_plus_bias_is_the_logit_under_average_pooling(name):
    adapter = tiny_adapter(name)
    x = small_input(adapter)
    out = explain(adapter, x, "cam", target=torch.tensor([0, 1, 4]))
    with torch.no_grad():
        logits = adapter.logits(x)
    bias = adapter.head.bias[out.targets]
    expected = logits.gather(1, out.targets[:, None])[:, 0]
    torch.testing.assert_close(
        out.scores.mean(dim=(1, 2)) + bias.detach(), expected, atol=1e-4, rtol=1e-4
    )


def test_cam_on_a_vit_applies_the_head_to_every_patch_token():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    out = explain(adapter, x, "cam", target=3)
    with torch.no_grad():
        patches = adapter.tokens(x)[:, adapter.num_prefix_tokens :]
    expected = (patches @ adapter.head.weight[3]).reshape(3, 4, 4)
    torch.testing.assert_close(out.scores, expected)
    dinov2 = tiny_adapter("hf-dinov2")  # head over [CLS, mean of patches]: the patch half is used
    assert explain(dinov2, small_input(dinov2), "cam").scores.shape == (3, 4, 4)


# ----------------------------------------------------------------------------- VPT-tuned models
VPT_MODELS = ["timm-vit", "hf-vit", "hf-dinov2", "timm-vit-reg", "timm-deit-distilled"]


@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
@pytest.mark.parametrize("name", VPT_MODELS)
def test_every_vit_method_and_metric_works_on_a_vpt_tuned_model(name, deep):
    adapter = tiny_adapter(name)
    x = small_input(adapter, batch=2)
    size = tuple(x.shape[-2:])
    grid = adapter.grid_size(size)
    untuned = {m: explain(adapter, x, m).scores.shape for m in ALL_METHODS}
    with apply_tuner(adapter, "vpt", num_tokens=3, deep=deep):
        assert adapter.inserted_tokens == 3 and adapter.inserted_tokens_refreshed is deep
        assert adapter.num_tokens_before_patches == adapter.num_prefix_tokens + 3
        assert adapter.geometry(size).num_block_tokens == adapter.num_prefix_tokens + 3 + 16
        for method in ALL_METHODS:
            out = explain(adapter, x, method)
            assert out.scores.shape == untuned[method] == (2, *grid), method
            assert torch.isfinite(out.scores).all(), method
        attention = cls_attention(adapter, x)
        assert attention.shape == (2, grid[0] * grid[1])
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(2))
        curve = deletion(adapter, x, explain(adapter, x, "rollout"), steps=4)
        assert torch.isfinite(curve.auc).all()
    assert adapter.inserted_tokens == 0 and adapter.num_tokens_before_patches == (
        adapter.num_prefix_tokens
    )


@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
@pytest.mark.parametrize("query", ["cls", "mean"])
def test_rollout_on_vpt_matches_an_independent_loop(deep, query):
    """Prompt tokens stay in the product; refreshed (deep) prompts are sources: their rows are
    zero, nothing flows through them to the previous block."""
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    p, t = adapter.num_prefix_tokens, 2
    with apply_tuner(adapter, "vpt", num_tokens=t, deep=deep):
        out = explain(adapter, x, "rollout", query=query)
        for b in range(x.shape[0]):
            attention, _ = eager_attention_and_gradient(adapter, x[b], int(out.targets[b]))
            tokens = attention[0].shape[-1]
            assert tokens == p + t + 16
            rollout = torch.eye(tokens, dtype=torch.float64)
            for att in attention:
                a = att.mean(0) + torch.eye(tokens, dtype=torch.float64)
                a = a / a.sum(dim=1, keepdim=True)
                if deep:
                    a[p : p + t] = 0.0
                rollout = a @ rollout
            start = p + t
            expected = rollout[0, start:] if query == "cls" else rollout[start:, start:].mean(0)
            torch.testing.assert_close(
                out.scores[b].flatten().double(), expected, atol=1e-5, rtol=1e-4
            )


def test_rollout_svd_on_vpt_uses_the_patch_block_after_the_prompts():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    start = adapter.num_prefix_tokens + 3
    with apply_tuner(adapter, "vpt", num_tokens=3, deep=True):
        out = explain(adapter, x, "rollout_svd")
        for b in range(x.shape[0]):
            attention, gradient = eager_attention_and_gradient(adapter, x[b], int(out.targets[b]))
            grad = gradient[start:] - gradient[start:].mean(dim=0, keepdim=True)
            g = grad @ torch.linalg.svd(grad, full_matrices=False)[2][0]
            reference = attention[-1].mean(dim=(0, 1))[start:]
            if ((g - g.mean()) * (reference - reference.mean())).sum() < 0:
                g = -g
            g = g / g.abs().sum()
            n = g.shape[0]
            rollout = torch.eye(n, dtype=torch.float64)
            for att in attention:
                a = torch.eye(n, dtype=torch.float64) + att.mean(0)[start:, start:] + g[None]
                a = a.clamp_min(0.0)
                rollout = (a / a.sum(dim=1, keepdim=True)) @ rollout
            torch.testing.assert_close(
                out.scores[b].flatten().double(), rollout.mean(0), atol=1e-5, rtol=1e-4
            )


# ----------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("method", ALL_METHODS)
def test_nan_or_inf_input_raises_naming_the_images(method):
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"input batch contains NaN or Inf.*\[1\]"):
        explain(adapter, x, method)
    x[1, 0, 3, 3] = float("inf")
    with pytest.raises(NonFiniteError, match="preprocessing"):
        explain(adapter, x, method)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_normal_input_gives_finite_scores_without_sanitising(method, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("scores must not be sanitised with torch.nan_to_num")

    monkeypatch.setattr(torch, "nan_to_num", forbidden)
    adapter = tiny_adapter("hf-vit")
    out = explain(adapter, small_input(adapter), method)
    assert torch.isfinite(out.scores).all()


def test_non_finite_scores_are_an_error_not_zeros():
    class Broken(Explainer):
        name = "broken"

        def scores(self, backbone, images, target):
            scores = torch.ones(images.shape[0], 4, 4)
            scores[0, 1, 1] = float("nan")
            scores[1, 2, 2] = float("inf")
            return scores, torch.zeros(images.shape[0], dtype=torch.long)

    adapter = tiny_adapter("timm-vit")
    with pytest.raises(NonFiniteError, match=r"'broken' produced NaN or Inf scores.*\[0, 1\]"):
        Broken()(adapter, small_input(adapter))
    with torch.no_grad():  # a model whose head went NaN: CAM and Grad-CAM scores are NaN
        adapter.head.weight[0, 0] = float("nan")
    for method in ("cam", "gradcam"):
        with pytest.raises(NonFiniteError, match="float32"):
            explain(adapter, small_input(adapter), method, target=0)


# ----------------------------------------------------------------------------- random baseline
@pytest.mark.parametrize("name", ["timm-vit", "hf-dinov2", "timm-swin", "timm-cnn"])
def test_random_baseline_shape_range_and_targets_through_the_api(name):
    from focusvit.explainers import RandomExplainer

    adapter = tiny_adapter(name)
    x = small_input(adapter, batch=4)
    out = explain(adapter, x, "random", seed=7)
    assert out.method == "random" and out.params == {"seed": 7}
    assert out.scores.shape == (4, *adapter.grid_size(tuple(x.shape[-2:])))
    flat = out.flat()  # normalised per image like the maps: min 0, max 1
    torch.testing.assert_close(flat.min(dim=1).values, torch.zeros(4))
    torch.testing.assert_close(flat.max(dim=1).values, torch.ones(4))
    with torch.no_grad():
        assert torch.equal(out.targets, adapter.logits(x).argmax(dim=1))
    assert (explain(adapter, x, "random", target=1).targets == 1).all()
    instance = explain(adapter, x, RandomExplainer(seed=7))  # the class, as for the others
    assert torch.equal(instance.scores, out.scores)


def test_random_baseline_is_deterministic_per_seed_and_independent_of_batching():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter, batch=6)
    first = explain(adapter, x, "random", seed=3).scores
    assert torch.equal(explain(adapter, x, "random", seed=3).scores, first)
    default = explain(adapter, x, "random").scores  # seed=0
    assert torch.equal(explain(adapter, x, "random", seed=0).scores, default)
    # chunks and single images get the maps they get in the whole batch
    chunks = torch.cat([explain(adapter, c, "random", seed=3).scores for c in x.split(4)])
    assert torch.equal(chunks, first)
    order = torch.tensor([5, 2, 0, 1, 4, 3])
    assert torch.equal(explain(adapter, x[order], "random", seed=3).scores, first[order])
    # different images of one batch do not share a map
    assert all(not torch.equal(first[0], first[i]) for i in range(1, 6))


def test_random_baseline_differs_between_seeds():
    adapter = tiny_adapter("timm-vit")
    x = small_input(adapter, batch=3)
    maps = [explain(adapter, x, "random", seed=s).scores for s in (0, 1, 2)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(maps[i], maps[j])
            for b in range(3):
                assert not torch.equal(maps[i][b], maps[j][b])


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, 2**63])
def test_random_baseline_rejects_a_bad_seed_with_the_fix(seed):
    adapter = tiny_adapter("timm-vit")
    with pytest.raises(
        ValueError, match=r"seed=.*must be an integer in \[0, 2\*\*63\), e\.g\. seed=0"
    ):
        explain(adapter, small_input(adapter), "random", seed=seed)


def test_random_baseline_localisation_is_at_chance_level():
    """With object masks covering a quarter of the patches, the pointing game and the precision
    of a top-4 prompt of random maps are both at the chance level 1/4."""
    from focusvit.explainers import pointing_game, prompt_precision
    from focusvit.prompting import make_prompts

    adapter = tiny_adapter("timm-vit")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, 32, 32, generator=generator)
    h, w = adapter.grid_size((32, 32))
    ph, pw = 32 // h, 32 // w
    masks = torch.zeros(400, 32, 32, dtype=torch.bool)
    corners = torch.randint(0, h - 1, (400, 2), generator=generator)  # a 2x2-patch object
    for i, (r, c) in enumerate(corners.tolist()):
        masks[i, r * ph : (r + 2) * ph, c * pw : (c + 2) * pw] = True
    chance = 4 / (h * w)
    out = explain(adapter, x, "random", seed=0)
    prompt = make_prompts(out, top_k=4)
    pointing = float(pointing_game(out, masks).mean())
    precision = float(prompt_precision(prompt, masks).mean())
    # 400 images: standard errors ~0.022 (pointing) and ~0.011 (precision)
    assert abs(pointing - chance) < 0.07, pointing
    assert abs(precision - chance) < 0.035, precision
    # the top patch is uniform over the grid (a chi-square bound, 16 cells, 400 draws)
    counts = torch.bincount(out.flat().argmax(dim=1), minlength=h * w).float()
    expected = 400 / (h * w)
    assert float(((counts - expected) ** 2 / expected).sum()) < 40.0


def test_rollout_svd_documents_and_does_what_it_adds_to_the_paper_formula():
    """Issue 14: the docstring states the three deviations from ``norm(I + A + λ·1Gᵀ)`` and
    their reasons; each stated property holds."""
    from focusvit.explainers import RolloutSVDExplainer
    from focusvit.explainers.rollout import fort_matrix, fort_transition

    doc = " ".join(RolloutSVDExplainer.__doc__.split())
    for phrase in (
        "beyond the paper's formula",
        "Sign reference",
        "Per-image L1 normalisation of G",
        "Clamping before row normalisation",
        "row-stochastic",
    ):
        assert phrase in doc, phrase
    torch.manual_seed(3)
    gradient = torch.randn(4, 16, 8)
    reference = torch.rand(4, 16)
    term = svd_gradient_term(gradient, reference)
    # sign: positive correlation with the patch attention, whatever the gradient's sign
    centred = reference - reference.mean(dim=1, keepdim=True)
    assert ((term * centred).sum(dim=1) > 0).all()
    torch.testing.assert_close(svd_gradient_term(-gradient, reference), term)
    # L1 per image: mass 1, half positive, half negative, independent of the gradient scale
    torch.testing.assert_close(term.abs().sum(dim=1), torch.ones(4))
    torch.testing.assert_close(term.clamp_min(0).sum(dim=1), torch.full((4,), 0.5))
    torch.testing.assert_close(svd_gradient_term(1e4 * gradient, reference), term)
    torch.testing.assert_close(svd_gradient_term(gradient[1:2], reference[1:2]), term[1:2])
    # clamping: no negative entry, every row sum >= 1 before row normalisation, even at λ = 50
    attention = torch.rand(4, 16, 16).softmax(dim=-1)
    matrix = fort_transition(fort_matrix(attention.clone(), 0.0), term, 50.0)
    assert matrix.min() >= 0 and (matrix.sum(dim=-1) >= 1 - 1e-5).all()
    unclamped = attention + torch.eye(16) + 50.0 * term[:, None, :]
    assert unclamped.min() < 0  # the case the clamp is there for
