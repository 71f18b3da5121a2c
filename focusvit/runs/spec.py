"""What a few-shot run evaluates: episodes and the backbone to load (docs/concepts/runs.md).

These dataclasses are the library's own settings objects; the Hydra CLI registers them as its
schema (:mod:`focusvit.runconfig`: ``backbone`` and ``episodes``), so the API and the CLI share
one definition and one default per setting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from focusvit.checks import is_whole_number
from focusvit.errors import ArgumentError, ConfigError

#: multiplier of the per-episode torch seed (``episode_seed``); any prime larger than the
#: number of episodes keeps the seeds of different ``seed`` values apart.
_SEED_STRIDE = 100003


#: exclusive upper bound of ``EpisodeSpec.seed``: every episode seed stays below 2**63
MAX_SEED = (2**63 - 1) // _SEED_STRIDE - 2**20


def episode_seed(seed: int, index: int) -> int:
    """The torch seed of episode ``index`` of a run with ``seed``: the one formula used by
    evaluation, baseline training and benchmarks, so a method sees the same randomness in every
    entry point. (Episode *sampling* uses ``numpy.random.default_rng([seed, index])``.)"""
    return seed * _SEED_STRIDE + index


@dataclass
class EpisodeSpec:
    """N-way K-shot episodes with Q queries per class, sampled from ``split``.

    Attributes:
        n_way: classes per episode.
        k_shot: support images per class.
        n_query: query images per class.
        episodes: number of episodes (may grow on resume: more episodes extend a run).
        seed: episode ``i`` of a seed is the same for every method.
        split: the class split the dataset was built from (``base``, ``val``, ``novel``, or
            ``None`` = whatever the dataset holds). When given, it must match the dataset's own
            ``split`` attribute, so a run never evaluates on other classes than it names.
    """

    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    episodes: int = 100
    seed: int = 0
    split: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_way", "k_shot", "n_query", "episodes"):
            value = getattr(self, name)
            if not is_whole_number(value, 1):
                raise ConfigError(
                    f"EpisodeSpec.{name} must be a whole number >= 1, got {value!r}; e.g. "
                    "EpisodeSpec(n_way=5, k_shot=1, n_query=15, episodes=600)"
                )
        if self.n_way < 2:
            raise ConfigError(
                f"EpisodeSpec.n_way must be >= 2 (a task of one class is trivial), got {self.n_way}"
            )
        seed = self.seed
        if not is_whole_number(seed, 0) or not seed < MAX_SEED:
            raise ConfigError(
                f"EpisodeSpec.seed must be a whole number in 0..{MAX_SEED - 1} (the episode seeds "
                f"{_SEED_STRIDE}·seed + index must fit torch's 64-bit seed), got {seed!r}"
            )
        for name in ("n_way", "k_shot", "n_query", "episodes", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))  # numpy ints: plain ints
        if self.split is not None and not isinstance(self.split, str):
            raise ConfigError(f"EpisodeSpec.split must be a split name or None, got {self.split!r}")

    def settings(self) -> dict[str, Any]:
        """The settings that change a result (every field but ``episodes``, which may grow)."""
        values = asdict(self)
        del values["episodes"]
        return values

    def check_dataset(self, dataset) -> None:
        """Raise when ``dataset`` cannot give these episodes (too few classes or images per
        class, or another split than ``split``)."""
        from focusvit.data.episodes import check_episode_spec

        have = getattr(dataset, "split", None)
        if self.split is not None and have is not None and have != self.split:
            raise ConfigError(
                f"EpisodeSpec.split is {self.split!r} but the dataset holds the {have!r} split; "
                f"build the dataset from split {self.split!r} or set split={have!r}"
            )
        check_episode_spec(
            dataset.labels, self.n_way, self.k_shot, self.n_query, dataset.class_names
        )

    def describe(self) -> str:
        split = f" of the {self.split} split" if self.split else ""
        return (
            f"{self.n_way}-way {self.k_shot}-shot, {self.n_query} queries per class, "
            f"{self.episodes} episodes{split}, seed {self.seed}"
        )


def check_spec_kind(spec: Any, argument: str = "episodes") -> None:
    """Refuse an ``argument`` that is not an :class:`EpisodeSpec` (a dict, a number), saying
    how to build one.

    Raises:
        ArgumentError: naming the type given and the fix.
    """
    if not isinstance(spec, EpisodeSpec):
        fix = (
            f"focusvit.EpisodeSpec(**{spec!r:.60})"
            if isinstance(spec, dict)
            else "focusvit.EpisodeSpec(n_way=5, k_shot=1, n_query=15, episodes=600, seed=0)"
        )
        raise ArgumentError(
            f"{argument} must be a focusvit.EpisodeSpec, got a {type(spec).__name__}; pass "
            f"{argument}={fix}"
        )


@dataclass
class BackboneSpec:
    """What to load: every argument of :func:`focusvit.load_backbone`, with its keyword name and
    default, checked when the spec is built (before anything loads). On the command line each is
    ``backbone.<name>=...`` (e.g. ``backbone.resize=letterbox backbone.image_size=224``).

    Attributes:
        spec: ``offline:NAME``, ``timm:NAME``, ``hf:NAME_OR_DIR``, ``tiny:NAME`` or a path.
        num_classes: ``None`` keeps the pretrained head, ``0`` removes it (few-shot runs: the
            head is built per task from the support set), ``N`` builds a new head of N classes.
        pretrained: load pretrained weights (hub download for timm / Hugging Face specs).
        image_size: square input side replacing the model's own (``None`` keeps it), a
            multiple of the patch size (e.g. 112 for the 112 px synthetic scenes at patch 14).
            From Python, ``(height, width)`` works too, as for ``load_backbone``; the schema
            types it ``int`` so that a wrong value fails while the CLI config is composed (a
            Hydra schema cannot hold the union ``int | tuple``).
        resize: how images are fitted to the input size: ``"crop"``, ``"stretch"`` or
            ``"letterbox"`` (fit inside, pad); ``None`` keeps the loaded model's policy.
        crop_pct: with ``"crop"``, the share of the resized image the centre crop keeps
            (``1`` no crop, ``1 / 1.15`` the FORT protocol); ``None`` keeps the model's value.
        model_kwargs: extra architecture arguments of timm specs (e.g. ``{"depth": 2}``;
            ``+backbone.model_kwargs.depth=2`` on the command line).
    """

    spec: str  # required, as in load_backbone (the CLI's backbone group option sets it)
    num_classes: int | None = None
    pretrained: bool = True
    image_size: int | None = None
    resize: str | None = None
    crop_pct: float | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from focusvit.backbones.loading import check_load_arguments
        from focusvit.data.images import check_crop_pct, check_resize, parse_size

        check_load_arguments(self.spec, self.num_classes, self.pretrained)
        if self.image_size is not None:
            parse_size(self.image_size)
        if self.resize is not None:
            check_resize(self.resize)
        if self.crop_pct is not None:
            check_crop_pct(self.crop_pct)
        if not isinstance(self.model_kwargs, dict) or not all(
            isinstance(key, str) for key in self.model_kwargs
        ):
            raise ConfigError(
                f"model_kwargs must be a mapping of argument names to values, got "
                f"{self.model_kwargs!r}; e.g. model_kwargs={{'depth': 2}} "
                "(+backbone.model_kwargs.depth=2 on the command line)"
            )

    def load(self):
        """The adapter: :func:`focusvit.load_backbone` with every field of this spec."""
        from focusvit.backbones import load_backbone

        return load_backbone(
            self.spec,
            num_classes=self.num_classes,
            pretrained=self.pretrained,
            image_size=self.image_size,
            resize=self.resize,
            crop_pct=self.crop_pct,
            **self.model_kwargs,
        )
