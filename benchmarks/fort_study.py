"""Does the attention-enhancement loss pay off? Paired evidence on the same episodes (issue 13).

For each cell (backbone × scenes × setting × tuner):

1. **Validation** (never the test classes): :func:`focusvit.select_alpha` evaluates the tuner
   without the loss and with each candidate α on ``--val-episodes`` episodes of the *validation*
   classes (``SyntheticScenes("val")`` of the same scene kind); α = 0 wins ties.
2. **Test**: on ``--episodes`` episodes of the novel classes, the same tasks for every row:
   ``plain`` (α = 0), ``authors`` (the DESIGN.md section 6 recipe α, official target weighting)
   and ``validated`` (the α chosen in step 1; identical to ``plain`` or ``authors`` when it
   chose one of them, which is then not recomputed).
3. **Printed**: accuracy ± 95% interval per row, and the paired difference ``row − plain`` per
   episode with its 95% interval and wins / ties / losses.
4. **Attention focus** (the mechanism, ``--focus-episodes``, first test episodes): the share
   of the last block's CLS attention on the class object (ground-truth masks) of the support
   and query images and on the support prompts, for the pretrained model and after each row's
   fine-tuning (:func:`focusvit.reports.fewshot.attention_focus`; cached in
   ``--out``/CELL/focus.json). Does the loss move the attention where it should, and does
   that carry to the query images?

Backbones: ``pretrained`` (the offline DINOv2-S/14 fine-tuned on the synthetic base classes by
``focusvit-pretrain pretrain_model=dinov2_s14_cpu``; trained here first when missing) and
``dinov2`` (the offline DINOv2-S/14 as shipped). Scenes: ``shipped`` (the default synthetic
scenes) and ``premise`` (``SceneConfig(premise_objects=2)``: two class-independent objects per
image as large and contrasted as the class object, DESIGN.md section 9). Inputs are 112 px
(an 8×8 patch grid); prompts are the recipe's 14/196 of the patches (5 of 64).

Every episode of every row is appended to ``--out``/CELL/ROW.jsonl as it finishes: rerunning
the same command resumes, and rerunning with a larger ``--episodes`` extends the same episodes.
The validation choice is stored in ``--out``/CELL/selection.json. ``--report-only`` re-prints
every stored cell from those files (no model loaded) and, without a cell filter, draws
``--out``/paired_differences.png: ``authors − plain`` and ``validated − plain`` with their 95%
intervals per cell against the +2-point goal (``--figure PATH`` for a filtered report).

Several processes (``torchrun``; gloo on CPU, one thread each) share out every stage of a cell:
the validation and test episodes round-robin (each process streams to ``shards/`` and the
merged files are the ones a single process writes) and the focus episodes likewise. On a
2-core CPU this halves a cell's wall time. The pretrained checkpoint must exist first (one
process trains it when missing).

    python benchmarks/fort_study.py                                  # the full grid (slow on CPU)
    python benchmarks/fort_study.py --backbones pretrained --scenes premise --settings 5w1s \\
        --tuners lora,full --episodes 150 --val-episodes 20
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node=2 benchmarks/fort_study.py \\
        --backbones pretrained --scenes premise --settings 5w5s --tuners ssf
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5)}
SCENES = {"shipped": 0, "premise": 2}  # class-independent objects per image
#: backbones by key (``pretrained`` is the focusvit-pretrain checkpoint, see --pretrained);
#: ``tiny`` is a random tiny ViT that smoke-tests the command in seconds (its numbers mean nothing)
BACKBONES = {"dinov2": "offline:dinov2-s14-imgfocus", "tiny": "tiny:timm-vit"}
#: validation candidates as multiples of the recipe α (0 is always added by select_alpha)
ALPHA_MULTIPLES = (0.1, 1.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="pretrained,dinov2")
    parser.add_argument("--scenes", default="premise,shipped")
    parser.add_argument("--settings", default="5w1s,5w5s")
    parser.add_argument("--tuners", default="lora,full,ssf")
    parser.add_argument("--episodes", type=int, default=150, help="test episodes per cell")
    parser.add_argument("--val-episodes", type=int, default=20, help="validation episodes")
    parser.add_argument("--n-query", type=int, default=10, help="queries per class")
    parser.add_argument(
        "--alpha-multiples",
        default=",".join(f"{m:g}" for m in ALPHA_MULTIPLES),
        help="validation candidates as multiples of the recipe alpha (0 is always a candidate)",
    )
    parser.add_argument(
        "--pretrained",
        default="outputs/pretrain/dinov2_s14_cpu/model.safetensors",
        help="focusvit-pretrain checkpoint; trained here (pretrain_model=dinov2_s14_cpu) if missing",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=str(HERE / "results" / "fort_study"),
        help="per-episode records (committed with the repository, so the tables can be re-printed)",
    )
    parser.add_argument(
        "--prompts",
        choices=("explainer", "oracle"),
        default="explainer",
        help="explainer: the recipe's rollout_svd prompts; oracle (diagnostic): the top-P "
        "patches by ground-truth object coverage, importance-weighted by coverage, to separate "
        "the loss from the prompt quality (cells are stored as TUNER-oracle)",
    )
    parser.add_argument(
        "--focus-episodes",
        type=int,
        default=10,
        help="first test episodes whose attention focus is measured (re-fits each row once "
        "per episode; 0: skip)",
    )
    parser.add_argument("--report-only", action="store_true", help="print what is stored")
    parser.add_argument(
        "--figure",
        default=None,
        help="--report-only: PNG of the paired differences of the printed cells; default "
        "OUT/paired_differences.png when no cell filter (--backbones, --scenes, --settings, "
        "--tuners, --prompts) is given, none otherwise (a filtered report must not replace the "
        "figure of every cell)",
    )
    args = parser.parse_args()
    filters = ("backbones", "scenes", "settings", "tuners", "prompts")
    if args.figure is None and all(getattr(args, f) == parser.get_default(f) for f in filters):
        args.figure = str(Path(args.out) / "paired_differences.png")
    return args


def load_backbone(key: str, args: argparse.Namespace, context=None):
    from fewshot import ensure_pretrained

    import focusvit

    if key == "pretrained":
        checkpoint = Path(args.pretrained)
        if context is not None and context.distributed and not checkpoint.exists():
            raise SystemExit(
                f"{checkpoint} does not exist; train it once in one process first "
                "(`focusvit-pretrain pretrain_model=dinov2_s14_cpu`, or this script without "
                "torchrun), then rerun with torchrun"
            )
        spec = str(ensure_pretrained(checkpoint))
    elif key in BACKBONES:
        spec = BACKBONES[key]
    else:
        raise SystemExit(f"unknown backbone {key!r}; choose pretrained, {', '.join(BACKBONES)}")
    backbone = focusvit.load_backbone(spec, num_classes=0)
    backbone.data_config = {**backbone.data_config, "input_size": (3, 112, 112), "crop_pct": 1.0}
    return backbone


def scenes(split: str, kind: str, per_class: int):
    import focusvit
    from focusvit.data import SceneConfig

    return focusvit.SyntheticScenes(
        split, images_per_class=per_class, config=SceneConfig(premise_objects=SCENES[kind])
    )


def use_oracle_prompts(backbone, datasets) -> None:
    """Diagnostic: replace the support prompts by the ground-truth ones.

    Each preprocessed image of ``datasets`` is indexed by its bytes; the trainer's
    ``make_prompt_targets`` is replaced (in this process) by one that looks up each support
    image's object mask, pools it to the patch grid and takes the top-P patches by object
    coverage (P as the recipe: ``top_fraction`` of the patches), weighted by coverage and
    rescaled to sum to P (the official importance weighting)."""
    import torch.nn.functional as F

    import focusvit.finetune.trainer as trainer

    masks = {}
    for dataset in datasets:
        for start in range(0, len(dataset), 64):
            indices = range(start, min(len(dataset), start + 64))
            batch = backbone.preprocess([dataset.load(i) for i in indices])
            for image, i in zip(batch, indices, strict=True):
                masks[image.numpy().tobytes()] = torch.as_tensor(
                    dataset.mask(i), dtype=torch.float32
                )

    def oracle_targets(backbone_, images, labels, fort):
        grid = backbone_.grid_size(tuple(images.shape[-2:]))
        count = grid[0] * grid[1]
        size = fort.top_k or max(1, round(fort.top_fraction * count))
        targets = torch.zeros(len(images), count)
        for row, image in enumerate(images.detach().cpu()):
            mask = masks[image.numpy().tobytes()]
            cover = F.adaptive_avg_pool2d(mask[None, None], grid).flatten()
            top = cover.topk(size).indices
            weights = cover[top].clamp_min(1e-6)
            targets[row, top] = weights / weights.sum() * size
        return targets.to(images.device)

    trainer.make_prompt_targets = oracle_targets


def recipe_alpha(backbone, tuner: str) -> float:
    from focusvit.finetune import RECIPES

    return RECIPES[(backbone.family, tuner)].alpha


def select(backbone, tuner: str, kind: str, setting: str, args, folder: Path, context) -> dict:
    """α chosen on validation episodes (cached in ``selection.json``; under several processes
    each evaluates its share of the episodes and the main one writes the file)."""
    from focusvit import FortConfig
    from focusvit.finetune import select_alpha
    from focusvit.runs import EpisodeSpec

    path = folder / "selection.json"
    base = recipe_alpha(backbone, tuner)
    multiples = [float(m) for m in args.alpha_multiples.split(",") if m]
    candidates = sorted({round(base * m, 6) for m in multiples})
    key = {"candidates": candidates, "val_episodes": args.val_episodes, "n_query": args.n_query}
    if path.exists():
        stored = json.loads(path.read_text())
        if {k: stored.get(k) for k in key} == key:
            return stored
    n_way, k_shot = SETTINGS[setting]
    spec = EpisodeSpec(
        n_way=n_way, k_shot=k_shot, n_query=args.n_query, episodes=args.val_episodes,
        seed=args.seed + 1000, split="val",
    )  # fmt: skip
    per_class = k_shot + args.n_query
    chosen = select_alpha(
        backbone, scenes("val", kind, per_class), tuner, candidates, spec, FortConfig(),
        device=args.device, output_dir=folder / "validation", progress=True, context=context,
    )  # fmt: skip
    stored = {
        **key,
        "alpha": chosen.alpha,
        "validation": {f"{a:g}": [r.mean, r.ci95] for a, r in chosen.results.items()},
    }
    if context.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=1))
        print(chosen.table(), flush=True)
    return stored


def row_runners(backbone, tuner: str, alpha: float, device) -> dict:
    """``plain`` (α = 0), ``authors`` (recipe α) and, when it differs from both, ``validated``."""
    from focusvit import FortConfig
    from focusvit.finetune import make_runner

    authors = recipe_alpha(backbone, tuner)
    alphas = {"plain": 0.0, "authors": authors}
    if alpha not in (0.0, authors):
        alphas["validated"] = alpha
    runners = {}
    for row, a in alphas.items():
        fort = None if a == 0 else replace(FortConfig(), alpha=a)
        runners[row] = make_runner(backbone, tuner=tuner, fort=fort, device=device)
        runners[row].label = row
    return runners


def test_spec(setting: str, episodes: int, args):
    from focusvit.runs import EpisodeSpec

    n_way, k_shot = SETTINGS[setting]
    return EpisodeSpec(
        n_way=n_way, k_shot=k_shot, n_query=args.n_query, episodes=episodes,
        seed=args.seed, split="novel",
    )  # fmt: skip


def test_rows(
    backbone, tuner: str, kind: str, setting: str, alpha: float, args, folder: Path, context
):
    """plain / authors / validated on the novel episodes (resumable episode files; shared out
    round-robin when ``context`` has several processes)."""
    from focusvit.runs import evaluate_many

    runners = row_runners(backbone, tuner, alpha, args.device)
    spec = test_spec(setting, args.episodes, args)
    outputs = {r.name: folder / f"{r.name}.jsonl" for r in runners.values()}
    dataset = scenes("novel", kind, spec.k_shot + args.n_query)
    results = evaluate_many(
        list(runners.values()), dataset, spec, outputs, progress=True, context=context
    )
    return with_validated({row: list(results[row].accuracies) for row in runners}, alpha)


#: focus numbers shown, in order (``attention_focus`` names)
FOCUS_COLUMNS = {
    "query_mass_on_object": "query→object",
    "support_mass_on_object": "support→object",
    "support_mass_on_prompt": "support→prompt",
    "query_coverage_95": "query 95% patches",
    "accuracy": "accuracy %",
}


def focus_runs(backbone, tuner, kind, setting, alpha, args, folder: Path, context) -> list[dict]:
    """Attention focus of the first ``--focus-episodes`` test episodes (cached per episode in
    ``focus.json``; under several processes each measures its round-robin share into
    ``shards/focus.rankR.json`` and the main one writes the merged ``focus.json``)."""
    from focusvit import FortConfig
    from focusvit.finetune.trainer import resolve_fort
    from focusvit.reports.fewshot import attention_focus
    from focusvit.runs import shard

    cache = stored_focus(folder)
    context.barrier()  # all read the same cache (so split the same episodes) before any writes
    runners = row_runners(backbone, tuner, alpha, args.device)
    spec = test_spec(setting, max(1, args.focus_episodes), args)
    dataset = scenes("novel", kind, spec.k_shot + args.n_query)
    wanted = set(runners) | {"pretrained"}
    missing = [i for i in range(args.focus_episodes) if not wanted <= set(cache.get(str(i), {}))]
    merged = folder / "focus.json"
    # each finished episode is kept at once: in focus.json, or in this process's shard file
    progress = (
        folder / "shards" / f"focus.rank{context.rank}.json" if context.distributed else merged
    )
    mine: dict[str, dict] = {}
    for index in shard(missing, context.rank, context.world_size):
        focus = attention_focus(
            backbone, dataset, runners, index, spec, resolve_fort(backbone, tuner, FortConfig()),
            max_queries=0, device=args.device,
        )  # fmt: skip
        mine[str(index)] = focus["numbers"]
        _write_focus(progress, {**cache, **mine})
    for part in context.gather(mine):
        cache.update(part)
    if context.is_main and context.distributed:
        _write_focus(merged, cache)
    context.barrier()
    return [{"numbers": cache[str(i)]} for i in range(args.focus_episodes) if str(i) in cache]


def _write_focus(path: Path, numbers: dict[str, dict]) -> None:
    """Focus numbers by episode index, in index order, written atomically."""
    from focusvit.runs import atomic_write_text

    ordered = dict(sorted(numbers.items(), key=lambda item: int(item[0])))
    atomic_write_text(path, json.dumps(ordered, indent=1))


def stored_focus(folder: Path) -> dict[str, dict]:
    """The focus numbers already measured for a cell, by episode index: ``focus.json`` plus
    what the processes of an interrupted multi-process run kept in ``shards/focus.rank*.json``."""
    cache: dict[str, dict] = {}
    paths = [folder / "focus.json", *sorted((folder / "shards").glob("focus.rank*.json"))]
    for path in paths:
        if path.exists():
            for index, numbers in json.loads(path.read_text()).items():
                cache[index] = {**cache.get(index, {}), **numbers}
    return dict(sorted(cache.items(), key=lambda item: int(item[0])))


def focus_table(name: str, runs: list[dict]) -> None:
    """Mean ± 95% interval of each focus number per stage (pretrained, plain, authors, ...)."""
    from focusvit.reports.fewshot import focus_rows

    if not runs:
        return
    print(f"\nattention focus, {name}: share of last-block CLS attention (mean ± 95%), "
          f"first {len(runs)} test episodes")  # fmt: skip
    print(f"{'stage':<12}" + "".join(f"{title:>20}" for title in FOCUS_COLUMNS.values()))
    for row in focus_rows(runs):
        cells = []
        for key in FOCUS_COLUMNS:
            if key not in row:
                cells.append(f"{'–':>20}")
                continue
            cells.append(f"{focus_value(key, row[key], row[key + '_ci95']):>20}")
        print(f"{row['stage']:<12}" + "".join(cells))
    for stage in [s for s in runs[0]["numbers"] if s not in ("pretrained", "plain")]:
        print(f"{stage + ' − plain':<12}" + "".join(
            f"{paired_focus(runs, stage, key):>20}" for key in FOCUS_COLUMNS
        ) + "   (paired over the episodes)")  # fmt: skip


def paired_focus(runs: list[dict], stage: str, key: str) -> str:
    """``mean ± 95%`` of ``stage − plain`` for one focus number, paired per episode."""
    from focusvit.runs import mean_and_ci

    pairs = [r["numbers"] for r in runs if stage in r["numbers"] and "plain" in r["numbers"]]
    if not pairs or key not in pairs[0]["plain"]:
        return "–"
    mean, ci = mean_and_ci([p[stage][key] - p["plain"][key] for p in pairs])
    return focus_value(key, mean, ci, sign="+")


def focus_value(key: str, mean: float, ci: float, sign: str = "") -> str:
    """``mean ± ci`` of one focus number: accuracy in points, patch counts with one decimal,
    attention shares with three; ``sign="+"`` for differences."""
    scale, digits = (100, 1) if key == "accuracy" else (1, 1 if "coverage" in key else 3)
    return f"{scale * mean:{sign}.{digits}f} ± {scale * ci:.{digits}f}"


def with_validated(accuracies: dict[str, list[float]], alpha: float) -> dict[str, list[float]]:
    """``accuracies`` with its ``validated`` row: its own, or the row it equals when the
    validation chose α = 0 (``plain``) or the recipe α (``authors``), which is not recomputed."""
    if not accuracies.get("validated"):
        accuracies["validated"] = accuracies["plain" if alpha == 0 else "authors"]
    return accuracies


def paired(a: list[float], b: list[float]) -> tuple[float, float, str]:
    """``(mean, 95% interval, "wins/ties/losses")`` of ``a − b``, episode by episode.

    The rows must hold the same episodes in the same order (``_stored`` keeps only the
    episodes every row holds; the live path evaluates all rows on each episode): rows of
    different lengths are refused rather than silently cut to the shorter one."""
    from focusvit.runs import mean_and_ci

    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired rows must hold the same, non-empty set of episodes; got {len(a)} and "
            f"{len(b)}. Pair them by episode index first (as `_stored` does)."
        )
    diff = np.asarray(a) - np.asarray(b)
    mean, ci = mean_and_ci(diff.tolist())
    return mean, ci, f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()}"


def report(cells: list[dict]) -> None:
    from focusvit.runs import mean_and_ci

    print(
        "\nattention loss, paired on the same novel-class episodes (row − plain, points; "
        "95% interval; wins/ties/losses); α of `validated` chosen on validation classes"
    )
    header = (
        f"{'backbone':<11}{'scenes':<9}{'set':<6}{'tuner':<12}{'eps':>5}{'plain %':>14}"
        f"{'authors α':>10}{'authors − plain':>18}{'w/t/l':>13}{'val α':>8}"
        f"{'validated − plain':>19}{'w/t/l':>13}"
    )
    print(header)
    for c in cells:
        acc = c["accuracies"]
        plain_mean, plain_ci = mean_and_ci(acc["plain"])
        a_mean, a_ci, a_wtl = paired(acc["authors"], acc["plain"])
        v_mean, v_ci, v_wtl = paired(acc["validated"], acc["plain"])
        print(
            f"{c['backbone']:<11}{c['scenes']:<9}{c['setting']:<6}{c['tuner']:<12}"
            f"{len(acc['plain']):>5}{f'{100 * plain_mean:.1f} ± {100 * plain_ci:.1f}':>14}"
            f"{c['authors_alpha']:>10g}{f'{100 * a_mean:+.1f} ± {100 * a_ci:.1f}':>18}{a_wtl:>13}"
            f"{c['alpha']:>8g}{f'{100 * v_mean:+.1f} ± {100 * v_ci:.1f}':>19}{v_wtl:>13}"
        )


GOAL_POINTS = 2.0  # issue 13: a paired gain of at least 2 points, interval above zero


def forest_figure(cells: list[dict], path: Path, dpi: int = 110):
    """One row per cell: ``authors − plain`` and ``validated − plain`` in points with their 95%
    intervals (:func:`paired`), a line at 0 and at the issue's +2-point goal; saved to ``path``
    (PNG) and returned (``axes[0].containers``: authors first, then validated)."""
    from matplotlib.figure import Figure

    labels, rows = [], {"authors": [], "validated": []}
    for c in cells:
        acc = c["accuracies"]
        labels.append(
            f"{c['backbone']} · {c['scenes']} · {c['setting']} · {c['tuner']} ({len(acc['plain'])})"
        )
        for row in rows:
            mean, ci, _ = paired(acc[row], acc["plain"])
            rows[row].append((100 * mean, 100 * ci))
    figure = Figure(figsize=(8, 1.2 + 0.32 * len(cells)), layout="constrained")
    axes = figure.add_subplot()
    y = np.arange(len(cells))[::-1].astype(float)
    styles = {"authors": ("o", "tab:gray", "authors' α"), "validated": ("s", "tab:blue",
              "α chosen on validation classes")}  # fmt: skip
    for offset, (row, values) in zip((0.17, -0.17), rows.items(), strict=True):
        marker, colour, label = styles[row]
        means, cis = np.array(values).T
        axes.errorbar(means, y + offset, xerr=cis, fmt=marker, color=colour, capsize=2,
                      markersize=4, label=label)  # fmt: skip
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.axvline(GOAL_POINTS, color="tab:green", linestyle="--", linewidth=0.8,
                 label=f"goal: +{GOAL_POINTS:g} points")  # fmt: skip
    axes.set_yticks(y, labels, fontsize=8)
    axes.set_xlabel("paired accuracy difference, row − plain (points; 95% interval)")
    axes.set_title("attention-enhancement loss on the same novel-class episodes", fontsize=10)
    figure.legend(fontsize=8, loc="outside lower center", ncol=3)
    axes.grid(axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return figure


def main() -> None:
    from focusvit.runs import DistContext

    args = parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    context = DistContext() if args.report_only else DistContext.from_env(args.device)
    args.device = context.device(args.device)
    try:
        run_cells(args, context)
    finally:
        context.close()


def run_cells(args: argparse.Namespace, context) -> None:
    """Every requested cell: validation, test rows and focus (or only the stored records with
    ``--report-only``), then the tables (printed by the main process)."""
    say = print if context.is_main else (lambda *_, **__: None)
    out = Path(args.out)
    cells = []
    start = time.perf_counter()
    for key in args.backbones.split(","):
        # --report-only reads the records alone: no backbone, so no pretraining when it is missing
        backbone = None if args.report_only else load_backbone(key, args, context)
        for kind in args.scenes.split(","):
            for setting in args.settings.split(","):
                if args.prompts == "oracle" and not args.report_only:
                    per_class = SETTINGS[setting][1] + args.n_query
                    use_oracle_prompts(
                        backbone, [scenes(s, kind, per_class) for s in ("val", "novel")]
                    )
                for tuner in args.tuners.split(","):
                    suffix = "-oracle" if args.prompts == "oracle" else ""
                    folder = out / key / kind / setting / f"{tuner}{suffix}"
                    name = f"{key} · {kind} · {setting} · {tuner}"
                    if args.report_only:
                        stored = _stored(folder)
                        if stored is None:
                            if (folder / "selection.json").exists():
                                print(f"({name}: no test episode in every row yet; skipped)")
                            continue
                        alpha, accuracies, authors_alpha = stored
                    else:
                        say(f"\n== {name}: validation", flush=True)
                        alpha = float(
                            select(backbone, tuner, kind, setting, args, folder, context)["alpha"]
                        )
                        say(f"== {name}: test (validated α = {alpha:g})", flush=True)
                        accuracies = test_rows(
                            backbone, tuner, kind, setting, alpha, args, folder, context
                        )
                        authors_alpha = recipe_alpha(backbone, tuner)
                    cells.append({
                        "backbone": key, "scenes": kind, "setting": setting,
                        "tuner": f"{tuner}{suffix}",
                        "alpha": alpha, "authors_alpha": authors_alpha,
                        "accuracies": accuracies,
                    })  # fmt: skip
                    if not args.report_only:
                        if context.is_main:
                            report(cells)
                        if args.focus_episodes > 0:
                            runs = focus_runs(
                                backbone, tuner, kind, setting, alpha, args, folder, context
                            )
                            cells[-1]["focus"] = runs
                            if context.is_main:
                                focus_table(name, runs)
                    else:
                        cells[-1]["focus"] = [{"numbers": v} for v in stored_focus(folder).values()]
    if args.report_only:
        report(cells)
        for c in cells:
            focus_table(f"{c['backbone']} · {c['scenes']} · {c['setting']} · {c['tuner']}",
                        c.get("focus", []))  # fmt: skip
        if cells:  # the summary of every stored cell, merged into the one on disk
            write_summary(out / "results.json", cells)
            if args.figure:
                forest_figure(cells, Path(args.figure))
                print(f"\nfigure of the paired differences: {args.figure}")
        else:
            print(f"no stored cells under {out} for these options; run without --report-only")
        return
    minutes = (time.perf_counter() - start) / 60
    processes = f", {context.world_size} processes" if context.distributed else ""
    say(
        f"\n{minutes:.1f} min this run; device {args.device}, {torch.get_num_threads()} "
        f"threads{processes}"
    )


def write_summary(path: Path, cells: list[dict]) -> None:
    """Write ``cells`` into the summary at ``path``: cells re-read now replace the stored ones of
    the same backbone / scenes / setting / tuner, the others stay (a filtered ``--report-only``
    must not drop the cells it did not read)."""

    def key(cell: dict) -> tuple:
        return cell["backbone"], cell["scenes"], cell["setting"], cell["tuner"]

    merged = {key(c): c for c in json.loads(path.read_text())} if path.exists() else {}
    merged.update({key(c): c for c in cells})
    path.write_text(json.dumps([merged[k] for k in sorted(merged)], indent=1))


def _stored(folder: Path) -> tuple[float, dict, float] | None:
    """``(validated α, accuracies per row, authors' α)`` already on disk for one cell.

    The authors' α is the one recorded in ``authors.jsonl`` (its ``fort`` settings)."""
    from focusvit.runs import read_episode_file

    selection = folder / "selection.json"
    if not selection.exists() or not (folder / "plain.jsonl").exists():
        return None
    alpha = float(json.loads(selection.read_text())["alpha"])
    by_episode, authors_alpha = {}, float("nan")
    for row in ("plain", "authors", "validated"):
        path = folder / f"{row}.jsonl"
        if path.exists():
            header, records = read_episode_file(path)
            by_episode[row] = {
                int(r["episode"]): r["accuracy"] for r in records if not r.get("diverged")
            }
            if row == "authors" and header is not None:
                authors_alpha = float(header["settings"]["runner"]["fort"]["alpha"])
    # pair by episode index: only the episodes every stored row holds (a row stopped earlier,
    # or a record lost from one file, must not shift the pairing)
    common = sorted(set.intersection(*(set(rows) for rows in by_episode.values())))
    if not common:  # a cell whose test rows have not started (or not reached a common episode)
        return None
    accuracies = {row: [rows[e] for e in common] for row, rows in by_episode.items()}
    return alpha, with_validated(accuracies, alpha), authors_alpha


if __name__ == "__main__":
    main()
