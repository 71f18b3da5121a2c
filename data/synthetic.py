"""Synthetic cluttered scenes (docs/concepts/data.md): many-class few-shot images with a
ground-truth mask of the class object, deterministic per seed, no downloads.

Each image holds one *class object* (a glyph rendered from the DejaVu fonts that ship with
matplotlib: Latin, Greek, Cyrillic letters, digits and symbols, de-duplicated by shape), drawn
large and saturated, plus smaller *distractors* drawn from a pool of geometric shapes that is
never a class in any split, on a textured background. The class object is therefore identifiable
(the premise of position prompts holds), and the mask lets us measure whether a prompt lands on
it. Class splits base / val / novel are disjoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from focusvit.errors import ConfigError

GLYPH_RES = 64
SPLITS = ("base", "val", "novel")

_CANDIDATE_RANGES = (
    (0x0041, 0x005A),  # Latin capitals
    (0x0061, 0x007A),  # Latin small
    (0x0030, 0x0039),  # digits
    (0x0391, 0x03A9),  # Greek capitals
    (0x03B1, 0x03C9),  # Greek small
    (0x0410, 0x044F),  # Cyrillic
    (0x2190, 0x21FF),  # arrows
    (0x2200, 0x22FF),  # mathematical operators
    (0x2600, 0x26FF),  # miscellaneous symbols
    (0x2700, 0x27BF),  # dingbats
)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes are fractions of the image side."""

    image_size: int = 112
    object_scale: tuple[float, float] = (0.42, 0.62)
    object_rotation: float = 25.0
    distractors: tuple[int, int] = (2, 4)
    distractor_scale: tuple[float, float] = (0.12, 0.22)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    #: premise mode (docs/concepts/data.md): this many class-independent objects per image,
    #: drawn from the distractor pool shared by every class (never a class), as large and as
    #: saturated as the class object, so a pretrained model's attention splits between them
    #: and the class object; the class object is drawn last (its mask stays exact)
    premise_objects: int = 0


def _font_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"


def _render_glyph(char: str, font: ImageFont.FreeTypeFont) -> np.ndarray | None:
    """Alpha mask ``(GLYPH_RES, GLYPH_RES)`` float in [0, 1], glyph centred and fitted; None if empty."""
    canvas = Image.new("L", (2 * GLYPH_RES, 2 * GLYPH_RES), 0)
    ImageDraw.Draw(canvas).text((GLYPH_RES // 2, GLYPH_RES // 2), char, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("L", (side, side), 0)
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return np.asarray(square.resize((GLYPH_RES, GLYPH_RES), Image.BILINEAR), np.float32) / 255


def _thumb(mask: np.ndarray) -> np.ndarray:
    """16×16 binary silhouette used for near-duplicate detection."""
    return mask.reshape(16, GLYPH_RES // 16, 16, GLYPH_RES // 16).mean(axis=(1, 3)) > 0.4


@lru_cache(maxsize=1)
def glyph_bank() -> tuple[tuple[str, ...], np.ndarray]:
    """Distinct glyph classes: characters and their masks ``(C, GLYPH_RES, GLYPH_RES)``.

    Glyphs the font lacks, thin ones (area < 12% of their box) and near-duplicates (IoU > 0.8 of
    the 16×16 silhouettes, e.g. Latin 'A' and Greek 'Α', or of a distractor shape) are dropped, in
    code-point order.
    """
    font = ImageFont.truetype(str(_font_path()), size=GLYPH_RES)
    notdef = _render_glyph("\uffff", font)
    chars, masks = [], []
    thumbs = [_thumb(shape) for shape in distractor_bank()]  # classes never look like distractors
    for low, high in _CANDIDATE_RANGES:
        for code in range(low, high + 1):
            mask = _render_glyph(chr(code), font)
            if mask is None or mask.mean() < 0.12:
                continue
            if notdef is not None and np.abs(mask - notdef).mean() < 0.02:
                continue
            thumb = _thumb(mask)
            if any((thumb & t).sum() / max((thumb | t).sum(), 1) > 0.8 for t in thumbs):
                continue
            chars.append(chr(code))
            masks.append(mask)
            thumbs.append(thumb)
    return tuple(chars), np.stack(masks)


@lru_cache(maxsize=1)
def distractor_bank() -> np.ndarray:
    """Geometric distractor shapes ``(S, GLYPH_RES, GLYPH_RES)``: never classes in any split."""
    r, c = GLYPH_RES, GLYPH_RES / 2
    shapes: list[Image.Image] = []

    def new() -> tuple[Image.Image, ImageDraw.ImageDraw]:
        image = Image.new("L", (r, r), 0)
        return image, ImageDraw.Draw(image)

    def polygon(points: list[tuple[float, float]]) -> None:
        image, draw = new()
        draw.polygon(points, fill=255)
        shapes.append(image)

    image, draw = new()
    draw.ellipse((4, 4, r - 4, r - 4), fill=255)
    shapes.append(image)
    image, draw = new()
    draw.ellipse((4, 4, r - 4, r - 4), outline=255, width=10)
    shapes.append(image)
    image, draw = new()
    draw.rectangle((8, 8, r - 8, r - 8), fill=255)
    shapes.append(image)
    image, draw = new()
    draw.rectangle((4, 22, r - 4, r - 22), fill=255)
    shapes.append(image)
    polygon([(c, 4), (r - 4, r - 6), (4, r - 6)])
    polygon([(c, 2), (r - 2, c), (c, r - 2), (2, c)])
    polygon(
        [(c + 28 * math.cos(a), c + 28 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1]]
    )
    polygon(
        [
            (
                c + (28 if i % 2 == 0 else 12) * math.cos(a),
                c + (28 if i % 2 == 0 else 12) * math.sin(a),
            )
            for i, a in enumerate(np.linspace(-math.pi / 2, 1.5 * math.pi, 11)[:-1])
        ]
    )
    image, draw = new()
    draw.pieslice((4, 4, r - 4, r - 4), 0, 180, fill=255)
    shapes.append(image)
    return np.stack([np.asarray(s, np.float32) / 255 for s in shapes])


def class_splits(config: SceneConfig = SceneConfig(), seed: int = 0) -> dict[str, list[int]]:
    """Disjoint glyph-class indices per split (shuffled once with ``seed``)."""
    chars, _ = glyph_bank()
    order = np.random.default_rng(seed).permutation(len(chars)).tolist()
    n_base = int(config.split_fractions[0] * len(chars))
    n_val = int(config.split_fractions[1] * len(chars))
    return {
        "base": order[:n_base],
        "val": order[n_base : n_base + n_val],
        "novel": order[n_base + n_val :],
    }


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted, low-contrast textured background ``(size, size, 3)`` in [0, 1]."""
    coarse = rng.random((6, 6, 3)).astype(np.float32)
    base = (
        np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
            np.float32,
        )
        / 255
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle, freq = rng.uniform(0, math.pi), rng.uniform(6, 14)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    grey = 0.25 + 0.35 * base.mean(axis=-1, keepdims=True)
    texture = 0.55 * grey + 0.25 * base * 0.6 + 0.2 * stripes[..., None] * 0.5
    noise = rng.normal(0, 0.03, (size, size, 1)).astype(np.float32)
    return np.clip(texture + noise, 0, 1)


def _place(
    canvas: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    side: int,
    rotation: float,
    colour: np.ndarray,
) -> np.ndarray:
    """Rotate, scale and alpha-blend ``mask`` in ``colour`` at a random position; return its alpha."""
    size = canvas.shape[0]
    shape = Image.fromarray((mask * 255).astype(np.uint8)).rotate(rotation, resample=Image.BILINEAR)
    alpha_small = np.asarray(shape.resize((side, side), Image.BILINEAR), np.float32) / 255
    top, left = rng.integers(0, size - side + 1, size=2)
    alpha = np.zeros((size, size), np.float32)
    alpha[top : top + side, left : left + side] = alpha_small
    canvas *= 1 - alpha[..., None]
    canvas += alpha[..., None] * colour
    return alpha


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    return np.array(
        colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.0)),
        np.float32,
    )


def render_scene(
    glyph: np.ndarray, rng: np.random.Generator, config: SceneConfig = SceneConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 (S, S, 3), mask bool (S, S))`` of the class object."""
    size = config.image_size
    canvas = _texture(rng, size)
    shapes = distractor_bank()
    for _ in range(rng.integers(config.distractors[0], config.distractors[1] + 1)):
        side = max(3, int(size * rng.uniform(*config.distractor_scale)))
        colour = _saturated_colour(rng) * rng.uniform(0.55, 0.8)
        _place(canvas, shapes[rng.integers(len(shapes))], rng, side, rng.uniform(0, 360), colour)
    for _ in range(config.premise_objects):
        side = int(size * rng.uniform(*config.object_scale))
        shape = shapes[rng.integers(len(shapes))]
        _place(canvas, shape, rng, side, rng.uniform(0, 360), _saturated_colour(rng))
    side = int(size * rng.uniform(*config.object_scale))
    rotation = rng.uniform(-config.object_rotation, config.object_rotation)
    alpha = _place(canvas, glyph, rng, side, rotation, _saturated_colour(rng))
    image = (np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    return image, alpha > 0.5


def _whole(value: object, minimum: int) -> bool:
    """True for an ``int`` (or NumPy integer), not a ``bool``, of at least ``minimum``."""
    return (
        isinstance(value, int | np.integer)
        and not isinstance(value, bool | np.bool_)
        and value >= minimum
    )


class SyntheticScenes:
    """Few-shot dataset of synthetic cluttered scenes for one class split.

    Args:
        split: ``"base"``, ``"val"`` or ``"novel"`` (disjoint glyph classes).
        images_per_class: images generated per class (deterministic per seed, class, index).
        config: drawing parameters (image size, object and distractor scales).
        seed: seeds both the class split and the images.
        num_classes: use only the first ``num_classes`` classes of the split.

    Items are ``(PIL.Image RGB, label, mask bool (S, S))``.
    """

    def __init__(
        self,
        split: str = "novel",
        images_per_class: int = 20,
        config: SceneConfig = SceneConfig(),
        seed: int = 0,
        num_classes: int | None = None,
    ):
        from focusvit.runs.spec import MAX_SEED

        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if not _whole(images_per_class, 1):
            raise ConfigError(
                f"images_per_class must be a whole number >= 1, got {images_per_class!r}; pass "
                "e.g. images_per_class=20"
            )
        if num_classes is not None and not _whole(num_classes, 1):
            raise ConfigError(
                f"num_classes must be a whole number >= 1 or None (every class of the split), "
                f"got {num_classes!r}; pass e.g. num_classes=5"
            )
        if not _whole(seed, 0) or seed >= MAX_SEED:
            raise ConfigError(
                f"seed must be a whole number in 0..{MAX_SEED - 1}, got {seed!r}; pass e.g. seed=0"
            )
        seed, images_per_class = int(seed), int(images_per_class)
        chars, self._glyphs = glyph_bank()
        available = class_splits(config, seed)[split]
        if num_classes is not None and num_classes > len(available):
            raise ConfigError(
                f"num_classes={num_classes} is more than the {len(available)} classes of the "
                f"{split!r} split; pass num_classes <= {len(available)}, or None for all of them"
            )
        self.class_ids = available[:num_classes]
        self.class_names = [f"U+{ord(chars[i]):04X} {chars[i]}" for i in self.class_ids]
        self.split, self.config, self.seed = split, config, seed
        self.images_per_class = images_per_class
        self.labels = [
            label for label in range(len(self.class_ids)) for _ in range(images_per_class)
        ]

    def settings(self) -> dict:
        """What changes the images (for settings records): drawing config, seed, sizes."""
        from dataclasses import asdict

        return {
            "scene_config": asdict(self.config),
            "seed": self.seed,
            "images_per_class": self.images_per_class,
        }

    def content_fingerprint(self) -> str:
        """A short hash of what generates the images and masks: the split, its classes (glyph
        code points), the drawing config, the seed and the images per class."""
        text = json.dumps(
            ["SyntheticScenes", self.split, self.class_names, self.class_ids, self.settings()],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.labels)

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image uint8 (S, S, 3), mask bool (S, S))`` of item ``index``."""
        label, within = divmod(index, self.images_per_class)
        class_id = self.class_ids[label]
        rng = np.random.default_rng([self.seed, class_id, within])
        return render_scene(self._glyphs[class_id], rng, self.config)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.render(index)[0])

    def mask(self, index: int) -> np.ndarray:
        return self.render(index)[1]

    def __getitem__(self, index: int) -> tuple[Image.Image, int, np.ndarray]:
        image, mask = self.render(index)
        return Image.fromarray(image), self.labels[index], mask
