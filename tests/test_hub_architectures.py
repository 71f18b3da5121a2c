"""The hub-size architectures users load today, end to end, with RANDOM weights (no download).

Each model is built at its real hub size from its timm name (``pretrained=False``) or its
Hugging Face default config, then taken through the whole focusvit path: ``adapt`` picks the
expected family, every applicable explainer gives finite ``(B, h, w)`` maps at the model's own
input size, position prompts are made (``make_prompts`` of ``rollout_svd`` on columnar ViTs,
``swin_window_prompts`` on Swin), and ``fit_task(tuner="lora", fort=True)`` trains one step with
finite losses and hands the backbone back bit-identical. One test per model, so a failure names
its model. Slow: a few seconds to a minute per model on two CPU threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import focusvit
from focusvit.backbones import BackboneAdapter, family_of
from focusvit.explainers import EXPLAINERS, explain
from focusvit.prompting import make_prompts, swin_window_prompts

pytestmark = pytest.mark.slow

VIT_METHODS = {"attention", "cam", "gradcam", "random", "rollout", "rollout_svd"}
SWIN_METHODS = {"cam", "gradcam", "random"}


@dataclass(frozen=True)
class Case:
    """One hub architecture: how to build it and the family / adapter ``adapt`` must pick."""

    build: Callable[[], BackboneAdapter]
    family_name: str  # the FamilyEntry name (what supported_families() lists)
    adapter: str  # type(adapter).__name__
    family: str  # adapter.family
    timm_name: str | None = None  # skipped when timm does not know it


def timm_case(name: str, family_name: str, adapter: str, family: str = "vit") -> Case:
    def build() -> BackboneAdapter:
        return focusvit.load_backbone(f"timm:{name}", pretrained=False, num_classes=0)

    return Case(build, family_name, adapter, family, timm_name=name)


def hf_case(build_model: Callable[[], nn.Module], family_name: str, adapter: str, family: str):
    def build() -> BackboneAdapter:
        return focusvit.adapt(build_model().eval())

    return Case(build, family_name, adapter, family)


def _clip_vision() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(patch_size=16))


def _clip_full() -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig())


def _siglip_vision() -> nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return SiglipVisionModel(SiglipVisionConfig())


def _siglip2_vision() -> nn.Module:
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    return Siglip2VisionModel(Siglip2VisionConfig())


def _dinov3() -> nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    return DINOv3ViTModel(DINOv3ViTConfig())


def _beit() -> nn.Module:
    from transformers import BeitConfig, BeitModel

    return BeitModel(BeitConfig())


def _beit_classifier() -> nn.Module:
    from transformers import BeitConfig, BeitForImageClassification

    return BeitForImageClassification(BeitConfig(num_labels=3))


def _beit_hub() -> nn.Module:
    """``microsoft/beit-base-patch16-224``'s architecture: per-layer relative position bias and
    mean pooling (the default config has no position information at all)."""
    from transformers import BeitConfig, BeitModel

    config = BeitConfig(
        use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=0.1
    )
    return BeitModel(config)


def _data2vec_vision() -> nn.Module:
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    return Data2VecVisionModel(Data2VecVisionConfig())


def _data2vec_vision_shared_bias() -> nn.Module:
    """The shared relative position bias of the BEiT-style pre-training checkpoints."""
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    return Data2VecVisionModel(Data2VecVisionConfig(use_shared_relative_position_bias=True))


def _swinv2() -> nn.Module:
    from transformers import Swinv2Config, Swinv2Model

    return Swinv2Model(Swinv2Config())


def _swinv2_hub() -> nn.Module:
    """``microsoft/swinv2-tiny-patch4-window8-256``'s architecture."""
    from transformers import Swinv2Config, Swinv2Model

    return Swinv2Model(Swinv2Config(image_size=256, window_size=8))


TIMM_VIT = "timm ViT/DeiT/DINO/DINOv2"
TIMM_EVA = "timm EVA/rotary ViT/DINOv3"
HF_BEIT = "HF BEiT/Data2Vec-vision"
HF_CLIP = "HF CLIP vision"
HF_SIGLIP = "HF SigLIP/SigLIP2"

CASES: dict[str, Case] = {
    "timm:beit_base_patch16_224": timm_case(
        "beit_base_patch16_224", "timm BEiT", "TimmBeitAdapter"
    ),
    "timm:swinv2_cr_tiny_ns_224": timm_case(
        "swinv2_cr_tiny_ns_224", "timm Swin V2-Cr", "TimmSwinV2CrAdapter", "swin"
    ),
    "timm:swinv2_tiny_window8_256": timm_case(
        "swinv2_tiny_window8_256", "timm Swin V2", "TimmSwinV2Adapter", "swin"
    ),
    "timm:eva02_tiny_patch14_224": timm_case("eva02_tiny_patch14_224", TIMM_EVA, "TimmEvaAdapter"),
    "timm:vit_small_patch16_dinov3": timm_case(
        "vit_small_patch16_dinov3", TIMM_EVA, "TimmEvaAdapter"
    ),
    "timm:vit_base_patch16_clip_224": timm_case(
        "vit_base_patch16_clip_224", TIMM_VIT, "TimmViTAdapter"
    ),
    "timm:vit_base_patch16_siglip_224": timm_case(
        "vit_base_patch16_siglip_224", TIMM_VIT, "TimmViTAdapter"
    ),
    "hf:CLIPVisionModel": hf_case(_clip_vision, HF_CLIP, "HFCLIPAdapter", "vit"),
    "hf:CLIPModel": hf_case(_clip_full, HF_CLIP, "HFCLIPAdapter", "vit"),
    "hf:SiglipVisionModel": hf_case(_siglip_vision, HF_SIGLIP, "HFSiglipAdapter", "vit"),
    "hf:Siglip2VisionModel": hf_case(_siglip2_vision, HF_SIGLIP, "HFSiglipAdapter", "vit"),
    "hf:DINOv3ViTModel": hf_case(_dinov3, "HF DINOv3 ViT", "HFDINOv3Adapter", "vit"),
    "hf:BeitModel": hf_case(_beit, HF_BEIT, "HFBeitAdapter", "vit"),
    "hf:BeitForImageClassification": hf_case(_beit_classifier, HF_BEIT, "HFBeitAdapter", "vit"),
    "hf:Data2VecVisionModel": hf_case(_data2vec_vision, HF_BEIT, "HFBeitAdapter", "vit"),
    "hf:Swinv2Model": hf_case(_swinv2, "HF Swin V2", "HFSwinV2Adapter", "swin"),
    # the hub checkpoints' own configs where the default config differs in what the adapter reads
    "hf:BeitModel[relative-bias]": hf_case(_beit_hub, HF_BEIT, "HFBeitAdapter", "vit"),
    "hf:Data2VecVisionModel[shared-bias]": hf_case(
        _data2vec_vision_shared_bias, HF_BEIT, "HFBeitAdapter", "vit"
    ),
    "hf:Swinv2Model[window8-256]": hf_case(_swinv2_hub, "HF Swin V2", "HFSwinV2Adapter", "swin"),
}


@pytest.fixture(autouse=True)
def _offline_two_threads(monkeypatch):
    """No hub access (random weights only) and the two cores this suite may use."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def images(batch: int, size: tuple[int, int], seed: int) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def check_family(adapter: BackboneAdapter, case: Case) -> None:
    entry = family_of(adapter.model)
    assert entry is not None, f"{adapter.name}: no registered family accepts the model"
    assert entry.adapter is type(adapter)
    assert entry.name in focusvit.supported_families()
    assert (entry.name, type(adapter).__name__, adapter.family) == (
        case.family_name,
        case.adapter,
        case.family,
    )


def check_explainers(adapter: BackboneAdapter, x: Tensor, labels: Tensor) -> None:
    methods = {m for m, cls in EXPLAINERS.items() if adapter.family in cls.families}
    assert methods >= (SWIN_METHODS if adapter.family == "swin" else VIT_METHODS)
    grid = adapter.grid_size(tuple(x.shape[-2:]))
    hooks = hook_count(adapter.model)
    for method in sorted(methods):
        scores = explain(adapter, x, method, target=labels).scores
        assert scores.shape == (x.shape[0], *grid), method
        assert torch.isfinite(scores).all(), method
    assert hook_count(adapter.model) == hooks, "an explainer left hooks on the model"


def check_prompts(adapter: BackboneAdapter, x: Tensor, labels: Tensor) -> None:
    if adapter.family == "vit":
        explanation = explain(adapter, x, "rollout_svd", target=labels)
        prompt = make_prompts(explanation, top_k=4)
        h, w = adapter.grid_size(tuple(x.shape[-2:]))
        assert prompt.mask.shape == (x.shape[0], h, w)
        assert prompt.target.shape == (x.shape[0], h * w)
        assert prompt.mask.flatten(1).sum(dim=1).tolist() == [4] * x.shape[0]
        assert torch.isfinite(prompt.target).all()
    else:
        prompt = swin_window_prompts(adapter, x, top_k=3)
        assert prompt.stages and prompt.top_k == 3
        for stage in prompt.stages:
            assert stage.targets.shape == stage.scores.shape
            assert stage.targets.shape[0] == x.shape[0]
            assert torch.isfinite(stage.scores).all()
            # every window chooses its top 3 (or all of its real tokens, when fewer)
            assert (stage.targets.sum(dim=-1) <= 3).all() and stage.grid_mask.any()


def check_fit_task(adapter: BackboneAdapter, x: Tensor, labels: Tensor) -> None:
    model = adapter.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hooks = hook_count(model)
    with focusvit.fit_task(adapter, x, labels, tuner="lora", fort=True, steps=1) as task:
        assert task.losses, "no training step ran"
        for step in task.losses:
            assert all(torch.isfinite(torch.tensor(v)) for v in step.values()), step
            assert step["attn"] > 0, step
        with torch.no_grad():
            assert task.logits(x).shape == (x.shape[0], 2)
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert not changed, f"fit_task left changed weights: {changed[:5]}"
    assert hook_count(model) == hooks, "fit_task left hooks on the model"


@pytest.mark.parametrize("name", list(CASES))
def test_hub_architecture_runs_the_whole_path(name, record_property):
    case = CASES[name]
    if case.timm_name is not None:
        import timm

        if not timm.is_model(case.timm_name):
            pytest.skip(f"timm {timm.__version__} has no model {case.timm_name}")
    start = time.perf_counter()
    torch.manual_seed(0)
    adapter = case.build()
    record_property("family", adapter.family)
    record_property("adapter", type(adapter).__name__)
    check_family(adapter, case)
    size = tuple(adapter.data_config["input_size"][1:])
    labels = torch.tensor([0, 1])
    x = images(2, size, seed=1)
    check_explainers(adapter, x, labels)
    check_prompts(adapter, x, labels)
    check_fit_task(adapter, images(4, size, seed=2), torch.tensor([0, 1, 0, 1]))
    seconds = time.perf_counter() - start
    record_property("seconds", round(seconds, 1))
    print(
        f"\n{name}: {family_of(adapter.model).name} / {type(adapter).__name__} "
        f"(family {adapter.family!r}), input {size}, {seconds:.1f}s"
    )
