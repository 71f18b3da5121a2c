"""Regression tests for the findings of the hostile sweep (issue 32, benchmarks/hostile.py)
outside ``finetune/``: each hostile input is refused with one clear focusvit error."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import focusvit
from focusvit.backbones import load_backbone, save_backbone
from focusvit.baselines import TrainConfig, build_baseline, train_episodic
from focusvit.data import ImageFolderDataset, SyntheticScenes, TensorDataset
from focusvit.data.episodes import sample_episodes
from focusvit.data.images import load_images, read_image, read_mask
from focusvit.errors import ConfigError, FocusVitError, NonFiniteError, SettingsMismatchError
from focusvit.explainers.metrics import causal_curve
from focusvit.runs import OutputWriteError, read_episode_file

INF, NAN = float("inf"), float("nan")


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert isinstance(error.value, FocusVitError) and "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def vit():
    return load_backbone("tiny:timm-vit")


# ----------------------------------------------------------------------------- save_backbone
SPEC = {"spec": "tiny:timm-vit"}


def test_save_backbone_refuses_a_spec_that_is_not_a_dict(vit, tmp_path):
    with pytest.raises(ConfigError) as error:
        save_backbone(vit, tmp_path / "m.safetensors", "tiny:timm-vit")
    assert "must be a dict" in one_line(error)
    assert not list(tmp_path.iterdir())


def test_save_backbone_refuses_links_fifos_and_folders(vit, tmp_path):
    target = tmp_path / "target.safetensors"
    target.write_text("keep")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        save_backbone(vit, link, SPEC)
    assert link.is_symlink() and target.read_text() == "keep"
    with pytest.raises(ConfigError, match="directory"):
        save_backbone(vit, tmp_path, SPEC)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.safetensors"
        os.mkfifo(fifo)
        with pytest.raises(ConfigError, match="special file"):
            save_backbone(vit, fifo, SPEC)


def test_save_backbone_disk_full_keeps_the_old_file_and_leaves_no_tmp(vit, tmp_path, monkeypatch):
    import safetensors.torch

    path = save_backbone(vit, tmp_path / "m.safetensors", SPEC)
    before = path.read_bytes()

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 8)
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputWriteError) as error:
        save_backbone(vit, path, SPEC)
    assert "disk is full" in one_line(error)
    assert path.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert load_backbone(path).name  # the kept file still loads


# ----------------------------------------------------------------------------- image sources
@pytest.mark.parametrize(
    "call",
    [
        lambda: load_images(None),
        lambda: load_images(123),
        lambda: load_images([None]),
        lambda: load_images([torch.zeros(3, 4, 4)]),
        lambda: read_image(None),
        lambda: read_image(b"\x89PNG"),
        lambda: read_mask(5),
    ],
)
def test_image_sources_that_are_no_image_are_one_line_errors(call):
    with pytest.raises(FocusVitError) as error:
        call()
    assert "got" in one_line(error)


def test_preprocess_masks_refuses_none_and_takes_tensors(vit):
    with pytest.raises(FocusVitError) as error:
        vit.preprocess_masks([None])
    assert "NoneType" in one_line(error)
    assert read_mask(torch.ones(3, 3)).all()
    assert load_images(np.zeros((4, 5, 3), np.uint8))[0].size == (5, 4)  # one array: one image


# ----------------------------------------------------------------------------- causal_curve
@pytest.mark.parametrize("steps", [True, 2.5, "3", 0])
def test_causal_curve_steps_must_be_a_whole_number(steps):
    images, scores = torch.rand(1, 3, 8, 8), torch.rand(1, 2, 2)
    with pytest.raises(ConfigError) as error:
        causal_curve(lambda x: x.mean(dim=(2, 3)), images, scores, steps=steps)
    assert "whole number" in one_line(error)


# ----------------------------------------------------------------------------- baselines
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", INF),
        ("lr", NAN),
        ("lr", "0.1"),
        ("weight_decay", NAN),
        ("weight_decay", "0"),
        ("weight_decay", -1),
        ("grad_clip", NAN),
        ("grad_clip", INF),
        ("lr_milestones", ["a"]),
        ("lr_milestones", [2]),
        ("lr_milestones", "0.5"),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", 2**70),
        ("seed", True),
        ("val_seed", -1),
    ],
)
def test_train_config_refuses_what_cannot_train(key, value):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**{key: value})
    assert key in one_line(error)


def test_train_config_keeps_valid_values():
    config = TrainConfig(lr_milestones=(0.5,), weight_decay=0, grad_clip=1, seed=3)
    assert config.lr_milestones == [0.5]


def test_diverging_baseline_training_stops_with_the_episode_and_lr():
    model = build_baseline("can", encoder="conv4", widths=[8], image_size=48, num_classes=3)
    labels = torch.arange(3).repeat_interleave(4)
    images = torch.randn(len(labels), 3, 48, 48, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        episodes=6, n_way=3, k_shot=1, n_query=2, lr=1e6, validate_every=0, lr_milestones=[]
    )
    with pytest.raises(NonFiniteError) as error:
        train_episodic(model, TensorDataset(images, labels), config=config, progress=False)
    text = one_line(error)
    assert "diverged at episode" in text and "lr (now 1e+06)" in text


# ----------------------------------------------------------------------------- episode files
def test_a_complete_line_that_is_no_json_is_refused(tmp_path):
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n")
    with pytest.raises(SettingsMismatchError) as error:
        read_episode_file(notes)
    assert "line 1 is not valid JSON" in one_line(error)
    assert notes.read_text() == "my notes\n"


def test_only_a_last_line_without_newline_is_a_cut_write(tmp_path):
    header = json.dumps({"settings": {"x": 1}, "method": "m"})
    record = json.dumps({"method": "m", "episode": 0, "accuracy": 0.5})
    path = tmp_path / "m.jsonl"
    path.write_text(f"{header}\n{record}\n" + '{"method": "m", "epi')
    settings, records = read_episode_file(path)
    assert settings["settings"] == {"x": 1} and [r["episode"] for r in records] == [0]
    path.write_text(f"{header}\n{record}\n" + '{"method": "m", "epi\n')
    with pytest.raises(SettingsMismatchError, match="line 3 is not valid JSON"):
        read_episode_file(path)


# ----------------------------------------------------------------------------- datasets
@pytest.mark.parametrize(
    ("images", "labels", "kwargs", "fragment"),
    [
        ([torch.zeros(3, 4, 4)], [0], {}, "must be a tensor"),
        (torch.zeros(3, 3, 4, 4), [0.5, 1.5, 0.5], {}, "whole numbers"),
        (torch.zeros(3, 3, 4, 4), torch.tensor([0.0, 1.0, 0.0]), {}, "integer"),
        (torch.zeros(3, 3, 4, 4), [-1, 0, 1], {}, ">= 0"),
        (torch.zeros(3, 3, 4, 4), "012", {}, "list of class indices"),
        (torch.zeros(3, 3, 4, 4), [True, False, True], {}, "whole numbers"),
        (torch.zeros(3, 3, 4, 4), [0, 1, 2], {"class_names": ["a"]}, "1 names for 3 classes"),
        (torch.zeros(3, 3, 4, 4), [0, 1, 2], {"class_names": "abc"}, "list of names"),
    ],
)
def test_tensor_dataset_checks_images_labels_and_names(images, labels, kwargs, fragment):
    with pytest.raises(ConfigError) as error:
        TensorDataset(images, labels, **kwargs)
    assert fragment in one_line(error)


def test_tensor_dataset_takes_integer_tensors_and_arrays():
    data = TensorDataset(torch.zeros(3, 3, 4, 4), np.array([0, 1, 1]), class_names=["a", "b"])
    assert data.labels == [0, 1, 1] and data.class_names == ["a", "b"]
    assert TensorDataset(torch.zeros(2, 3, 4, 4), torch.tensor([1, 0])).labels == [1, 0]


def test_image_folder_checks_root_and_classes(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
    with pytest.raises(ConfigError) as error:
        ImageFolderDataset(None)
    assert "folder path" in one_line(error)
    with pytest.raises(ConfigError) as error:
        ImageFolderDataset(tmp_path, classes="ab")
    assert "list of class folder names" in one_line(error)
    assert ImageFolderDataset(tmp_path, classes=("b",)).class_names == ["b"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"images_per_class": 0},
        {"images_per_class": -1},
        {"images_per_class": 2.5},
        {"images_per_class": "3"},
        {"num_classes": -1},
        {"num_classes": 0},
        {"num_classes": "2"},
        {"num_classes": True},
        {"num_classes": 10**6},
        {"seed": -1},
        {"seed": 1.5},
        {"seed": 2**70},
    ],
)
def test_synthetic_scenes_counts_and_seed(kwargs):
    with pytest.raises(ConfigError) as error:
        SyntheticScenes("novel", **kwargs)
    assert next(iter(kwargs)) in one_line(error)


def test_synthetic_scenes_num_classes_none_keeps_every_class():
    assert len(SyntheticScenes("val", images_per_class=1, num_classes=None).class_names) > 2


@pytest.mark.parametrize("labels", ["0011", b"0011", None, 5, [0.0, 0.0, 1.0, 1.0]])
def test_sample_episodes_refuses_labels_that_are_no_list_of_classes(labels):
    with pytest.raises(FocusVitError) as error:
        sample_episodes(labels, 2, 1, 1)
    assert "labels" in one_line(error)


# ----------------------------------------------------------------------------- CLI
def test_fewshot_layers_out_of_range_are_refused_before_settings_are_written(tmp_path):
    from test_cli import compose_cfg

    from focusvit import cli

    base = [
        "backbone=tiny_timm_vit",
        "trainer=smoke",
        "data.images_per_class=3",
        "episodes.episodes=1",
        "episodes.n_query=2",
        "progress=false",
        "report.focus_episodes=0",
        "methods=[lora+fort]",
    ]
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        cli.run_fewshot(compose_cfg("fewshot", [*base, "fort.layers=[5]"]), out)
    assert "2-block model" in one_line(error)
    assert not (out / "settings.json").exists()
    result = cli.run_fewshot(compose_cfg("fewshot", [*base, "fort.layers=[1]"]), out)
    accuracy = result["results"]["lora+fort"].mean
    assert math.isfinite(accuracy) and (out / "settings.json").exists()


def test_save_backbone_round_trip_still_works(vit, tmp_path):
    path = save_backbone(vit, tmp_path / "sub" / "m.safetensors", SPEC)
    assert focusvit.load_backbone(path).family == vit.family


# ----------------------------------------------------------------------------- finetune/
def _support(n_way: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2 * n_way, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return images, torch.arange(n_way).repeat(2)


def _fit(backbone, images, labels, **kwargs):
    from focusvit.finetune import fit_task

    with fit_task(backbone, images, labels, **{"steps": 1, **kwargs}) as task:
        return task


def test_fit_task_labels_2d_message_is_one_line_with_dtype_and_shape(vit):
    x, y = _support()
    with pytest.raises(ConfigError) as error:
        _fit(vit, x, y[:, None])
    assert "torch.int64 tensor of shape (6, 1)" in one_line(error)


def test_fit_task_refuses_nonfinite_support_images_before_any_work(vit):
    from focusvit.finetune.trainer import check_support

    x, y = _support()
    x[2, 0, 0, 0] = INF
    with pytest.raises(NonFiniteError) as error:
        check_support(x, y)
    assert "1 of 6 support images" in one_line(error)
    with pytest.raises(NonFiniteError):
        _fit(vit, torch.full_like(x, NAN), y)


def test_fit_task_builds_options_through_the_checked_helper(vit):
    from focusvit.errors import ArgumentError
    from focusvit.finetune import FitOptions
    from focusvit.finetune.recipes import fit_options

    x, y = _support()
    with pytest.raises(ArgumentError) as error:
        _fit(vit, x, y, no_such_option=1)
    assert "no_such_option" in one_line(error) and "head_init" in one_line(error)
    with pytest.raises(ArgumentError) as error:
        _fit(vit, x, y, options={"lr": 1e-3})
    assert "must be a FitOptions, got dict" in one_line(error) and "lr, steps" in one_line(error)
    merged = fit_options(FitOptions(lr=1e-3), {"steps": 2})
    assert (merged.lr, merged.steps, merged.head_init) == (1e-3, 2, "svm")
    with pytest.raises(ArgumentError, match="evaluate\\(\\) options must be a FitOptions"):
        focusvit.evaluate(vit, SyntheticScenes("novel", images_per_class=3, num_classes=3),
                          tuner="lora", options={"lr": 1e-3}, progress=False)  # fmt: skip


@pytest.mark.parametrize("fort", ["yes", 1, {"alpha": 0.5}, 0.5])
def test_resolve_fort_refuses_anything_but_fortconfig_or_bool(vit, fort):
    from focusvit.finetune import resolve_fort

    with pytest.raises(ConfigError) as error:
        resolve_fort(vit, "lora", fort)
    assert "fort must be a FortConfig, True" in one_line(error)
    with pytest.raises(ConfigError, match="fort must be a FortConfig"):
        _fit(vit, *_support(), fort=fort)
    assert resolve_fort(vit, "lora", None) is None and resolve_fort(vit, "lora", False) is None


@pytest.mark.parametrize("layers", [["a"], [1.5], [True], [0, None]])
def test_fort_layers_must_be_whole_numbers(layers):
    from focusvit.finetune import FortConfig

    with pytest.raises(ConfigError) as error:
        FortConfig(layers=layers)
    assert "whole block indices" in one_line(error)


def test_fort_layers_accept_integral_types():
    from focusvit.finetune import FortConfig

    assert FortConfig(layers=[np.int64(1), -1]).layers == (1, -1)


@pytest.mark.parametrize(
    ("name", "kwargs", "option"),
    [
        ("lora", {"alpha": "1"}, "LoRA alpha"),
        ("lora", {"alpha": INF}, "LoRA alpha"),
        ("lora", {"alpha": True}, "LoRA alpha"),
        ("lora", {"dropout": "0.1"}, "LoRA dropout"),
        ("lora", {"dropout": NAN}, "LoRA dropout"),
        ("lora", {"targets": 3}, "LoRA targets"),
        ("lora", {"targets": ["qkv", 3]}, "LoRA targets"),
        ("vpt", {"init_std": "x"}, "VPT init_std"),
        ("vpt", {"init_std": INF}, "VPT init_std"),
        ("vpt", {"deep": "yes"}, "VPT deep"),
        ("vpt", {"dropout": "0"}, "VPT dropout"),
        ("ssf", {"targets": 3}, "SSF targets"),
    ],
)
def test_tuner_configs_check_types_and_finiteness(name, kwargs, option):
    from focusvit.finetune.tuners import make_tuner, tuner_spec

    with pytest.raises(ConfigError) as error:
        tuner_spec(name).config(**kwargs)
    assert option in one_line(error) and "e.g." in one_line(error)
    with pytest.raises(ConfigError) as error:  # tuner_options give the same message
        make_tuner(name, **kwargs)
    assert option in one_line(error) and "not supported between" not in one_line(error)


def test_tuner_configs_accept_valid_values_and_name_unknown_options():
    from focusvit.errors import ArgumentError
    from focusvit.finetune.tuners import make_tuner
    from focusvit.finetune.tuners.lora import LoraConfig
    from focusvit.finetune.tuners.ssf import SSFConfig
    from focusvit.finetune.tuners.vpt import VPTConfig

    assert LoraConfig(alpha=2, dropout=0.1, targets="qkv").targets == ["qkv"]
    assert SSFConfig(targets="blocks.0.norm1").targets == ["blocks.0.norm1"]
    assert SSFConfig(targets=("a", "b")).targets == ["a", "b"]
    assert VPTConfig(deep=False, init_std=0.02).init_std == 0.02
    with pytest.raises(ArgumentError) as error:
        make_tuner("lora", nope=1)
    assert "'nope'" in one_line(error) and "rank, alpha, dropout, targets" in one_line(error)


def test_evaluate_refuses_episodes_and_datasets_of_other_types(vit):
    from focusvit.errors import ArgumentError

    scenes = SyntheticScenes("novel", images_per_class=3, num_classes=3)
    with pytest.raises(ArgumentError) as error:
        focusvit.evaluate(vit, scenes, solver="prototype", episodes={"n_way": 3}, progress=False)
    assert "focusvit.EpisodeSpec(**{'n_way': 3})" in one_line(error)
    for data in ([], torch.zeros(3), {"labels": [0]}):
        with pytest.raises(ArgumentError) as error:
            focusvit.evaluate(vit, data, solver="prototype", progress=False)
        text = one_line(error)
        assert "FewShotDataset" in text and "ImageFolderDataset" in text
        assert "TensorDataset" in text and "SyntheticScenes" in text


@pytest.mark.parametrize("alphas", ["abc", "0.1", 0.5, [0.1, "a"], [NAN], [INF], [-1], [True]])
def test_select_alpha_refuses_bad_alphas_before_any_work(vit, alphas):
    from focusvit.finetune import select_alpha

    spec = focusvit.EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=1)
    val = SyntheticScenes("val", images_per_class=3, num_classes=3)
    with pytest.raises(ConfigError) as error:
        select_alpha(vit, val, "lora", alphas, spec, progress=False)
    assert "alphas must be" in one_line(error)


def test_select_alpha_file_names_are_the_run_folder_names():
    from focusvit.finetune.selection import alpha_file_name, alpha_label, check_alphas
    from focusvit.runs import episode_file_name

    assert check_alphas((0.5, 1, 0.5)) == [0.0, 0.5, 1.0]
    for alpha in (0.0, 0.05, 0.1, 1.0, 2.5, 1e-5, 1e-3, 100.0):
        by_hand = f"alpha={alpha:g}.jsonl"  # the names committed records were written under
        assert alpha_file_name(alpha) == episode_file_name(alpha_label(alpha)) == by_hand
    assert alpha_file_name(0.05) == "alpha=0.05.jsonl" and alpha_file_name(0) == "alpha=0.jsonl"


def test_prompt_settings_do_not_depend_on_a_tuner(vit):
    from focusvit.finetune import FortConfig, resolve_fort
    from focusvit.finetune.attention_loss import AttentionLossUnsupportedError, prompt_settings

    for backbone in (vit, load_backbone("tiny:timm-swin")):
        shown, trained = prompt_settings(backbone), resolve_fort(backbone, "lora", True)
        for key in ("top_k", "top_fraction", "explainer", "layers"):
            assert getattr(shown, key) == getattr(trained, key)
    assert prompt_settings(vit, FortConfig(top_k=3)).top_k == 3
    with pytest.raises(ConfigError, match="2-block model"):
        prompt_settings(vit, FortConfig(layers=[5]))
    with pytest.raises(AttentionLossUnsupportedError):
        prompt_settings(load_backbone("tiny:timm-cnn"))


def test_fewshot_focus_section_without_fort_shows_prompts_of_the_family(tmp_path):
    """fort=off: the focus probe takes its prompt settings from prompt_settings (no tuner)."""
    from test_cli import compose_cfg

    from focusvit import cli

    overrides = [
        "backbone=tiny_timm_vit",
        "trainer=smoke",
        "data.images_per_class=3",
        "episodes.episodes=1",
        "episodes.n_query=2",
        "progress=false",
        "fort=off",
        "methods=[linear]",
        "report.focus_episodes=1",
        "report.max_queries=1",
    ]
    result = cli.run_fewshot(compose_cfg("fewshot", overrides), tmp_path / "run")
    assert math.isfinite(result["results"]["linear"].mean)
    assert "Attention focus" in (tmp_path / "run" / "report.html").read_text()
