"""Do position prompts find the class object? Prompt precision and pointing game against ground truth.

Novel-class synthetic scenes (docs/concepts/data.md) carry the mask of their one class object among
distractors. Every explainer scores the patches of each image; the top-P patches (P = 14/196 of
the grid, FORT's share) form the prompt. Reported, mean ± 95% interval over images:

- precision: share of prompt patches with at least half their pixels on the object;
- pointing: the top patch overlaps the object (pointing game, Zhang et al., ECCV 2016);
- object share: the object's share of the image, i.e. the precision of random patches on average.

Targets: the backbones have no head for these classes, so the explained score is the cosine
similarity of an image's pooled feature to its class prototype (the mean feature of the images of
that class in the batch), as in a few-shot task with a prototype head. ``cam`` needs a linear
head over the classes and is run with EfficientNet-Lite0's ImageNet head (predicted class).

    python benchmarks/localisation.py --classes 16 --per-class 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

#: (row label, explainer name, options)
VIT_EXPLAINERS = [
    ("attention", "attention", {}),
    ("gradcam", "gradcam", {}),
    ("rollout", "rollout", {}),
    ("rollout_svd", "rollout_svd", {}),
    ("rollout_svd official", "rollout_svd", {"head_fusion": "min", "discard_ratio": 0.9}),
    ("rollout_svd lam=0", "rollout_svd", {"lam": 0.0}),
    ("rollout_svd lam=3", "rollout_svd", {"lam": 3.0}),
]
#: (backbone spec, num_classes for load_backbone, explainers); 0 drops the head, so the
#: "logits" are the pooled features the prototype target needs; None keeps the ImageNet head.
BACKBONES = [
    ("offline:dinov2-s14-imgfocus", 0, VIT_EXPLAINERS),
    ("offline:efficientnet-lite0", 0, [("gradcam", "gradcam", {})]),
    ("offline:efficientnet-lite0", None, [("cam (ImageNet head)", "cam", {})]),
]


def explain_batch(backbone, images, labels, prototypes, method, options):
    """Run one explainer on a batch with the prototype target (cam: predicted class)."""
    import focusvit

    if method == "cam":
        return focusvit.explain(backbone, images, method="cam", **options)
    chosen = prototypes[labels]

    def cosine_to_prototype(features: torch.Tensor) -> torch.Tensor:
        return (F.normalize(features.float(), dim=1) * chosen.to(features.device)).sum(dim=1)

    # with num_classes=0 the backbone's "logits" are its pooled features
    return focusvit.explain(backbone, images, method=method, target=cosine_to_prototype, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="model input side in pixels")
    parser.add_argument(
        "--backbones", default="dinov2,efficientnet", help="comma-separated name fragments"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--premise-objects",
        type=int,
        default=0,
        help="class-independent objects per scene (2: the premise scenes of docs/concepts/data.md)",
    )
    parser.add_argument(
        "--checkpoints",
        default="outputs/pretrain/dinov2_s14_cpu/model.safetensors",
        help="comma-separated ViT checkpoints (e.g. from focusvit-pretrain) to add; missing "
        "files are skipped with a note",
    )
    args = parser.parse_args()

    import focusvit
    from focusvit.data import SceneConfig
    from focusvit.explainers import pointing_game, prompt_precision
    from focusvit.runs import mean_and_ci

    scenes = focusvit.SyntheticScenes(
        "novel",
        images_per_class=args.per_class,
        num_classes=args.classes,
        seed=args.seed,
        config=SceneConfig(premise_objects=args.premise_objects),
    )
    pictures = [scenes.load(i) for i in range(len(scenes))]
    masks = torch.stack([torch.as_tensor(scenes.mask(i)) for i in range(len(scenes))])
    labels = torch.tensor(scenes.labels)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    wanted = args.backbones.split(",")
    chosen = [entry for entry in BACKBONES if any(part in entry[0] for part in wanted)]
    for path in filter(None, args.checkpoints.split(",")):
        if Path(path).is_file():
            chosen.insert(0, (path, 0, VIT_EXPLAINERS))
        else:
            print(f"skipping checkpoint {path}: no such file (run focusvit-pretrain first)")
    for spec, num_classes, explainers in chosen:
        name = spec if ":" in spec else f"ckpt:{Path(spec).parent.name}"
        backbone = focusvit.load_backbone(spec, num_classes=num_classes)
        # the whole scene, no centre crop, so the mask stays aligned with the image
        backbone.data_config = {
            **backbone.data_config,
            "input_size": (3, args.size, args.size),
            "crop_pct": 1.0,
        }
        images = backbone.preprocess(pictures)
        prototypes = _prototypes(backbone, images, labels, args.batch)
        grid = None
        for label, method, options in explainers:
            start = time.perf_counter()
            precision, pointing = [], []
            for index in torch.arange(len(images)).split(args.batch):
                explanation = explain_batch(
                    backbone, images[index], labels[index], prototypes, method, options
                )
                grid = explanation.grid
                prompt = focusvit.make_prompts(explanation, top_fraction=14 / 196)
                precision.append(prompt_precision(prompt, masks[index]))
                pointing.append(pointing_game(explanation, masks[index]))
            rows.append(
                (
                    name,
                    label,
                    torch.cat(precision),
                    torch.cat(pointing),
                    time.perf_counter() - start,
                )
            )
        random_scores = torch.rand(len(images), *grid, generator=generator)
        random_prompt = focusvit.make_prompts(random_scores, top_fraction=14 / 196)
        rows.append(
            (
                name,
                "random patches",
                prompt_precision(random_prompt, masks),
                pointing_game(random_scores, masks),
                0.0,
            )
        )

    share = masks.flatten(1).float().mean(1)
    print(
        f"\nsynthetic scenes (novel, {args.premise_objects} premise objects), {len(scenes)} images ({args.classes} classes x "
        f"{args.per_class}), input {args.size} px, prompts: top {14 / 196:.1%} of the patches, "
        f"object covers {100 * share.mean():.1f}% of the image on average"
    )
    print("mean ± 95% interval over images; precision = share of prompt patches on the object\n")
    print(f"{'backbone':<30} {'explainer':<22} {'precision %':>14} {'pointing %':>14} {'s':>6}")
    for spec, label, precision, pointing, seconds in rows:
        p_mean, p_ci = mean_and_ci(precision)
        g_mean, g_ci = mean_and_ci(pointing)
        print(
            f"{spec:<30} {label:<22} {100 * p_mean:>7.1f} ± {100 * p_ci:<4.1f} "
            f"{100 * g_mean:>7.1f} ± {100 * g_ci:<4.1f} {seconds:>6.1f}"
        )


def _prototypes(backbone, images: torch.Tensor, labels: torch.Tensor, batch: int) -> torch.Tensor:
    """Unit-norm class prototypes ``(C, D)``: the mean unit feature of each class's images."""
    with torch.no_grad(), backbone.evaluating():
        feats = torch.cat([backbone.features(b).float() for b in images.split(batch)])
    feats = F.normalize(feats, dim=1)
    protos = torch.stack([feats[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    return F.normalize(protos, dim=1)


if __name__ == "__main__":
    main()
