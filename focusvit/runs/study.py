"""The study layer: cells of paired runs on the same episodes, with per-episode probes.

A *study* (``benchmarks/fewshot.py``, ``benchmarks/fort_study.py``; see ``docs/study.md``) is a
grid of *cells*. A :class:`Cell` is one run folder holding one resumable episode file per row
(:func:`episode_file_name`), the runners that fill them (:func:`~focusvit.runs.evaluate_many`:
every row sees the same episodes), the paired comparison of two rows episode by episode
(:func:`paired`, :func:`common_episodes`) and per-episode *probes* kept in a
:class:`ProbeCache` (shared out across processes and merged like the episode files). The
attention focus (:class:`FocusProbe`) is the one probe; the CLI and both benchmarks keep it in
the same cache.

The conventions every entry point shares are defined here once:

- :func:`episode_file_name`: the episode file of a method (``lora+fort`` -> ``lora_fort.jsonl``);
- :func:`shard_file`: a process's share of a file under ``shards/`` (``name.rankR.suffix``);
- :func:`validation_seed`: the seed of the validation episodes (α selection) of a run with seed
  ``seed``, so validation and test episodes never share a seed by accident;
- :func:`load_study_backbone`: a backbone at a square input size, the whole image resized to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from focusvit.checks import is_whole_number
from focusvit.errors import ConfigError

from .distributed import DistContext, shard
from .records import atomic_write_text, read_episode_file
from .stats import mean_and_ci

#: offset of the validation seed (:func:`validation_seed`); the committed study records
#: (``benchmarks/results/fort_study/*/validation``) were drawn with it.
VALIDATION_SEED_OFFSET = 1000


def validation_seed(seed: int) -> int:
    """The seed of the validation episodes of a run whose test episodes use ``seed``.

    One rule for the CLI's ``select_alpha``, ``benchmarks/fort_study.py`` and any study: the
    validation episodes are drawn with ``seed + 1000``, so they are never the test episodes'
    sampling stream (validation classes differ anyway; the offset also keeps the per-episode
    torch seeds apart, :func:`~focusvit.runs.episode_seed`)."""
    if not is_whole_number(seed, 0):
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}; e.g. seed=0")
    return seed + VALIDATION_SEED_OFFSET


def episode_file_name(method: str) -> str:
    """The episode file of ``method`` in a run folder: ``+`` becomes ``_`` (``lora+fort`` ->
    ``lora_fort.jsonl``); every other character is kept (``alpha=0.05.jsonl``)."""
    if not isinstance(method, str) or not method or "/" in method or os.sep in method:
        raise ConfigError(
            f"a method name must be a non-empty string without path separators, got {method!r}"
        )
    return f"{method.replace('+', '_')}.jsonl"


def shard_file(path: str | os.PathLike, rank: int) -> Path:
    """The file process ``rank`` writes instead of ``path`` while several processes share a
    run: ``DIR/shards/STEM.rankR.SUFFIX`` (merged into ``path`` by the main process)."""
    path = Path(path)
    return path.parent / "shards" / f"{path.stem}.rank{rank}{path.suffix}"


# ----------------------------------------------------------------------------- backbones
def ensure_pretrained(path: str | os.PathLike, option: str = "dinov2_s14_cpu") -> Path:
    """The ``focusvit-pretrain`` checkpoint at ``path``, trained now (resumably, with
    ``pretrain_model=option``) when it does not exist.

    Raises:
        ConfigError: the checkpoint is missing and ``focusvit-pretrain`` is not installed."""
    path = Path(path)
    if path.exists():
        return path
    script = Path(sys.executable).with_name("focusvit-pretrain")
    if not script.exists():
        raise ConfigError(
            f"{path} does not exist and focusvit-pretrain is not installed next to "
            f"{sys.executable}; install focusvit, then run `focusvit-pretrain "
            f"pretrain_model={option} out={path.parent}`"
        )
    command = [str(script), f"pretrain_model={option}", f"out={path.parent}"]
    print(f"{path} is missing: running {' '.join(command[1:])} (resumable)", flush=True)
    subprocess.run(command, check=True)
    return path


def load_study_backbone(spec: str, image_size: int, num_classes: int | None = None):
    """A backbone at a square ``image_size`` whose preprocessing resizes the whole image to it
    (no centre crop: ``crop_pct=1``), as every study cell records it; loaded through
    :class:`~focusvit.runs.BackboneSpec`."""
    from .spec import BackboneSpec

    return BackboneSpec(
        spec=spec, num_classes=num_classes, image_size=image_size, crop_pct=1.0
    ).load()


# ----------------------------------------------------------------------------- pairing
@dataclass(frozen=True)
class Paired:
    """``a − b`` over paired episodes: mean and 95% interval (:func:`mean_and_ci`) and
    wins / ties / losses of ``a``."""

    mean: float
    ci95: float
    wins: int
    ties: int
    losses: int

    @property
    def wtl(self) -> str:
        return f"{self.wins}/{self.ties}/{self.losses}"


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """``a − b`` episode by episode; ``a`` and ``b`` hold the same episodes in the same order
    (:func:`common_episodes`).

    Raises:
        ConfigError: rows of different lengths or empty rows (pair them by episode first)."""
    if len(a) != len(b) or not len(a):
        raise ConfigError(
            f"paired rows must hold the same, non-empty set of episodes; got {len(a)} and "
            f"{len(b)}. Pair them by episode index first (focusvit.runs.study.common_episodes)."
        )
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, ci = mean_and_ci(diff.tolist())
    return Paired(mean, ci, int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum()))


def row_accuracies(path: str | os.PathLike) -> dict[int, float]:
    """Accuracy by episode index of one episode file (diverged episodes left out)."""
    _, records = read_episode_file(path)
    return {int(r["episode"]): r["accuracy"] for r in records if not r.get("diverged")}


def common_episodes(rows: Mapping[str, Mapping[int, float]]) -> dict[str, list[float]]:
    """Each row's accuracies on the episodes *every* row holds, in episode order: a record
    missing from one row drops that episode, it never shifts the pairing."""
    if not rows:
        return {}
    common = sorted(set.intersection(*(set(r) for r in rows.values())))
    return {name: [r[e] for e in common] for name, r in rows.items()}


# ----------------------------------------------------------------------------- probes
class ProbeCache:
    """Per-episode results of a probe by episode index, each kept as soon as it is measured.

    A ``.json`` file holds JSON values (numbers); a ``.safetensors`` file any
    :func:`~focusvit.runs.save_state` state (e.g. attention maps). Keys that are not episode
    indices are metadata (``key``: what the entries were measured with; others as the caller
    wants, e.g. ``patches``). Under several processes each writes its share to
    :func:`shard_file` and the main process writes the merged file; :meth:`load` merges the
    shards of an interrupted run, so nothing measured is lost.

    Args:
        path: the cache file.
        key: when given, entries stored under another ``key`` are dropped (measured again).
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        self.path = Path(path)
        self.key = key
        self.meta: dict[str, Any] = {}

    def _read(self, path: Path) -> dict[str, Any]:
        if self.path.suffix == ".safetensors":
            from .checkpoint import load_state

            data = load_state(path)
        else:
            data = json.loads(path.read_text())
        if isinstance(data.get("runs"), dict):  # the CLI's earlier {"key", "runs"} layout
            data = {**{k: v for k, v in data.items() if k != "runs"}, **data["runs"]}
        return data

    def _write(self, path: Path, entries: Mapping[int, Any]) -> None:
        data = {str(i): entries[i] for i in sorted(entries)}
        data.update(self.meta)
        if self.key is not None:
            data["key"] = self.key
        if self.path.suffix == ".safetensors":
            from .checkpoint import save_state

            save_state(path, data)
        else:
            atomic_write_text(path, json.dumps(data, indent=1))

    def load(self) -> dict[int, Any]:
        """Entries by episode index, in index order: the file merged with any shards (an
        entry's keys updated shard by shard); fills :attr:`meta`."""
        entries: dict[int, Any] = {}
        shards = sorted(self.path.parent.glob(f"shards/{self.path.stem}.rank*{self.path.suffix}"))
        for path in [self.path, *shards]:
            if not path.exists():
                continue
            data = self._read(path)
            if self.key is not None and data.get("key") != self.key:
                continue
            for name, value in data.items():
                if name.isdigit():
                    old = entries.get(int(name))
                    both = isinstance(old, dict) and isinstance(value, dict)
                    entries[int(name)] = {**old, **value} if both else value
                elif name != "key":
                    self.meta[name] = value
        return dict(sorted(entries.items()))

    def measure(
        self,
        indices: Iterable[int],
        probe: Callable[[int], Any],
        context: DistContext | None = None,
        complete: Callable[[Any], bool] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> dict[int, Any]:
        """Run ``probe(index)`` on the ``indices`` not yet cached (or whose entry fails
        ``complete``), round-robin across the processes of ``context``; returns every cached
        entry by index (the same on every process)."""
        context = context or DistContext()
        cache = self.load()
        self.meta.update(meta or {})
        context.barrier()  # all read the same cache (so share the same episodes) before writing
        done = complete or (lambda entry: True)
        missing = [i for i in indices if i not in cache or not done(cache[i])]
        progress = shard_file(self.path, context.rank) if context.distributed else self.path
        mine: dict[int, Any] = {}
        for index in shard(missing, context.rank, context.world_size):
            mine[index] = probe(index)
            self._write(progress, {**cache, **mine})
        for part in context.gather(mine):
            cache.update(part)
        if context.is_main and context.distributed:
            self._write(self.path, cache)
        context.barrier()
        return dict(sorted(cache.items()))


@dataclass
class FocusProbe:
    """The attention focus of one episode before and after fine-tuning with each runner
    (:func:`focusvit.reports.fewshot.attention_focus`: share of the last block's CLS attention
    on the prompts and on the class object, patches holding 95% of it; support images
    ``(K, h, w)`` and query images ``(q, h, w)`` maps; the attention-enhancement loss of FORT,
    Wang, Jie, Deng, "Focus Your Attention when Few-Shot Classification", NeurIPS 2023, is
    meant to raise the share on the object).

    Call it with an episode index; ``numbers_only`` keeps ``{stage: {metric: value}}`` (JSON
    caches of the benchmarks), else the whole result with its maps (the CLI's report)."""

    backbone: Any
    dataset: Any
    runners: Mapping[str, Any]
    episodes: Any
    fort: Any
    coverage: float = 0.95
    max_queries: int = 5
    device: Any = "cpu"
    progress: bool = False
    numbers_only: bool = True
    stages: set[str] = field(default_factory=set)

    def __call__(self, index: int) -> dict[str, Any]:
        from focusvit.reports.fewshot import attention_focus

        focus = attention_focus(
            self.backbone, self.dataset, self.runners, index, self.episodes, self.fort,
            coverage=self.coverage, max_queries=self.max_queries, device=self.device,
            progress=self.progress,
        )  # fmt: skip
        return focus["numbers"] if self.numbers_only else focus

    def complete(self, entry: Mapping[str, Any]) -> bool:
        """An entry holds every stage in :attr:`stages` (e.g. a row added since)."""
        return self.stages <= set(entry)


# ----------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One cell of a study: a run folder with one episode file per row, all rows evaluated on
    the same episodes, and per-episode probes kept beside them.

    Attributes:
        folder: the cell's folder (``ROW.jsonl`` per row, ``PROBE.json`` per probe).
        runners: row name -> :class:`~focusvit.runs.Runner` (its ``name`` is the row).
        dataset: the few-shot dataset of the episodes.
        episodes: the :class:`~focusvit.runs.EpisodeSpec` every row is evaluated on.
    """

    folder: Path
    runners: Mapping[str, Any] = field(default_factory=dict)
    dataset: Any = None
    episodes: Any = None

    def episode_file(self, row: str) -> Path:
        return Path(self.folder) / episode_file_name(row)

    def run(self, context: DistContext | None = None, progress: bool = True) -> dict[str, Any]:
        """Every row on the cell's episodes (resumable; shared out across ``context``'s
        processes); returns :class:`~focusvit.runs.EvaluationResult` by row."""
        from .loop import evaluate_many

        outputs = {r.name: self.episode_file(r.name) for r in self.runners.values()}
        return evaluate_many(
            list(self.runners.values()), self.dataset, self.episodes, outputs,
            progress=progress, context=context,
        )  # fmt: skip

    def stored(self, rows: Iterable[str]) -> dict[str, list[float]]:
        """The stored accuracies of ``rows`` (those with a file) on their common episodes."""
        found = {r: self.episode_file(r) for r in rows}
        return common_episodes({r: row_accuracies(p) for r, p in found.items() if p.exists()})

    def probe_cache(self, name: str) -> ProbeCache:
        return ProbeCache(Path(self.folder) / f"{name}.json")

    def probe(
        self,
        name: str,
        probe: Callable[[int], Any],
        indices: Iterable[int],
        context: DistContext | None = None,
        complete: Callable[[Any], bool] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> dict[int, Any]:
        """``probe`` on ``indices`` through the cell's ``NAME.json`` cache (:class:`ProbeCache`)."""
        return self.probe_cache(name).measure(indices, probe, context, complete, meta)


def merge_summary(path: str | os.PathLike, cells: Sequence[Mapping[str, Any]], key: Sequence[str]):
    """Write ``cells`` into the JSON list at ``path``: cells with the same ``key`` fields
    replace the stored ones, the others stay (a filtered report keeps the cells it did not
    read); sorted by ``key``."""
    path = Path(path)

    def of(cell: Mapping[str, Any]) -> tuple:
        return tuple(cell[k] for k in key)

    merged = {of(c): c for c in json.loads(path.read_text())} if path.exists() else {}
    merged.update({of(c): c for c in cells})
    path.write_text(json.dumps([merged[k] for k in sorted(merged)], indent=1))


# ----------------------------------------------------------------------------- tables, figure
#: focus numbers of :func:`focus_table` by default, in order (``attention_focus`` names -> titles)
FOCUS_COLUMNS = {
    "query_mass_on_object": "query→object",
    "support_mass_on_object": "support→object",
    "support_mass_on_prompt": "support→prompt",
    "query_coverage_95": "query 95% patches",
    "accuracy": "accuracy %",
}


def focus_value(key: str, mean: float, ci: float, sign: str = "") -> str:
    """``mean ± ci`` of one focus number: accuracy in points, patch counts (``coverage``) with
    one decimal, attention shares with three; ``sign="+"`` for differences."""
    scale, digits = (100, 1) if key == "accuracy" else (1, 1 if "coverage" in key else 3)
    return f"{scale * mean:{sign}.{digits}f} ± {scale * ci:.{digits}f}"


def focus_table(
    runs: Sequence[Mapping[str, Any]],
    columns: Mapping[str, str] = FOCUS_COLUMNS,
    baseline: str = "plain",
) -> list[str]:
    """Lines of the focus table of ``runs`` (``[{"numbers": {stage: {metric: value}}}]``, one per
    episode): mean ± 95% interval of each metric in ``columns`` (name -> title) per stage, then
    each stage but ``pretrained`` and ``baseline`` minus ``baseline``, paired per episode."""
    from focusvit.reports.fewshot import focus_rows

    lines = [f"{'stage':<12}" + "".join(f"{title:>20}" for title in columns.values())]
    for row in focus_rows(runs):
        lines.append(f"{row['stage']:<12}" + "".join(
            f"{focus_value(k, row[k], row[k + '_ci95']) if k in row else '–':>20}"
            for k in columns))  # fmt: skip
    for stage in [s for s in runs[0]["numbers"] if s not in ("pretrained", baseline)]:
        pairs = [r["numbers"] for r in runs if stage in r["numbers"] and baseline in r["numbers"]]
        cells = []
        for key in columns:
            if not pairs or key not in pairs[0][baseline]:
                cells.append(f"{'–':>20}")
                continue
            mean, ci = mean_and_ci([p[stage][key] - p[baseline][key] for p in pairs])
            cells.append(f"{focus_value(key, mean, ci, sign='+'):>20}")
        lines.append(
            f"{f'{stage} − {baseline}':<12}" + "".join(cells) + "   (paired over the episodes)"
        )
    return lines


def paired_figure(
    labels: Sequence[str],
    rows: Mapping[str, tuple[Sequence[Paired], str, str, str]],
    path: str | os.PathLike,
    goal: float,
    title: str,
    dpi: int = 110,
):
    """A forest plot: one line per cell (``labels``, top to bottom), per row its paired
    differences in points with 95% intervals (``rows``: name -> ``(differences, marker, colour,
    legend)``), a line at 0 and a dashed one at ``goal``; saved to ``path`` (PNG) and returned
    (``axes[0].containers`` in ``rows`` order)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 1.2 + 0.32 * len(labels)), layout="constrained")
    axes = figure.add_subplot()
    y = np.arange(len(labels))[::-1].astype(float)
    offsets = np.linspace(0.17, -0.17, len(rows)) if len(rows) > 1 else [0.0]
    for offset, (values, marker, colour, legend) in zip(offsets, rows.values(), strict=True):
        axes.errorbar([100 * p.mean for p in values], y + offset, fmt=marker, color=colour,
                      xerr=[100 * p.ci95 for p in values], capsize=2, markersize=4, label=legend)  # fmt: skip
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.axvline(goal, color="tab:green", linestyle="--", linewidth=0.8,
                 label=f"goal: +{goal:g} points")  # fmt: skip
    axes.set_yticks(y, list(labels), fontsize=8)
    axes.set_xlabel("paired accuracy difference, row − plain (points; 95% interval)")
    axes.set_title(title, fontsize=10)
    figure.legend(fontsize=8, loc="outside lower center", ncol=3)
    axes.grid(axis="x", alpha=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return figure


# ----------------------------------------------------------------------------- row grids
def row_summary(method: str, result, seconds: float = float("nan")) -> dict[str, Any]:
    """The JSON summary of one row (an :class:`~focusvit.runs.EvaluationResult`): episodes,
    mean, 95% interval, per-episode accuracies with their episode ids, diverged count, trainable
    parameters and seconds per fresh episode."""
    trainable = next((r.get("trainable") for r in result.records if r.get("trainable")), None)
    return {
        "method": method,
        "episodes": len(result.accuracies),
        "mean": result.mean,
        "ci95": result.ci95,
        "accuracies": list(result.accuracies),
        "episode_ids": [int(r["episode"]) for r in result.records if not r.get("diverged")],
        "diverged": result.diverged,
        "trainable": trainable,
        "seconds_per_episode": seconds,
    }


def timed_row(method: str, path: Path, evaluator: Callable[..., Any], *args, **kwargs) -> dict:
    """``evaluator(*args, output=path, **kwargs)`` as :func:`row_summary`, with the seconds per
    episode of this call (episodes resumed from ``path`` are not counted)."""
    import time

    before = len(read_episode_file(path)[1])
    start = time.perf_counter()
    result = evaluator(*args, output=path, **kwargs)
    fresh = len(result.accuracies) - before
    seconds = (time.perf_counter() - start) / fresh if fresh > 0 else float("nan")
    return row_summary(method, result, seconds)


def stored_row(method: str, path: Path, episodes: Mapping[str, Any]) -> dict | None:
    """:func:`row_summary` of the first ``episodes["episodes"]`` records of ``path`` (``None``
    without any).

    Raises:
        SettingsMismatchError: the records hold episodes of another ``n_way``, ``k_shot``,
            ``n_query`` or ``seed`` than ``episodes``."""
    from focusvit.errors import SettingsMismatchError

    from .stats import EvaluationResult

    header, records = read_episode_file(path)
    wanted = {k: episodes[k] for k in ("n_way", "k_shot", "n_query", "seed")}
    stored = {k: (header or {}).get("settings", {}).get("episodes", {}).get(k) for k in wanted}
    if records and stored != wanted:
        raise SettingsMismatchError(
            f"{path} holds episodes of {stored}, not {wanted}: pass the options it was run with "
            "(--quick, --n-query, --seed) or another --out"
        )
    kept = sorted(
        (r for r in records if r["episode"] < episodes["episodes"]), key=lambda r: r["episode"]
    )
    return row_summary(method, EvaluationResult.from_records(method, kept)) if kept else None


def accuracy_grid(results: Mapping[str, Sequence[Mapping]], columns: Sequence[str]) -> list[str]:
    """Lines of a method × column table of ``mean ± 95%`` accuracy (``-`` where missing);
    ``results``: column -> :func:`row_summary` rows."""

    def cell(row: Mapping | None) -> str:
        return "-" if row is None else f"{100 * row['mean']:5.1f} ± {100 * row['ci95']:4.1f}"

    methods = list(dict.fromkeys(r["method"] for rows in results.values() for r in rows))
    index = {(c, r["method"]): r for c in columns for r in results.get(c, [])}
    lines = [f"{'method':<18}" + "".join(f"{c:>16}" for c in columns)]
    for method in methods:
        lines.append(
            f"{method:<18}" + "".join(f"{cell(index.get((c, method))):>16}" for c in columns)
        )
    return lines


def paired_grid(
    results: Mapping[str, Sequence[Mapping]], pairs: Sequence[tuple[str, str]]
) -> list[str]:
    """Lines of ``row − base`` per column and ``(base, row)`` pair, paired by episode id
    (:func:`common_episodes`): both means, the difference ± 95% interval, wins/ties/losses."""
    lines = [
        f"{'backbone':<12}{'tuner':<8}{'plain %':>9}{'+fort %':>9}{'diff (points)':>17}{'w/t/l':>10}"
    ]
    for column, rows in results.items():
        by_method = {r["method"]: r for r in rows}
        for base, row in pairs:
            if base not in by_method or row not in by_method:
                continue
            a, b = by_method[row], by_method[base]
            both = common_episodes(
                {
                    m: dict(zip(r["episode_ids"], r["accuracies"], strict=True))
                    for m, r in ((row, a), (base, b))
                }
            )
            if not both[base]:
                continue
            p = paired(both[row], both[base])
            lines.append(
                f"{column:<12}{base:<8}{100 * b['mean']:>9.1f}{100 * a['mean']:>9.1f}"
                f"{f'{100 * p.mean:+.1f} ± {100 * p.ci95:.1f}':>17}{p.wtl:>10}"
            )
    return lines


def coverage_grid(focus: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines of the focus table per column and stage, averaged over episodes: patches holding
    95% of the CLS attention (support, query), share on the prompts, accuracy; ``focus``:
    column -> ``{"patches": N, "runs": {episode: {stage: numbers}}}``."""
    keys = ("support_coverage_95", "query_coverage_95", "support_mass_on_prompt", "accuracy")
    lines = [
        f"{'backbone':<12}{'stage':<12}{'patches':>8}{'support cov95':>14}{'query cov95':>12}"
        f"{'mass on prompt':>15}{'acc %':>7}"
    ]
    for column, block in focus.items():
        runs = block["runs"]
        for stage in next(iter(runs.values())):
            found = {k: [run[stage][k] for run in runs.values() if k in run[stage]] for k in keys}
            v = {k: float(np.mean(x)) if x else float("nan") for k, x in found.items()}
            acc = "-" if np.isnan(v["accuracy"]) else f"{100 * v['accuracy']:.0f}"
            lines.append(
                f"{column:<12}{stage:<12}{block['patches']:>8}{v['support_coverage_95']:>14.1f}"
                f"{v['query_coverage_95']:>12.1f}{v['support_mass_on_prompt']:>15.3f}{acc:>7}"
            )
    return lines
