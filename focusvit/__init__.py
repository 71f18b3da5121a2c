"""focusvit: explain pretrained vision transformers and fine-tune them on few-shot tasks with
position prompts ("Focus Your Attention when Few-Shot Classification", Wang et al., NeurIPS 2023).

Quick start::

    import focusvit
    backbone = focusvit.load_backbone("offline:dinov2-s14-imgfocus")
    batch = backbone.preprocess(["cat.jpg"])
    with backbone.capture_attention(layers=-1) as attention:
        backbone.logits(batch)
    attention[0].shape  # (1, heads, N, N)
"""

from focusvit.backbones import (
    BackboneAdapter,
    FocusVitError,
    adapt,
    load_backbone,
    save_backbone,
    supported_families,
)
from focusvit.data.images import load_images, sample_photos

__version__ = "0.1.0"

__all__ = [
    "BackboneAdapter",
    "FocusVitError",
    "__version__",
    "adapt",
    "load_backbone",
    "load_images",
    "sample_photos",
    "save_backbone",
    "supported_families",
]
