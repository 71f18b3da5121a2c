"""Supervised pretraining of a small ViT / Swin on the base classes of the synthetic scenes.

A backbone trained (docs/pretraining.md) on the *base* glyph classes of
:class:`focusvit.SyntheticScenes`, whose attention spreads over every object of a cluttered
scene (the situation position prompts are made for). The novel classes stay unseen, so the
checkpoint can be evaluated few-shot on them.

Usage::

    from focusvit.pretraining import PretrainConfig, pretrain

    path = pretrain(PretrainConfig(epochs=5), "outputs/pretrain/vit")
    backbone = focusvit.load_backbone(path)  # model.safetensors, architecture in its metadata

Scenes are rendered once into a ``uint8`` tensor (cached in ``out_dir/scenes.safetensors``); training is
AdamW with a linear warm-up and a cosine decay, bf16 autocast on CUDA. After every epoch
``out_dir/checkpoint.safetensors`` holds the model, optimiser, schedule, epoch and RNG states: calling
:func:`pretrain` again with the same config resumes after the last finished epoch (a different
config in the same folder is refused), and gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from focusvit.checks import is_finite_number, is_whole_number
from focusvit.errors import ConfigError
from focusvit.runs import check_settings, load_state, save_state

CHECKPOINT = "checkpoint.safetensors"
MODEL_FILE = "model.safetensors"
SCENE_CACHE = "scenes.safetensors"
CONFIG_FILE = "pretrain_config.json"

#: config keys that may differ when a run folder is resumed (they do not change the result)
RESUMABLE = ("device", "num_threads")
DINOV2_INIT = "offline:dinov2-s14-imgfocus"
DINOV2_ARCH = "vit_small_patch14_dinov2"


@dataclass
class PretrainConfig:
    """What to train and how (defaults: a 6-block ViT-Tiny on 64 base classes, CPU-sized).

    Attributes:
        arch: timm model name the architecture starts from.
        init: ``None`` trains from a random initialisation; ``"offline:dinov2-s14-imgfocus"``
            starts from the offline DINOv2 ViT-S/14 weights (docs/pretraining.md; needs
            ``arch="vit_small_patch14_dinov2"``, no ``model_kwargs`` and an image size that is
            a multiple of 14). A from-scratch ViT needs far more steps than a CPU gives in
            minutes, a pretrained start learns the base classes in a few epochs.
        model_kwargs: timm ``create_model`` arguments changing it (``depth``, ``embed_dim``,
            ``num_heads``, ``patch_size``, Swin ``depths`` / ``window_size`` ...).
        image_size: side of the rendered scenes and of the model input; a multiple of the patch
            size (and, for Swin, of patch size x window size x 2**(stages-1)).
        num_classes: train on the first ``num_classes`` base classes (``None``: all of them).
        images_per_class: training images per class.
        val_per_class: held-out images per class for validation accuracy (0: no validation).
        epochs: passes over the training images.
        batch_size: images per step.
        lr: peak AdamW learning rate (reached after the warm-up, then cosine decay to 0).
        weight_decay: AdamW weight decay (not applied to biases, norms, tokens, position
            embeddings).
        warmup_fraction: share of all steps spent in the linear warm-up, in [0, 1).
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        flip: random horizontal flips. Off by default: a mirrored glyph is often another class
            (b / d, p / q, arrows), so flipping would teach wrong labels.
        crop_padding: random translation by up to this many pixels (reflect-padded crop).
        scene_seed: seed of the class split and of the rendered scenes.
        seed: seed of the model initialisation, the batch order and the augmentation.
        device: ``"cpu"``, ``"cuda"``, ... (``None``: CUDA when available).
        amp: bf16 autocast on CUDA (ignored on CPU).
        num_threads: CPU threads for torch (``None``: leave torch's setting).
    """

    arch: str = "vit_tiny_patch16_224"
    init: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"depth": 6})
    image_size: int = 112
    num_classes: int | None = 64
    images_per_class: int = 40
    val_per_class: int = 5
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    flip: bool = False
    crop_padding: int = 8
    scene_seed: int = 0
    seed: int = 0
    device: str | None = None
    amp: bool = True
    num_threads: int | None = None

    def __post_init__(self) -> None:
        positive = ("image_size", "images_per_class", "epochs", "batch_size")
        for name in positive:
            value = getattr(self, name)
            if not is_whole_number(value, 1):
                raise ConfigError(f"pretrain {name} must be an integer >= 1, got {value!r}")
        if self.num_classes is not None and not is_whole_number(self.num_classes, 2):
            raise ConfigError(
                f"pretrain num_classes must be >= 2 (or None for every base class), "
                f"got {self.num_classes!r}"
            )
        for name in ("val_per_class", "crop_padding"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pretrain {name} must be >= 0, got {getattr(self, name)!r}")
        if self.crop_padding >= self.image_size // 2:
            raise ConfigError(
                f"pretrain crop_padding ({self.crop_padding}) must be < image_size / 2 "
                f"({self.image_size / 2:g})"
            )
        if not is_finite_number(self.lr) or not self.lr > 0:
            raise ConfigError(f"pretrain lr must be a finite number > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"pretrain weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("warmup_fraction", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"pretrain {name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"pretrain num_threads must be >= 1, got {self.num_threads!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"pretrain model_kwargs must be a mapping, got {self.model_kwargs!r}")
        reserved = {"num_classes", "img_size", "pretrained"} & set(self.model_kwargs)
        if reserved:
            raise ConfigError(
                f"pretrain model_kwargs must not set {', '.join(sorted(reserved))}: use the "
                "num_classes and image_size options"
            )
        if self.init is not None:
            if self.init != DINOV2_INIT:
                raise ConfigError(
                    f"pretrain init must be null (random) or {DINOV2_INIT!r}, got {self.init!r}"
                )
            if self.arch != DINOV2_ARCH or self.model_kwargs or self.image_size % 14:
                raise ConfigError(
                    f"pretrain init={DINOV2_INIT} needs arch={DINOV2_ARCH}, model_kwargs={{}} "
                    f"and image_size a multiple of 14; got arch={self.arch}, "
                    f"model_kwargs={self.model_kwargs}, image_size={self.image_size}"
                )
        from focusvit.backbones import is_timm_model, suggest_model_names

        if not is_timm_model(self.arch):
            close = suggest_model_names(self.arch.split("_")[0][:8], limit=6)
            raise ConfigError(
                f"pretrain arch {self.arch!r} is not a timm model; e.g. {', '.join(close)}"
            )

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown pretrain option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)


# ----------------------------------------------------------------------------- data
def render_scenes(config: PretrainConfig) -> dict[str, Any]:
    """Render the base-class scenes once: ``{"images": uint8 (N, 3, S, S), "labels", ...}``.

    The first ``images_per_class`` images of each class are for training, the next
    ``val_per_class`` for validation.
    """
    from focusvit.data import SyntheticScenes
    from focusvit.data.synthetic import SceneConfig

    per_class = config.images_per_class + config.val_per_class
    scenes = SyntheticScenes(
        "base",
        images_per_class=per_class,
        config=SceneConfig(image_size=config.image_size),
        seed=config.scene_seed,
        num_classes=config.num_classes,
    )
    images = torch.from_numpy(np.stack([scenes.render(i)[0] for i in range(len(scenes))]))
    labels = torch.tensor(scenes.labels, dtype=torch.long)
    within = torch.arange(len(scenes)) % per_class
    train = within < config.images_per_class
    return {
        "images": images.permute(0, 3, 1, 2).contiguous(),
        "labels": labels,
        "train": train,
        "class_names": list(scenes.class_names),
    }


def _scene_key(config: PretrainConfig) -> dict[str, Any]:
    keys = ("image_size", "num_classes", "images_per_class", "val_per_class", "scene_seed")
    return {k: getattr(config, k) for k in keys}


def _cached_scenes(config: PretrainConfig, out: Path) -> dict[str, Any]:
    path = out / SCENE_CACHE
    if path.exists():
        cached = load_state(path)
        if cached.get("key") == _scene_key(config):
            return cached
    data = render_scenes(config)
    data["key"] = _scene_key(config)
    save_state(path, data)
    return data


def augment(images: Tensor, config: PretrainConfig, generator: torch.Generator) -> Tensor:
    """Random translation (reflect-padded crop) and, if enabled, horizontal flips; float input."""
    pad = config.crop_padding
    if pad:
        size = images.shape[-1]
        padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
        shifts = torch.randint(0, 2 * pad + 1, (images.shape[0], 2), generator=generator)
        images = torch.stack(
            [
                padded[i, :, int(dy) : int(dy) + size, int(dx) : int(dx) + size]
                for i, (dy, dx) in enumerate(shifts)
            ]
        )
    if config.flip:
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


# ----------------------------------------------------------------------------- model
def build_backbone(config: PretrainConfig, num_classes: int):
    """A randomly initialised adapter (seeded) with the spec that rebuilds it."""
    from focusvit.backbones import adapt, load_backbone

    kwargs = {**config.model_kwargs, "img_size": config.image_size}
    torch.manual_seed(config.seed)
    if config.init == DINOV2_INIT:
        from focusvit.backbones.offline import load_dinov2_imgfocus_timm

        model = load_dinov2_imgfocus_timm(config.image_size)
        backbone = adapt(model, name=f"{DINOV2_INIT} (pretraining)")
        backbone.reset_head(num_classes)  # seeded above
    else:
        backbone = load_backbone(
            f"timm:{config.arch}", num_classes=num_classes, pretrained=False, **kwargs
        )
    data_config = dict(backbone.data_config)
    data_config.update(
        input_size=(3, config.image_size, config.image_size),
        crop_pct=1.0,  # trained on whole scenes: no centre crop at inference
        interpolation="bilinear",
    )
    backbone.data_config = data_config
    spec = {"spec": f"timm:{config.arch}", "num_classes": num_classes, "model_kwargs": kwargs}
    return backbone, spec


def _normaliser(data_config: dict, device: torch.device) -> Callable[[Tensor], Tensor]:
    mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1)
    return lambda x: (x.float() / 255 - mean) / std  # uint8 or float images in [0, 255]


def _optimizer(model: nn.Module, config: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        plain = parameter.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token"))
        (no_decay if plain else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = round(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ----------------------------------------------------------------------------- run folder
def _comparable(config: PretrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.as_dict().items() if k not in RESUMABLE}


def _check_run_folder(out: Path, config: PretrainConfig) -> dict | None:
    """The checkpoint to resume from, ``None`` for a fresh run; refuses other settings."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    state = load_state(path)
    check_settings(
        _comparable(PretrainConfig.from_dict(state["config"])),
        _comparable(config),
        f"{out} (a pretraining run)",
        fix="choose another output folder, or delete it to start again",
    )
    return state


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def accuracy(
    backbone, images: Tensor, labels: Tensor, normalise, device, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``backbone.logits`` on uint8 images (no augmentation)."""
    if len(labels) == 0:
        return float("nan")
    correct = 0
    with backbone.evaluating():
        for start in range(0, len(labels), batch_size):
            x = normalise(images[start : start + batch_size].to(device))
            with _autocast(device, True):
                pred = backbone.logits(x).argmax(dim=1).cpu()
            correct += int((pred == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def pretrain(
    config: PretrainConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train (or resume, or return the finished run in ``out_dir``); returns ``model.safetensors``.

    Args:
        config: the recipe.
        out_dir: run folder: ``scenes.safetensors`` (rendered images), ``checkpoint.safetensors`` (after every
            epoch), ``history.jsonl`` (one line per epoch), ``pretrain_config.json`` and, at the
            end, ``model.safetensors`` (``focusvit.load_backbone`` reads it).
        progress: tqdm bar per epoch with the running loss and accuracy.
        on_epoch_end: called as ``on_epoch_end(epoch, metrics)`` after each epoch's checkpoint
            is written (``epoch`` counts from 1).

    Raises:
        SettingsMismatchError: ``out_dir`` holds a run with other settings (its message names
            them).
    """
    from tqdm.auto import tqdm

    from focusvit.backbones import save_backbone

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _check_run_folder(out, config)
    final = out / MODEL_FILE
    if state is not None and int(state["epoch"]) >= config.epochs and final.exists():
        return final  # finished already
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    data = _cached_scenes(config, out)
    num_classes = len(data["class_names"])
    train_idx = torch.nonzero(data["train"]).flatten()
    val_idx = torch.nonzero(~data["train"]).flatten()
    backbone, spec = build_backbone(config, num_classes)
    backbone.to(device)
    model = backbone.model
    normalise = _normaliser(backbone.data_config, device)
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _cosine(steps_per_epoch * config.epochs, config.warmup_fraction)
    )
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        _set_rng_state(state["rng"], generator)
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        if progress and start_epoch < config.epochs:
            print(f"focusvit-pretrain: resuming {out} after epoch {start_epoch}", flush=True)
    (out / CONFIG_FILE).write_text(json.dumps(config.as_dict(), indent=2))

    images, labels = data["images"], data["labels"]
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=True,
            dynamic_ncols=True,
        )
        for step in bar:
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = normalise(augment(images[batch].float(), config, generator).to(device))
            y = labels[batch].to(device)
            with _autocast(device, config.amp):
                logits = backbone.logits(x)
                loss = nn.functional.cross_entropy(
                    logits.float(), y, label_smoothing=config.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(batch)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "val_acc": accuracy(backbone, images[val_idx], labels[val_idx], normalise, device),
            "lr": schedule.get_last_lr()[0],
            "seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        if progress:
            print(
                f"focusvit-pretrain: epoch {epoch + 1}/{config.epochs} loss "
                f"{metrics['train_loss']:.3f} train acc {metrics['train_acc']:.3f} val acc "
                f"{metrics['val_acc']:.3f} ({metrics['seconds']:.0f}s)",
                flush=True,
            )
        save_state(
            out / CHECKPOINT,
            {
                "config": config.as_dict(),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": _rng_state(generator),
                "history": history,
            },
        )
        with (out / "history.jsonl").open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)

    model.eval()
    backbone.to("cpu")
    metadata = {
        **spec,
        "pretrain": config.as_dict(),
        "class_names": data["class_names"],
        "history": history,
    }
    return save_backbone(backbone, final, metadata)
