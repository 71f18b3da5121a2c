"""Short CPU training of the cross-attention baselines on synthetic scenes (docs/baselines.md, docs/concepts/data.md).

Trains CAN and CrossTransformers episodically on base classes of the 84-px synthetic scenes
(validation classes select the checkpoint), then evaluates on novel-class 5-way 1-shot episodes
(the same episodes for every row) against the untrained encoder's nearest-prototype accuracy::

    .venv/bin/python benchmarks/baselines.py            # 2-4 minutes per method on one CPU thread
    .venv/bin/python benchmarks/baselines.py --episodes 40 --eval-episodes 20   # smoke run
"""

from __future__ import annotations

import argparse
import time

import torch

from focusvit.baselines import (
    PrototypeConfig,
    PrototypeNetwork,
    TrainConfig,
    build_baseline,
    evaluate_baseline,
    train_episodic,
)
from focusvit.data import SceneConfig, SyntheticScenes, TensorDataset
from focusvit.runs import EpisodeSpec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="conv4", help="conv4 | resnet12 | a CNN spec")
    parser.add_argument("--widths", type=int, nargs="+", default=[32])
    parser.add_argument("--episodes", type=int, default=400, help="training episodes per method")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--base-classes", type=int, default=64)
    parser.add_argument("--images-per-class", type=int, default=20)
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--val-episodes", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["can", "ctx"])
    parser.add_argument("--checkpoint-dir", default=None, help="keep checkpoints (resumable)")
    return parser.parse_args()


def tensors(split: str, classes: int, per_class: int, model) -> TensorDataset:
    """Render and preprocess a split once (so training does not wait on the generator)."""
    scenes = SyntheticScenes(split, per_class, SceneConfig(image_size=84), num_classes=classes)
    images = model.preprocess([scenes.load(i) for i in range(len(scenes))])
    return TensorDataset(images, scenes.labels, scenes.class_names)


def training_config(episodes: int, lr: float = 1e-3, val_episodes: int = 40) -> TrainConfig:
    """The short CPU recipe: Adam, 5-way 1-shot episodes with 6 queries per class, the learning
    rate divided by 10 at 70%, four validations (the best one is kept) and four checkpoints."""
    return TrainConfig(
        episodes=episodes, n_way=5, k_shot=1, n_query=6, optimizer="adam", lr=lr,
        weight_decay=0.0, lr_milestones=[0.7], validate_every=max(1, episodes // 4),
        val_episodes=val_episodes, checkpoint_every=max(1, episodes // 4),
    )  # fmt: skip


def row(name: str, result, seconds: float) -> str:
    return f"| {name:<28} | {100 * result.mean:6.2f} ± {100 * result.ci95:5.2f} | {seconds:7.0f} |"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = {"encoder": args.encoder, "widths": args.widths, "image_size": 84}
    reference = PrototypeNetwork(PrototypeConfig(**encoder))
    start = time.time()
    base = tensors("base", args.base_classes, args.images_per_class, reference)
    val = tensors("val", 16, args.images_per_class, reference)
    novel = tensors("novel", 40, args.images_per_class, reference)
    print(f"data: {len(base)} base / {len(val)} val / {len(novel)} novel images "
          f"({time.time() - start:.0f} s)")  # fmt: skip
    shots = {"episodes": EpisodeSpec(5, 1, 15, args.eval_episodes, seed=0)}
    rows = []
    start = time.time()
    rows.append(row(f"untrained {args.encoder} prototype",
                    evaluate_baseline(reference, novel, **shots), time.time() - start))  # fmt: skip
    train = training_config(args.episodes, args.lr, args.val_episodes)
    for method in args.methods:
        torch.manual_seed(0)
        extra = {"num_classes": args.base_classes} if method == "can" else {}
        model = build_baseline(method, **encoder, **extra)
        start = time.time()
        directory = f"{args.checkpoint_dir}/{method}" if args.checkpoint_dir else None
        trained = train_episodic(model, base, val, train, directory)
        seconds = time.time() - start
        print(f"{method}: trained {args.episodes} episodes in {seconds:.0f} s; validation "
              f"{[round(100 * v['accuracy'], 1) for v in trained.validations]}, best at episode "
              f"{trained.best_episode}")  # fmt: skip
        for transductive in (False, True) if method == "can" else (False,):
            start = time.time()
            result = evaluate_baseline(model, novel, transductive=transductive, **shots)
            rows.append(row(result.method, result, seconds + time.time() - start))
    print(f"\nnovel classes, 5-way 1-shot, 15 queries, {args.eval_episodes} episodes (95% CI); "
          f"{args.encoder} {args.widths} at 84 px, {args.episodes} training episodes")  # fmt: skip
    print("| method                       | accuracy (%)    | time (s) |")
    print("|------------------------------|-----------------|----------|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
