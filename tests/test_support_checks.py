"""Issue 32: arguments of fit_task / evaluate / EpisodeSpec that used to end in a raw torch
error or be silently accepted are refused at the door with one ConfigError naming the fix."""

from __future__ import annotations

import pytest
import torch

import focusvit
from focusvit.errors import ConfigError
from focusvit.finetune import fit_task
from focusvit.finetune.evaluate import resolve_device

X = torch.randn(4, 3, 32, 32)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (X, torch.tensor([0, 0, 2, 2]), r"missing \[1\]"),
        (X, torch.tensor([0.0, 1.0, 0.0, 1.0]), "integer"),
        (X, torch.tensor([0, -1, 0, -1]), "0..N-1"),
        ((X * 50).to(torch.uint8), torch.tensor([0, 1, 0, 1]), "preprocess"),
        (X[:0], torch.tensor([], dtype=torch.long), "empty"),
        (X, torch.tensor([0, 1]), "one label per image"),
        ([X], torch.tensor([0]), "float batch"),
    ],
)
def test_fit_task_refuses_a_support_set_it_cannot_use(images, labels, match):
    backbone = focusvit.load_backbone("tiny:timm-vit")
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    with pytest.raises(ConfigError, match=match), fit_task(backbone, images, labels, steps=1):
        pass
    assert all(torch.equal(v, state[k]) for k, v in backbone.model.state_dict().items())


@pytest.mark.parametrize("seed", [-1, 1.5, 2**70, True, "0"])
def test_episode_spec_refuses_seeds_torch_cannot_take(seed):
    with pytest.raises(ConfigError, match="seed"):
        focusvit.EpisodeSpec(seed=seed)


def test_the_largest_seed_gives_valid_torch_seeds():
    from focusvit.runs.spec import MAX_SEED, episode_seed

    spec = focusvit.EpisodeSpec(seed=MAX_SEED - 1, episodes=10)
    torch.manual_seed(episode_seed(spec.seed, 10**6))  # raises if it does not fit 64 bits


@pytest.mark.parametrize("tasks", [2.5, 0, True])
def test_tasks_per_batch_must_be_a_whole_number(tasks):
    backbone = focusvit.load_backbone("tiny:timm-vit")
    scenes = focusvit.SyntheticScenes("novel", images_per_class=4)
    spec = focusvit.EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=1)
    with pytest.raises(ConfigError, match="tasks_per_batch"):
        focusvit.evaluate(backbone, scenes, tuner="lora", episodes=spec, tasks_per_batch=tasks)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"no CUDA GPU.*use device=cpu"):
        resolve_device("cuda")
    assert resolve_device(None).type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("gpu0")


def test_reset_head_refuses_a_negative_class_count():
    backbone = focusvit.load_backbone("tiny:hf-vit")
    with pytest.raises(ConfigError, match="num_classes"):
        backbone.reset_head(-1)
