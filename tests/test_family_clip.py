"""CLIP family (``backbones/hf_clip.py``) and the CLIP text head on tiny random-weight models:
attention capture against the model's own eager attention (also at a non-square size through
``interpolate_pos_encoding``), rollout, explainers, prompts, every applicable tuner with and
without the attention loss, pooled features against the model's own outputs, preprocessing from
a saved processor, the text head (zero-shot logits against ``get_text_features`` /
``get_image_features``) and timm's CLIP ViTs through the timm ViT adapter."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import focusvit
from focusvit.backbones import UnsupportedFamilyError, UnsupportedMethodError, model_family
from focusvit.backbones.hf_clip import (
    _TINY_TEXT,
    _TINY_VISION,
    OPENAI_CLIP_MEAN_STD,
    TINY_PROJECTION_DIM,
    HFCLIPAdapter,
    vision_tower,
)
from focusvit.backbones.loading import _hf_data_config
from focusvit.backbones.timm_vit import TimmViTAdapter
from focusvit.backbones.tiny import build_tiny
from focusvit.data import TensorDataset
from focusvit.data.episodes import sample_episode
from focusvit.errors import ConfigError
from focusvit.explainers import EXPLAINERS, explain
from focusvit.finetune import FortConfig, applicable_tuners, apply_tuner, fit_task
from focusvit.finetune.attention_loss import prompt_targets, resolve_fort, vit_attention_loss
from focusvit.finetune.heads import text_head
from focusvit.prompting import make_prompts
from focusvit.runs import EpisodeSpec

NAMES = ["hf-clip-vision", "hf-clip"]
KINDS = ["vision", "projection", "clip", "classifier"]
SIZES = [(32, 32), (32, 48)]  # the model's own size and a non-square one
CLASSES = ["cat", "dog", "bird"]
WORDS = ["[PAD]", "<bos>", "[UNK]", "<eos>", "a", "photo", "of", ".", *CLASSES, "fish"]


def images(batch: int = 2, size: tuple[int, int] = (32, 32), seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny(name: str, num_classes: int = 0) -> HFCLIPAdapter:
    return focusvit.adapt(build_tiny(name, num_classes=num_classes), name=f"tiny:{name}")


def variant(kind: str) -> nn.Module:
    """Every CLIP class the adapter accepts, tiny and seeded."""
    from transformers import (
        CLIPConfig,
        CLIPForImageClassification,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    full = partial(CLIPConfig, vision_config=_TINY_VISION, text_config=_TINY_TEXT)
    model = {
        "vision": lambda: CLIPVisionModel(CLIPVisionConfig(**_TINY_VISION)),
        "projection": lambda: CLIPVisionModelWithProjection(
            CLIPVisionConfig(**_TINY_VISION, projection_dim=TINY_PROJECTION_DIM)
        ),
        "clip": lambda: CLIPModel(full(projection_dim=TINY_PROJECTION_DIM)),
        "classifier": lambda: CLIPForImageClassification(full(num_labels=3)),
    }[kind]()
    return model.eval()


def tokenizer():
    """A word-level tokenizer over :data:`WORDS` (``<bos> ... <eos>``, pad 0): the tiny text
    tower's EOS id is 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="<bos>",
        eos_token="<eos>",
    )  # fmt: skip


def with_text(num_classes: int = 0) -> HFCLIPAdapter:
    adapter = tiny("hf-clip", num_classes)
    adapter.tokenizer = tokenizer()
    return adapter


def hf_attentions(model: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    """The model's own eager attention probabilities (``output_attentions=True``) per layer."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        out = vision_tower(reference)(
            pixel_values=x, interpolate_pos_encoding=True, output_attentions=True
        )
    return out.attentions


def zero_shot_reference(model: nn.Module, x: Tensor, names: list[str]) -> Tensor:
    """``logit_scale.exp() · cos`` from the model's own get_text/get_image_features."""
    batch = tokenizer()([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**batch).pooler_output
        image = model.get_image_features(pixel_values=x).pooler_output
        expected = (
            model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        )
        own = model(**batch, pixel_values=x).logits_per_image
    torch.testing.assert_close(expected, own, atol=1e-5, rtol=1e-5)
    return expected


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("kind", KINDS)
def test_adapt_picks_the_clip_adapter_for_every_vision_model(kind):
    adapter = focusvit.adapt(variant(kind))
    assert type(adapter) is HFCLIPAdapter and adapter.family == "vit"
    assert adapter.num_prefix_tokens == 1 and adapter.has_cls_token
    assert adapter.heads_per_block == [2, 2] and adapter.embed_dim == 32
    assert adapter.num_features == (TINY_PROJECTION_DIM if kind in ("projection", "clip") else 32)
    assert adapter.has_text_tower == (kind == "clip")
    assert adapter.data_config["mean"] == OPENAI_CLIP_MEAN_STD[0]
    assert adapter.data_config["std"] == OPENAI_CLIP_MEAN_STD[1]


def test_a_text_only_clip_model_is_refused():
    from transformers import CLIPTextConfig, CLIPTextModel

    with pytest.raises(UnsupportedFamilyError, match="supported families"):
        focusvit.adapt(CLIPTextModel(CLIPTextConfig(**_TINY_TEXT)))


@pytest.mark.parametrize("name", NAMES)
def test_tiny_specs_load_and_tell_their_family(name):
    adapter = focusvit.load_backbone(f"tiny:{name}")
    assert type(adapter) is HFCLIPAdapter and adapter.num_classes == 5
    assert model_family(f"tiny:{name}") == "vit"
    assert focusvit.load_backbone(f"tiny:{name}", num_classes=0).head_name == ""


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_captured_attention_equals_the_models_eager_attentions(kind, size):
    model = variant(kind)
    adapter = focusvit.adapt(model)
    assert model.config._attn_implementation == "sdpa"  # captured next to the fused path
    x = images(size=size)
    reference = hf_attentions(model, x)
    before = hooks(model)
    with torch.no_grad(), adapter.capture_attention(kind="probs") as probs:
        adapter.logits(x)
    with torch.no_grad(), adapter.capture_attention(kind="logits") as logits:
        adapter.logits(x)
    assert hooks(model) == before
    tokens = 1 + (size[0] // 8) * (size[1] // 8)
    assert len(reference) == adapter.num_layers == 2
    for layer, expected in enumerate(reference):
        assert probs[layer].shape == (2, 2, tokens, tokens)
        torch.testing.assert_close(probs[layer], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits[layer].softmax(-1), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_rollout_equals_a_full_matrix_rollout_of_the_models_attentions(name):
    adapter = tiny(name, num_classes=3)
    x = images(size=(32, 48))
    attentions = hf_attentions(adapter.model, x)
    tokens = attentions[0].shape[-1]
    product = torch.eye(tokens).expand(2, tokens, tokens)
    for probs in attentions:  # R = Â^L ··· Â^1, Â = rownorm(mean_heads(A) + I)
        matrix = probs.mean(dim=1) + torch.eye(tokens)
        product = (matrix / matrix.sum(dim=-1, keepdim=True)) @ product
    out = explain(adapter, x, "rollout")
    torch.testing.assert_close(out.scores.flatten(1), product[:, 0, 1:], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- explainers
@pytest.mark.parametrize("name", NAMES)
def test_every_applicable_explainer_gives_finite_maps(name):
    adapter = tiny(name, num_classes=3)
    x = images(batch=3, size=(32, 48))
    methods = [m for m, cls in EXPLAINERS.items() if adapter.family in cls.families]
    assert {"cam", "gradcam", "attention", "rollout", "rollout_svd"} <= set(methods)
    before = hooks(adapter.model)
    for method in methods:
        out = explain(adapter, x, method, target=torch.tensor([0, 1, 2]))
        assert out.scores.shape == (3, 4, 6), method
        assert torch.isfinite(out.scores).all(), method
    assert hooks(adapter.model) == before


def test_cam_of_the_patch_mean_classifier_sums_to_its_logits():
    """CLIPForImageClassification averages the patch tokens, so CAM is exact there."""
    adapter = focusvit.adapt(variant("classifier"))
    x = images(batch=3)
    classes = torch.tensor([2, 0, 1])
    cam = explain(adapter, x, "cam", target=classes).scores
    with torch.no_grad():
        logits = adapter.model(pixel_values=x).logits
    bias = adapter.head.bias[classes]
    torch.testing.assert_close(cam.mean(dim=(1, 2)) + bias, logits[torch.arange(3), classes])


@pytest.mark.parametrize("name", NAMES)
def test_prompts_are_the_top_patches_of_the_explanation(name):
    adapter = tiny(name, num_classes=3)
    explanation = explain(adapter, images(batch=2), "rollout")
    prompt = make_prompts(explanation, top_k=2)
    assert prompt.mask.shape == (2, 4, 4) and prompt.target.shape == (2, 16)
    top = explanation.scores.flatten(1).topk(2, dim=1).indices
    for row in range(2):
        assert set(prompt.mask[row].flatten().nonzero().flatten().tolist()) == set(
            top[row].tolist()
        )


# ----------------------------------------------------------------------------- tuners
# the full CLIPModel trains with the loss in test_head_init_text_starts_every_tuner_...
TUNER_CASES = [
    (name, tuner, fort)
    for name in NAMES
    for tuner, fort in [
        ("linear", None),
        ("full", None),
        ("full", True),
        ("lora", None),
        ("lora", True),
        ("ssf", None),
        ("ssf", FortConfig(layers="all")),
        ("vpt", None),
        ("vpt", FortConfig(alpha=0.5)),
    ]
    if name == "hf-clip-vision" or fort is None
]


@pytest.mark.parametrize(("name", "tuner", "fort"), TUNER_CASES)
def test_every_tuner_fits_with_and_without_the_loss_and_restores_the_backbone(name, tuner, fort):
    assert applicable_tuners(tiny(name, num_classes=3)) == ["linear", "full", "lora", "vpt", "ssf"]
    adapter = tiny(name)  # no head: fit_task places the task head (linear then applies)
    x, labels = images(batch=6), torch.arange(6) % 3
    before, count = state(adapter.model), hooks(adapter.model)
    with fit_task(adapter, x, labels, tuner=tuner, fort=fort, steps=2) as task:
        assert task.logits(x).shape == (6, 3)
        losses = [step["total"] for step in task.losses]
        assert losses and all(torch.isfinite(torch.tensor(losses)))
        assert all(step["attn"] > 0 for step in task.losses) == (fort is not None)
    after = adapter.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert hooks(adapter.model) == count and adapter.head_name == ""


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tuner", ["lora", "ssf"])
def test_the_attention_loss_reaches_the_tuner_parameters(name, tuner):
    """Every LoRA / SSF site that feeds a captured logit map gets a gradient from the loss
    alone (none is bypassed); the last block's v / out projections feed none."""
    adapter = tiny(name, num_classes=3)
    x, labels = images(batch=3), torch.arange(3)
    fort = resolve_fort(adapter, tuner, FortConfig(layers="all"))
    targets = prompt_targets(adapter, x, labels, fort)
    with apply_tuner(adapter, tuner) as tuned:
        for module in adapter.model.modules():  # LoRA B starts at 0: make every path live
            for b in getattr(module, "lora_B", {}).values():
                nn.init.normal_(b.weight, std=0.1)
        with adapter.capture_attention(kind="logits") as record:
            adapter.logits(x)
        loss = vit_attention_loss(list(record), targets, 1, fort.tau)
        assert torch.isfinite(loss) and loss > 0
        named = [
            (n, p) for n, p in tuned.named_trainable_parameters() if not n.startswith("classifier")
        ]
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    last = f"encoder.layers.{adapter.num_layers - 1}."
    idle = ("self_attn.v_proj", "self_attn.out_proj", "layer_norm2", "mlp.", "post_layernorm")
    checked = 0
    for (n, _), grad in zip(named, grads, strict=True):
        if (last in n and any(part in n for part in idle)) or "post_layernorm" in n:
            continue
        assert grad is not None and grad.abs().sum() > 0, n
        checked += 1
    # LoRA: 2 blocks x 4 projections x (A, B) - the last v/out; SSF: 2 embedding sites + 8 of
    # block 0 + norm1, q, k of block 1, (scale, shift) each
    assert checked == (12 if tuner == "lora" else 26)


# ----------------------------------------------------------------------------- features
@pytest.mark.parametrize("kind", KINDS)
def test_features_are_the_models_own_pooled_output(kind):
    model = variant(kind)
    adapter = focusvit.adapt(model)
    x = images(batch=3)
    with torch.no_grad():
        features = adapter.features(x)
        if kind == "vision":
            expected = model(pixel_values=x).pooler_output
        elif kind == "projection":
            expected = model(pixel_values=x).image_embeds
        elif kind == "clip":
            expected = F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
            ids = torch.tensor([[1, 4, 8, 3]])
            torch.testing.assert_close(features, model(input_ids=ids, pixel_values=x).image_embeds)
        else:
            out = model(pixel_values=x, output_hidden_states=True)
            expected = out.hidden_states[-1][:, 1:].mean(dim=1)
            torch.testing.assert_close(adapter.logits(x), out.logits)
    assert features.shape == (3, adapter.num_features)
    torch.testing.assert_close(features, expected)


def test_other_input_sizes_interpolate_the_position_embeddings():
    model = variant("vision")
    x = images(size=(32, 48))
    with torch.no_grad():
        expected = model(pixel_values=x, interpolate_pos_encoding=True).pooler_output
        torch.testing.assert_close(focusvit.adapt(model).features(x), expected)


# ----------------------------------------------------------------------------- loading
def test_preprocessing_and_both_load_paths_from_a_saved_folder(tmp_path, monkeypatch):
    from transformers import CLIPImageProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_tiny("hf-clip", num_classes=0)
    model.save_pretrained(tmp_path)
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    CLIPImageProcessor(
        image_mean=list(mean), image_std=list(std), size={"shortest_edge": 48},
        crop_size={"height": 48, "width": 48},
    ).save_pretrained(tmp_path)  # fmt: skip
    config = _hf_data_config(str(tmp_path), model.config, model)
    assert config["input_size"] == (3, 48, 48)
    torch.testing.assert_close(torch.tensor(config["mean"]), torch.tensor(mean))
    torch.testing.assert_close(torch.tensor(config["std"]), torch.tensor(std))

    assert model_family(str(tmp_path)) == "vit"
    adapter = focusvit.load_backbone(str(tmp_path))
    assert type(adapter.model).__name__ == "CLIPModel" and adapter.has_text_tower
    assert adapter.data_config["input_size"] == (3, 48, 48)
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in adapter.model.state_dict().items())
    headed = focusvit.load_backbone(str(tmp_path), num_classes=3)
    assert type(headed.model).__name__ == "CLIPForImageClassification"
    assert headed.head_name == "classifier" and headed.logits(images(size=(48, 48))).shape == (2, 3)
    vision = headed.model.vision_model.state_dict()
    assert all(torch.equal(v, saved[f"vision_model.{k}"]) for k, v in vision.items())


def test_without_a_processor_the_openai_statistics_are_used(tmp_path):
    model = build_tiny("hf-clip-vision", num_classes=0)
    model.save_pretrained(tmp_path)
    config = _hf_data_config(str(tmp_path), model.config, model)
    assert config["input_size"] == (3, 32, 32)
    assert (tuple(config["mean"]), tuple(config["std"])) == OPENAI_CLIP_MEAN_STD


def test_head_slot_replace_reset_and_remove():
    adapter = tiny("hf-clip")
    x = images()
    adapter.reset_head(4)
    assert adapter.head_name == "classifier" and adapter.logits(x).shape == (2, 4)
    assert adapter.head.in_features == TINY_PROJECTION_DIM
    adapter.remove_head()
    assert "classifier" not in adapter.model._modules
    torch.testing.assert_close(adapter.logits(x), adapter.features(x))


# ----------------------------------------------------------------------------- text head
def test_zero_shot_text_head_equals_the_models_own_image_text_logits():
    adapter = with_text()
    x = images(batch=3)
    expected = zero_shot_reference(adapter.model, x, CLASSES)
    assert adapter.text_logit_scale > 10 and adapter.text_logit_bias == 0.0
    adapter.replace_head(text_head(adapter, CLASSES))
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), expected, atol=1e-5, rtol=1e-5)
    embeddings = adapter.encode_text(["a photo of a cat."])
    assert embeddings.shape == (1, TINY_PROJECTION_DIM)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(1))


@pytest.mark.parametrize("tuner", ["linear", "full", "lora", "vpt", "ssf"])
def test_head_init_text_starts_every_tuner_from_the_zero_shot_head(tuner):
    adapter = with_text()
    x, labels = images(batch=6), torch.arange(6) % 3
    expected = zero_shot_reference(adapter.model, x, CLASSES)
    before = state(adapter.model)
    options = {"head_init": "text", "class_names": CLASSES}
    zero_shot = text_head(adapter, CLASSES)
    with fit_task(adapter, x, labels, tuner=tuner, steps=0, **options) as task:
        head = adapter.head
        divisor = getattr(head, "logit_divisor", 1.0)  # LoRA / SSF / VPT store the head x20
        torch.testing.assert_close(head.weight / divisor, zero_shot.weight)
        torch.testing.assert_close(head.bias / divisor, zero_shot.bias)
        if tuner != "vpt":  # VPT's prompt tokens change the features from the start
            torch.testing.assert_close(task.logits(x), expected, atol=1e-5, rtol=1e-5)
    fort = None if tuner == "linear" else FortConfig(alpha=0.5)
    with fit_task(adapter, x, labels, tuner=tuner, fort=fort, steps=2, **options) as task:
        assert all(torch.isfinite(torch.tensor(s["total"])) for s in task.losses)
        assert not torch.allclose(task.logits(x), expected)
    assert all(torch.equal(adapter.model.state_dict()[k], v) for k, v in before.items())
    assert adapter.head_name == ""


def test_head_init_text_needs_one_class_name_per_label():
    adapter = with_text()
    x, labels = images(batch=3), torch.arange(3)
    for names in (None, ["cat", "dog"]):
        task = fit_task(adapter, x, labels, tuner="lora", head_init="text", class_names=names)
        with pytest.raises(ConfigError, match="class_names"), task:
            pass
    assert adapter.head_name == ""


def test_text_head_without_a_text_tower_names_what_to_load():
    adapter = tiny("hf-clip-vision")
    with pytest.raises(UnsupportedMethodError, match=r"text tower.*hf:openai/clip"):
        text_head(adapter, CLASSES)
    task = fit_task(adapter, images(3), torch.arange(3), head_init="text", class_names=CLASSES)
    with pytest.raises(UnsupportedMethodError, match="text tower"), task:
        pass
    assert adapter.text_logit_scale is None and not adapter.has_text_tower


def test_the_tokenizer_comes_from_the_model_folder_or_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnsupportedMethodError, match=r"adapter\.tokenizer"):
        tiny("hf-clip").encode_text(["a photo of a cat."])
    build_tiny("hf-clip", num_classes=0).save_pretrained(tmp_path)
    tokenizer().save_pretrained(tmp_path)
    loaded = focusvit.load_backbone(str(tmp_path))
    assert loaded.tokenizer is None
    expected = loaded.encode_text(["a photo of a dog."], tokenizer=tokenizer())
    torch.testing.assert_close(loaded.encode_text(["a photo of a dog."]), expected)


def test_evaluate_threads_the_episodes_class_names_to_the_text_head():
    adapter = with_text()
    data = TensorDataset(images(12), torch.arange(4).repeat_interleave(3), ["fish", *CLASSES])
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=3, seed=2)
    result = focusvit.evaluate(
        adapter, data, tuner="lora", episodes=spec, steps=0, head_init="text", progress=False,
        device="cpu", tasks_per_batch=2,
    )  # fmt: skip
    for record in result.records:  # steps=0: the zero-shot head's accuracy on the queries
        episode = sample_episode(data.labels, record["episode"], 3, 1, 2, seed=2)
        names = [data.class_names[c] for c in episode.classes]
        query = torch.stack([data.load(i) for i in episode.query])
        predictions = zero_shot_reference(adapter.model, query, names).argmax(dim=1)
        expected = float((predictions == episode.query_labels).float().mean())
        assert record["accuracy"] == pytest.approx(expected)


# ----------------------------------------------------------------------------- timm CLIP
def test_timm_clip_vit_works_through_the_timm_vit_adapter():
    """``vit_base_patch16_clip_224``'s layout (pre-norm, LayerNorm eps 1e-5), tiny."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
        pre_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-5), num_classes=0,
        dynamic_img_size=True,
    ).eval()  # fmt: skip
    adapter = focusvit.adapt(model)
    assert type(adapter) is TimmViTAdapter and isinstance(model.norm_pre, nn.LayerNorm)
    x = images(size=(32, 48))
    eager = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_pre_hook(lambda _m, args: eager.append(args[0]))
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        with adapter.capture_attention(kind="logits") as logits:
            torch.testing.assert_close(adapter.features(x), expected)
    for layer, probs in enumerate(eager[2:]):  # the second forward's softmax
        torch.testing.assert_close(logits[layer].softmax(-1), probs, atol=1e-5, rtol=1e-4)
    before = state(model)
    with fit_task(
        adapter, images(6), torch.arange(6) % 3, tuner="lora", fort=True, steps=2
    ) as task:
        assert all(s["attn"] > 0 for s in task.losses)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
