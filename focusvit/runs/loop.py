"""The one episodic evaluation loop (DESIGN.md sections 6 and 10).

Every method — a ViT tuner with or without the attention loss, a frozen-feature solver, a CNN
baseline — is a :class:`Runner`: a record name, the settings its results depend on, and a
function from an :class:`~focusvit.data.episodes.Episode` to query predictions. :func:`evaluate`
samples the episodes (episode ``i`` of a seed is the same for every runner), seeds torch per
episode (:func:`~focusvit.runs.spec.episode_seed`), streams each finished episode to the
resumable episode file, refuses an output written with other settings, and shards episodes
across processes under ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from focusvit.data.episodes import Episode, sample_episode

from .distributed import DistContext, shard
from .records import EpisodeLog, merge_records
from .settings import fingerprint
from .spec import EpisodeSpec, episode_seed
from .stats import EvaluationResult, format_ci


@runtime_checkable
class Runner(Protocol):
    """A few-shot method the loop can evaluate.

    Attributes:
        name: the record name (``"lora+fort"``, ``"ridge"``, ``"can+transductive"``).
    """

    name: str

    def settings(self) -> dict[str, Any]:
        """Every setting that changes this runner's results (recorded, checked on resume)."""
        ...

    def run(self, dataset, episode: Episode) -> tuple[Tensor, Tensor, dict]:
        """``(predictions (Q,), query_labels (Q,), extra info for the record)``."""
        ...


def dataset_settings(dataset) -> dict[str, Any]:
    """What identifies a dataset in the settings record: its type, split, size, a hash of its
    class names and, when it has one, its own ``settings()`` (e.g. the scene generator's)."""
    own = dataset.settings() if callable(getattr(dataset, "settings", None)) else {}
    return {
        "type": type(dataset).__name__,
        "split": getattr(dataset, "split", None),
        "classes": len(dataset.class_names),
        "images": len(dataset.labels),
        "class_names": fingerprint(list(dataset.class_names)),
        **own,
    }


def run_settings(runner: Runner, dataset, spec: EpisodeSpec) -> dict[str, Any]:
    """The settings record of ``runner`` on ``dataset`` episodes of ``spec``."""
    return {
        "method": runner.name,
        "runner": runner.settings(),
        "episodes": spec.settings(),
        "dataset": dataset_settings(dataset),
    }


def evaluate(
    runner: Runner,
    dataset,
    spec: EpisodeSpec,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    on_episode: Callable[[dict], None] | None = None,
    episode_ids: Sequence[int] | None = None,
    context: DistContext | None = None,
) -> EvaluationResult:
    """Evaluate ``runner`` on the episodes of ``spec`` drawn from ``dataset``.

    Args:
        runner: the method (:class:`Runner`).
        dataset: a few-shot dataset (``labels``, ``class_names``, ``load``).
        spec: the episodes; ``spec.episodes`` may grow between runs of the same output.
        output: the ``.jsonl`` episode file: finished episodes are appended as they finish and
            skipped on rerun; a rerun with any other setting refuses, naming it.
        on_episode: called with each record (resumed ones included), in episode order.
        episode_ids: evaluate only these episode ids (default ``range(spec.episodes)``).
        context: a multi-process context (:meth:`DistContext.from_env`); with more than one
            process each rank evaluates its share into ``shards/`` beside ``output`` and every
            rank returns the merged result.

    Returns:
        :class:`EvaluationResult` over the requested episodes, in episode order.
    """
    spec.check_dataset(dataset)
    ids = list(episode_ids) if episode_ids is not None else list(range(spec.episodes))
    settings = run_settings(runner, dataset, spec)
    if context is not None and context.distributed:
        if output is None:
            raise ValueError(
                "a multi-process evaluation needs output=PATH.jsonl to merge the ranks' episodes"
            )
        return _evaluate_sharded(runner, dataset, spec, Path(output), settings, ids, progress,
                                 on_episode, context)  # fmt: skip
    log = EpisodeLog(output, runner.name, settings) if output is not None else None
    done = log.open() if log is not None else {}
    result = _loop(runner, dataset, spec, ids, done, log, progress, on_episode)
    if log is not None:
        log.rewrite({**done, **{r["episode"]: r for r in result.records}}.values())
    return result


def _loop(
    runner: Runner,
    dataset,
    spec: EpisodeSpec,
    ids: list[int],
    done: dict[int, dict],
    log: EpisodeLog | None,
    progress: bool,
    on_episode: Callable[[dict], None] | None,
) -> EvaluationResult:
    result = EvaluationResult(runner.name)
    bar = tqdm(ids, desc=runner.name, disable=not progress, unit="episode")
    for index in bar:
        record = done.get(index)
        if record is None:
            record = run_one(runner, dataset, spec, index)
            if log is not None:
                log.append(record)
        result.accuracies.append(float(record["accuracy"]))
        result.records.append(record)
        if on_episode:
            on_episode(record)
        n = len(result.accuracies)
        bar.set_postfix(acc=f"{100 * result.mean:.1f}", ci=format_ci(result.ci95, n, digits=1))
    return result


def run_one(runner: Runner, dataset, spec: EpisodeSpec, index: int) -> dict:
    """The record of episode ``index``: sampled, seeded and run once."""
    episode = sample_episode(
        dataset.labels, index, spec.n_way, spec.k_shot, spec.n_query, spec.seed
    )
    torch.manual_seed(episode_seed(spec.seed, index))
    predictions, query_labels, info = runner.run(dataset, episode)
    accuracy = float((predictions.cpu() == query_labels.cpu()).float().mean())
    return {
        "method": runner.name,
        "episode": index,
        "accuracy": accuracy,
        "classes": [int(c) for c in episode.classes],
        "n_way": spec.n_way,
        "k_shot": spec.k_shot,
        "n_query": spec.n_query,
        "seed": spec.seed,
        **info,
    }


def _evaluate_sharded(
    runner: Runner,
    dataset,
    spec: EpisodeSpec,
    output: Path,
    settings: dict,
    ids: list[int],
    progress: bool,
    on_episode: Callable[[dict], None] | None,
    context: DistContext,
) -> EvaluationResult:
    """Each rank runs ``ids[rank::world]`` into its shard file (seeded with what the merged
    file already holds), the records are gathered and rank 0 rewrites the merged file."""
    merged = EpisodeLog(output, runner.name, settings)
    mine = shard(ids, context.rank, context.world_size)
    shard_log = EpisodeLog(
        output.parent / "shards" / f"{output.stem}.rank{context.rank}.jsonl", runner.name, settings
    )
    finished = _read_merged(merged)
    context.barrier()  # every rank has read the merged file before rank 0 rewrites it
    if context.is_main:
        merged.open()
    done = shard_log.open()
    done.update({i: r for i, r in finished.items() if i in set(mine) and i not in done})
    shard_log.rewrite(done.values())
    part = _loop(runner, dataset, spec, mine, done, shard_log, progress and context.is_main, None)
    gathered = context.gather(part.records)
    if context.is_main:
        merged.rewrite(merge_records([*gathered, finished.values()]))
    context.barrier()
    wanted = set(ids)
    records = [r for r in merge_records(gathered) if r["episode"] in wanted]
    result = EvaluationResult.from_records(runner.name, records)
    if on_episode:
        for record in records:
            on_episode(record)
    return result


def _read_merged(log: EpisodeLog) -> dict[int, dict]:
    """The finished episodes of the merged file, read-only (non-main ranks)."""
    from .records import read_episode_file
    from .settings import check_settings

    header, records = read_episode_file(log.path)
    if header is not None and header.get("method") == log.method:
        check_settings(header["settings"], log.settings, str(log.path))
    return {int(r["episode"]): r for r in records if r.get("method") == log.method}
