"""focusvit.data: images, few-shot datasets (folders, tensors, synthetic scenes) and episodes."""

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
from .images import (
    RESIZE_POLICIES,
    load_images,
    masks_to_batch,
    read_image,
    read_mask,
    sample_photos,
)
from .synthetic import SceneConfig, SyntheticScenes, class_splits

__all__ = [
    "RESIZE_POLICIES",
    "ContentWatch",
    "Episode",
    "EpisodeError",
    "FewShotDataset",
    "ImageFolderDataset",
    "SceneConfig",
    "SyntheticScenes",
    "TensorDataset",
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
]
