"""focusvit.data: images, few-shot datasets (folders, tensors, synthetic scenes, Hugging Face and
torchvision datasets, the standard benchmarks) and episodes."""

from .benchmarks import BENCHMARKS, CROSS_DOMAIN, benchmark_dataset, standard_splits
from .datasets import (
    ContentWatch,
    FewShotDataset,
    ImageFolderDataset,
    TensorDataset,
    check_dataset_kind,
    dataset_fingerprint,
    dataset_manifest,
    manifest_changes,
    read_split,
)
from .episodes import Episode, EpisodeError, check_episode_spec, sample_episode, sample_episodes
from .hf import HFImageDataset
from .images import (
    RESIZE_POLICIES,
    load_images,
    masks_to_batch,
    read_image,
    read_mask,
    sample_photos,
)
from .synthetic import SceneConfig, SyntheticScenes, class_splits
from .torchvision_ds import TorchvisionDataset

__all__ = [
    "BENCHMARKS",
    "CROSS_DOMAIN",
    "RESIZE_POLICIES",
    "ContentWatch",
    "Episode",
    "EpisodeError",
    "FewShotDataset",
    "HFImageDataset",
    "ImageFolderDataset",
    "SceneConfig",
    "SyntheticScenes",
    "TensorDataset",
    "TorchvisionDataset",
    "benchmark_dataset",
    "check_dataset_kind",
    "check_episode_spec",
    "class_splits",
    "dataset_fingerprint",
    "dataset_manifest",
    "load_images",
    "manifest_changes",
    "masks_to_batch",
    "read_image",
    "read_mask",
    "read_split",
    "sample_episode",
    "sample_episodes",
    "sample_photos",
    "standard_splits",
]
