"""Does the attention-enhancement loss pay off? Paired evidence on the same episodes (issue 13).

A configuration of the study layer (:mod:`focusvit.runs.study`, ``docs/study.md``). Per cell
(backbone × scenes × setting × tuner, a :class:`~focusvit.runs.Cell` in
``--out``/BACKBONE/SCENES/SETTING/TUNER): α chosen by :func:`focusvit.select_alpha` on validation
classes (seed :func:`~focusvit.runs.validation_seed`; 0, the recipe α and ``--alpha-multiples``
of it; ``--alpha-rule``), then ``plain`` (α = 0), ``authors`` (recipe α) and ``validated`` on the
same novel-class episodes, paired against ``plain``, and the attention focus probe after each row.
Backbones ``pretrained`` (the offline DINOv2-S/14 fine-tuned on the synthetic base classes by
``focusvit-pretrain``, trained here when missing) and ``dinov2``, at 112 px; scenes ``shipped``
and ``premise``; ``--prompts oracle``: ground-truth prompts (``FortConfig(prompts=
"ground_truth")``; cells ``TUNER-oracle``). Resumable, extendable (``--episodes``), shared out
under ``torchrun``; ``--report-only`` re-prints the stored cells (recorded α) without a model.

    python benchmarks/fort_study.py --backbones pretrained --scenes premise --settings 5w1s
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node=2 benchmarks/fort_study.py ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from focusvit import FortConfig, SyntheticScenes
from focusvit.data import SceneConfig
from focusvit.errors import FocusVitError
from focusvit.finetune import RECIPES, make_runner, read_selection, resolve_fort, select_alpha
from focusvit.runs import Cell, DistContext, EpisodeSpec, FocusProbe, ProbeCache, paired, study
from focusvit.runs.records import read_episode_file
from focusvit.runs.stats import mean_and_ci

HERE = Path(__file__).resolve().parent
SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1)}
SCENES = {"shipped": 0, "premise": 2}  # class-independent objects per image
#: ``tiny`` is a random tiny ViT that smoke-tests the command in seconds (its numbers mean nothing)
BACKBONES = {"dinov2": "offline:dinov2-s14-imgfocus", "tiny": "tiny:timm-vit"}
GOAL_POINTS = 2.0  # issue 13: a paired gain of at least 2 points, interval above zero
AXES = ("backbones", "scenes", "settings", "tuners")
KEYS = ("backbone", "scenes", "setting", "tuner")  # of a cell, one per axis
OPTIONS = [  # flag, default, type, help (``--prompts``, ``--report-only``: in parse_args)
    ("--backbones", "pretrained,dinov2", str, f"pretrained, {', '.join(BACKBONES)}"),
    ("--scenes", "premise,shipped", str, ", ".join(SCENES)),
    ("--settings", "5w1s,5w5s", str, ", ".join(SETTINGS)),
    ("--tuners", "lora,full,ssf", str, "tuners of the recipe table"),
    ("--episodes", 150, int, "test episodes per cell (more extends the same episodes)"),
    ("--val-episodes", 20, int, "validation episodes"),
    ("--n-query", 10, int, "queries per class"),
    ("--alpha-multiples", "0.1,1", str, "validation candidates: multiples of the recipe α (and 0)"),
    ("--alpha-rule", "paired", str, "paired (default), or best_mean (the committed cells' rule)"),
    ("--pretrained", "outputs/pretrain/dinov2_s14_cpu/model.safetensors", str, "trained if absent"),
    ("--device", None, str, "default: cuda when available"),
    ("--seed", 0, int, "seed of the test episodes (validation: focusvit.runs.validation_seed)"),
    ("--out", str(HERE / "results" / "fort_study"), str, "per-episode records (committed)"),
    ("--focus-episodes", 10, int, "first test episodes whose attention focus is measured (0: no)"),
    ("--figure", None, str, "--report-only: PNG of the paired differences (default: unfiltered)"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default, kind, text in OPTIONS:
        parser.add_argument(flag, default=default, type=kind, help=text)
    parser.add_argument("--prompts", choices=("explainer", "oracle"), default="explainer",
                        help="explainer: the recipe's; oracle: ground-truth masks (diagnostic)")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="print what is stored")
    args = parser.parse_args()
    filters = (*AXES, "prompts")
    if args.figure is None and all(getattr(args, f) == parser.get_default(f) for f in filters):
        args.figure = str(Path(args.out) / "paired_differences.png")
    return args


def load_backbone(key: str, args: argparse.Namespace, context: DistContext | None = None):
    """A study backbone at 112 px (:func:`~focusvit.runs.load_study_backbone`, no head)."""
    if key == "pretrained":
        if context is not None and context.distributed and not Path(args.pretrained).exists():
            raise SystemExit(
                f"{args.pretrained} does not exist; train it once in one process first "
                "(`focusvit-pretrain pretrain_model=dinov2_s14_cpu`, or this script without "
                "torchrun), then rerun with torchrun"
            )
        spec = str(study.ensure_pretrained(args.pretrained))
    elif key in BACKBONES:
        spec = BACKBONES[key]
    else:
        raise SystemExit(f"unknown backbone {key!r}; choose pretrained, {', '.join(BACKBONES)}")
    return study.load_study_backbone(spec, image_size=112, num_classes=0)


def scenes(split: str, kind: str, per_class: int):
    return SyntheticScenes(split, per_class, SceneConfig(premise_objects=SCENES[kind]))


def fort(args, **values):
    """The study's attention-loss settings (ground-truth prompts for ``--prompts oracle``)."""
    oracle = {"prompts": "ground_truth"} if args.prompts == "oracle" else {}
    return replace(FortConfig(**oracle), **values)


def episodes(setting: str, count: int, args, split: str = "novel") -> EpisodeSpec:
    n_way, k_shot = SETTINGS[setting]
    seed = study.validation_seed(args.seed) if split == "val" else args.seed
    return EpisodeSpec(n_way, k_shot, args.n_query, count, seed, split)


def recipe_alpha(backbone, tuner: str) -> float:
    return RECIPES[(backbone.family, tuner)].alpha


def select(backbone, where: dict, args, folder: Path, context) -> float:
    """α chosen on validation episodes by ``--alpha-rule`` (cached in ``selection.json`` with the
    rule, ``best_mean`` where none is recorded); test rows of another rule's α are refused."""
    path, base = folder / "selection.json", recipe_alpha(backbone, where["tuner"])
    candidates = sorted({round(base * float(m), 6) for m in args.alpha_multiples.split(",") if m})
    key = {"candidates": candidates, "val_episodes": args.val_episodes, "n_query": args.n_query,
           "rule": args.alpha_rule}  # fmt: skip
    stored = {"rule": "best_mean", **(json.loads(path.read_text()) if path.exists() else {})}
    if {k: stored.get(k) for k in key} == key:
        return float(stored["alpha"])
    spec = episodes(where["setting"], args.val_episodes, args, "val")
    chosen = select_alpha(
        backbone, scenes("val", where["scenes"], spec.k_shot + args.n_query), where["tuner"],
        candidates, spec, fort(args), device=args.device, output_dir=folder / "validation",
        progress=True, context=context, rule=args.alpha_rule,
    )  # fmt: skip
    if chosen.alpha != stored.get("alpha", chosen.alpha) and (folder / "plain.jsonl").exists():
        raise SystemExit(f"{folder}: its test rows follow α = {stored['alpha']:g} of the {stored['rule']} rule, never mixed with another: pass --alpha-rule {stored['rule']} or another --out")  # fmt: skip
    stored = {**key, **chosen.record()}
    if context.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=1))
        print(chosen.table(), flush=True)
    return float(chosen.alpha)


def cell(backbone, where: dict, alpha: float, args, folder: Path, count: int) -> Cell:
    """``plain`` (α = 0), ``authors`` (recipe α) and, when it differs from both, ``validated``."""
    alphas = {"plain": 0.0, "authors": recipe_alpha(backbone, where["tuner"])}
    if alpha not in alphas.values():
        alphas["validated"] = alpha
    runners = {}
    for row, a in alphas.items():
        loss = None if a == 0 else fort(args, alpha=a)
        runners[row] = make_runner(backbone, tuner=where["tuner"], fort=loss, device=args.device)
        runners[row].label = row
    spec = episodes(where["setting"], count, args)
    return Cell(folder, runners, scenes("novel", where["scenes"], spec.k_shot + args.n_query), spec)


def with_validated(accuracies: dict[str, list[float]], alpha: float) -> dict[str, list[float]]:
    """``validated`` is the row it equals when validation chose α = 0 or the recipe α."""
    if not accuracies.get("validated"):
        accuracies["validated"] = accuracies["plain" if alpha == 0 else "authors"]
    return accuracies


def measure(backbone, where: dict, alpha: float, args, folder: Path, context) -> list[dict]:
    """The focus probe on the first ``--focus-episodes`` test episodes (``focus.json``)."""
    c = cell(backbone, where, alpha, args, folder, max(1, args.focus_episodes))
    prompts = resolve_fort(backbone, where["tuner"], FortConfig())  # the explainer's prompts
    probe = FocusProbe(backbone, c.dataset, c.runners, c.episodes, prompts, max_queries=0,
                       device=args.device, stages={"pretrained", *c.runners})  # fmt: skip
    runs = c.probe("focus", probe, range(args.focus_episodes), context, probe.complete)
    return [{"numbers": runs[i]} for i in range(args.focus_episodes) if i in runs]


def stored(folder: Path) -> dict | None:
    """The cell's validated α, recipe α (from ``authors.jsonl``), accuracies of every stored
    row on their common episodes and focus numbers; ``None`` before a common test episode."""
    selection, c = folder / "selection.json", Cell(folder)
    accuracies = c.stored(("plain", "authors", "validated")) if selection.exists() else {}
    if not accuracies.get("plain"):
        return None
    path = c.episode_file("authors")
    header = read_episode_file(path)[0] if path.exists() else None
    recorded = {"rule": "best_mean", **json.loads(selection.read_text())}  # unrecorded: before #31
    return {"alpha": float(recorded["alpha"]), "alpha_rule": recorded["rule"],
            "authors_alpha": float(header["settings"]["runner"]["fort"]["alpha"]) if header else float("nan"),
            "accuracies": with_validated(accuracies, float(recorded["alpha"])),
            "focus": [{"numbers": v} for v in ProbeCache(folder / "focus.json").load().values()]}  # fmt: skip


def focus_table(name: str, runs: list[dict]) -> None:
    if runs:
        print(f"\nattention focus, {name}: share of last-block CLS attention (mean ± 95%), "
              f"first {len(runs)} test episodes")  # fmt: skip
        print("\n".join(study.focus_table(runs)))


def report(cells: list[dict], args) -> None:
    print("\nattention loss, paired on the same novel-class episodes (row − plain, points; "
          "95% interval; wins/ties/losses); α of `validated` chosen on validation classes")  # fmt: skip
    print(f"{'backbone':<11}{'scenes':<9}{'set':<6}{'tuner':<12}{'eps':>5}{'plain %':>14}"
          f"{'authors α':>10}{'authors − plain':>18}{'w/t/l':>13}{'val α':>8}"
          f"{'validated − plain':>19}{'w/t/l':>13}")  # fmt: skip
    for c in cells:
        acc = c["accuracies"]
        mean, ci = mean_and_ci(acc["plain"])
        a, v = paired(acc["authors"], acc["plain"]), paired(acc["validated"], acc["plain"])
        print(
            f"{c['backbone']:<11}{c['scenes']:<9}{c['setting']:<6}{c['tuner']:<12}"
            f"{len(acc['plain']):>5}{f'{100 * mean:.1f} ± {100 * ci:.1f}':>14}"
            f"{c['authors_alpha']:>10g}{f'{100 * a.mean:+.1f} ± {100 * a.ci95:.1f}':>18}"
            f"{a.wtl:>13}{c['alpha']:>8g}{f'{100 * v.mean:+.1f} ± {100 * v.ci95:.1f}':>19}"
            f"{v.wtl:>13}"
        )
    if any(c["alpha_rule"] != "best_mean" for c in cells):  # unlabelled: best_mean
        print("val α rule: " + "; ".join(f"{name_of(c)} {c['alpha_rule']}" for c in cells))
    for c in (c for c in cells if c["alpha_rule"] != args.alpha_rule):  # the table: recorded α
        new = read_selection(Path(args.out, *(c[k] for k in KEYS)), args.alpha_rule).alpha
        if new != c["alpha"]:
            print(f"re-check, {args.alpha_rule} rule: {name_of(c)}: val α {new:g}, not the recorded {c['alpha']:g} ({c['alpha_rule']} rule)")  # fmt: skip


def name_of(c: dict) -> str:
    return f"{c['backbone']} · {c['scenes']} · {c['setting']} · {c['tuner']}"


def forest_figure(cells: list[dict], path: Path):
    """``authors − plain`` and ``validated − plain`` per cell against the +2-point goal."""
    rows = {r: ([paired(c["accuracies"][r], c["accuracies"]["plain"]) for c in cells], *style)
            for r, style in (("authors", ("o", "tab:gray", "authors' α")),
                             ("validated", ("s", "tab:blue", "α chosen on validation classes")))}  # fmt: skip
    labels = [f"{name_of(c)} ({len(c['accuracies']['plain'])})" for c in cells]
    title = "attention-enhancement loss on the same novel-class episodes"
    return study.paired_figure(labels, rows, path, GOAL_POINTS, title)


def main() -> None:
    args = parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    context = DistContext() if args.report_only else DistContext.from_env(args.device)
    args.device = context.device(args.device)
    try:
        run_cells(args, context)
    except FocusVitError as error:
        raise SystemExit(str(error)) from None
    finally:
        context.close()


def run_cells(args: argparse.Namespace, context: DistContext) -> None:
    """Every requested cell (validation, test rows, focus; or only the stored records with
    ``--report-only``), then the tables (printed by the main process)."""
    say = print if context.is_main else (lambda *_, **__: None)
    out, cells, start, loaded = Path(args.out), [], time.perf_counter(), {}
    suffix = "-oracle" if args.prompts == "oracle" else ""
    for values in itertools.product(*(getattr(args, a).split(",") for a in AXES)):
        where = dict(zip(KEYS, values, strict=True))
        folder = out.joinpath(*values[:3], f"{where['tuner']}{suffix}")
        if args.report_only:
            found = stored(folder)
            if found is None and (folder / "selection.json").exists():
                print(f"({name_of(where)}: no test episode in every row yet; skipped)")
            if found is not None:
                cells.append({**where, "tuner": f"{where['tuner']}{suffix}", **found})
            continue
        key = where["backbone"]
        if key not in loaded:  # each backbone is loaded once, for all its cells
            loaded = {key: load_backbone(key, args, context)}
        say(f"\n== {name_of(where)}: validation", flush=True)
        alpha = select(loaded[key], where, args, folder, context)
        say(f"== {name_of(where)}: test (validated α = {alpha:g})", flush=True)
        results = cell(loaded[key], where, alpha, args, folder, args.episodes).run(context)
        accuracies = with_validated({r: list(v.accuracies) for r, v in results.items()}, alpha)
        cells.append({**where, "tuner": f"{where['tuner']}{suffix}", "alpha": alpha,
                      "alpha_rule": args.alpha_rule, "authors_alpha": recipe_alpha(loaded[key], where["tuner"]),
                      "accuracies": accuracies})  # fmt: skip
        if context.is_main:
            report(cells, args)
        if args.focus_episodes > 0:
            cells[-1]["focus"] = measure(loaded[key], where, alpha, args, folder, context)
            if context.is_main:
                focus_table(name_of(where), cells[-1]["focus"])
    if not args.report_only:
        processes = f", {context.world_size} processes" if context.distributed else ""
        say(f"\n{(time.perf_counter() - start) / 60:.1f} min this run; device {args.device}, "
            f"{torch.get_num_threads()} threads{processes}")  # fmt: skip
        return
    report(cells, args)
    for c in cells:
        focus_table(name_of(c), c["focus"])
    if not cells:
        print(f"no stored cells under {out} for these options; run without --report-only")
        return
    study.merge_summary(out / "results.json", cells, KEYS)
    if args.figure:
        forest_figure(cells, Path(args.figure))
        print(f"\nfigure of the paired differences: {args.figure}")


if __name__ == "__main__":
    main()
