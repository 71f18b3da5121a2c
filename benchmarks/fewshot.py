"""Few-shot accuracy table: every tuner with and without the attention loss, the frozen-feature
solvers and the CNN cross-attention baselines, on the same episodes (issue 7).

A configuration of the study layer (:mod:`focusvit.runs.study`, ``docs/study.md``): per setting
and backbone one :class:`~focusvit.runs.Cell` (``--out``/SETTING/BACKBONE, one episode file per
row, :func:`~focusvit.runs.episode_file_name`), episode ``i`` the same task in every row.
Backbones: ``pretrained`` (the offline DINOv2-S/14 fine-tuned on the synthetic base classes by
``focusvit-pretrain``, trained here when missing), ``dinov2`` (as shipped), ``swin`` (opt-in, a
small Swin trained from scratch on the base classes), ``effnet`` (EfficientNet-Lite0: solvers,
linear probe, full fine-tuning) and ``baselines`` (CAN, CAN transductive, CrossTransformers on
Conv-4 at 84 px with the ``benchmarks/baselines.py`` recipe; the untrained Conv-4 prototype as
floor). ViT rows: the solvers, ``linear``, ``full lora ssf vpt`` and each ``+fort`` with the
recipe (``vpt+fort`` takes LoRA's α and τ). Printed per setting: accuracy ± 95% interval, the
paired ``+fort − plain`` difference and the attention focus probe (:class:`~focusvit.runs.
FocusProbe`, ``focus.json``) of the first episodes. Resumable; ``--report-only`` re-prints the
tables from the records alone (records of other episode settings are refused).

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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import focusvit
from focusvit import FortConfig
from focusvit.data import SceneConfig
from focusvit.errors import FocusVitError
from focusvit.finetune import RECIPES, make_runner, parse_method
from focusvit.finetune.recipes import VIT_TOP_FRACTION
from focusvit.runs import Cell, EpisodeSpec, FocusProbe, ProbeCache, study

HERE = Path(__file__).resolve().parent
SOLVER_ROWS = ("prototype", "knn", "ridge", "svm", "logistic")
TUNERS_WITH_LOSS = ("full", "lora", "ssf", "vpt")
VIT_ROWS = (*SOLVER_ROWS, "linear", *(m for t in TUNERS_WITH_LOSS for m in (t, f"{t}+fort")))
CNN_ROWS = (*SOLVER_ROWS, "linear", "full")
SWIN_ROWS = (*SOLVER_ROWS, "linear", *(m for t in TUNERS_WITH_LOSS[:3] for m in (t, f"{t}+fort")))
BASELINE_ROWS = ("prototype", "can", "can+transductive", "ctx")  # prototype: untrained conv4
SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1)}
#: spec by key; ``pretrained`` / ``swin``: the focusvit-pretrain checkpoints (option, argument)
BACKBONES = {"pretrained": ("dinov2_s14_cpu", "pretrained"), "swin": ("swin_small_cpu",
             "pretrained_swin"), "dinov2": "offline:dinov2-s14-imgfocus",
             "effnet": "offline:efficientnet-lite0"}  # fmt: skip
FAMILIES = {"pretrained": "vit", "dinov2": "vit", "swin": "swin", "effnet": "cnn"}  # unloaded


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
OPTIONS = [  # flag, default, type, help
    ("--backbones", "pretrained,dinov2,effnet,baselines", str, "and swin (opt-in)"),
    ("--settings", None, str, "comma list of 5w1s,5w5s,20w1s"),
    ("--episodes", None, int, None),
    ("--n-query", None, int, None),
    ("--focus-episodes", None, int, None),
    ("--methods", None, str, "comma list restricting the ViT/CNN rows"),
    ("--pretrained", "outputs/pretrain/dinov2_s14_cpu/model.safetensors", str, "made if missing"),
    ("--pretrained-swin", "outputs/pretrain/swin_small_cpu/model.safetensors", str, "(swin)"),
    ("--image-size", 112, int, "model input side (the scenes are drawn at 112 px)"),
    ("--seed", 0, int, None),
    ("--device", None, str, "default: cuda when available"),
    ("--threads", None, int, "torch CPU threads"),
    ("--out", "outputs/benchmarks/fewshot", str, None),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU sizes (see QUICK)")
    for flag, default, kind, text in OPTIONS:
        parser.add_argument(flag, default=default, type=kind, help=text)
    parser.add_argument("--report-only", action="store_true",
                        help="re-print the tables from the episode records under --out")  # fmt: skip
    return parser.parse_args()


def load_backbone(key: str, args: argparse.Namespace):
    spec = BACKBONES[key]
    if isinstance(spec, tuple):  # a focusvit-pretrain checkpoint, trained now when missing
        spec = str(study.ensure_pretrained(getattr(args, spec[1]), spec[0]))
    return study.load_study_backbone(spec, image_size=args.image_size)


def rows_for(family: str, methods: set[str] | None) -> tuple[str, ...]:
    """The rows of a backbone family (``vit``, ``swin``, else CNN), restricted to ``methods``."""
    rows = {"vit": VIT_ROWS, "swin": SWIN_ROWS}.get(family, CNN_ROWS)
    return tuple(m for m in rows if methods is None or m in methods)


def fort_for(method: str) -> FortConfig | None:
    """The attention-loss settings of a ``+fort`` row: the recipe's, or LoRA's α/τ for VPT."""
    if not method.endswith("+fort"):
        return None
    lora = RECIPES[("vit", "lora")]
    vpt = {"alpha": lora.alpha, "tau": lora.tau, "top_fraction": lora.top_fraction}
    return FortConfig(**vpt) if method.startswith("vpt") else FortConfig()


def focus_numbers(backbone, dataset, methods, spec: EpisodeSpec, count: int, cell: Cell, device):
    """Attention focus before / after each tuner on the first ``count`` episodes (cached)."""
    if backbone.family != "vit" or count <= 0:
        return {}
    tuned = {m: make_runner(backbone, tuner=parse_method(m).tuner, fort=fort_for(m), device=device)
             for m in methods if m not in SOLVER_ROWS}  # fmt: skip
    probe = FocusProbe(backbone, dataset, tuned, spec, FortConfig(top_fraction=VIT_TOP_FRACTION),
                       device=device, stages=set(tuned))  # fmt: skip
    patches = int(np.prod(backbone.grid_size(tuple(backbone.data_config["input_size"][1:]))))
    runs = cell.probe("focus", probe, range(count), complete=probe.complete,
                      meta={"patches": patches})  # fmt: skip
    return {"patches": patches, "runs": {k: runs[k] for k in range(count)}}


def baseline_models(args: argparse.Namespace, mode: Mode, out: Path):
    """CAN and CTX trained on base classes (``benchmarks/baselines.py`` recipe), resumable."""
    from focusvit.baselines import PrototypeConfig, PrototypeNetwork, build_baseline, train_episodic

    spec = importlib.util.spec_from_file_location("_bench_baselines", HERE / "baselines.py")
    spec.loader.exec_module(bench := importlib.util.module_from_spec(spec))
    encoder = {"encoder": "conv4", "widths": [32], "image_size": 84}
    torch.manual_seed(args.seed)  # the untrained floor is the same encoder in every process
    reference = PrototypeNetwork(PrototypeConfig(**encoder))
    base, val = bench.tensors("base", 64, 20, reference), bench.tensors("val", 16, 20, reference)
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


def evaluate_baselines(models, dataset, spec: EpisodeSpec, cell: Cell, device) -> list[dict]:
    from focusvit.baselines import evaluate_baseline

    return [study.timed_row(name, cell.episode_file(name), evaluate_baseline, models[name.split("+")[0]],
                      dataset, spec, transductive="+" in name, device=device)
            for name in BASELINE_ROWS]  # fmt: skip


def stored_results(out: Path, keys: list[str], everything: dict, methods, count: int) -> int:
    """Fill ``everything`` from the records under ``out``; returns the number of rows found."""
    found = 0
    for key, (name, block) in ((k, b) for k in keys for b in everything.items()):
        rows = BASELINE_ROWS if key == "baselines" else rows_for(FAMILIES[key], methods)
        cell = Cell(out / name / key)
        summaries = [study.stored_row(m, cell.episode_file(m), block["setting"]) for m in rows]
        summaries = [row for row in summaries if row is not None]
        found += len(summaries)
        if summaries:
            block["accuracy"]["conv4-84px" if key == "baselines" else key] = summaries
        if key != "baselines" and count > 0:
            cache = ProbeCache(cell.folder / "focus.json")
            entries, keep = cache.load(), ("pretrained", *rows)
            runs = {k: {m: v for m, v in entries[k].items() if m in keep}
                    for k in range(count) if k in entries}  # fmt: skip
            if runs:
                block["focus"][key] = {"patches": cache.meta["patches"], "runs": runs}
    return found


def write_files(out: Path, everything: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(everything, indent=1))
    fields = ("method", "episodes", "mean", "ci95", "trainable", "seconds_per_episode")
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "backbone", *fields])
        for setting, block in everything.items():
            for column, rows in block["accuracy"].items():
                writer.writerows([setting, column, *(r[f] for f in fields)] for r in rows)


def main() -> None:
    try:
        run(parse_args())
    except FocusVitError as error:  # a user's mistake: its one-line message names the fix
        raise SystemExit(str(error)) from None


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = QUICK if args.quick else FULL
    settings = args.settings.split(",") if args.settings else list(mode.settings)
    keys, methods = (
        args.backbones.split(","),
        set(args.methods.split(",")) if args.methods else None,
    )
    if [s for s in settings if s not in SETTINGS] or [
        k for k in keys if k not in (*BACKBONES, "baselines")
    ]:
        raise SystemExit(f"unknown settings or backbones in {settings} / {keys}; choose from "
                         f"{', '.join(SETTINGS)} / {', '.join(BACKBONES)}, baselines")  # fmt: skip
    n_query, count = args.n_query or mode.n_query, args.focus_episodes
    count = mode.focus_episodes if count is None else count
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    per_class = max(mode.images_per_class, max(SETTINGS[s][1] for s in settings) + n_query)
    shape = {"n_query": n_query, "episodes": args.episodes or mode.episodes, "seed": args.seed}
    everything = {name: {"setting": {"n_way": SETTINGS[name][0], "k_shot": SETTINGS[name][1],
                                     **shape}, "accuracy": {}, "focus": {}} for name in settings}  # fmt: skip
    out = Path(args.out)
    if args.report_only:  # the records alone: no backbone loaded, no baseline trained
        if not stored_results(out, keys, everything, methods, count):
            raise SystemExit(f"no stored episode records under {out} for these options; run "
                             "without --report-only, or pass the --out (and --quick) the records "
                             "were written with")  # fmt: skip
        return print_report(everything, args, per_class, device, None)
    scenes = focusvit.SyntheticScenes("novel", images_per_class=per_class)
    scenes_84 = focusvit.SyntheticScenes("novel", per_class, SceneConfig(image_size=84))
    assert list(scenes.labels) == list(scenes_84.labels), "84-px scenes must index the same tasks"
    models = baseline_models(args, mode, out) if "baselines" in keys else {}
    start = time.perf_counter()
    for key in keys:  # each backbone is loaded once and runs every setting
        backbone = None if key == "baselines" else load_backbone(key, args)
        for name, block in everything.items():
            c, spec = Cell(out / name / key), EpisodeSpec(**block["setting"])
            print(f"\n== {name} · {key}", flush=True)
            if backbone is None:
                block["accuracy"]["conv4-84px"] = evaluate_baselines(
                    models, scenes_84, spec, c, device
                )
                continue
            rows = rows_for(backbone.family, methods)
            block["accuracy"][key] = [study.timed_row(
                m, c.episode_file(m), focusvit.evaluate, backbone, scenes, tuner=parse_method(m).tuner,
                solver=parse_method(m).solver, fort=fort_for(m), episodes=spec, device=device)
                for m in rows]  # fmt: skip
            block["focus"][key] = focus_numbers(backbone, scenes, rows, spec, count, c, device)
        del backbone
    write_files(out, everything)
    print_report(everything, args, per_class, device, time.perf_counter() - start)


def print_report(
    everything: dict, args, per_class: int, device: str, seconds: float | None
) -> None:
    """The tables; ``seconds=None``: re-printed from the records under ``--out``."""
    run = (
        f"device {device}, {torch.get_num_threads()} threads; recipes of docs/recipes.md; "
        f"same episodes in every row; {seconds / 60:.1f} min this run (resumed episodes are free)"
        if seconds is not None
        else f"same episodes in every row; re-printed from the episode records under {args.out} "
        "(no model loaded; device and timings are in the records)"
    )
    print(f"\nfocusvit few-shot benchmark: synthetic scenes (novel classes, {per_class} images per "
          f"class), inputs {args.image_size} px (baselines 84 px), seed {args.seed}, {run}")  # fmt: skip
    for name, block in everything.items():
        s = block["setting"]
        print(f"\n## {name}: {s['n_way']}-way {s['k_shot']}-shot, {s['n_query']} queries per "
              f"class, {s['episodes']} episodes; accuracy % (mean ± 95% interval)")  # fmt: skip
        if "conv4-84px" in block["accuracy"]:
            print("(conv4-84px: CAN / CTX trained on base classes; its prototype row is the "
                  "untrained encoder)")  # fmt: skip
        print("\n" + "\n".join(study.accuracy_grid(block["accuracy"], list(block["accuracy"]))))
        paired = study.paired_grid(block["accuracy"], [(t, f"{t}+fort") for t in TUNERS_WITH_LOSS])
        if len(paired) > 1:
            print("\nattention loss, paired on the same episodes (+fort − plain):")
            print("\n".join(paired))
        focus = {k: v for k, v in block["focus"].items() if v}
        if focus:
            print(f"\nattention focus, first {len(next(iter(focus.values()))['runs'])} episode(s): "
                  "patches holding 95% of the last block's CLS attention (cov95, of `patches`) "
                  "and the share of the support images' CLS attention on their position prompts")  # fmt: skip
            print("\n".join(study.coverage_grid(focus)))
        timing = [f"{r['method']} {r['seconds_per_episode']:.1f}" for rows in block["accuracy"].values()
                  for r in rows if not math.isnan(r["seconds_per_episode"])]  # fmt: skip
        if timing:
            print(f"\ns/episode (fresh episodes of this run): {', '.join(timing)}")


if __name__ == "__main__":
    main()
