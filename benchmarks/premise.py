"""Does the premise hold? Share of the pretrained model's last-block CLS attention on the class
object, for the shipped scenes and the premise scenes (docs/concepts/data.md).

    python benchmarks/premise.py --images 64
"""

from __future__ import annotations

import argparse

import torch


def attention_share(backbone, scenes, count: int) -> torch.Tensor:
    """Per image: last-block CLS attention mass (mean over heads) on the patches at least half
    covered by the class object (``focusvit.reports.fewshot.object_patches``, the definition of
    the few-shot report's ``*_mass_on_object``)."""
    from focusvit.explainers import attention_mass, cls_attention
    from focusvit.reports.fewshot import object_patches

    shares = []
    for start in range(0, count, 16):
        indices = list(range(start, min(count, start + 16)))
        batch = backbone.preprocess([scenes.load(i) for i in indices])
        with torch.no_grad():
            attention = cls_attention(backbone, batch)  # (B, N), sums to 1 over patches
        grid = backbone.grid_size(tuple(batch.shape[-2:]))
        objects = object_patches(backbone, scenes, indices, grid)
        shares.append(attention_mass(attention.view(-1, *grid), objects))
    return torch.cat(shares)


def main() -> None:
    import focusvit
    from focusvit.data import SceneConfig
    from focusvit.runs import mean_and_ci

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--backbone", default="offline:dinov2-s14-imgfocus")
    args = parser.parse_args()
    backbone = focusvit.load_backbone(args.backbone, num_classes=0)
    backbone.data_config = {**backbone.data_config, "input_size": (3, 112, 112), "crop_pct": 1.0}
    print(f"{args.backbone} at 112 px, {args.images} novel scenes each; share of the last "
          "block's CLS attention on the class object's patches (mean ± 95% interval)")  # fmt: skip
    for name, config in (("shipped", SceneConfig()), ("premise", SceneConfig(premise_objects=2))):
        scenes = focusvit.SyntheticScenes("novel", images_per_class=1, config=config)
        share = attention_share(backbone, scenes, min(args.images, len(scenes)))
        mean, ci = mean_and_ci(share)
        print(f"{name:<8} {mean:.3f} ± {ci:.3f}   (median {share.median():.3f})")


if __name__ == "__main__":
    main()
