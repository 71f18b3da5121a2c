"""The backbone adapter contract (docs: docs/families.md).

Explainers, prompting and fine-tuners talk to a :class:`BackboneAdapter`, never to module paths
of timm or Hugging Face models. Each model family is one small file (``timm_vit.py``,
``hf_clip.py``, ...) that declares its facts (blocks, attention sites, token layout, pooling,
LoRA / SSF targets, Grad-CAM layer, head) and registers itself with
:func:`focusvit.backbones.registry.register_family`. The attention-capture engine lives in
``capture.py`` and the token geometry in ``geometry.py``; no family re-implements them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from focusvit.checks import is_whole_number
from focusvit.errors import (
    ConfigError,
    InputSizeError,
    LayerIndexError,
    UnsupportedMethodError,
)

from .capture import (
    AttentionKind,
    AttentionRecord,
    AttentionReducer,
    AttentionSite,
    BlockInput,
    RecomputedSite,
    capture,
)
from .geometry import (
    TokenGeometry,
    TokenLayout,
    WindowGeometry,
    nearest_fitting_size,
    split_heads,
    to_tuple2,
)

Family = Literal["vit", "swin", "cnn"]

#: ImageNet normalisation ``(mean, std)``: the default of :attr:`BackboneAdapter.default_mean_std`
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

__all__ = [
    "IMAGENET_MEAN_STD",
    "AttentionKind",
    "AttentionRecord",
    "AttentionReducer",
    "AttentionSite",
    "BackboneAdapter",
    "BlockInput",
    "Family",
    "RecomputedSite",
    "TokenGeometry",
    "TokenLayout",
    "WindowGeometry",
    "default_data_config",
    "nearest_fitting_size",
    "parameter_device",
    "split_heads",
    "submodule_names",
    "to_tuple2",
]


class BackboneAdapter(nn.Module):
    """Uniform view of one pretrained vision model.

    Subclasses set ``family`` and implement the abstract hooks below. The wrapped model lives in
    ``self.model`` and keeps its own state dict layout, so checkpoints and peft injection work on
    it directly.

    Attributes:
        family: ``"vit"`` (columnar transformer), ``"swin"`` (windowed pyramid) or ``"cnn"``.
        name: the spec the model was loaded from.
        data_config: preprocessing of the pretrained weights: ``input_size (3, H, W)``, ``mean``,
            ``std``, ``crop_pct``, ``interpolation``.
    """

    family: Family = "vit"
    #: normalisation of the family's pretrained weights when the model ships no processor
    #: config (Hugging Face ``preprocessor_config.json`` / timm ``pretrained_cfg`` win)
    default_mean_std: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_MEAN_STD
    _inserted_tokens: int = 0
    _inserted_refreshed: bool = False

    def __init__(self, model: nn.Module, name: str = "", data_config: dict | None = None):
        super().__init__()
        self.model = model
        self.name = name or type(model).__name__
        self.data_config = data_config or default_data_config(224)
        self._inserted_tokens = 0
        self._inserted_refreshed = False

    # ----------------------------------------------------------------- forward API
    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)

    def logits(self, x: Tensor) -> Tensor:
        """Class scores ``(B, num_classes)`` for images ``x`` of shape ``(B, 3, H, W)``."""
        return self.head_from_tokens(self.tokens(x))

    def features(self, x: Tensor) -> Tensor:
        """Pooled features ``(B, D)``: what the classification head sees."""
        return self.pool(self.tokens(x))

    def tokens(self, x: Tensor) -> Tensor:
        """Final normalised tokens (``(B, N, D)`` ViT, ``(B, H, W, C)`` Swin, ``(B, C, H, W)`` CNN)."""
        raise NotImplementedError

    def pool(self, tokens: Tensor) -> Tensor:
        """Pooled features ``(B, D)`` from the output of :meth:`tokens`."""
        raise NotImplementedError

    def head_from_tokens(self, tokens: Tensor) -> Tensor:
        return self.head(self.pool(tokens))

    # ----------------------------------------------------------------- structure as data
    @property
    def head(self) -> nn.Module:
        """The classification head (``nn.Identity`` when the model has none)."""
        return self.model.get_submodule(self.head_name) if self.head_name else nn.Identity()

    @property
    def head_name(self) -> str:
        """Dotted path of the classification head inside ``self.model`` ('' when there is none)."""
        raise NotImplementedError

    def set_head(self, head: nn.Module) -> None:
        """Replace the existing classification head (see :meth:`replace_head` for models that
        have none)."""
        if not self.head_name:
            raise UnsupportedMethodError(
                f"{self.name} has no classification head to replace; load it with "
                "load_backbone(spec, num_classes=K) or use adapter.replace_head(head), which "
                "also places a head on a model loaded with num_classes=0"
            )
        parent_name, _, child = self.head_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, head)

    def replace_head(self, head: nn.Module) -> None:
        """Make ``head`` the classification head, also when the model has none.

        ``head`` maps pooled features ``(B, num_features)`` to logits ``(B, K)``, e.g. an
        ``nn.Linear`` initialised from a support set. Works on models loaded with a head and on
        models loaded with ``num_classes=0`` (the head slot is created the way the family
        does it); afterwards ``head_name`` names it and ``logits`` returns ``(B, K)``.
        :meth:`remove_head` undoes the slot creation.

        Raises:
            UnsupportedMethodError: the family has no place for a head over pooled features.
        """
        if self.head_name:
            self.set_head(head)
        else:
            self._attach_head(head)

    def remove_head(self) -> None:
        """Remove the classification head: ``logits`` then returns the pooled features
        ``(B, num_features)``, as for ``load_backbone(spec, num_classes=0)``. A no-op when the
        model has no head."""
        if self.head_name:
            self._detach_head()

    def reset_head(self, num_classes: int) -> None:
        """A freshly initialised linear head with ``num_classes`` outputs, initialised as the
        model's library does it (timm: ``reset_classifier``); ``0`` removes the head.

        Draws from torch's global RNG like the library does (seed before calling it for
        reproducible heads).
        """
        check_num_classes(num_classes)
        if num_classes == 0:
            self.remove_head()
        else:
            self.replace_head(nn.Linear(self.num_features, num_classes))

    def _attach_head(self, head: nn.Module) -> None:
        """Create the head slot of a model without a head and put ``head`` in it."""
        raise UnsupportedMethodError(
            f"{self.name} ({type(self.model).__name__}) has no classification head slot; load "
            "it with load_backbone(spec, num_classes=K) to create one"
        )

    # ----------------------------------------------------------------- text tower
    @property
    def has_text_tower(self) -> bool:
        """True when the model was loaded with a text encoder (full CLIP / SigLIP models)."""
        return False

    @property
    def text_logit_scale(self) -> float | None:
        """Multiplier of the image-text cosine in the model's zero-shot logits (CLIP / SigLIP:
        ``logit_scale.exp()``); ``None`` without a text tower."""
        return None

    @property
    def text_logit_bias(self) -> float | None:
        """Bias of the model's zero-shot logits (SigLIP's ``logit_bias``; 0 for CLIP);
        ``None`` without a text tower."""
        return None

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Text embeddings ``(K, num_features)`` in the space of :meth:`features`, for
        ``head_init="text"`` (a head built from class names, CLIP-style zero-shot).

        Raises:
            UnsupportedMethodError: the model has no text tower.
        """
        raise UnsupportedMethodError(
            f"{self.name} has no text tower, so head_init='text' cannot build a head from class "
            "names; load a full CLIP or SigLIP model with its text encoder (e.g. "
            "hf:openai/clip-vit-base-patch16 or hf:google/siglip-base-patch16-224), or use "
            "head_init='svm'"
        )

    def _detach_head(self) -> None:
        """Remove the (existing) head so that logits are the pooled features."""
        self.set_head(nn.Identity())

    @property
    def num_features(self) -> int:
        """Dimension D of :meth:`features`."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        head = self.head
        return head.out_features if isinstance(head, nn.Linear) else 0

    @property
    def blocks(self) -> list[nn.Module]:
        """Transformer blocks in execution order (all stages flattened for Swin)."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def input_module(self) -> nn.Module:
        """The module that receives the images first (patch embedding); hooked to see each forward."""
        raise NotImplementedError

    @property
    def gradcam_layer(self) -> nn.Module:
        """Default Grad-CAM target: the last block's first norm (ViT, Swin), last conv stage (CNN)."""
        raise NotImplementedError

    @property
    def lora_targets(self) -> list[str]:
        """Leaf module names peft's ``target_modules`` should match (attention qkv and output)."""
        raise NotImplementedError

    @property
    def ssf_targets(self) -> list[str]:
        """Modules whose outputs SSF scales and shifts (Lian et al., "Scaling & Shifting Your
        Features", NeurIPS 2022), as data.

        Full dotted names inside ``self.model`` (matched exactly, not as suffixes: suffixes like
        ``norm`` are ambiguous in timm, where ``patch_embed.norm`` or ``attn.norm`` may exist),
        in execution order: patch embedding, then per block the first norm, the q/k/v (or fused
        qkv) projections, the attention output projection, the second norm, both MLP linears,
        then the final norm. ``[]`` when SSF does not apply to the family (CNNs).
        """
        return []

    @property
    def embed_dim(self) -> int:
        """Width D of the tokens that flow through the blocks of a columnar ViT.

        Differs from :attr:`num_features` when the pooled feature concatenates tokens (Dinov2's
        CLS + mean, DeiT's CLS + distillation token). Used by VPT for its prompt tokens.
        """
        raise UnsupportedMethodError(
            f"{self.name} ({self.family}) has no single token width; embed_dim applies to "
            "columnar ViTs only"
        )

    # ----------------------------------------------------------------- geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def prefix_layout(self) -> TokenLayout:
        """The model's own prefix tokens (a family fact): CLS, distillation, registers.

        Default: no prefix and no CLS token (pyramid models, CNNs)."""
        return TokenLayout(cls=0)

    @property
    def token_layout(self) -> TokenLayout:
        """:meth:`prefix_layout` plus the tokens a tuner inserted (one object for both)."""
        layout = self.prefix_layout()
        if not self._inserted_tokens:
            return layout
        return dataclasses.replace(
            layout, inserted=self._inserted_tokens, refreshed=self._inserted_refreshed
        )

    @property
    def num_prefix_tokens(self) -> int:
        """P: the model's own tokens before the patch tokens (CLS, registers, distillation
        token). Tokens a tuner inserts are not counted (see :attr:`inserted_tokens`)."""
        return self.prefix_layout().num_prefix

    @property
    def has_cls_token(self) -> bool:
        """True when token 0 is a CLS token. Without one (SigLIP, GAP ViTs) the "CLS row" of
        rollout, raw attention and the attention loss is the mean of the patch query rows."""
        return self.prefix_layout().has_cls

    @property
    def heads_per_block(self) -> list[int]:
        """Attention heads of every block in :attr:`blocks` order (a family fact)."""
        raise UnsupportedMethodError(
            f"{self.name} ({self.family}) has no attention heads; heads apply to transformers"
        )

    @property
    def num_heads(self) -> int:
        """Attention heads per block of a columnar ViT (every block has the same count).

        Raises:
            UnsupportedMethodError: a CNN, or a pyramid model whose stages differ (use
                :attr:`heads_per_block`).
        """
        heads = set(self.heads_per_block)
        if len(heads) != 1:
            raise UnsupportedMethodError(
                f"{self.name} ({self.family}) has {sorted(heads)} heads in different blocks; "
                "read adapter.heads_per_block instead of adapter.num_heads"
            )
        return heads.pop()

    @property
    def inserted_tokens(self) -> int:
        """T: tokens a tuner (VPT) inserted right after the prefix tokens inside the blocks.

        While T > 0, block inputs, outputs of block sub-modules (e.g. :attr:`gradcam_layer`) and
        the maps of :meth:`capture_attention` hold ``P + T + N`` tokens laid out
        ``[prefix (P) | inserted (T) | patches (N)]``; the final tokens of :meth:`tokens`, the
        pooling and the head still see ``[prefix (P) | patches (N)]``. 0 without such a tuner.
        """
        return self._inserted_tokens

    @property
    def inserted_tokens_refreshed(self) -> bool:
        """True when every block receives a fresh set of inserted tokens that replaces the
        previous block's outputs at those positions (deep VPT); False when the tokens inserted
        before the first block flow through all blocks (shallow VPT). Attention rollout treats
        refreshed tokens as sources: no attention flows through them to earlier blocks."""
        return self._inserted_refreshed and self._inserted_tokens > 0

    @property
    def num_tokens_before_patches(self) -> int:
        """P + T: index of the first patch token inside the blocks (block inputs, captured
        attention maps, outputs of block sub-modules). Equals :attr:`num_prefix_tokens` when no
        tuner inserted tokens."""
        return self.num_prefix_tokens + self.inserted_tokens

    def set_inserted_tokens(self, count: int, refreshed: bool = False) -> None:
        """Declare that ``count`` tokens are inserted after the prefix inside the blocks.

        Called by tuners that insert tokens (VPT) when they are applied, and with ``count=0``
        when they are removed (also on error); not meant for end users.

        Args:
            count: T >= 0; 0 resets the declaration.
            refreshed: True when each block gets its own new tokens (deep VPT).

        Raises:
            UnsupportedMethodError: ``count > 0`` on a family without a token sequence.
        """
        if not is_whole_number(count, 0):
            raise ConfigError(f"inserted token count must be an int >= 0, got {count!r}")
        if count and self.family != "vit":
            raise UnsupportedMethodError(
                f"{self.name} ({self.family}) has no token sequence to insert tokens into; "
                "inserted tokens (VPT prompts) apply to columnar ViTs only"
            )
        self._inserted_tokens = count
        self._inserted_refreshed = bool(refreshed) and count > 0

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputSizeError` when ``x`` is not ``(B, 3, H, W)`` with H, W fitting."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputSizeError(
                f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}; "
                "use focusvit.data.load_images / adapter.preprocess to build a batch"
            )
        multiple = self.size_multiple
        h, w = x.shape[-2:]
        if h % multiple[0] or w % multiple[1]:
            fit = nearest_fitting_size((h, w), multiple)
            raise InputSizeError(
                f"input size {h}x{w} does not fit {self.name}: height and width must be multiples "
                f"of {multiple[0]}x{multiple[1]}; resize or crop to e.g. {fit[0]}x{fit[1]}"
            )

    @property
    def size_multiple(self) -> tuple[int, int]:
        """Input height/width must be multiples of this."""
        return self.patch_size

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` for an input of ``image_size`` ``(H, W)`` pixels."""
        ph, pw = self.patch_size
        return image_size[0] // ph, image_size[1] // pw

    def geometry(self, image_size: tuple[int, int]) -> TokenGeometry:
        """:class:`TokenGeometry` for an input of ``image_size`` ``(H, W)`` pixels, including
        the tokens a tuner inserted."""
        return TokenGeometry(
            self.num_prefix_tokens,
            self.grid_size(image_size),
            self.patch_size,
            self.inserted_tokens,
        )

    def patch_start(self, num_tokens: int, image_size: tuple[int, int]) -> int:
        """Index of the first patch token in a sequence of ``num_tokens`` tokens.

        Both layouts are recognised by their length: final tokens ``P + N`` (output of
        :meth:`tokens`) -> P; tokens inside the blocks ``P + T + N`` (block inputs, captured
        attention, :attr:`gradcam_layer` outputs) -> P + T.

        Raises:
            InputSizeError: ``num_tokens`` fits neither layout for ``image_size``.
        """
        h, w = self.grid_size(image_size)
        n = h * w
        for start in (self.num_prefix_tokens, self.num_tokens_before_patches):
            if num_tokens == start + n:
                return start
        inserted = (
            f" or {self.num_tokens_before_patches + n} inside the blocks ({self.inserted_tokens} "
            "tokens inserted by a tuner)"
            if self.inserted_tokens
            else ""
        )
        raise InputSizeError(
            f"{num_tokens} tokens do not fill a {h}x{w} patch grid for input {image_size}: "
            f"{self.name} expects {self.num_prefix_tokens} prefix tokens + {n} patches = "
            f"{self.num_prefix_tokens + n}{inserted}; pass the image size the tokens were "
            "computed at"
        )

    def tokens_to_grid(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Tokens ``(B, N_total, D)`` -> patch feature map ``(B, D, h, w)``.

        Prefix tokens (and tokens a tuner inserted, for tokens taken inside the blocks) are
        dropped; see :meth:`patch_start` for the two accepted layouts.
        """
        h, w = self.grid_size(image_size)
        patches = tokens[:, self.patch_start(tokens.shape[1], image_size) :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)

    # ----------------------------------------------------------------- attention
    def attention_sites(self) -> list[AttentionSite]:
        """One :class:`AttentionSite` per block (resolved now, so peft-injected layers count)."""
        raise UnsupportedMethodError(
            f"{self.name} ({self.family}) has no attention layers; use the 'cam' or 'gradcam' "
            "explainers on CNNs"
        )

    def _reshape_attention(self, logits: Tensor, batch_size: int) -> Tensor:
        """Hook output ``(B', heads, N, N)`` -> the public layout of the family."""
        return logits

    def _normalise_layers(self, layers: int | Sequence[int] | None) -> list[int]:
        n = self.num_layers
        if layers is None:
            return list(range(n))
        if isinstance(layers, int):
            layers = [layers]
        out = []
        for layer in layers:
            if not -n <= layer < n:
                raise LayerIndexError(
                    f"layer {layer} out of range: {self.name} has {n} blocks; use 0..{n - 1} "
                    f"(or -{n}..-1 counted from the last block)"
                )
            out.append(layer % n)
        return out

    @contextmanager
    def capture_attention(
        self,
        layers: int | Sequence[int] | None = None,
        kind: AttentionKind = "probs",
        reduce: AttentionReducer | None = None,
        chunk: int = 4,
        shift_mask: bool = False,
    ) -> Iterator[AttentionRecord]:
        """Record attention of the chosen blocks during forwards run inside the block.

        Args:
            layers: block indices (negative allowed), default all blocks. A block named more
                than once (``[-1, n - 1]``) is hooked once; its map fills every slot naming it.
            kind: ``"probs"`` (softmax over keys) or ``"logits"`` (what the model feeds its
                softmax: ``q kᵀ · scale`` after any rotary embedding, + relative position bias;
                cosine logits times the learned scale for Swin V2; Swin's shift masks only with
                ``shift_mask=True``).
            reduce: optional ``reduce(layer, maps)`` applied, under ``torch.no_grad``, to the
                detached maps of ``chunk`` images at a time; the record then holds the
                per-layer results concatenated along dim 0 (see :func:`capture.capture`).
            chunk: images per ``reduce`` call (only used with ``reduce``).
            shift_mask: Swin adapters only: also add the model's own shifted-window mask to
                the logits of shifted blocks. Other families raise
                :class:`UnsupportedMethodError` when True.

        Yields:
            :class:`AttentionRecord` whose i-th map has shape ``(B, heads, N, N)`` (ViT, with
            ``N = num_tokens_before_patches + patches``) or ``(B, windows, heads, n, n)``
            (Swin), from the most recent forward, in the autograd graph (or the ``reduce``
            results). Hooks are removed on exit, also when the forward raises.
        """
        if shift_mask:
            raise UnsupportedMethodError(
                f"{self.name} ({self.family}) has no shifted-window attention mask; "
                "shift_mask=True applies to Swin adapters only"
            )
        with capture(self, layers, kind, reduce, chunk) as record:
            yield record

    # ----------------------------------------------------------------- gradients and modes
    @contextmanager
    def track_block_input(self, block: int = -1) -> Iterator[BlockInput]:
        """Make the input of ``block`` a leaf tensor that requires grad.

        Everything before the block is cut from the graph, so ``torch.autograd.grad(score,
        record.tokens)`` only crosses the head and the blocks from ``block`` on (a gradient at
        the last block costs about one block's backward, not a full one). Use it together with
        :meth:`frozen` for the cheapest gradient.
        """
        index = self._normalise_layers(block)[0]
        record = BlockInput()

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                leaf = args[0].detach().requires_grad_(True)
                args = (leaf, *args[1:])
            else:
                key = next(iter(kwargs))
                leaf = kwargs[key].detach().requires_grad_(True)
                kwargs = {**kwargs, key: leaf}
            record.tokens = leaf
            return args, kwargs

        handle = self.blocks[index].register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            yield record
        finally:
            handle.remove()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Temporarily set ``requires_grad=False`` on every parameter; restored on exit."""
        params = list(self.model.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Temporarily put the model in eval mode; every module's training flag is restored."""
        modes = {m: m.training for m in self.modules()}
        self.eval()
        try:
            yield
        finally:
            for module, mode in modes.items():
                module.train(mode)

    # ----------------------------------------------------------------- preprocessing
    def preprocess(
        self,
        images: Sequence[Any],
        size: tuple[int, int] | int | None = None,
        resize: str | None = None,
    ) -> Tensor:
        """PIL images / arrays / paths -> normalised batch ``(B, 3, H, W)`` using ``data_config``.

        ``size`` overrides ``data_config["input_size"]``; ``resize`` (``"crop"``, ``"stretch"``
        or ``"letterbox"``) overrides ``data_config["resize"]`` (see
        :func:`focusvit.data.images.transform_image`).

        Tensors (taken as preprocessed already), empty arrays and folders are refused with the
        fix (:class:`InputSizeError`, :class:`~focusvit.errors.ImageReadError`).
        """
        from focusvit.data.images import to_batch

        return to_batch(_check_raw_images(images), self.data_config, size=size, resize=resize)

    def preprocess_masks(
        self,
        masks: Sequence[Any],
        size: tuple[int, int] | int | None = None,
        resize: str | None = None,
    ) -> Tensor:
        """Object masks (each ``(H_i, W_i)``, nonzero = object, aligned with its image) ->
        ``(B, H, W)`` bool, through the same resize / crop / padding as :meth:`preprocess`."""
        from focusvit.data.images import masks_to_batch

        return masks_to_batch(masks, self.data_config, size=size, resize=resize)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, family={self.family!r}"


def _check_raw_images(images: Any) -> Any:
    """``images`` (an iterable as a list), or a clear error for what
    :meth:`BackboneAdapter.preprocess` cannot take."""
    import os
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from focusvit.errors import ImageReadError

    if images is None or isinstance(images, bytes | bytearray | int | float):
        raise InputSizeError(_raw_image_error(images))
    single = isinstance(
        images, str | os.PathLike | np.ndarray | Tensor | Image.Image
    ) or not hasattr(images, "__iter__")
    items = [images] if single else list(images)
    if not items:
        raise InputSizeError("preprocess got no images; pass a list of PIL images, arrays or paths")
    for item in items:
        if not isinstance(item, str | os.PathLike | np.ndarray | Tensor | Image.Image):
            raise InputSizeError(_raw_image_error(item))
        if isinstance(item, Tensor):
            raise InputSizeError(
                f"preprocess takes raw images (PIL images, (H, W, 3) arrays, file paths), got a "
                f"tensor of shape {tuple(item.shape)}: a tensor is taken as preprocessed already, "
                "so pass it to focusvit.explain / the model directly, or convert a [0, 1] image "
                "tensor with torchvision.transforms.functional.to_pil_image first"
            )
        if isinstance(item, np.ndarray) and item.size == 0:
            raise InputSizeError(
                f"image array of shape {item.shape} holds no pixels; pass (H, W) or (H, W, 3) "
                "arrays with H, W >= 1"
            )
        if isinstance(item, str | os.PathLike) and Path(item).is_dir():
            raise ImageReadError(
                f"{item} is a folder, not an image file; pass its images, e.g. "
                f"backbone.preprocess(focusvit.load_images({str(item)!r}))"
            )
    return images if single else items


def check_num_classes(num_classes: Any) -> None:
    """Refuse a head size that is no whole number >= 0 (0: no head)."""
    if not is_whole_number(num_classes, 0):
        raise ConfigError(f"num_classes must be a whole number >= 0, got {num_classes!r}")


def _raw_image_error(item: Any) -> str:
    """The message for an object :meth:`BackboneAdapter.preprocess` cannot read as an image."""
    hint = (
        "; for encoded bytes use PIL.Image.open(io.BytesIO(data))"
        if isinstance(item, bytes | bytearray)
        else ""
    )
    return (
        f"preprocess takes PIL images, (H, W) / (H, W, 3) arrays or image file paths, got "
        f"{type(item).__name__}{hint}"
    )


def default_data_config(size: int, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> dict:
    """ImageNet-style preprocessing at ``size`` px with the 1.15× resize-then-crop protocol."""
    return {
        "input_size": (3, size, size),
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": 1 / 1.15,
        "interpolation": "bicubic",
    }


def submodule_names(
    root: nn.Module, owners: Sequence[nn.Module], parts: Sequence[str]
) -> list[str]:
    """Dotted names inside ``root`` of ``owner.part`` for each owner and each part, in order.

    Parts an owner lacks, and ``nn.Identity`` placeholders, are skipped, so one list of parts can
    name alternatives across library versions (e.g. transformers 4.x ``attention.attention.query``
    next to 5.x ``attention.q_proj``).
    """
    names = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}
    out = []
    for owner in owners:
        prefix = names[id(owner)]
        for part in parts:
            try:
                module = owner.get_submodule(part)
            except AttributeError:
                continue
            if isinstance(module, nn.Identity):
                continue
            out.append(f"{prefix}.{part}" if prefix else part)
    return out


def parameter_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
