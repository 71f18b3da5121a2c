"""Episodic evaluation speed (docs/benchmarks.md), as ratios measured in one run.

1. Frozen solvers at 224 px (offline DINOv2-S/14, 5-way 1-shot, 15 queries per class, synthetic
   novel scenes): episodes per second without the feature cache (every episode encodes its 80
   images) and with it (each image encoded once per run and backbone, every solver reads it),
   with the cache's first pass over the images counted in.
2. SimpleShot feature transforms (``none`` / ``l2n`` / ``cl2n``) for the prototype and kNN
   solvers, on episodes of the *validation* classes (the choice of the default is made there,
   never on the novel classes), paired on the same episodes.
3. Fine-tuning at 112 px (LoRA, SSF, full): episodes per second one task at a time against
   ``tasks_per_batch`` tasks in one batched computation, with the largest difference of
   accuracy between the two paths on the same episodes.
4. Peak memory of the process (and of CUDA when used).

    python benchmarks/eval_speed.py                 # CPU (and CUDA when present)
    python benchmarks/eval_speed.py --device cuda --tune-episodes 64 --tasks-per-batch 16
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: every one present)")
    parser.add_argument("--uncached-episodes", type=int, default=2)
    parser.add_argument("--cached-episodes", type=int, default=600)
    parser.add_argument("--transform-episodes", type=int, default=600)
    parser.add_argument("--tune-episodes", type=int, default=8)
    parser.add_argument("--tasks-per-batch", type=int, default=4)
    parser.add_argument("--images-per-class", type=int, default=16)
    parser.add_argument("--classes", type=int, default=40, help="classes of each split used")
    parser.add_argument("--skip", default="", help="comma list of parts: solvers,transform,tune")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = f"peak RSS {rss:.0f} MiB"
    if device.type == "cuda":
        text += f", CUDA peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    return text


def backbone_at(side: int, device: torch.device):
    import focusvit

    backbone = focusvit.load_backbone("offline:dinov2-s14-imgfocus", num_classes=0).to(device)
    config = {**backbone.data_config, "input_size": (3, side, side), "crop_pct": 1.0}
    backbone.data_config = config
    return backbone


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def solver_speed(args: argparse.Namespace, device: torch.device) -> None:
    import focusvit
    from focusvit.finetune import SOLVERS
    from focusvit.finetune.features import _CACHES

    backbone = backbone_at(224, device)
    scenes = focusvit.SyntheticScenes(
        "novel", images_per_class=args.images_per_class, num_classes=args.classes
    )
    spec = focusvit.EpisodeSpec(n_way=5, k_shot=1, n_query=15, episodes=args.uncached_episodes)
    print(f"\n## frozen solvers, {device}: offline DINOv2-S/14, 224 px, 5-way 1-shot, 15 queries")
    print(f"{len(scenes)} novel images ({len(scenes.class_names)} classes x "
          f"{args.images_per_class}); each row: all five solvers")  # fmt: skip
    synchronize(device)
    uncached, plain = timed(lambda: [
        focusvit.evaluate(backbone, scenes, solver=s, episodes=spec, cache_features=False,
                          progress=False, device=device)
        for s in SOLVERS
    ])  # fmt: skip
    _CACHES.clear()
    cached_spec = focusvit.EpisodeSpec(5, 1, 15, args.cached_episodes)
    synchronize(device)
    cached, results = timed(lambda: [
        focusvit.evaluate(backbone, scenes, solver=s, episodes=cached_spec, progress=False,
                          device=device)
        for s in SOLVERS
    ])  # fmt: skip
    synchronize(device)
    encoded = len(next(iter(_CACHES.values())))
    one_pass, _ = timed(lambda: focusvit.finetune.features.FeatureCache(
        backbone, scenes, device)(list(range(len(scenes)))))  # fmt: skip
    same = all(
        a.accuracies == b.accuracies[: args.uncached_episodes]
        for a, b in zip(plain, results, strict=True)
    )
    uncached_rate = args.uncached_episodes / uncached
    cached_rate = args.cached_episodes / cached
    print(f"{'path':<10} {'episodes':>9} {'seconds':>9} {'episodes/s':>11} {'x uncached':>11}")
    print(f"{'uncached':<10} {args.uncached_episodes:>9} {uncached:>9.1f} {uncached_rate:>11.3f} "
          f"{1.0:>11.1f}")  # fmt: skip
    print(f"{'cached':<10} {args.cached_episodes:>9} {cached:>9.1f} {cached_rate:>11.3f} "
          f"{cached_rate / uncached_rate:>11.1f}")  # fmt: skip
    print(
        f"cached run encoded {encoded} images once; one pass over all {len(scenes)} images "
        f"alone: {one_pass:.1f} s -> {args.cached_episodes} episodes x 5 solvers took "
        f"{cached / one_pass:.2f}x one pass"
    )
    print(f"first {args.uncached_episodes} episodes identical with and without the cache: {same}")
    print(peak_memory(device))


def transform_accuracy(args: argparse.Namespace, device: torch.device) -> None:
    import focusvit
    from focusvit.runs import mean_and_ci

    backbone = backbone_at(224, device)
    scenes = focusvit.SyntheticScenes(
        "val", images_per_class=max(args.images_per_class, 20), num_classes=args.classes
    )
    print(f"\n## SimpleShot transforms on the validation classes ({len(scenes.class_names)}), "
          f"{args.transform_episodes} episodes per cell, 15 queries, accuracy % (mean ± 95%)")  # fmt: skip
    for k_shot in (1, 5):
        spec = focusvit.EpisodeSpec(5, k_shot, 15, args.transform_episodes, split="val")
        rows = {}
        for solver in ("prototype", "knn"):
            for transform in ("none", "l2n", "cl2n"):
                result = focusvit.evaluate(backbone, scenes, solver=solver, episodes=spec,
                                           feature_transform=transform, progress=False,
                                           device=device)  # fmt: skip
                rows[(solver, transform)] = torch.tensor(result.accuracies)
        print(f"5-way {k_shot}-shot")
        for (solver, transform), acc in rows.items():
            mean, ci = mean_and_ci(acc)
            diff, dci = mean_and_ci(acc - rows[(solver, "none")])
            print(f"  {solver:<10} {transform:<5} {100 * mean:6.2f} ± {100 * ci:4.2f}   "
                  f"vs none {100 * diff:+6.2f} ± {100 * dci:4.2f}")  # fmt: skip


def tune_speed(args: argparse.Namespace, device: torch.device) -> None:
    import focusvit
    from focusvit.finetune import make_runner
    from focusvit.runs import evaluate_many

    backbone = backbone_at(112, device)
    scenes = focusvit.SyntheticScenes("novel", images_per_class=16)
    spec = focusvit.EpisodeSpec(5, 1, 15, args.tune_episodes)
    b = args.tasks_per_batch
    print(f"\n## fine-tuning, {device}: offline DINOv2-S/14, 112 px, 5-way 1-shot, 15 queries, "
          f"{args.tune_episodes} episodes, recipes of docs/recipes.md")  # fmt: skip
    print(f"{'tuner':<10} {'sequential s/ep':>16} {'batched s/ep':>13} {'speed-up':>9} "
          f"{'max |acc diff|':>15}")  # fmt: skip
    for tuner in ("lora", "ssf", "full"):
        times, results = [], []
        for tasks in (1, b):
            try:
                runner = make_runner(backbone, tuner=tuner, device=device, tasks_per_batch=tasks)
            except Exception as error:
                times.append(None)
                results.append(str(error).split(";")[0])
                continue
            synchronize(device)
            seconds, out = timed(lambda r=runner: evaluate_many([r], scenes, spec, progress=False))
            times.append(seconds / args.tune_episodes)
            results.append(out[runner.name].accuracies)
        if times[1] is None or not isinstance(results[1], list):
            print(f"{tuner:<10} {times[0]:>16.2f} {'n/a':>13}   batched path: {results[1]}")
            continue
        diff = max(abs(x - y) for x, y in zip(results[0], results[1], strict=True))
        print(f"{tuner:<10} {times[0]:>16.2f} {times[1]:>13.2f} {times[0] / times[1]:>9.2f} "
              f"{100 * diff:>14.2f}%")  # fmt: skip
    print(peak_memory(device))


def main() -> None:
    args = parse_args()
    skip = set(filter(None, args.skip.split(",")))
    devices = (
        [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    print(f"focusvit evaluation speed; torch {torch.__version__}, {torch.get_num_threads()} CPU "
          f"threads; {time.strftime('%Y-%m-%d')}; median-free single timings of whole runs")  # fmt: skip
    for name in devices:
        device = torch.device(name)
        if "solvers" not in skip:
            solver_speed(args, device)
        if "transform" not in skip and name == devices[0]:
            transform_accuracy(args, device)
        if "tune" not in skip:
            tune_speed(args, device)


if __name__ == "__main__":
    main()
