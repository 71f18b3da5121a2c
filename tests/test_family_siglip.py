"""The HF SigLIP / SigLIP2 family (backbones/hf_siglip.py) end to end on tiny random models.

References are the models' own computations: eager ``output_attentions``, ``pooler_output``,
``logits_per_image``, and ``Siglip2ImageProcessor``'s own patchify.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    PreTrainedTokenizerFast,
    Siglip2Config,
    Siglip2ForImageClassification,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipImageProcessor,
    SiglipTextModel,
    SiglipVisionModel,
)
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

import focusvit
from focusvit.backbones import FAMILIES, model_family
from focusvit.backbones.hf_siglip import TINY_TEXT, TINY_VISION, HFSiglipAdapter, patchify
from focusvit.backbones.loading import _hf_data_config
from focusvit.backbones.tiny import build_tiny
from focusvit.errors import FocusVitError, InputSizeError, UnsupportedMethodError
from focusvit.explainers import EXPLAINERS, explain
from focusvit.finetune import FortConfig, applicable_tuners, apply_tuner, fit_task
from focusvit.finetune.attention_loss import prompt_targets, resolve_fort, vit_attention_loss
from focusvit.prompting import make_prompts

TINY = ["hf-siglip-vision", "hf-siglip2-vision", "hf-siglip"]
PATCH = TINY_VISION["patch_size"]


def tiny(name: str, num_classes: int = 5) -> HFSiglipAdapter:
    return focusvit.adapt(build_tiny(name, num_classes=num_classes), name=f"tiny:{name}")


def images(batch: int = 2, size: tuple[int, int] = (32, 48)) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


def siglip2_config(num_classes: int = 0) -> Siglip2Config:
    vision = {**TINY_VISION, "num_patches": 16}
    return Siglip2Config(vision_config=vision, text_config=TINY_TEXT, num_labels=num_classes)


def _siglip_classifier() -> nn.Module:
    config = SiglipConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, num_labels=3)
    return SiglipForImageClassification(config)


#: every SigLIP class the family takes, built tiny (vision towers with the MAP head)
BUILDERS = {
    "SiglipVisionModel": lambda: build_tiny("hf-siglip-vision", num_classes=0),
    "SiglipModel": lambda: build_tiny("hf-siglip", num_classes=0),
    "SiglipForImageClassification": _siglip_classifier,
    "Siglip2VisionModel": lambda: build_tiny("hf-siglip2-vision", num_classes=0),
    "Siglip2Model": lambda: Siglip2Model(siglip2_config()),
    "Siglip2ForImageClassification": lambda: Siglip2ForImageClassification(siglip2_config(3)),
}


def build(cls: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[cls]().eval()


def hf_vision_output(model: nn.Module, x: Tensor, **kwargs):
    """The model's vision tower called the HF way: v1 with interpolated position embeddings,
    v2 with ``Siglip2ImageProcessor``'s own patchify of every image."""
    tower = getattr(model, "vision_model", model)
    if isinstance(tower.embeddings.patch_embedding, nn.Conv2d):
        return tower(pixel_values=x, interpolate_pos_encoding=True, **kwargs)
    patches = torch.stack([convert_image_to_patches(image, PATCH) for image in x])
    h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    return tower(
        pixel_values=patches,
        pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.int32),
        spatial_shapes=torch.tensor([[h, w]] * x.shape[0]),
        **kwargs,
    )


def eager_attentions(adapter: HFSiglipAdapter, x: Tensor) -> list[Tensor]:
    """Per-layer probabilities ``(B, heads, N, N)`` of the model's own eager attention."""
    adapter.model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = hf_vision_output(adapter.model, x, output_attentions=True).attentions
    adapter.model.set_attn_implementation("sdpa")
    assert attentions is not None and len(attentions) == adapter.num_layers
    return list(attentions)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny offline word-level tokenizer (ids inside the tiny text tower's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>", "a", "photo", "of", "cat", "dog", "red", "bird"]
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("cls", list(BUILDERS))
def test_adapt_picks_the_siglip_adapter_for_every_class(cls):
    adapter = focusvit.adapt(build(cls))
    assert type(adapter) is HFSiglipAdapter and adapter.family == "vit"
    assert adapter.prefix_layout() == focusvit.backbones.TokenLayout(cls=0)
    assert not adapter.has_cls_token and adapter.num_prefix_tokens == 0
    assert adapter.heads_per_block == [2, 2] and adapter.patch_size == (PATCH, PATCH)
    assert adapter.has_text_tower == (cls in ("SiglipModel", "Siglip2Model"))


def test_family_entry_tiny_models_and_the_text_model_alone_is_refused():
    entry = next(e for e in FAMILIES if e.adapter is HFSiglipAdapter)
    assert entry.cls_row == "mean of patch query rows" and entry.priority == 30
    assert set(entry.tiny) == set(TINY)
    for name in TINY:
        adapter = focusvit.load_backbone(f"tiny:{name}")
        assert type(adapter) is HFSiglipAdapter and adapter.num_classes == 5
        assert model_family(f"tiny:{name}") == "vit"
    text_only = SiglipTextModel(SiglipConfig(text_config=TINY_TEXT).text_config)
    with pytest.raises(focusvit.errors.UnsupportedFamilyError):
        focusvit.adapt(text_only)


# ----------------------------------------------------------------------------- input
def test_siglip2_patchify_is_the_image_processors_own():
    x = images(3, (24, 40))
    expected = torch.stack([convert_image_to_patches(image, PATCH) for image in x])
    assert torch.equal(patchify(x, PATCH), expected)
    # channel fastest inside a patch: element 1 of patch 0 is pixel (0, 0) of channel 1
    assert patchify(x, PATCH)[0, 0, 1] == x[0, 1, 0, 0]


def test_siglip2_tokens_equal_the_processor_pipeline_on_a_non_square_image():
    adapter = tiny("hf-siglip2-vision", num_classes=0)
    raw = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, generator=torch.Generator())
    processor = Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=24)
    inputs = processor(images=[raw], return_tensors="pt")
    assert inputs["spatial_shapes"].tolist() == [[4, 6]]  # no resize at exactly 24 patches
    normalised = (raw.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        ours = adapter.tokens(normalised[None])
        theirs = adapter.model(**inputs)
    torch.testing.assert_close(ours, theirs.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(adapter.pool(ours), theirs.pooler_output, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_sizes_off_the_patch_grid_are_refused(name):
    with pytest.raises(InputSizeError, match="multiples of 8x8"):
        tiny(name).logits(torch.randn(1, 3, 32, 36))


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("cls", list(BUILDERS))
def test_capture_equals_the_models_eager_attention_on_a_non_square_input(cls):
    adapter = focusvit.adapt(build(cls))
    x = images(2, (24, 40))
    reference = eager_attentions(adapter, x)
    hooks = hook_count(adapter.model)
    with torch.no_grad(), adapter.capture_attention(kind="probs") as probs:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(kind="logits") as logits:
        adapter.logits(x)
    assert hook_count(adapter.model) == hooks
    assert reference[0].shape == (2, 2, 15, 15)  # 3x5 patches, no prefix token
    for layer, ref in enumerate(reference):
        torch.testing.assert_close(probs[layer], ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(logits[layer].softmax(-1), ref, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- explainers
@pytest.mark.parametrize("name", TINY)
def test_rollout_is_the_full_matrix_rollout_from_the_mean_patch_row(name):
    adapter = tiny(name)
    x = images(2, (24, 40))
    product = torch.eye(15).expand(2, 15, 15)
    for probs in eager_attentions(adapter, x):  # R = Â^L ··· Â^1, Â = rownorm(mean_h A + I)
        matrix = probs.mean(dim=1) + torch.eye(15)
        product = (matrix / matrix.sum(dim=-1, keepdim=True)) @ product
    out = explain(adapter, x, "rollout")
    assert out.params["cls_row"] == "mean of patch query rows" and out.params["query"] == "mean"
    torch.testing.assert_close(out.flat(), product.mean(dim=1), atol=1e-5, rtol=1e-4)
    with pytest.raises(FocusVitError, match="no CLS token"):
        explain(adapter, x, "rollout", query="cls")


@pytest.mark.parametrize("name", TINY)
def test_every_vit_explainer_and_the_prompts(name):
    adapter = tiny(name)
    x = images(3, (24, 40))
    hooks = hook_count(adapter.model)
    methods = [m for m, cls in EXPLAINERS.items() if adapter.family in cls.families]
    assert {"rollout", "rollout_svd", "attention", "gradcam"} <= set(methods)
    for method in methods:
        out = explain(adapter, x, method, target=torch.tensor([0, 1, 2]))
        assert out.scores.shape == (3, 3, 5) and torch.isfinite(out.scores).all(), method
        if method in ("rollout", "attention"):  # rollout_svd reads every row (FORT)
            assert out.params["cls_row"] == "mean of patch query rows", method
    prompt = make_prompts(explain(adapter, x, "rollout_svd"), top_k=2)
    assert prompt.target.shape == (3, 15)
    assert (prompt.target > 0).sum(dim=1).tolist() == [2, 2, 2]
    assert hook_count(adapter.model) == hooks


# ----------------------------------------------------------------------------- tuners
def test_applicable_tuners_and_lora_only_in_the_vision_encoder_layers():
    assert set(applicable_tuners(tiny("hf-siglip"))) == {"linear", "full", "lora", "vpt", "ssf"}
    adapter = tiny("hf-siglip", num_classes=0)
    with apply_tuner(adapter, "lora"):
        injected = [n for n, m in adapter.model.named_modules() if hasattr(m, "lora_A")]
        pool_attention = adapter.model.vision_model.head.attention
        assert not hasattr(pool_attention.out_proj, "lora_A")  # the MAP head stays untouched
    expected = [
        f"vision_model.encoder.layers.{i}.self_attn.{p}"
        for i in range(2)
        for p in ("k_proj", "v_proj", "q_proj", "out_proj")
    ]
    assert sorted(injected) == sorted(expected)
    assert adapter.ssf_targets[0] == "vision_model.embeddings.patch_embedding"
    assert adapter.ssf_targets[-1] == "vision_model.post_layernorm"
    assert len(adapter.ssf_targets) == 2 + 2 * 8


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# every tuner with and without the loss on the MAP tower; the patchified SigLIP2 tower and the
# full model (text tower present) with the tuners that touch the blocks most
CASES = [("hf-siglip-vision", t, False) for t in ("linear", "full", "lora", "ssf", "vpt")]
CASES += [("hf-siglip-vision", t, True) for t in ("full", "lora", "ssf", "vpt")]
CASES += [("hf-siglip2-vision", "lora", True), ("hf-siglip2-vision", "vpt", False)]
CASES += [("hf-siglip", "ssf", True)]


@pytest.mark.parametrize(("name", "tuner", "with_loss"), CASES)
def test_fit_task_with_and_without_the_attention_loss_restores_the_backbone(name, tuner, with_loss):
    adapter = tiny(name, num_classes=0)
    x, labels = images(6, (32, 32)), torch.arange(6) % 3
    before, hooks = _state(adapter.model), hook_count(adapter.model)
    fort = FortConfig(alpha=0.5, tau=1.0, top_k=3) if with_loss else None
    with fit_task(adapter, x, labels, tuner=tuner, fort=fort, steps=2) as task:
        assert task.logits(x).shape == (6, 3)
        assert all(torch.isfinite(torch.tensor(step["total"])) for step in task.losses)
        if with_loss:
            assert all(step["attn"] > 0 for step in task.losses)
    after = adapter.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert hook_count(adapter.model) == hooks and not adapter.head_name


@pytest.mark.parametrize("name", TINY[:2])
@pytest.mark.parametrize("tuner", ["lora", "ssf"])
def test_attention_loss_trains_the_tuner_in_every_layer(name, tuner):
    adapter = tiny(name, num_classes=3)
    x, labels = images(3, (32, 32)), torch.arange(3)
    fort = resolve_fort(adapter, tuner, FortConfig(alpha=1.0, layers="all"))
    targets = prompt_targets(adapter, x, labels, fort)
    with apply_tuner(adapter, tuner) as tuned:
        if tuner == "lora":  # B = 0 at init: give it values so that every path carries grad
            for module in adapter.model.modules():
                if hasattr(module, "lora_B"):
                    nn.init.normal_(module.lora_B["default"].weight, std=0.1)
        with adapter.capture_attention(kind="logits") as record:
            adapter.logits(x)
        loss = vit_attention_loss(list(record), targets, 0, fort.tau, has_cls=False)
        assert torch.isfinite(loss) and loss > 0
        named = [
            (n, p)
            for n, p in tuned.named_trainable_parameters()
            if any(f"layers.{i}.self_attn.{q}" in n for i in range(2) for q in ("q_proj", "k_proj"))
        ]
        assert len(named) == 2 * 2 * 2  # (lora_A, lora_B) or (scale, shift) x q/k x layers
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (n, _), g in zip(named, grads, strict=True):
            if "lora_A" not in n:  # lora_A's gradient is B-weighted: checked through B
                assert g is not None and g.abs().sum() > 0, n


# ----------------------------------------------------------------------------- features
@pytest.mark.parametrize("cls", list(BUILDERS))
def test_features_and_logits_follow_the_models_own_pooling(cls):
    model = build(cls)
    adapter = focusvit.adapt(model)
    x = images(2, (32, 32))
    with torch.no_grad():
        features = adapter.features(x)
        assert features.shape == (2, adapter.num_features) == (2, 32)
        if cls.endswith("ForImageClassification"):  # mean of the tokens, then the classifier
            torch.testing.assert_close(adapter.logits(x), model(**_hf_inputs(model, x)).logits)
            torch.testing.assert_close(features, adapter.tokens(x).mean(dim=1))
        else:  # the MAP head's output
            pooled = hf_vision_output(model, x).pooler_output
            if hasattr(model, "text_model"):  # SiglipModel: its normalised image_embeds
                pooled = F.normalize(pooled, dim=-1)
            torch.testing.assert_close(features, pooled, atol=1e-6, rtol=1e-5)
            assert not torch.allclose(features, adapter.tokens(x).mean(dim=1), atol=1e-3)


def _hf_inputs(model: nn.Module, x: Tensor) -> dict:
    if isinstance(model, SiglipForImageClassification):
        return {"pixel_values": x}
    patches = torch.stack([convert_image_to_patches(image, PATCH) for image in x])
    return {
        "pixel_values": patches,
        "pixel_attention_mask": torch.ones(patches.shape[:2], dtype=torch.int32),
        "spatial_shapes": torch.tensor([[4, 4]] * x.shape[0]),
    }


def test_a_tower_without_the_map_head_pools_the_mean_of_its_tokens():
    from transformers import SiglipVisionConfig

    model = SiglipVisionModel(SiglipVisionConfig(**TINY_VISION, vision_use_head=False)).eval()
    adapter = focusvit.adapt(model)
    x = images(2, (32, 32))
    with torch.no_grad():
        assert model(pixel_values=x).pooler_output is None
        torch.testing.assert_close(
            adapter.features(x), model(pixel_values=x).last_hidden_state.mean(1)
        )


def test_head_on_a_bare_tower_pools_with_the_map_head():
    adapter = tiny("hf-siglip-vision", num_classes=0)
    x = images(2, (32, 32))
    assert not adapter.head_name and adapter.logits(x).shape == (2, 32)
    head = nn.Linear(32, 4)
    adapter.replace_head(head)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), head(adapter.features(x)))
    adapter.remove_head()
    assert not adapter.head_name and "classifier" not in adapter.model._modules


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize(
    ("model_cls", "processor"),
    [
        (SiglipVisionModel, SiglipImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4] * 3)),
        (
            Siglip2VisionModel,
            Siglip2ImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4] * 3),
        ),
    ],
)
def test_a_saved_folder_loads_offline_with_its_processors_statistics(
    tmp_path, model_cls, processor
):
    name = "hf-siglip-vision" if model_cls is SiglipVisionModel else "hf-siglip2-vision"
    model = build_tiny(name, num_classes=0)
    assert isinstance(model, model_cls)
    model.save_pretrained(tmp_path / "bare")
    fallback = _hf_data_config(str(tmp_path / "bare"), model.config, model)
    assert (fallback["mean"], fallback["std"]) == HFSiglipAdapter.default_mean_std
    bare = focusvit.load_backbone(str(tmp_path / "bare"))
    assert (bare.data_config["mean"], bare.data_config["std"]) == ((0.5,) * 3, (0.5,) * 3)
    model.save_pretrained(tmp_path / "full")
    processor.save_pretrained(tmp_path / "full")
    loaded = focusvit.load_backbone(str(tmp_path / "full"))
    assert type(loaded) is HFSiglipAdapter
    assert loaded.data_config["mean"] == pytest.approx((0.1, 0.2, 0.3))
    assert loaded.data_config["std"] == pytest.approx((0.4, 0.4, 0.4))
    x = images(1, (32, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(x), focusvit.adapt(model).features(x))


# ----------------------------------------------------------------------------- text tower
@pytest.mark.parametrize("version", [1, 2])
def test_encode_text_reproduces_the_models_zero_shot_logits(version):
    model = build_tiny("hf-siglip", num_classes=0) if version == 1 else build("Siglip2Model")
    adapter = focusvit.adapt(model)
    adapter.tokenizer = word_tokenizer()
    names = ["a photo of a cat", "a red dog", "bird"]
    text = adapter.encode_text(names)
    assert text.shape == (3, adapter.num_features) and not text.requires_grad
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    x = images(2, (32, 32))
    tokens = adapter.tokenizer(names, padding="max_length", max_length=8, return_tensors="pt")
    with torch.no_grad():
        vision = _hf_inputs(model, x) if version == 2 else {"pixel_values": x}
        expected = model(**tokens, **vision).logits_per_image  # (images, texts)
        cosine = F.normalize(adapter.features(x), dim=-1) @ text.T
    assert adapter.text_logit_scale == pytest.approx(model.logit_scale.exp().item())
    assert adapter.text_logit_bias == pytest.approx(model.logit_bias.item())
    ours = adapter.text_logit_scale * cosine + adapter.text_logit_bias
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    # the text head over the adapter's (normalised) features: the model's own logits
    from focusvit.finetune.heads import text_head

    with torch.no_grad():
        zero_shot = text_head(adapter, names, template="{}")(adapter.features(x))
    torch.testing.assert_close(zero_shot, expected, atol=1e-5, rtol=1e-4)


def test_text_errors_name_the_fix_and_a_folder_brings_its_tokenizer(tmp_path):
    vision = tiny("hf-siglip-vision")
    assert not vision.has_text_tower and vision.text_logit_scale is None
    with pytest.raises(UnsupportedMethodError, match="no text tower"):
        vision.encode_text(["cat"])
    full = tiny("hf-siglip", num_classes=0)
    with pytest.raises(UnsupportedMethodError, match=r"adapter\.tokenizer = "):
        full.encode_text(["cat"])
    full.tokenizer = word_tokenizer()
    with pytest.raises(FocusVitError, match="no texts"):
        full.encode_text([])
    full.model.save_pretrained(tmp_path / "no-tokenizer")
    folder = focusvit.load_backbone(str(tmp_path / "no-tokenizer"))
    with pytest.raises(UnsupportedMethodError, match="tokenizer"):
        folder.encode_text(["cat"])
    full.model.save_pretrained(tmp_path / "model")
    full.tokenizer.save_pretrained(tmp_path / "model")
    loaded = focusvit.load_backbone(str(tmp_path / "model"))
    torch.testing.assert_close(loaded.encode_text(["cat", "dog"]), full.encode_text(["cat", "dog"]))


def test_siglip2_default_size_is_its_native_grid():
    """SigLIP2 configs carry ``num_patches`` instead of ``image_size``: the default input size
    is the native grid (16 × 16 patches of 16 px = 256), not a generic 224."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    from focusvit.backbones.registry import _data_config_of

    with torch.device("meta"):
        model = Siglip2VisionModel(Siglip2VisionConfig(num_patches=256, patch_size=16))
    assert _data_config_of(model)["input_size"] == (3, 256, 256)
