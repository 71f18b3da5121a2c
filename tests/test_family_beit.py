"""BEiT / Data2Vec-vision family (Hugging Face ``backbones/beit.py``, timm
``backbones/timm_beit.py``) on tiny random-weight models: attention capture against the models'
own eager attention (relative position bias included, at other input sizes too), explainers,
prompts, every applicable tuner with and without the attention loss, pooling, preprocessing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import focusvit
from focusvit.backbones import InputSizeError, model_family
from focusvit.backbones.beit import HFBeitAdapter, insert_zero_bias
from focusvit.backbones.loading import _hf_data_config, _timm_family_kwargs
from focusvit.backbones.timm_beit import TimmBeitAdapter
from focusvit.backbones.tiny import build_tiny
from focusvit.explainers import EXPLAINERS, explain
from focusvit.finetune import FortConfig, applicable_tuners, apply_tuner, fit_task
from focusvit.finetune.attention_loss import prompt_targets, resolve_fort, vit_attention_loss
from focusvit.finetune.tuners.lora import lora_target_names
from focusvit.prompting import make_prompts

NAMES = ["hf-beit", "hf-data2vec-vision", "timm-beit"]
HF = ["hf-beit", "hf-data2vec-vision"]
HF_SIZES = [(32, 32), (24, 40)]  # the model's own size and a non-square one
TIMM_SIZE = (32, 40)  # the one (non-square) size the tiny timm BEiT takes


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def images(batch: int = 2, size: tuple[int, int] = (32, 32), seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def hf_variant(kind: str, sdpa: bool = False, **config) -> nn.Module:
    """Tiny HF models beyond the registered ones (other bias / pooling settings)."""
    from transformers import BeitConfig, BeitModel, Data2VecVisionConfig, Data2VecVisionModel

    from focusvit.backbones.beit import TINY_CONFIG, randomise_bias_tables

    config_cls, model_cls = (
        (BeitConfig, BeitModel) if kind == "beit" else (Data2VecVisionConfig, Data2VecVisionModel)
    )
    cfg = config_cls(**TINY_CONFIG, **config)
    cfg._attn_implementation = "sdpa" if sdpa else "eager"
    torch.manual_seed(0)
    return randomise_bias_tables(model_cls(cfg)).eval()


# ----------------------------------------------------------------------------- references
def hf_eager_attention(model: nn.Module, x: Tensor, **call) -> list[Tensor]:
    """The model's own eager attention probabilities (``output_attentions=True``)."""
    base = model.base_model
    saved = base.config._attn_implementation
    base.config._attn_implementation = "eager"  # BEiT reads it per call; Data2Vec when built
    try:
        with torch.no_grad():
            out = base(pixel_values=x, output_attentions=True, **call)
    finally:
        base.config._attn_implementation = saved
    assert out.attentions is not None and len(out.attentions) == base.config.num_hidden_layers
    return list(out.attentions)


def timm_eager_attention(model: nn.Module, x: Tensor) -> list[Tensor]:
    """timm's own eager softmax: what the attention feeds to ``attn_drop``."""
    probs: list[Tensor] = []
    handles = []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(
            block.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(i[0]))
        )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for block, handle in zip(model.blocks, handles, strict=True):
            block.attn.fused_attn = True
            handle.remove()
    return probs


def reference_attention(adapter, x: Tensor) -> list[Tensor]:
    if isinstance(adapter, HFBeitAdapter):
        return hf_eager_attention(adapter.model, x)
    return timm_eager_attention(adapter.model, x)


def captured(adapter, x: Tensor, kind: str, **call) -> list[Tensor]:
    with torch.no_grad(), adapter.capture_attention(kind=kind) as record:
        adapter.base(pixel_values=x, **call) if call else adapter.logits(x)
    return list(record)


def raw_scores(adapter, x: Tensor) -> list[Tensor]:
    """``q kᵀ · scale`` per block from the block's first-norm output and the projection
    weights (F.linear, not the modules): no bias of any kind; ``(B, heads, N, N)``."""
    normed: list[Tensor] = []
    layer_norms = [b.norm1 if hasattr(b, "norm1") else b.layernorm_before for b in adapter.blocks]
    handles = [n.register_forward_hook(lambda m, i, o: normed.append(o)) for n in layer_norms]
    with torch.no_grad():
        adapter.logits(x)
    for handle in handles:
        handle.remove()
    out = []
    for block, h in zip(adapter.blocks, normed, strict=True):
        if isinstance(adapter, TimmBeitAdapter):
            a = block.attn
            qkv = F.linear(h, a.qkv.weight, torch.cat((a.q_bias, a.k_bias, a.v_bias)))
            q, k = qkv.chunk(3, dim=-1)[:2]
        elif adapter._v5:
            a = block.attention
            q, k = F.linear(h, a.q_proj.weight, a.q_proj.bias), F.linear(h, a.k_proj.weight)
        else:
            a = block.attention.attention
            q, k = F.linear(h, a.query.weight, a.query.bias), F.linear(h, a.key.weight)
        q, k = (t.reshape(*t.shape[:2], 2, -1).transpose(1, 2) for t in (q, k))
        out.append(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5)
    return out


def model_bias(adapter, size: tuple[int, int]) -> list[Tensor]:
    """Per block, the relative position bias ``(heads, 1+N, 1+N)`` the model's own bias
    modules give for ``size`` (per-block + shared)."""
    window = (size[0] // 8, size[1] // 8)
    tokens = window[0] * window[1] + 1
    with torch.no_grad():
        if isinstance(adapter, TimmBeitAdapter):
            shared = adapter.model.rel_pos_bias
            common = shared() if shared is not None else 0.0
            return [b.attn._get_rel_pos_bias()[0] + common for b in adapter.blocks]
        base = adapter.base
        shared = getattr(base, "shared_position_bias", None) or getattr(
            getattr(base, "encoder", None), "relative_position_bias", None
        )
        common = shared(window, False, dim_size=tokens)[0] if shared is not None else 0.0
        out = []
        for block in adapter.blocks:
            owner = block if adapter._v5 else block.attention.attention
            own = getattr(owner, "relative_position_bias", None)
            out.append(
                (own(window, False, dim_size=tokens)[0] if own is not None else 0.0) + common
            )
        return out


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", NAMES)
def test_adapt_load_and_family(name):
    adapter = focusvit.load_backbone(f"tiny:{name}")
    expected = TimmBeitAdapter if name.startswith("timm") else HFBeitAdapter
    assert type(adapter) is expected and type(focusvit.adapt(build_tiny(name))) is expected
    assert model_family(f"tiny:{name}") == "vit"
    entry = focusvit.backbones.family_of(adapter.model)
    assert entry.adapter is expected and name in entry.tiny and entry.cls_row == "cls token"
    assert entry.priority > 10  # before the generic timm ViT predicate
    assert adapter.num_prefix_tokens == 1 and adapter.has_cls_token
    assert adapter.heads_per_block == [2, 2] and adapter.embed_dim == adapter.num_features == 32
    assert adapter.patch_size == (8, 8) and adapter.num_classes == 5
    first_norm = adapter.blocks[-1].norm1 if expected is TimmBeitAdapter else None
    assert adapter.gradcam_layer is (first_norm or adapter.blocks[-1].layernorm_before)


def test_other_beit_models_are_not_taken_by_this_family():
    from transformers import BeitConfig, BeitForMaskedImageModeling

    from focusvit.backbones.beit import TINY_CONFIG

    model = BeitForMaskedImageModeling(BeitConfig(**TINY_CONFIG))
    with pytest.raises(focusvit.errors.UnsupportedFamilyError, match="supported families"):
        focusvit.adapt(model)
    with pytest.raises(focusvit.errors.UnsupportedFamilyError):
        HFBeitAdapter(build_tiny("timm-beit"))


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("name", HF)
@pytest.mark.parametrize("size", HF_SIZES)
def test_hf_capture_equals_the_models_eager_attention(name, size):
    adapter = focusvit.load_backbone(f"tiny:{name}")
    x = images(size=size)
    reference = hf_eager_attention(adapter.model, x)
    before = hooks(adapter.model)
    probs, logits = captured(adapter, x, "probs"), captured(adapter, x, "logits")
    assert hooks(adapter.model) == before
    tokens = 1 + (size[0] // 8) * (size[1] // 8)
    for ref, p, lg in zip(reference, probs, logits, strict=True):
        assert p.shape == (2, 2, tokens, tokens)
        torch.testing.assert_close(p, ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(lg.softmax(-1), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_captured_logits_hold_the_models_relative_position_bias_exactly(name):
    adapter = focusvit.load_backbone(f"tiny:{name}")
    size = (24, 40) if name in HF else TIMM_SIZE
    x = images(size=size)
    logits = captured(adapter, x, "logits")
    for lg, raw, bias in zip(
        logits, raw_scores(adapter, x), model_bias(adapter, size), strict=True
    ):
        assert bias.abs().max() > 0.1  # the tiny models draw their bias tables
        torch.testing.assert_close(lg - raw, bias.expand_as(lg), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("beit", dict(use_shared_relative_position_bias=True, use_mean_pooling=False)),
        ("beit", dict(use_relative_position_bias=True, use_shared_relative_position_bias=True)),
        ("data2vec", dict(use_relative_position_bias=True)),
        ("data2vec", dict(use_shared_relative_position_bias=True, use_mean_pooling=False)),
    ],
)
def test_hf_capture_on_sdpa_models_and_with_interpolate_pos_encoding(kind, config):
    eager = hf_variant(kind, **config)
    fused = hf_variant(kind, sdpa=True, **config)
    fused.load_state_dict(eager.state_dict())
    adapter = focusvit.adapt(fused)
    for call in ({}, {"interpolate_pos_encoding": True}):
        x = images(size=(40, 24))
        reference = hf_eager_attention(eager, x, **call)
        for ref, lg in zip(reference, captured(adapter, x, "logits", **call), strict=True):
            torch.testing.assert_close(lg.softmax(-1), ref, atol=1e-6, rtol=1e-5)
        for ref, p in zip(reference, captured(adapter, x, "probs", **call), strict=True):
            torch.testing.assert_close(p, ref, atol=1e-6, rtol=1e-5)


def test_hf_capture_applies_a_padding_mask_as_the_model_does():
    """Without a bias, an sdpa BEiT receives a padding mask as bool (True = attend)."""
    model = hf_variant("beit", sdpa=True)
    x, mask = images(), torch.ones(2, 17, dtype=torch.long)
    mask[1, 5:9] = 0
    reference = hf_eager_attention(model, x, attention_mask=mask)
    probs = captured(focusvit.adapt(model), x, "probs", attention_mask=mask)
    for ref, p in zip(reference, probs, strict=True):
        assert ref[1, :, :, 5:9].max() < 1e-6
        torch.testing.assert_close(p, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config", [{}, {"use_shared_rel_pos_bias": True, "qkv_bias": False}])
def test_timm_capture_equals_timms_eager_softmax(config):
    from timm.models.beit import Beit

    from focusvit.backbones.beit import randomise_bias_tables

    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, init_values=0.1)
    model = randomise_bias_tables(Beit(use_rel_pos_bias=True, **kwargs, **config)).eval()
    adapter = focusvit.adapt(model)
    x = images()
    reference = timm_eager_attention(model, x)
    before = hooks(model)
    probs, logits = captured(adapter, x, "probs"), captured(adapter, x, "logits")
    with torch.no_grad(), adapter.capture_attention(kind="probs", reduce=lambda _l, m: m) as red:
        adapter.logits(x)
    assert hooks(model) == before and all(b.attn.fused_attn for b in model.blocks)
    for ref, p, lg, r in zip(reference, probs, logits, red, strict=True):
        torch.testing.assert_close(p, ref)
        torch.testing.assert_close(lg.softmax(-1), ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r, ref, atol=1e-6, rtol=1e-5)


def test_timm_tuned_qkv_runs_as_a_module_so_lora_acts():
    """timm's F.linear(x, qkv.weight, bias) path bypasses the qkv module: a LoRA on it gets no
    gradient from the model's own forward. The adapter's forward runs timm's qkv_bias_separate
    path while a LoRA wraps qkv (same outputs), and leaves an untuned model as it is."""
    model = build_tiny("timm-beit")
    adapter, x = focusvit.adapt(model), images(size=TIMM_SIZE)
    assert torch.equal(adapter.logits(x), model(x))  # untuned: the model's own path
    with apply_tuner(adapter, "lora"):
        qkv = [b.attn.qkv for b in model.blocks]
        assert all(hasattr(m, "base_layer") for m in qkv)  # peft LoRA layers
        for module in qkv:
            nn.init.normal_(module.lora_B["default"].weight, std=0.1)
        params = [m.lora_A["default"].weight for m in qkv]
        bypassed = model(x).sum()  # no gradient path at all: every LoRA parameter unused
        assert not bypassed.requires_grad or all(
            g is None for g in torch.autograd.grad(bypassed, params, allow_unused=True)
        )
        grads = torch.autograd.grad(adapter.logits(x).sum(), params)
        assert all(g.abs().sum() > 0 for g in grads)
        assert not any(b.attn.qkv_bias_separate for b in model.blocks)  # flags put back
        with torch.no_grad():  # the switched path computes the same function
            for module in qkv:
                nn.init.zeros_(module.lora_B["default"].weight)
            torch.testing.assert_close(adapter.logits(x), model(x), atol=1e-6, rtol=1e-5)


def test_timm_beit_refuses_other_input_sizes_with_the_fix():
    adapter = focusvit.load_backbone("tiny:timm-beit")
    assert adapter.fixed_input_size == TIMM_SIZE
    with pytest.raises(InputSizeError, match=r"takes 32x40 inputs only.*img_size"):
        adapter.logits(images(size=(24, 40)))
    with pytest.raises(InputSizeError, match="multiples"):
        adapter.logits(images(size=(33, 32)))
    assert _timm_family_kwargs("beit_base_patch16_224") == {}  # Beit has no dynamic_img_size
    built = focusvit.load_backbone(
        "timm:beit_base_patch16_224", pretrained=False, num_classes=3, img_size=48,
        embed_dim=32, depth=1, num_heads=2,
    )  # fmt: skip
    assert type(built) is TimmBeitAdapter and built.data_config["input_size"] == (3, 48, 48)
    assert built.logits(images(size=(48, 48))).shape == (2, 3)


# ----------------------------------------------------------------------------- explainers
@pytest.mark.parametrize("name", NAMES)
def test_every_explainer_is_finite_and_rollout_equals_a_full_matrix_rollout(name):
    adapter = focusvit.load_backbone(f"tiny:{name}")
    x = images(batch=3, size=(24, 40) if name in HF else TIMM_SIZE)
    grid = adapter.grid_size(tuple(x.shape[-2:]))
    before = hooks(adapter.model)
    methods = [m for m, cls in EXPLAINERS.items() if adapter.family in cls.families]
    assert {"attention", "rollout", "rollout_svd", "gradcam"} <= set(methods)
    for method in methods:
        out = explain(adapter, x, method=method, target=torch.tensor([0, 1, 2]))
        assert out.scores.shape == (3, *grid) and torch.isfinite(out.scores).all(), method
    assert hooks(adapter.model) == before
    product = torch.eye(1 + grid[0] * grid[1]).expand(3, -1, -1)
    for probs in reference_attention(adapter, x):  # R = Â^L ··· Â^1, Â = rownorm(mean A + I)
        matrix = probs.mean(dim=1) + torch.eye(product.shape[-1])
        product = (matrix / matrix.sum(-1, keepdim=True)) @ product
    rollout = explain(adapter, x, method="rollout").scores
    torch.testing.assert_close(rollout.flatten(1), product[:, 0, 1:], atol=1e-5, rtol=1e-4)
    prompts = make_prompts(explain(adapter, x, method="rollout_svd"), top_k=2)
    assert prompts.target.shape == (3, grid[0] * grid[1])
    assert ((prompts.target > 0).sum(dim=1) == 2).all()


# ----------------------------------------------------------------------------- tuners
def tuner_cases() -> list[tuple[str, str, bool]]:
    cases = []
    for name in NAMES:
        tuners = applicable_tuners(focusvit.load_backbone(f"tiny:{name}"))
        assert set(tuners) == {"linear", "full", "lora", "vpt", "ssf"}, tuners
        cases += [(name, t, False) for t in tuners]
        cases += [(name, t, True) for t in ("full", "lora", "ssf", "vpt")]
    return cases


@pytest.mark.parametrize(("name", "tuner", "fort"), tuner_cases())
def test_every_tuner_fits_and_the_backbone_comes_back_bit_identical(name, tuner, fort):
    adapter = focusvit.load_backbone(f"tiny:{name}", num_classes=0)
    x, labels = images(batch=6, size=TIMM_SIZE), torch.arange(6) % 3
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    count = hooks(adapter.model)
    loss = (FortConfig(alpha=0.5, tau=1.0) if tuner == "vpt" else True) if fort else None
    with fit_task(adapter, x, labels, tuner=tuner, fort=loss, steps=2) as task:
        assert task.logits(x).shape == (6, 3)
        assert all(torch.isfinite(torch.tensor(step["total"])) for step in task.losses)
        assert not fort or all(step["attn"] > 0 for step in task.losses)
    after = adapter.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert hooks(adapter.model) == count and adapter.inserted_tokens == 0
    assert not any("_get_rel_pos_bias" in m.__dict__ for m in adapter.model.modules())


EXPECTED_LORA = {
    "hf-beit": ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"],
    "hf-data2vec-vision": [
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
    ],
    "timm-beit": ["attn.qkv", "attn.proj"],
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tuner", ["lora", "ssf"])
def test_the_attention_loss_reaches_the_lora_and_ssf_parameters(name, tuner):
    adapter = focusvit.load_backbone(f"tiny:{name}", num_classes=3)
    blocks = "layers" if name == "hf-beit" else "encoder.layer" if name in HF else "blocks"
    prefix = f"{'data2vec_vision' if 'data2vec' in name else 'beit'}." if name in HF else ""
    expected = [f"{prefix}{blocks}.{i}.{s}" for i in range(2) for s in EXPECTED_LORA[name]]
    assert lora_target_names(adapter, adapter.lora_targets) == expected  # no MLP linears
    x, labels = images(batch=3, size=TIMM_SIZE), torch.arange(3)
    fort = resolve_fort(adapter, tuner, FortConfig(layers="all"))
    targets = prompt_targets(adapter, x, labels, fort)
    with apply_tuner(adapter, tuner):
        if tuner == "lora":
            for module in adapter.model.modules():
                if hasattr(module, "lora_B"):  # non-zero B: every LoRA path carries a gradient
                    nn.init.normal_(module.lora_B["default"].weight, std=0.1)
        with adapter.capture_attention(kind="logits") as record:
            adapter.logits(x)
        loss = vit_attention_loss(list(record), targets, 1, fort.tau, has_cls=True)
        assert torch.isfinite(loss) and loss > 0
        own = [(n, p) for n, p in adapter.model.named_parameters() if p.requires_grad]
        own = [(n, p) for n, p in own if "lora_" in n or ".ssf." in n]
        grads = torch.autograd.grad(loss, [p for _, p in own], allow_unused=True)
        reached = {
            n for (n, _), g in zip(own, grads, strict=True) if g is not None and g.abs().sum()
        }
    # every q and k projection of every block gets a gradient (the ones the loss depends on)
    qk = [n for n, _ in own if any(s in n for s in ("q_proj", "k_proj", ".query.", ".key.", "qkv"))]
    qk = [n for n in qk if "lora_B" in n or "ssf.scale" in n]
    assert qk and set(qk) <= reached, sorted(set(qk) - reached)


@pytest.mark.parametrize("name", NAMES)
def test_vpt_prompts_get_zero_position_bias_and_everything_is_put_back(name):
    adapter = focusvit.load_backbone(f"tiny:{name}", num_classes=3)
    x = images(size=TIMM_SIZE)
    count = hooks(adapter.model)
    biases = model_bias(adapter, TIMM_SIZE)  # (heads, 21, 21) before the prompts exist
    with apply_tuner(adapter, "vpt", num_tokens=3, deep=True):
        assert adapter.inserted_tokens == 3
        logits = captured(adapter, x, "logits")
        raw = raw_scores(adapter, x)
        for lg, r, bias in zip(logits, raw, biases, strict=True):
            assert lg.shape == (2, 2, 1 + 3 + 20, 1 + 3 + 20)  # CLS, prompts, 4x5 patches
            padded = insert_zero_bias(bias, 1, 3)
            torch.testing.assert_close(lg - r, padded.expand_as(lg), atol=1e-5, rtol=1e-5)
    assert hooks(adapter.model) == count and adapter.inserted_tokens == 0
    assert not any("_get_rel_pos_bias" in m.__dict__ for m in adapter.model.modules())
    assert adapter.logits(x).shape == (2, 3)


def test_insert_zero_bias():
    bias = torch.arange(9.0).reshape(1, 3, 3)
    out = insert_zero_bias(bias, 1, 2)
    assert out.shape == (1, 5, 5)
    assert out[0, 1:3].abs().sum() == 0 and out[0, :, 1:3].abs().sum() == 0
    torch.testing.assert_close(out[0][[0, 3, 4]][:, [0, 3, 4]], bias[0])


# ----------------------------------------------------------------------------- features
def test_features_equal_the_models_own_pooled_output():
    x = images(size=(24, 40))
    beit = focusvit.load_backbone("tiny:hf-beit")  # mean pooling through BeitPooler's norm
    with torch.no_grad():
        out = beit.model(pixel_values=x, output_hidden_states=False)
        pooled = beit.base(pixel_values=x).pooler_output
        torch.testing.assert_close(beit.features(x), pooled)
        torch.testing.assert_close(beit.logits(x), out.logits)
        tokens = beit.tokens(x)
        norm = beit.base.pooler.layernorm
        torch.testing.assert_close(beit.features(x), norm(tokens[:, 1:].mean(1)))
    cls = focusvit.adapt(
        hf_variant("beit", use_relative_position_bias=True, use_mean_pooling=False)
    )
    with torch.no_grad():
        last = cls.base(pixel_values=x)
        torch.testing.assert_close(cls.features(x), last.pooler_output)
        torch.testing.assert_close(cls.features(x), last.last_hidden_state[:, 0])
    bare = focusvit.load_backbone("tiny:hf-data2vec-vision", num_classes=0)  # no pooler built
    assert bare.base.pooler is None and bare.head_name == ""
    with torch.no_grad():
        tokens = bare.base(pixel_values=x).last_hidden_state
        torch.testing.assert_close(bare.features(x), tokens[:, 1:].mean(1))
    d2v = focusvit.load_backbone("tiny:hf-data2vec-vision")
    with torch.no_grad():
        torch.testing.assert_close(d2v.logits(x), d2v.model(pixel_values=x).logits)
    timm_beit = focusvit.load_backbone("tiny:timm-beit")
    model, y = timm_beit.model, images(size=TIMM_SIZE)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(y), pre_logits=True)
        torch.testing.assert_close(timm_beit.features(y), features, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(timm_beit.logits(y), model(y), atol=1e-6, rtol=1e-5)


def test_head_can_be_placed_on_a_bare_model_and_removed():
    adapter = focusvit.load_backbone("tiny:hf-beit", num_classes=0)
    assert adapter.head_name == "" and adapter.logits(images()).shape == (2, 32)
    adapter.replace_head(nn.Linear(32, 4))
    assert adapter.head_name == "classifier" and adapter.logits(images()).shape == (2, 4)
    adapter.remove_head()
    assert adapter.head_name == "" and not hasattr(adapter.model, "classifier")


def test_ssf_targets_in_execution_order():
    beit = focusvit.load_backbone("tiny:hf-beit")
    block = ["layernorm_before", "attention.q_proj", "attention.k_proj", "attention.v_proj",
             "attention.o_proj", "layernorm_after", "mlp.fc1", "mlp.fc2"]  # fmt: skip
    expected = ["beit.embeddings.patch_embeddings"]
    expected += [f"beit.layers.{i}.{p}" for i in range(2) for p in block]
    assert beit.ssf_targets == [*expected, "beit.pooler.layernorm"]
    d2v = focusvit.load_backbone("tiny:hf-data2vec-vision", num_classes=0)
    names = d2v.ssf_targets
    assert names[0] == "embeddings.patch_embeddings" and names[-1] == "encoder.layer.1.output.dense"
    assert "encoder.layer.0.attention.attention.query" in names and len(names) == 1 + 2 * 8
    timm_names = focusvit.load_backbone("tiny:timm-beit").ssf_targets
    assert timm_names[:3] == ["patch_embed", "blocks.0.norm1", "blocks.0.attn.qkv"]
    assert timm_names[-1] == "fc_norm"


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("name", HF)
def test_preprocessing_from_a_saved_processor_and_the_family_default(name, tmp_path):
    from transformers import BeitImageProcessor

    model = build_tiny(name)
    model.save_pretrained(tmp_path / "bare")
    fallback = _hf_data_config(str(tmp_path / "bare"), model.config, model)
    assert fallback["mean"] == fallback["std"] == (0.5, 0.5, 0.5)  # BEiT's default_mean_std
    processor = BeitImageProcessor(
        image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6],
        size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
    )  # fmt: skip
    model.save_pretrained(tmp_path / "full")
    processor.save_pretrained(tmp_path / "full")
    config = _hf_data_config(str(tmp_path / "full"), model.config, model)
    assert config["mean"] == (0.1, 0.2, 0.3) and config["std"] == (0.4, 0.5, 0.6)
    loaded = focusvit.load_backbone(str(tmp_path / "full"))
    assert type(loaded) is HFBeitAdapter and loaded.data_config["mean"] == (0.1, 0.2, 0.3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(images()), focusvit.adapt(model).logits(images()))
