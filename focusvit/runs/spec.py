"""What a few-shot run evaluates: episodes and the backbone to load (DESIGN.md section 6).

These dataclasses are the library's own settings objects; the Hydra CLI registers them as its
schema (``focusvit.runs.schema``), so the API and the CLI share one definition and one default
per setting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from focusvit.errors import ConfigError

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
    """N-way K-shot episodes with Q queries per class, sampled from ``split`` (DESIGN.md 6).

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
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"EpisodeSpec.{name} must be a whole number >= 1, got {value!r}; e.g. "
                    "EpisodeSpec(n_way=5, k_shot=1, n_query=15, episodes=600)"
                )
        if self.n_way < 2:
            raise ConfigError(
                f"EpisodeSpec.n_way must be >= 2 (a task of one class is trivial), got {self.n_way}"
            )
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
            raise ConfigError(
                f"EpisodeSpec.seed must be a whole number in 0..{MAX_SEED - 1} (the episode seeds "
                f"{_SEED_STRIDE}·seed + index must fit torch's 64-bit seed), got {seed!r}"
            )
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


@dataclass
class BackboneSpec:
    """What to load, as for :func:`focusvit.load_backbone`.

    Attributes:
        spec: ``offline:NAME``, ``timm:NAME``, ``hf:NAME_OR_DIR``, ``tiny:NAME`` or a path.
        num_classes: ``None`` keeps the pretrained head, ``0`` removes it (few-shot runs: the
            head is built per task from the support set).
        image_size: square input size replacing the model's own (``None`` keeps it); a multiple
            of the patch size (e.g. 112 for the 112 px synthetic scenes at patch 14).
    """

    spec: str = "offline:dinov2-s14-imgfocus"
    num_classes: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.num_classes < 0:
            raise ConfigError(
                f"num_classes must be >= 0 or None, got {self.num_classes}; e.g. num_classes=0 "
                "(no head) or None (the pretrained head)"
            )
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(
                f"image_size must be a positive number of pixels, got {self.image_size}"
            )

    def load(self):
        """The adapter, with ``image_size`` applied to its preprocessing."""
        from focusvit.backbones import load_backbone

        return load_backbone(
            self.spec, num_classes=self.num_classes, image_size=self.image_size or None
        )
