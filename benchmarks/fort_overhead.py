"""Cost of the attention-enhancement loss in a fine-tuning step (docs/benchmarks.md).

On timm ``vit_small_patch16_224`` (random weights: speed does not depend on them) at 224 px, with
a support batch of ``--batch`` images (FORT's 20-way 1-shot: 20), each tuner (LoRA, SSF, full)
runs optimiser steps with and without the loss (official settings: last block, all query rows,
τ = 1), alternating the two so both see the same machine load. The table shows the median step
time of each and their ratio (target: at most ~1.10, "the loss adds at most ~10%").

    python benchmarks/fort_overhead.py --batch 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from explain_speed import synchronize  # sibling script (benchmarks/ is on sys.path)

TUNERS = ("lora", "ssf", "full")


def build(model_name: str, batch: int, size: int, device: str = "cpu"):
    import timm

    from focusvit.backbones import adapt

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, img_size=size, num_classes=batch)
    backbone = adapt(model.to(device), name=model_name)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % model.num_classes
    return backbone, images, labels


def time_tuner(backbone, images, labels, tuner: str, repeats: int, warmup: int) -> dict:
    from focusvit.finetune import FortConfig, apply_tuner, make_tuner, recipe_for
    from focusvit.finetune.attention_loss import prompt_targets
    from focusvit.finetune.trainer import _optimizer, training_step

    recipe = recipe_for(backbone.family, tuner)
    fort = FortConfig(
        alpha=recipe.alpha, tau=recipe.tau, top_k=recipe.top_k, top_fraction=recipe.top_fraction
    )
    targets = prompt_targets(backbone, images, labels, fort)
    times: dict[str, list[float]] = {"plain": [], "fort": []}
    with apply_tuner(backbone, make_tuner(tuner)) as tuned:
        optimizer = _optimizer(recipe, tuned.trainable_parameters())
        backbone.train()
        trainable = tuned.parameter_counts()["trainable"]
        for step in range(warmup + repeats):
            for mode in ("plain", "fort"):
                config = fort if mode == "fort" else None
                synchronize(images.device)
                start = time.perf_counter()
                training_step(backbone, optimizer, images, labels, config, targets)
                synchronize(images.device)
                if step >= warmup:
                    times[mode].append(time.perf_counter() - start)
        backbone.eval()
    ratios = [f / p for f, p in zip(times["fort"], times["plain"], strict=True)]
    return {
        "tuner": tuner,
        "trainable": trainable,
        "plain": statistics.median(times["plain"]),
        "fort": statistics.median(times["fort"]),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--tuners", default=",".join(TUNERS))
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    args = parser.parse_args()

    backbone, images, labels = build(args.model, args.batch, args.size, args.device)
    rows = [
        time_tuner(backbone, images, labels, tuner, args.repeats, args.warmup)
        for tuner in args.tuners.split(",")
    ]
    print(
        f"model {args.model}, support batch {args.batch}, {args.size}px, "
        + (
            torch.cuda.get_device_name(args.device) + " (bf16 autocast)"
            if args.device.startswith("cuda")
            else f"cpu, {torch.get_num_threads()} threads"
        )
        + f", median of {args.repeats} alternating steps after "
        f"{args.warmup} warm-up; loss: last block, all query rows"
    )
    print("ratio = median over steps of (step with loss / the step without it just before)\n")
    print(f"{'tuner':<6} {'trainable':>10} {'plain s':>8} {'+loss s':>8} {'ratio':>6}  target")
    for row in rows:
        verdict = "ok" if row["ratio"] <= 1.10 else "MISSED"
        print(
            f"{row['tuner']:<6} {row['trainable']:>10,} {row['plain']:>8.3f} {row['fort']:>8.3f} "
            f"{row['ratio']:>6.3f}  <= 1.10x {verdict}"
        )


if __name__ == "__main__":
    main()
