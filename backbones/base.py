"""The backbone adapter contract (DESIGN.md section 3).

Explainers, prompting and fine-tuners talk to a :class:`BackboneAdapter`, never to module paths
of timm or Hugging Face models. One subclass per model family knows those internals.

Attention capture does not rely on the model's own attention code path: it hooks the q/k
projections of the chosen layers and recomputes ``q kᵀ · scale`` (+ relative position bias for
Swin) from their outputs. The maps therefore exist whether the model runs fused
(``scaled_dot_product_attention``) or eager attention, they stay in the autograd graph, and the
rest of the network keeps its fast path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from focusvit.errors import InputSizeError, UnsupportedMethodError

Family = Literal["vit", "swin", "cnn"]
AttentionKind = Literal["probs", "logits"]
#: ``reduce(layer, maps)`` for :meth:`BackboneAdapter.capture_attention`: per-chunk attention
#: maps -> a batch-first tensor (or tuple of them).
AttentionReducer = Callable[[int, Tensor], "Tensor | tuple[Tensor, ...]"]


@dataclass(frozen=True)
class TokenGeometry:
    """Token layout of a columnar ViT for one input size.

    Two layouts exist while a tuner has inserted tokens (VPT prompts)::

        final tokens (adapter.tokens, pooling, head):       [ prefix (P) | patches (N) ]
        inside the blocks (block inputs, captured attention,
        outputs of block sub-modules such as gradcam_layer): [ prefix (P) | inserted (T) | patches (N) ]

    Attributes:
        num_prefix_tokens: P, the model's own CLS + register + distillation tokens.
        grid: patch grid ``(h, w)`` for the input size.
        patch_size: ``(ph, pw)`` in pixels.
        num_inserted_tokens: T, tokens a tuner inserted after the prefix inside the blocks
            (0 without such a tuner).
    """

    num_prefix_tokens: int
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    num_inserted_tokens: int = 0

    @property
    def num_patches(self) -> int:
        """N = h · w."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """P + N: tokens of the final (normalised) token sequence."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def num_tokens_before_patches(self) -> int:
        """P + T: index of the first patch token inside the blocks."""
        return self.num_prefix_tokens + self.num_inserted_tokens

    @property
    def num_block_tokens(self) -> int:
        """P + T + N: tokens inside the blocks (the side of captured attention maps)."""
        return self.num_tokens_before_patches + self.num_patches


@dataclass(frozen=True)
class WindowGeometry:
    """Window layout of one Swin block for one input size.

    Attributes:
        grid: token grid ``(H, W)`` of the stage (before padding).
        window: window size ``(wh, ww)``.
        shift: cyclic shift ``(sh, sw)`` applied before partitioning (0 for W-MSA blocks).
        stage: index of the stage the block belongs to.
    """

    grid: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]
    stage: int

    @property
    def padded_grid(self) -> tuple[int, int]:
        return (
            math.ceil(self.grid[0] / self.window[0]) * self.window[0],
            math.ceil(self.grid[1] / self.window[1]) * self.window[1],
        )

    @property
    def num_windows(self) -> int:
        ph, pw = self.padded_grid
        return (ph // self.window[0]) * (pw // self.window[1])


@dataclass
class AttentionSite:
    """How to recompute one layer's attention logits from hooked projection outputs.

    Attributes:
        modules: the modules whose outputs are needed, in the order ``split`` expects them
            (one fused ``qkv`` linear, or separate ``q`` and ``k`` linears).
        split: maps those outputs to ``(q, k)``, each ``(B', heads, N, head_dim)``.
        scale: multiplier of ``q kᵀ``.
        bias: optional callable returning an additive ``(1, heads, N, N)`` bias (Swin's
            relative position bias), evaluated at capture time so it follows training.
        eager_owner: optional attention module with a ``fused_attn`` flag whose eager path
            computes the softmax probabilities itself; for ``kind="probs"`` without ``reduce``
            the capture turns the flag off for this layer only (restored on exit) and reads them
            instead of recomputing ``q kᵀ`` a second time next to the fused kernel.
        probs_module: the module the eager path feeds the probabilities ``(B', heads, N, N)``
            to (timm: ``attn_drop``); required with ``eager_owner``.
        sdpa_owner: optional module during whose forward this layer's attention is one
            ``F.scaled_dot_product_attention(q, k, v)`` call on ``(B', heads, N, head_dim)``
            tensors, with ``q, k`` as ``split`` returns them. For ``kind="probs"`` with
            ``reduce`` the capture computes that call itself, eagerly and ``chunk`` images at a
            time, and hands the softmax it computed to ``reduce`` while it is in cache: the
            probabilities are computed once instead of once in the fused kernel and once more
            for the record. Calls it cannot reproduce exactly (a mask, dropout, causal, a scale
            other than ``scale``, not float32/float64) run unchanged and the maps are
            recomputed from the hooked projections.
    """

    modules: Sequence[nn.Module]
    split: Callable[[Sequence[Tensor]], tuple[Tensor, Tensor]]
    scale: float
    bias: Callable[[], Tensor] | None = None
    eager_owner: nn.Module | None = None
    probs_module: nn.Module | None = None
    sdpa_owner: nn.Module | None = None

    def logits(self, outputs: Sequence[Tensor]) -> Tensor:
        """Pre-softmax attention logits ``(B', heads, N, N)``."""
        q, k = self.split(outputs)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if self.bias is not None:
            logits = logits + self.bias().to(logits.dtype)
        return logits


@dataclass
class AttentionRecord:
    """Attention maps of the most recent forward pass inside :meth:`capture_attention`.

    Index it like a list: ``record[i]`` is the map of the i-th requested layer, shape
    ``(B, heads, N, N)`` for columnar ViTs and ``(B, windows, heads, n, n)`` for Swin.
    """

    layers: list[int]
    kind: AttentionKind
    maps: list[Tensor | None] = field(default_factory=list)

    def __getitem__(self, index: int) -> Tensor:
        value = self.maps[index]
        if value is None:
            raise RuntimeError(
                f"no attention was recorded for layer {self.layers[index]}: run a forward pass "
                "of the adapter (e.g. adapter.logits(x)) inside the capture_attention block"
            )
        return value

    def __len__(self) -> int:
        return len(self.maps)

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self.maps)))


@dataclass
class BlockInput:
    """The input tokens of one block, made a leaf that requires grad (see ``track_block_input``).

    ``tokens`` is ``(B, N, D)`` for ViTs, ``(B, H, W, C)`` or ``(B, H*W, C)`` for Swin, as the
    block receives it. For ViTs ``N = num_tokens_before_patches + patches``: it includes tokens a
    tuner inserted (VPT prompts).
    """

    tokens: Tensor | None = None


class _RestoreFlag:
    """A hook-handle-like object that puts an attribute back on ``remove()``."""

    def __init__(self, owner: Any, attribute: str, value: Any):
        self.owner, self.attribute = owner, attribute
        self.saved = getattr(owner, attribute)
        setattr(owner, attribute, value)

    def remove(self) -> None:
        setattr(self.owner, self.attribute, self.saved)


class _AttentionCall(TorchFunctionMode):
    """Routes the first ``F.scaled_dot_product_attention`` call made while it is active to
    ``compute(*args, **kwargs)``, which returns the attention output, or ``None`` to let the
    original call run. Entered by a forward pre-hook of the attention module and exited by its
    (always called) forward hook, or by :meth:`remove` when the capture ends."""

    def __init__(self, compute: Callable[..., Tensor | None]):
        super().__init__()
        self.compute = compute
        self.seen = self.handled = self.active = False

    def start(self) -> None:
        self.seen = self.handled = False
        self.__enter__()
        self.active = True

    def remove(self) -> None:
        if self.active:
            self.active = False
            self.__exit__(None, None, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not self.seen:
            self.seen = True
            out = self.compute(*args, **kwargs)
            if out is not None:
                self.handled = True
                return out
        return func(*args, **kwargs)


def _remove_all(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


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
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
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
        """Modules whose outputs SSF scales and shifts (DESIGN.md section 6), as data.

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

    @property
    def num_prefix_tokens(self) -> int:
        """P: the model's own tokens before the patch tokens (CLS, registers, distillation
        token). Tokens a tuner inserts are not counted (see :attr:`inserted_tokens`)."""
        return 0

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
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"inserted token count must be an int >= 0, got {count!r}")
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
                raise IndexError(
                    f"layer {layer} out of range: {self.name} has {n} blocks (0..{n - 1})"
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
            kind: ``"probs"`` (softmax over keys) or ``"logits"`` (``q kᵀ · scale`` + relative
                position bias; Swin's shift masks only with ``shift_mask=True``).
            reduce: optional ``reduce(layer, maps) -> Tensor | tuple[Tensor, ...]`` applied, under
                ``torch.no_grad``, to the detached maps of ``chunk`` images at a time as soon as
                the block has computed them; the record then holds the per-layer results
                concatenated along dim 0 instead of the full maps. Each result must keep the
                batch as its first dim. The full ``(B, heads, N, N)`` map of a layer is never
                materialised, which keeps the work in cache (explainers that only need a fused
                map run ~10% faster on CPU) and the memory at ``chunk`` images' worth. Not in the
                autograd graph. On blocks whose attention is one fused SDPA call
                (``AttentionSite.sdpa_owner``: timm and HF ViTs) the capture computes that call
                itself, chunk by chunk, and reduces the softmax it computed, so the attention is
                computed once (the block's output is unchanged and stays differentiable).
            chunk: images per ``reduce`` call (only used with ``reduce``).
            shift_mask: Swin adapters only: also add the model's own shifted-window mask
                (0 / -100 per window, query and key; what the block passed to its attention)
                to the logits of shifted blocks, so ``kind="probs"`` is the attention the model
                computes. Other families raise :class:`UnsupportedMethodError` when True.

        Yields:
            :class:`AttentionRecord` whose i-th map has shape ``(B, heads, N, N)`` (ViT, with
            ``N = num_tokens_before_patches + patches``: tokens a tuner inserted are included)
            or ``(B, windows, heads, n, n)`` (Swin), from the most recent forward, in the
            autograd graph (or the ``reduce`` results). Hooks are removed on exit, also when
            the forward raises.
        """
        if kind not in ("probs", "logits"):
            raise ValueError(f"kind must be 'probs' or 'logits', got {kind!r}")
        if shift_mask:
            raise UnsupportedMethodError(
                f"{self.name} ({self.family}) has no shifted-window attention mask; "
                "shift_mask=True applies to Swin adapters only"
            )
        if reduce is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk={chunk!r} must be a positive int (images per reduce call)")
        indices = self._normalise_layers(layers)
        sites = self.attention_sites()
        record = AttentionRecord(layers=indices, kind=kind, maps=[None] * len(indices))
        handles: list[Any] = []
        state: dict[str, int] = {"batch": 0}

        def on_model_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            state["batch"] = int(x.shape[0])
            record.maps[:] = [None] * len(indices)

        handles.append(
            self.input_module.register_forward_pre_hook(on_model_input, with_kwargs=True)
        )
        try:
            # one set of hooks per block: a block named twice (``[-1, n - 1]``) is hooked once
            # and fills every slot that names it (installing it twice would save the
            # ``fused_attn`` flag already switched off by the first install and restore that)
            for layer in dict.fromkeys(indices):
                slot = indices.index(layer)
                handles.extend(
                    self._hook_site(sites[layer], slot, record, state, kind, reduce, chunk)
                )
            yield record
        finally:
            _remove_all(handles)

    def _hook_site(
        self,
        site: AttentionSite,
        slot: int,
        record: AttentionRecord,
        state: dict,
        kind: str,
        reduce: AttentionReducer | None = None,
        chunk: int = 4,
    ) -> list[Any]:
        outputs: list[Tensor | None] = [None] * len(site.modules)
        layer = record.layers[slot]
        slots = [i for i, other in enumerate(record.layers) if other == layer]

        def put(value: Any) -> None:
            for index in slots:  # the same block requested more than once
                record.maps[index] = value

        # Full probability maps: read the eager path's own softmax (measured on ViT-S/16, batch
        # 32, CPU: capturing all 12 layers 1.17x -> 1.03x a forward). With ``reduce`` the maps
        # are recomputed chunk by chunk in cache instead, which beats materialising them.
        eager = (
            kind == "probs"
            and reduce is None
            and site.eager_owner is not None
            and site.probs_module is not None
        )
        streamed = kind == "probs" and reduce is not None and site.sdpa_owner is not None

        def maps_of(parts: Sequence[Tensor], batch: int) -> Tensor:
            if eager:  # parts = [the probabilities the eager path computed]
                return self._reshape_attention(parts[0], batch)
            logits = site.logits(parts)
            value = logits.softmax(dim=-1) if kind == "probs" else logits
            return self._reshape_attention(value, batch)

        def concat(pieces: list[Any]) -> Tensor | tuple[Tensor, ...]:
            if isinstance(pieces[0], tuple):
                return tuple(torch.cat(group) for group in zip(*pieces, strict=True))
            return torch.cat(pieces)

        def reduced(parts: Sequence[Tensor], batch: int) -> Tensor | tuple[Tensor, ...]:
            rows_per_image = parts[0].shape[0] // max(batch, 1)  # Swin: windows per image
            pieces = []
            with torch.no_grad():
                for start in range(0, batch, chunk):
                    stop = min(start + chunk, batch)
                    sliced = [
                        p.detach()[start * rows_per_image : stop * rows_per_image] for p in parts
                    ]
                    pieces.append(reduce(layer, maps_of(sliced, stop - start)))
            return concat(pieces)

        def attention_call(
            q: Tensor,
            k: Tensor,
            v: Tensor,
            attn_mask: Tensor | None = None,
            dropout_p: float = 0.0,
            is_causal: bool = False,
            scale: float | None = None,
            enable_gqa: bool = False,
            **unknown: Any,
        ) -> Tensor | None:
            """The layer's ``scaled_dot_product_attention`` call, computed eagerly ``chunk``
            images at a time (as timm's eager path: ``softmax((q · scale) kᵀ) v``); each
            chunk's softmax goes to ``reduce`` while in cache. ``None``: not reproducible here,
            the original call runs and the maps are recomputed from the projections."""
            batch = state["batch"]
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            if (
                unknown
                or attn_mask is not None
                or dropout_p
                or is_causal
                or enable_gqa
                or q.dtype not in (torch.float32, torch.float64)
                or not q.dtype == k.dtype == v.dtype
                or q.dim() != 4
                or k.shape != q.shape
                or v.shape[:-1] != k.shape[:-1]
                or batch < 1
                or q.shape[0] % batch
                or not math.isclose(scale, site.scale, rel_tol=1e-6)
            ):
                return None
            rows = q.shape[0] // batch  # attention rows per image (1 for columnar ViTs)
            pieces = []

            def reduce_chunk(probs: Tensor, images: int) -> None:
                with torch.no_grad():
                    maps = self._reshape_attention(probs.detach(), images)
                    pieces.append(reduce(layer, maps))  # type: ignore[misc]

            if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
                # in the autograd graph (the block a gradient is taken at): differentiable ops,
                # chunks from ``split`` (its backward is one ``cat``; slicing would build a
                # zero-filled full-size gradient per chunk)
                outputs = []
                size = chunk * rows
                for qc, kc, vc in zip(q.split(size), k.split(size), v.split(size), strict=True):
                    probs = ((qc * scale) @ kc.transpose(-2, -1)).softmax(dim=-1)
                    reduce_chunk(probs, qc.shape[0] // rows)
                    outputs.append(probs @ vc)
                put(concat(pieces))
                return torch.cat(outputs)
            # No graph: the logits of each image straight from the strided q, k views (no
            # copies, scale folded in), softmax in place, and the output written in the
            # (B', N, heads, d) layout, so the caller's ``.transpose(1, 2).reshape(B', N, C)``
            # needs no copy. A fresh buffer per chunk: ``reduce`` may keep views of its input.
            heads, tokens = q.shape[1], q.shape[2]
            out = v.new_empty(v.shape[0], tokens, heads, v.shape[3]).transpose(1, 2)
            for start in range(0, batch, chunk):
                part = slice(start * rows, min(start + chunk, batch) * rows)
                if q.device.type == "cpu":
                    probs = q.new_empty(part.stop - part.start, heads, tokens, tokens)
                    for i, row in enumerate(range(part.start, part.stop)):
                        key = k[row].transpose(-2, -1)
                        torch.baddbmm(probs[i], q[row], key, beta=0.0, alpha=scale, out=probs[i])
                else:  # one batched kernel rather than one launch per image
                    probs = (q[part] * scale) @ k[part].transpose(-2, -1)
                torch.softmax(probs, dim=-1, out=probs)
                reduce_chunk(probs, part.stop // rows - start)
                out[part] = probs @ v[part]
            put(concat(pieces))
            return out

        def store(parts: list[Tensor]) -> None:
            if reduce is None:
                put(maps_of(parts, state["batch"]))
            else:
                put(reduced(parts, state["batch"]))

        if eager:

            def probs_hook(_module: nn.Module, inputs: tuple) -> None:
                store([inputs[0]])

            return [
                _RestoreFlag(site.eager_owner, "fused_attn", False),
                site.probs_module.register_forward_pre_hook(probs_hook),  # type: ignore[union-attr]
            ]

        def make_hook(position: int) -> Callable:
            def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
                outputs[position] = output
                if not streamed and all(o is not None for o in outputs):
                    parts = list(outputs)
                    outputs[:] = [None] * len(outputs)
                    store(parts)  # type: ignore[arg-type]

            return hook

        projection_hooks = [
            m.register_forward_hook(make_hook(i)) for i, m in enumerate(site.modules)
        ]
        if not streamed:
            return projection_hooks

        # Reduced probabilities where the attention is one SDPA call: compute that call here,
        # softmax once per chunk (ViT-S/16, batch 32, 2-core CPU, alternating in one process:
        # rollout 1.20x -> 1.07x a forward).
        # The projections are only kept for the fallback (call not reproducible, or the module
        # ran its eager path); nothing is recorded when the forward raises.
        call = _AttentionCall(attention_call)

        def begin(_module: nn.Module, _inputs: tuple) -> None:
            outputs[:] = [None] * len(outputs)
            call.remove()
            call.start()

        def end(_module: nn.Module, _inputs: tuple, output: Any) -> None:
            call.remove()
            parts = list(outputs)
            outputs[:] = [None] * len(outputs)
            if output is not None and not call.handled and all(p is not None for p in parts):
                store(parts)  # type: ignore[arg-type]

        owner = site.sdpa_owner
        return [
            *projection_hooks,
            owner.register_forward_pre_hook(begin),  # type: ignore[union-attr]
            owner.register_forward_hook(end, always_call=True),  # type: ignore[union-attr]
            call,
        ]

    # ----------------------------------------------------------------- gradients and modes
    @contextmanager
    def track_block_input(self, block: int = -1) -> Iterator[BlockInput]:
        """Make the input of ``block`` a leaf tensor that requires grad.

        Everything before the block is cut from the graph, so ``torch.autograd.grad(score,
        record.tokens)`` only crosses the head and the blocks from ``block`` on (DESIGN.md
        section 10). Use it together with :meth:`frozen` for the cheapest gradient.
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


def nearest_fitting_size(size: tuple[int, int], multiple: tuple[int, int]) -> tuple[int, int]:
    """The ``(H, W)`` nearest to ``size`` whose sides are positive multiples of ``multiple``
    (the suggestion of an input-size error)."""
    return (
        max(multiple[0], round(size[0] / multiple[0]) * multiple[0]),
        max(multiple[1], round(size[1] / multiple[1]) * multiple[1]),
    )


def _check_raw_images(images: Any) -> Any:
    """``images`` (an iterable as a list), or a clear error for what
    :meth:`BackboneAdapter.preprocess` cannot take."""
    import os
    from pathlib import Path

    import numpy as np

    from focusvit.errors import ImageReadError

    single = isinstance(images, str | os.PathLike | np.ndarray | Tensor) or not hasattr(
        images, "__iter__"
    )
    items = [images] if single else list(images)
    for item in items:
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


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, N, heads*d)`` -> ``(B, heads, N, d)``."""
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)


def to_tuple2(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def parameter_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
