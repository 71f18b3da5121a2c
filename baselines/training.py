"""Episodic training of the baselines on base classes, model selection on validation classes.

Training episode ``i`` is ``sample_episode(train.labels, i, n_way, k_shot, n_query, seed)`` and
its random choices (SimCLR or not, augmentations) come from generators seeded by ``(seed, i)``,
so a run resumed from a checkpoint continues the same episode stream. Every
``validate_every`` episodes the model is evaluated on ``val_episodes`` fixed episodes of the
validation classes (never the test / novel classes); the best weights are kept (``best.safetensors``)
and loaded into the model at the end. ``last.safetensors`` (weights, optimiser, schedule, history) is
written every ``checkpoint_every`` episodes and at the end; training resumes from it.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from focusvit.checks import is_whole_number
from focusvit.data.episodes import Episode, check_episode_spec, sample_episode
from focusvit.errors import ConfigError, NonFiniteError
from focusvit.runs import EpisodeSpec, check_settings, episode_seed, save_state
from focusvit.runs.spec import MAX_SEED

from .common import (
    EpisodeBatch,
    EpisodicModel,
    _fraction,
    _non_negative,
    _positive,
    check_checkpoint,
    load_checkpoint,
)
from .evaluate import evaluate_baseline

__all__ = ["ImageCache", "TrainConfig", "TrainResult", "episode_batch", "train_episodic"]

#: settings that define the episode stream: a checkpoint resumes only with the same values.
EPISODE_KEYS = ("n_way", "k_shot", "n_query", "seed")


@dataclass
class TrainConfig:
    """Episodic training settings shared by CAN and CTX.

    Attributes:
        episodes: total training episodes.
        n_way, k_shot, n_query: training episode shape (queries per class).
        optimizer: ``"sgd"`` (Nesterov momentum, as both papers) or ``"adam"``.
        lr, momentum, weight_decay: optimiser settings.
        lr_milestones: fractions of ``episodes`` where the learning rate is multiplied by
            ``lr_gamma``.
        validate_every: episodes between validations (0: never validate).
        val_episodes, val_queries, val_seed: the fixed validation episodes (way and shot as
            in training).
        checkpoint_every: episodes between ``last.safetensors`` checkpoints.
        seed: seeds the training episodes and the model's random choices.
        grad_clip: max gradient norm (0: no clipping).
    """

    episodes: int = 2000
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 6
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: float = 0.1
    validate_every: int = 500
    val_episodes: int = 100
    val_queries: int = 15
    val_seed: int = 1
    checkpoint_every: int = 500
    seed: int = 0
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        for name in ("episodes", "n_way", "k_shot", "n_query", "val_episodes", "val_queries"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("validate_every", "checkpoint_every"):
            value = getattr(self, name)
            if not is_whole_number(value, 0):
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        _positive("lr", self.lr)
        _fraction("momentum", self.momentum)
        _fraction("lr_gamma", self.lr_gamma)
        milestones = self.lr_milestones
        if isinstance(milestones, str | bytes) or not isinstance(milestones, Sequence):
            raise ConfigError(
                f"lr_milestones must be a list of fractions of the episodes in [0, 1], got "
                f"{milestones!r}; pass e.g. [0.5, 0.75] (or [] for a constant learning rate)"
            )
        for milestone in milestones:
            _fraction("lr_milestones entry", milestone)
        self.lr_milestones = [float(m) for m in milestones]
        _non_negative("weight_decay", self.weight_decay)
        _non_negative("grad_clip", self.grad_clip)
        for name in ("seed", "val_seed"):
            value = getattr(self, name)
            if not is_whole_number(value, 0) or not value < MAX_SEED:
                raise ConfigError(
                    f"{name} must be a whole number in 0..{MAX_SEED - 1}, got {value!r}; pass "
                    f"e.g. {name}=0"
                )


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        history: one dict per episode (``episode``, ``loss``, ``acc``, method extras).
        validations: ``{"episode", "accuracy", "ci95"}`` per validation.
        best_episode, best_accuracy: the selected checkpoint (``-1`` / nan without validation).
        checkpoint_dir: where ``last.safetensors`` and ``best.safetensors`` are, if any.
    """

    history: list[dict] = field(default_factory=list)
    validations: list[dict] = field(default_factory=list)
    best_episode: int = -1
    best_accuracy: float = float("nan")
    checkpoint_dir: Path | None = None


class ImageCache:
    """Preprocessed images ``(3, S, S)`` of a dataset, loaded once per index."""

    def __init__(self, dataset, model: EpisodicModel):
        self.dataset, self.model = dataset, model
        self._tensors: dict[int, Tensor] = {}

    def __call__(self, indices: tuple[int, ...] | list[int]) -> Tensor:
        """``(len(indices), 3, S, S)`` on the CPU."""
        missing = [i for i in dict.fromkeys(indices) if i not in self._tensors]
        if missing:
            items = [self.dataset.load(i) for i in missing]
            if isinstance(items[0], Tensor):
                batch = torch.stack(items)
            else:
                batch = self.model.preprocess(items)
            self._tensors.update(zip(missing, batch, strict=True))
        return torch.stack([self._tensors[i] for i in indices])


def episode_batch(episode: Episode, cache: ImageCache) -> EpisodeBatch:
    """Tensors of a base-class episode, with the queries' global labels ``episode.classes[y]``."""
    classes = torch.tensor(episode.classes)
    return EpisodeBatch(
        cache(episode.support),
        episode.support_labels,
        cache(episode.query),
        episode.query_labels,
        classes[episode.query_labels],
    )


def _optimizer(model: EpisodicModel, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    milestones = sorted({max(1, round(m * config.episodes)) for m in config.lr_milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_gamma)


def _check_resume(checkpoint: dict, model: EpisodicModel, config: TrainConfig, path: Path) -> None:
    check_checkpoint(checkpoint, model.method, asdict(model.config), str(path))
    stored = checkpoint.get("train", {})
    keys = ("n_way", *EPISODE_KEYS)
    check_settings(
        {k: stored.get(k) for k in keys},
        {k: getattr(config, k) for k in keys},
        str(path),
        fix="resume with the stored settings or start a new checkpoint directory",
    )


def _save(path: Path, state: dict) -> None:
    save_state(path, state)  # atomic: never leaves a half-written checkpoint


@dataclass
class _Run:
    """Mutable state of one training run."""

    model: EpisodicModel
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    result: TrainResult
    directory: Path | None
    start: int = 0
    best_state: dict | None = None

    def training_state(self, episode: int) -> dict:
        return {
            **self.model.checkpoint_state(),
            "train": asdict(self.config),
            "episode": episode,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.result.history,
            "validations": self.result.validations,
            "best_episode": self.result.best_episode,
            "best_accuracy": self.result.best_accuracy,
        }

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.start = int(checkpoint["episode"])
        self.result.history = list(checkpoint["history"])
        self.result.validations = list(checkpoint["validations"])
        self.result.best_episode = int(checkpoint["best_episode"])
        self.result.best_accuracy = float(checkpoint["best_accuracy"])
        best = self.directory / "best.safetensors" if self.directory else None
        if best is not None and best.exists():
            self.best_state = load_checkpoint(best)["model"]


def _train_step(run: _Run, batch: EpisodeBatch, index: int = 0) -> dict:
    run.model.train()
    loss, logs = run.model.loss(batch)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.config.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    _check_finite_episode(run, index, float(loss.detach()))
    return logs


def _check_finite_episode(run: _Run, index: int, loss: float) -> None:
    """Stop a diverged training: :class:`NonFiniteError` when the loss of training episode
    ``index`` or a parameter after its step is NaN or inf, naming the episode and ``lr``."""
    params = [p.detach() for p in run.model.parameters() if p.requires_grad]
    bad = 0
    if math.isfinite(loss) and params:
        bad = int(torch.stack([~torch.isfinite(p).all() for p in params]).sum())
    if math.isfinite(loss) and not bad:
        return
    what = f"the loss is {loss}" if not bad else f"{bad} parameter tensor(s) became NaN/inf"
    raise NonFiniteError(
        f"{run.model.method} training diverged at episode {index}: {what}; lower lr "
        f"(now {run.config.lr:g}) or set grad_clip (now {run.config.grad_clip:g}) and train "
        "again"
    )


def _validate(run: _Run, val_data, episode: int) -> None:
    c = run.config
    spec = EpisodeSpec(c.n_way, c.k_shot, c.val_queries, c.val_episodes, c.val_seed)
    result = evaluate_baseline(run.model, val_data, spec, progress=False)
    run.result.validations.append(
        {"episode": episode, "accuracy": result.mean, "ci95": result.ci95}
    )
    best = run.result.best_accuracy
    if np.isnan(best) or result.mean > best:
        run.result.best_episode, run.result.best_accuracy = episode, result.mean
        run.best_state = copy.deepcopy({k: v.cpu() for k, v in run.model.state_dict().items()})
        if run.directory:
            best_state = {**run.model.checkpoint_state(), "train": asdict(c), "episode": episode}
            _save(run.directory / "best.safetensors", {**best_state, "val_accuracy": result.mean})


def _episode(run: _Run, train_data, cache: ImageCache, index: int, device) -> EpisodeBatch:
    c = run.config
    episode = sample_episode(train_data.labels, index, c.n_way, c.k_shot, c.n_query, c.seed)
    batch = episode_batch(episode, cache)
    batch = run.model.prepare_episode(batch, np.random.default_rng([c.seed, index, 1]))
    return batch.to(device)


def train_episodic(
    model: EpisodicModel,
    train_data,
    val_data=None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` episodically on ``train_data`` (base classes).

    Args:
        model: :class:`CrossAttentionNetwork` or :class:`CrossTransformerNetwork`.
        train_data: base-class dataset; its labels are the global classes of CAN's classifier.
        val_data: validation-class dataset for model selection (never the test classes).
        config: :class:`TrainConfig`.
        checkpoint_dir: where ``last.safetensors`` / ``best.safetensors`` go; with ``resume`` an existing
            ``last.safetensors`` is continued (it must be of the same method, model config and episodes).
        device: default CUDA when available.

    Returns:
        :class:`TrainResult`; the model holds the best validation weights (the last weights
        when there is no validation).
    """
    config = config or TrainConfig()
    check_episode_spec(train_data.labels, config.n_way, config.k_shot, config.n_query,
                       train_data.class_names)  # fmt: skip
    if val_data is not None and config.validate_every:
        check_episode_spec(val_data.labels, config.n_way, config.k_shot, config.val_queries,
                           val_data.class_names)  # fmt: skip
    model.check_train_classes(max(train_data.labels) + 1)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    optimizer = _optimizer(model, config)
    directory = Path(checkpoint_dir) if checkpoint_dir else None
    run = _Run(model, config, optimizer, _scheduler(optimizer, config), TrainResult(), directory)
    run.result.checkpoint_dir = directory
    if directory:
        directory.mkdir(parents=True, exist_ok=True)
        last = directory / "last.safetensors"
        if resume and last.exists():
            checkpoint = load_checkpoint(last, map_location=str(device))
            _check_resume(checkpoint, model, config, last)
            run.restore(checkpoint)
    _loop(run, train_data, val_data, device, progress)
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    return run.result


def _loop(run: _Run, train_data, val_data, device, progress: bool) -> None:
    c = run.config
    cache = ImageCache(train_data, run.model)
    bar = tqdm(range(run.start, c.episodes), desc=f"train {run.model.method}", unit="episode",
               disable=not progress, initial=run.start, total=c.episodes)  # fmt: skip
    for index in bar:
        torch.manual_seed(episode_seed(c.seed, index))
        logs = _train_step(run, _episode(run, train_data, cache, index, device), index)
        run.result.history.append({"episode": index, **logs})
        done = index + 1
        if (
            val_data is not None
            and c.validate_every
            and (done % c.validate_every == 0 or done == c.episodes)
        ):
            _validate(run, val_data, done)
        if run.directory and (
            done == c.episodes or (c.checkpoint_every and done % c.checkpoint_every == 0)
        ):
            _save(run.directory / "last.safetensors", run.training_state(done))
        bar.set_postfix(_postfix(run.result))


def _postfix(result: TrainResult) -> dict[str, str]:
    recent = result.history[-20:]
    postfix = {
        "loss": f"{np.mean([h['loss'] for h in recent]):.3f}",
        "acc": f"{100 * np.mean([h['acc'] for h in recent]):.1f}",
    }
    if result.validations:
        postfix["val"] = f"{100 * result.validations[-1]['accuracy']:.1f}"
    return postfix
