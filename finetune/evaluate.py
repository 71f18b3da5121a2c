"""Episodic evaluation with 95% intervals, streamed to JSONL and resumable (DESIGN.md 6 and 10).

A *method* is either a frozen-feature solver (``prototype``, ``knn``, ``ridge``, ``svm``,
``logistic``) or a tuner name with an optional ``+fort`` suffix (``lora``, ``lora+fort``,
``ssf+fort``, ``linear``, ``full``, ``vpt``). Episode ``i`` of a seed is the same for every
method. Each finished episode is appended to the output file at once; a rerun with the same
output skips the episodes already there, so an interruption loses at most the episode in flight.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from focusvit.backbones import BackboneAdapter
from focusvit.data.episodes import Episode, check_episode_spec, sample_episode

from .heads import SOLVERS, solve
from .losses import FortConfig
from .trainer import fit_task, support_features


@dataclass
class EvaluationResult:
    """Per-episode accuracies of one method with mean and 95% interval (1.96·std/√n)."""

    method: str
    accuracies: list[float] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies)) if self.accuracies else float("nan")

    @property
    def ci95(self) -> float:
        n = len(self.accuracies)
        return float(1.96 * np.std(self.accuracies) / math.sqrt(n)) if n > 1 else float("nan")

    def __str__(self) -> str:
        return f"{self.method}: {100 * self.mean:.2f} ± {100 * self.ci95:.2f} % ({len(self.accuracies)} episodes)"


def parse_method(method: str) -> tuple[str, bool]:
    """``"lora+fort"`` -> ``("lora", True)``; solvers and tuners without suffix -> ``(name, False)``."""
    name, _, suffix = method.partition("+")
    if suffix not in ("", "fort"):
        raise ValueError(
            f"unknown method suffix {suffix!r} in {method!r}; only '+fort' is supported"
        )
    return name, suffix == "fort"


def episode_tensors(
    dataset, episode: Episode, backbone: BackboneAdapter, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Preprocessed ``(support, support_labels, query, query_labels)`` of an episode."""

    def load(indices: Sequence[int]) -> Tensor:
        items = [dataset.load(i) for i in indices]
        if isinstance(items[0], Tensor):
            return torch.stack(items)
        return backbone.preprocess(items)

    return (
        load(episode.support).to(device),
        episode.support_labels.to(device),
        load(episode.query).to(device),
        episode.query_labels.to(device),
    )


def run_episode(
    backbone: BackboneAdapter,
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    method: str,
    fort: FortConfig | bool | None = None,
    **options,
) -> tuple[Tensor, dict]:
    """Predictions ``(Q,)`` of ``method`` on one episode plus extra info to record."""
    name, with_fort = parse_method(method)
    if name in SOLVERS:
        feats_s = support_features(backbone, support)
        feats_q = support_features(backbone, query)
        return solve(name, feats_s, support_labels, feats_q), {}
    use_fort = (fort if fort is not None else True) if with_fort else None
    with fit_task(backbone, support, support_labels, tuner=name, fort=use_fort, **options) as task:
        predictions = task.predict(query)
        info = {
            "final_loss": task.losses[-1] if task.losses else None,
            "trainable": task.parameter_counts.get("trainable"),
        }
    return predictions, info


SETTINGS = ("n_way", "k_shot", "n_query", "seed")


def _read_done(path: Path, method: str, settings: dict) -> dict[int, dict]:
    """Finished episodes of ``method`` in ``path``, checked against this run's settings."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    with path.open() as handle:
        lines = handle.read().splitlines()
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption: that episode is redone
        if record.get("method") != method:
            continue
        stored = {key: record.get(key) for key in SETTINGS}
        if stored != settings:
            raise ValueError(
                f"{path} already holds {method!r} episodes run with {stored}, but this run asks "
                f"for {settings}; resume with the same settings or write to a new output file"
            )
        done[int(record["episode"])] = record
    _drop_cut_line(path, lines)
    return done


def _drop_cut_line(path: Path, lines: list[str]) -> None:
    """Rewrite ``path`` without a last line cut by an interruption (and with a final newline),
    so the next append starts on a line of its own."""
    text = path.read_text()
    if not text or text.endswith("\n"):
        return
    try:
        json.loads(lines[-1])
    except json.JSONDecodeError:
        lines = lines[:-1]
    path.write_text("".join(line + "\n" for line in lines))


def evaluate(
    backbone: BackboneAdapter,
    dataset,
    method: str = "prototype",
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 100,
    seed: int = 0,
    output: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    fort: FortConfig | bool | None = None,
    progress: bool = True,
    on_episode: Callable[[dict], None] | None = None,
    episode_ids: Sequence[int] | None = None,
    **options,
) -> EvaluationResult:
    """Evaluate ``method`` on ``episodes`` N-way K-shot episodes of ``dataset``.

    Args:
        backbone: the pretrained backbone (never modified).
        dataset: a few-shot dataset (``labels``, ``class_names``, ``load``).
        method: a solver or tuner name, optionally ``+fort``.
        output: JSONL file; finished episodes are appended as they finish and skipped on rerun.
        device: ``"cuda"`` or ``"cpu"`` (default: CUDA when available).
        fort: attention-loss settings for ``+fort`` methods (default: the recipe's).
        episode_ids: evaluate only these episodes (used to shard across processes).
        options: passed to :func:`fit_task` (``lr``, ``steps``, ``head_init``, ``tuner_options``).

    Returns:
        :class:`EvaluationResult` over all requested episodes (resumed ones included).
    """
    check_episode_spec(dataset.labels, n_way, k_shot, n_query, dataset.class_names)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone.to(device)

    def run(episode: Episode) -> tuple[Tensor, Tensor, dict]:
        support, s_labels, query, q_labels = episode_tensors(dataset, episode, backbone, device)
        torch.manual_seed(seed * 100003 + episode.index)  # deterministic per episode on CPU
        predictions, info = run_episode(
            backbone, support, s_labels, query, method, fort=fort, **options
        )
        return predictions, q_labels, info

    return evaluate_episodes(
        method,
        dataset,
        run,
        n_way=n_way,
        k_shot=k_shot,
        n_query=n_query,
        episodes=episodes,
        seed=seed,
        output=output,
        progress=progress,
        on_episode=on_episode,
        episode_ids=episode_ids,
    )


EpisodeRunner = Callable[[Episode], tuple[Tensor, Tensor, dict]]


def evaluate_episodes(
    method: str,
    dataset,
    run: EpisodeRunner,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 100,
    seed: int = 0,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    on_episode: Callable[[dict], None] | None = None,
    episode_ids: Sequence[int] | None = None,
) -> EvaluationResult:
    """The episode loop shared by every evaluator: sampling, JSONL streaming and resume.

    Episode ``i`` is ``sample_episode(dataset.labels, i, n_way, k_shot, n_query, seed)``, so any
    ``run`` sees the same episodes as :func:`evaluate`. ``run(episode)`` returns
    ``(predictions (Q,), query_labels (Q,), info)``; ``info`` is added to the episode's record.
    Finished episodes of ``method`` already in ``output`` are skipped (and checked against these
    settings).
    """
    check_episode_spec(dataset.labels, n_way, k_shot, n_query, dataset.class_names)
    path = Path(output) if output else None
    settings = {"n_way": n_way, "k_shot": k_shot, "n_query": n_query, "seed": seed}
    done = _read_done(path, method, settings) if path else {}
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(episode_ids) if episode_ids is not None else list(range(episodes))
    result = EvaluationResult(method)
    bar = tqdm(ids, desc=method, disable=not progress, unit="episode")
    for index in bar:
        record = done.get(index) or _run_one(method, dataset, run, index, settings)
        if index not in done and path:
            with path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        result.accuracies.append(record["accuracy"])
        result.records.append(record)
        if on_episode:
            on_episode(record)
        bar.set_postfix(
            acc=f"{100 * result.mean:.1f}", ci=f"±{100 * result.ci95:.1f}" if len(ids) > 1 else ""
        )
    return result


def _run_one(method: str, dataset, run: EpisodeRunner, index: int, settings: dict) -> dict:
    episode = sample_episode(
        dataset.labels,
        index,
        settings["n_way"],
        settings["k_shot"],
        settings["n_query"],
        settings["seed"],
    )
    predictions, q_labels, info = run(episode)
    accuracy = float((predictions.cpu() == q_labels.cpu()).float().mean())
    return {
        "method": method,
        "episode": index,
        "accuracy": accuracy,
        "classes": list(episode.classes),
        **settings,
        **info,
    }


__all__ = [
    "EvaluationResult",
    "episode_tensors",
    "evaluate",
    "evaluate_episodes",
    "parse_method",
    "run_episode",
]
