"""The one episodic evaluation loop (docs/concepts/runs.md).

Every method — a ViT tuner with or without the attention loss, a frozen-feature solver, a CNN
baseline — is a :class:`Runner`: a record name, the settings its results depend on, and a
function from an :class:`~focusvit.runs.episode_data.EpisodeData` to query predictions.
:func:`evaluate_many` samples the episodes (episode ``i`` of a seed is the same for every
runner), decodes and preprocesses each episode once for all runners, seeds torch per episode and
runner (:func:`~focusvit.runs.spec.episode_seed`), hands several episodes at once to runners that
fine-tune tasks in one batched computation, streams each finished episode to its runner's
resumable episode file (an episode whose fine-tuning diverged as a ``"diverged"`` record, never
as an accuracy), refuses an output written with other settings, and shards episodes across
processes under ``torchrun`` / ``accelerate launch``. :func:`evaluate` is the one-runner
form.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from focusvit.data.datasets import check_dataset_kind, dataset_fingerprint, dataset_manifest
from focusvit.data.episodes import sample_episode
from focusvit.errors import ConfigError, NonFiniteError

from .distributed import DistContext, shard
from .episode_data import EpisodeData
from .records import EpisodeLog, check_episode_ids, merge_records, read_episode_file
from .settings import check_settings, fingerprint
from .spec import EpisodeSpec, check_spec_kind, episode_seed
from .stats import EvaluationResult, format_ci, is_diverged
from .study import shard_file

Prediction = tuple[Tensor, Tensor, dict]


@runtime_checkable
class Runner(Protocol):
    """A few-shot method the loop can evaluate.

    Attributes:
        name: the record name (``"lora+fort"``, ``"ridge"``, ``"can+transductive"``).

    A runner may also define ``tasks_per_batch`` (int) and ``run_batch(datas) -> list`` to
    fine-tune several episodes in one computation; the loop then hands it up to that many
    episodes at once (each seeded as it would be alone: ``EpisodeData.seed``).
    """

    name: str

    def settings(self) -> dict[str, Any]:
        """Every setting that changes this runner's results (recorded, checked on resume)."""
        ...

    def run(self, data: EpisodeData) -> Prediction:
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
        "content": dataset_fingerprint(dataset),
        "class_names": fingerprint(list(dataset.class_names)),
        **own,
    }


def run_settings(
    runner: Runner, dataset, spec: EpisodeSpec, dataset_part: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings record of ``runner`` on ``dataset`` episodes of ``spec``; ``dataset_part``:
    :func:`dataset_settings` of ``dataset`` when already computed (one pass over its files for
    all runners)."""
    return {
        "method": runner.name,
        "runner": runner.settings(),
        "episodes": spec.settings(),
        "dataset": dataset_settings(dataset) if dataset_part is None else dataset_part,
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
        :class:`EvaluationResult` over the requested episodes, in episode order. An episode
        whose fine-tuning diverged (the runner raised :class:`NonFiniteError`) is recorded with
        ``"diverged": true`` and its ``"error"``, no accuracy: counted in
        :attr:`EvaluationResult.diverged`, never in the mean, and not rerun on resume.
    """
    outputs = {runner.name: output} if output is not None else None
    callbacks = {runner.name: on_episode} if on_episode is not None else None
    results = evaluate_many(
        [runner], dataset, spec, outputs, progress, callbacks, episode_ids, context
    )
    return results[runner.name]


def evaluate_many(
    runners: Sequence[Runner],
    dataset,
    spec: EpisodeSpec,
    outputs: Mapping[str, str | os.PathLike] | None = None,
    progress: bool = True,
    on_episode: Mapping[str, Callable[[dict], None]] | None = None,
    episode_ids: Sequence[int] | None = None,
    context: DistContext | None = None,
    on_estimate: Callable[[str], None] | None = None,
) -> dict[str, EvaluationResult]:
    """Evaluate several runners on the same episodes, doing each episode's shared work once.

    Args:
        runners: the methods (distinct names).
        outputs: ``{runner name: .jsonl path}``; every runner needs one when any has one.
        on_episode: ``{runner name: callback}`` called with each record in episode order.
        on_estimate: called once with ``"expected time: ~H:MM for N episodes (X episodes/s)"``
            after the first episodes run here (the first chunk is the warm-up, then
            :data:`ESTIMATE_AFTER` more; with fewer to run, after the last), N the episodes
            this call runs (not those resumed). Single-process runs only.

    ``dataset``, ``spec``, ``progress``, ``episode_ids`` and ``context`` are as in
    :func:`evaluate`.

    Returns:
        ``{runner name: EvaluationResult}``.
    """
    check_spec_kind(spec, "spec")
    check_dataset_kind(dataset)
    spec.check_dataset(dataset)
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ConfigError(f"runners must have distinct names, got {names}")
    if outputs is not None and set(outputs) != set(names):
        raise ConfigError(f"outputs must name every runner ({names}), got {sorted(outputs)}")
    ids = check_episode_ids(episode_ids, spec.episodes)
    if context is not None and context.distributed:
        if outputs is None:
            raise ConfigError(
                "a multi-process evaluation needs output=PATH.jsonl to merge the ranks' episodes"
            )
        return _evaluate_sharded(runners, dataset, spec, outputs, ids, progress, on_episode,
                                 context)  # fmt: skip
    logs = _open_logs(runners, dataset, spec, outputs)
    done = {name: (log.open() if log is not None else {}) for name, log in logs.items()}
    results = _loop(
        runners, dataset, spec, ids, done, logs, progress, on_episode or {}, on_estimate
    )
    for name, log in logs.items():
        if log is not None:
            log.rewrite({**done[name], **{r["episode"]: r for r in results[name].records}}.values())
    return results


def _open_logs(
    runners, dataset, spec, outputs, rank: int | None = None
) -> dict[str, EpisodeLog | None]:
    """Episode logs of ``outputs``; with ``rank``, that process's shard files (:func:`shard_file`)."""
    logs: dict[str, EpisodeLog | None] = {}
    dataset_part = dataset_settings(dataset) if outputs else None
    manifest = functools.cache(lambda: dataset_manifest(dataset))  # one pass for all runners
    for runner in runners:
        path = outputs.get(runner.name) if outputs is not None else None
        if path is not None and rank is not None:
            path = shard_file(path, rank)
        logs[runner.name] = (
            EpisodeLog(
                path,
                runner.name,
                run_settings(runner, dataset, spec, dataset_part),
                manifest,
            )
            if path
            else None
        )
    return logs


def _loop(
    runners: Sequence[Runner],
    dataset,
    spec: EpisodeSpec,
    ids: list[int],
    done: dict[str, dict[int, dict]],
    logs: dict[str, EpisodeLog | None],
    progress: bool,
    on_episode: Mapping[str, Callable[[dict], None]],
    on_estimate: Callable[[str], None] | None = None,
) -> dict[str, EvaluationResult]:
    """Episodes in chunks of the largest ``tasks_per_batch``; in each chunk every runner runs
    the episodes it has not finished (batched runners all at once), sharing each episode's
    decoded images, preprocessed tensors and pretrained-model results."""
    results = {r.name: EvaluationResult(r.name) for r in runners}
    chunk = max([int(getattr(r, "tasks_per_batch", 1) or 1) for r in runners] + [1])
    label = runners[0].name if len(runners) == 1 else f"{len(runners)} methods"
    bar = tqdm(total=len(ids), desc=label, disable=not progress, unit="episode")
    todo = {i for i in ids if any(i not in done[r.name] for r in runners)}
    clock = _Estimate(len(todo), on_estimate)
    for start in range(0, len(ids), chunk):
        datas = [_episode_data(dataset, spec, index) for index in ids[start : start + chunk]]
        clock.start()
        for runner in runners:
            records = _run_chunk(runner, spec, datas, done[runner.name], logs[runner.name])
            result = results[runner.name]
            for record in records:
                if not is_diverged(record):
                    result.accuracies.append(float(record["accuracy"]))
                result.records.append(record)
                if runner.name in on_episode:
                    on_episode[runner.name](record)
        clock.done(sum(1 for i in ids[start : start + chunk] if i in todo))
        bar.update(len(datas))
        bar.set_postfix(_progress_postfix(results[runners[0].name]))
    bar.close()
    return results


#: episodes timed after the warm-up chunk before the expected time is reported
ESTIMATE_AFTER = 3


class _Estimate:
    """The expected time of a loop of ``total`` episodes: the first chunk that runs episodes
    is the warm-up (model on the device, first kernels), then the rate over the next
    :data:`ESTIMATE_AFTER` episodes (or all that remain, when fewer)."""

    def __init__(self, total: int, report: Callable[[str], None] | None):
        self.total, self.report = total, report
        self.ran = 0  # episodes run, warm-up included
        self.warmup = None  # (episodes, seconds) of the warm-up chunk
        self.began = self.timed_from = 0.0

    def start(self) -> None:
        if not self.ran:
            self.began = time.perf_counter()

    def done(self, count: int) -> None:
        if self.report is None or not count:
            return
        now = time.perf_counter()
        self.ran += count
        if self.warmup is None:
            self.warmup, self.timed_from = (self.ran, now - self.began), now
            return
        timed = self.ran - self.warmup[0]
        if timed < min(ESTIMATE_AFTER, self.total - self.warmup[0]):
            return
        rate = timed / max(now - self.timed_from, 1e-9)
        seconds = self.warmup[1] + (self.total - self.warmup[0]) / rate
        minutes = max(1, math.ceil(seconds / 60))
        self.report(
            f"expected time: ~{minutes // 60}:{minutes % 60:02d} for {self.total} episodes "
            f"({rate:.2f} episodes/s)"
        )
        self.report = None


def _progress_postfix(result: EvaluationResult) -> dict[str, str]:
    """The progress bar's running mean and interval (and diverged count, when any)."""
    n = len(result.accuracies)
    postfix = {"acc": f"{100 * result.mean:.1f}" if n else "n/a"}
    postfix["ci"] = format_ci(result.ci95, n, digits=1)
    if result.diverged:
        postfix["diverged"] = str(result.diverged)
    return postfix


def _episode_data(dataset, spec: EpisodeSpec, index: int) -> EpisodeData:
    episode = sample_episode(
        dataset.labels, index, spec.n_way, spec.k_shot, spec.n_query, spec.seed
    )
    return EpisodeData(dataset, episode, episode_seed(spec.seed, index))


def _run_chunk(
    runner: Runner,
    spec: EpisodeSpec,
    datas: list[EpisodeData],
    done: dict[int, dict],
    log: EpisodeLog | None,
) -> list[dict]:
    """The records of ``datas`` for one runner, in order (finished ones read, others run)."""
    todo = [d for d in datas if d.episode.index not in done]
    fresh: dict[int, dict] = {}
    for data, record in zip(todo, _run_todo(runner, spec, todo), strict=True):
        fresh[data.episode.index] = record
        if log is not None:
            log.append(record)
    return [done.get(d.episode.index) or fresh[d.episode.index] for d in datas]


def _run_todo(runner: Runner, spec: EpisodeSpec, todo: list[EpisodeData]) -> list[dict]:
    """The records of ``todo``: batched when the runner can; when a task of the batch diverged
    (:class:`NonFiniteError`), the episodes are run one by one to tell which."""
    if len(todo) > 1 and callable(getattr(runner, "run_batch", None)):
        try:
            outcomes = runner.run_batch(todo)
        except NonFiniteError:
            pass  # each episode below, seeded as it would be alone
        else:
            return [
                make_record(runner.name, spec, data, *outcome)
                for data, outcome in zip(todo, outcomes, strict=True)
            ]
    return [_run_single(runner, spec, data) for data in todo]


def _run_single(runner: Runner, spec: EpisodeSpec, data: EpisodeData) -> dict:
    """One episode's record, seeded per episode; a diverged fine-tuning gives a diverged
    record (:func:`make_diverged_record`) instead of an accuracy."""
    torch.manual_seed(data.seed)
    try:
        outcome = runner.run(data)
    except NonFiniteError as error:
        return make_diverged_record(runner.name, spec, data, error)
    return make_record(runner.name, spec, data, *outcome)


def make_record(
    name: str, spec: EpisodeSpec, data: EpisodeData, predictions: Tensor, labels: Tensor, info: dict
) -> dict:
    """The JSONL record of one finished episode."""
    accuracy = float((predictions.cpu() == labels.cpu()).float().mean())
    return {
        "method": name,
        "episode": data.episode.index,
        "accuracy": accuracy,
        "classes": [int(c) for c in data.episode.classes],
        "n_way": spec.n_way,
        "k_shot": spec.k_shot,
        "n_query": spec.n_query,
        "seed": spec.seed,
        **info,
    }


def make_diverged_record(name: str, spec: EpisodeSpec, data: EpisodeData, error: Exception) -> dict:
    """The JSONL record of an episode whose fine-tuning diverged: ``"diverged": true`` and
    the error message, no accuracy (never counted in the mean; a resume does not rerun it)."""
    return {
        "method": name,
        "episode": data.episode.index,
        "diverged": True,
        "error": str(error),
        "classes": [int(c) for c in data.episode.classes],
        "n_way": spec.n_way,
        "k_shot": spec.k_shot,
        "n_query": spec.n_query,
        "seed": spec.seed,
    }


def run_one(runner: Runner, dataset, spec: EpisodeSpec, index: int) -> dict:
    """The record of episode ``index``: sampled, seeded and run once (a diverged record when
    its fine-tuning diverged)."""
    return _run_single(runner, spec, _episode_data(dataset, spec, index))


def _evaluate_sharded(
    runners: Sequence[Runner],
    dataset,
    spec: EpisodeSpec,
    outputs: Mapping[str, str | os.PathLike],
    ids: list[int],
    progress: bool,
    on_episode: Mapping[str, Callable[[dict], None]] | None,
    context: DistContext,
) -> dict[str, EvaluationResult]:
    """Each rank runs ``ids[rank::world]`` into its shard files (seeded with what the merged
    files already hold), the records are gathered and rank 0 rewrites the merged files."""
    merged = _open_logs(runners, dataset, spec, outputs)
    finished = {name: _read_merged(log) for name, log in merged.items()}
    context.barrier()  # every rank has read the merged files before rank 0 rewrites them
    if context.is_main:
        for log in merged.values():
            log.open()
    mine = shard(ids, context.rank, context.world_size)
    shard_logs = _open_logs(runners, dataset, spec, outputs, rank=context.rank)
    done = {}
    for name, log in shard_logs.items():
        done[name] = log.open()
        done[name].update(
            {i: r for i, r in finished[name].items() if i in set(mine) and i not in done[name]}
        )
        log.rewrite(done[name].values())
    parts = _loop(runners, dataset, spec, mine, done, shard_logs, progress and context.is_main, {})
    results = {}
    wanted = set(ids)
    for runner in runners:
        gathered = context.gather(parts[runner.name].records)
        if context.is_main:
            merged[runner.name].rewrite(merge_records([*gathered, finished[runner.name].values()]))
        records = [r for r in merge_records(gathered) if r["episode"] in wanted]
        results[runner.name] = EvaluationResult.from_records(runner.name, records)
        for record in records:
            if on_episode and runner.name in on_episode:
                on_episode[runner.name](record)
    context.barrier()
    return results


def _read_merged(log: EpisodeLog) -> dict[int, dict]:
    """The finished episodes of the merged file, read-only (every rank)."""
    header, records = read_episode_file(log.path)
    if header is not None and header.get("method") == log.method:
        check_settings(header["settings"], log.settings, str(log.path))
    return {int(r["episode"]): r for r in records if r.get("method") == log.method}
