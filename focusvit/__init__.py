"""focusvit: explain pretrained vision transformers and fine-tune them on few-shot tasks with
position prompts ("Focus Your Attention when Few-Shot Classification", Wang et al., NeurIPS 2023).

Quick start::

    import focusvit
    backbone = focusvit.load_backbone("offline:dinov2-s14-imgfocus")
    batch = backbone.preprocess(["cat.jpg", "dog.jpg"])
    explanation = focusvit.explain(backbone, batch, method="rollout_svd")  # scores (B, h, w)
    prompts = focusvit.make_prompts(explanation, top_k=14)                 # mask (B, h, w)
    scenes = focusvit.SyntheticScenes("novel")
    spec = focusvit.EpisodeSpec(n_way=5, k_shot=1, n_query=15, episodes=100)
    result = focusvit.evaluate(backbone, scenes, tuner="lora", fort=focusvit.FortConfig(),
                               episodes=spec)
    print(result)  # lora+fort: mean ± 95% interval
"""

from focusvit.backbones import (
    BackboneAdapter,
    adapt,
    load_backbone,
    save_backbone,
    supported_families,
)
from focusvit.data import (
    HFImageDataset,
    ImageFolderDataset,
    SyntheticScenes,
    TensorDataset,
    TorchvisionDataset,
    benchmark_dataset,
    load_images,
    sample_episodes,
    sample_photos,
)
from focusvit.errors import ConfigError, FocusVitError, NonFiniteError, SettingsMismatchError
from focusvit.explainers import (
    Explanation,
    attention_mass,
    coverage_count,
    deletion,
    explain,
    insertion,
    pointing_game,
    prompt_precision,
)
from focusvit.finetune import (
    FitOptions,
    FortConfig,
    FullConfig,
    LinearConfig,
    LoraConfig,
    SSFConfig,
    VPTConfig,
    applicable_tuners,
    apply_tuner,
    evaluate,
    fit_task,
)
from focusvit.pretraining import PretrainConfig, pretrain
from focusvit.prompting import (
    PositionPrompt,
    make_prompts,
    swin_window_prompts,
)
from focusvit.reports.figures import plot_explanation, save_overlay_grid
from focusvit.runs import BackboneSpec, EpisodeSpec, EvaluationResult, mean_and_ci

__version__ = "0.1.0"

__all__ = [
    "BackboneAdapter",
    "BackboneSpec",
    "ConfigError",
    "EpisodeSpec",
    "EvaluationResult",
    "Explanation",
    "FitOptions",
    "FocusVitError",
    "FortConfig",
    "FullConfig",
    "HFImageDataset",
    "ImageFolderDataset",
    "LinearConfig",
    "LoraConfig",
    "NonFiniteError",
    "PositionPrompt",
    "PretrainConfig",
    "SSFConfig",
    "SettingsMismatchError",
    "SyntheticScenes",
    "TensorDataset",
    "TorchvisionDataset",
    "VPTConfig",
    "__version__",
    "adapt",
    "applicable_tuners",
    "apply_tuner",
    "attention_mass",
    "benchmark_dataset",
    "coverage_count",
    "deletion",
    "evaluate",
    "explain",
    "fit_task",
    "insertion",
    "load_backbone",
    "load_images",
    "make_prompts",
    "mean_and_ci",
    "plot_explanation",
    "pointing_game",
    "pretrain",
    "prompt_precision",
    "sample_episodes",
    "sample_photos",
    "save_backbone",
    "save_overlay_grid",
    "supported_families",
    "swin_window_prompts",
]
