"""experiment=fort_paper: the paper's protocol as one command (20-way 1-shot, 15 queries, 2000
episodes, 224 px after the 1.15x resize and centre crop, the recipe, every class), plain /
authors' α / validated α side by side, the expected-time line and tasks_per_batch."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

import focusvit.runconfig as rc
from focusvit import cli
from focusvit.data import standard_splits
from focusvit.errors import ConfigError


def _compose(overrides):
    with initialize_config_module(rc.CONFIG_MODULE, version_base="1.3"):
        return compose("fewshot", overrides=overrides)


def _cub_tree(root, classes: int = 3, per_class: int = 3):
    """A miniature CUB_200_2011/images tree: the first classes of the official folder names."""
    for c, name in enumerate(standard_splits("cub")["all"][:classes]):
        folder = root / "CUB_200_2011" / "images" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            colour = ((40 * c + 7 * i) % 255, (90 * i) % 255, (60 * c) % 255)
            Image.new("RGB", (40, 36), colour).save(folder / f"{name}_{i}.jpg")
    return root


def test_fort_paper_composes_the_protocol():
    cfg = _compose(["experiment=fort_paper"])
    assert (cfg.episodes.n_way, cfg.episodes.k_shot, cfg.episodes.n_query) == (20, 1, 15)
    assert cfg.episodes.episodes == 2000
    assert cfg.backbone.image_size == 224 and cfg.backbone.resize == "crop"
    assert cfg.backbone.crop_pct == pytest.approx(1 / 1.15)
    assert cfg.backbone.spec == "timm:vit_base_patch16_224.dino"
    assert cfg.data.name == "cub" and cfg.data.split == "all"  # all 200 classes
    assert cfg.fort.alpha is None  # fort=recipe: the recipe's (authors') α
    assert all(cfg.trainer[k] is None for k in ("lr", "steps"))  # trainer=recipe
    assert list(cfg.methods) == ["lora", "lora+fort", "lora+fort@validated"]
    assert cfg.select_alpha.rule == "paired" and cfg.select_alpha.alphas
    assert cfg.tasks_per_batch == "auto"
    other = _compose(["experiment=fort_paper", "data=cars"])  # the command line's data wins
    assert other.data.name == "cars" and other.data.split == "all"


def test_tasks_per_batch_auto_is_8_on_cuda_only():
    cfg = _compose(["experiment=fort_paper", "data.root=/nowhere"])
    assert cli.check_tasks_per_batch(cfg.tasks_per_batch) == "auto"
    assert cli.check_tasks_per_batch(4) == 4
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(ConfigError, match="tasks_per_batch must be"):
            cli.check_tasks_per_batch(bad)
    from focusvit import load_backbone

    backbone = load_backbone("tiny:timm-vit", num_classes=0)
    plan = cli.FewshotPlan(*[None] * 7, tasks_per_batch="auto")
    assert cli.resolve_tasks_per_batch(plan, backbone, torch.device("cpu"), "lora") == 1
    assert cli.resolve_tasks_per_batch(plan, backbone, torch.device("cuda"), "lora") == 8
    plan.tasks_per_batch = 3
    assert cli.resolve_tasks_per_batch(plan, backbone, torch.device("cpu"), "lora") == 3


def test_validated_suffix_is_checked():
    for methods, message in (
        ("[lora,lora@validated]", "applies to a \\+fort method"),
        ("[lora+fort,lora+fort]", "twice"),
    ):
        cfg = _compose(["experiment=fort_paper", f"methods={methods}"])
        with pytest.raises(ConfigError, match=message):
            cli.fewshot_methods(cfg, rc.build(cfg, "tuner"), rc.build(cfg, "fort"))
    cfg = _compose(["experiment=fort_paper", "select_alpha.alphas=[]"])
    with pytest.raises(ConfigError, match=r"select_alpha\.alphas="):
        cli.fewshot_methods(cfg, rc.build(cfg, "tuner"), rc.build(cfg, "fort"))


def _run(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["focusvit-fewshot", *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a partial copy of CUB's 200 classes
        cli.fewshot_main()


TINY = [
    "experiment=fort_paper",
    "data=cub",
    "backbone.spec=tiny:timm-vit",
    "episodes.episodes=2",
    "episodes.n_way=2",
    "episodes.n_query=2",
    "backbone.image_size=32",
    "trainer.steps=1",
    "report.focus_episodes=0",
    "progress=false",
]


def test_fort_paper_runs_end_to_end_on_a_miniature_cub(tmp_path, monkeypatch, capsys):
    root = _cub_tree(tmp_path / "data")
    out = tmp_path / "run"
    _run([*TINY, f"data.root={root}", f"out={out}"], monkeypatch)
    printed = capsys.readouterr().out
    assert "lora+fort@validated skipped: data.split=all uses every class" in printed
    assert "expected time: ~0:01 for 2 episodes (" in printed and "episodes/s)" in printed
    assert (out / "report.html").is_file() and (out / "settings.json").is_file()
    assert (out / "episodes" / "lora.jsonl").is_file()
    assert (out / "episodes" / "lora_fort.jsonl").is_file()
    assert not (out / "episodes" / "lora_fort@validated.jsonl").exists()
    html = (out / "report.html").read_text()
    assert "lora+fort" in html and "skipped" in html


def test_fort_paper_validated_row_where_the_dataset_has_a_split(tmp_path, monkeypatch, capsys):
    """With data.split=novel α is chosen on CUB's val classes, and the +fort row keeps the
    recipe's α beside the validated one."""
    root = tmp_path / "data"
    splits = standard_splits("cub")
    for split in ("novel", "val"):
        for c, name in enumerate(splits[split][:2]):
            folder = root / "images" / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 36), (50 * c, 30 * i, 9)).save(folder / f"{i}.jpg")
    out = tmp_path / "run"
    extra = ["data.split=novel", "select_alpha.episodes=1", "select_alpha.alphas=[0.5]"]
    _run([*TINY, *extra, f"data.root={root}", f"out={out}"], monkeypatch)
    printed = capsys.readouterr().out
    assert "choosing α on" in printed and "skipped" not in printed
    for name in ("lora", "lora_fort", "lora_fort@validated"):
        assert (out / "episodes" / f"{name}.jsonl").is_file()
    from focusvit.runs import read_episode_file

    settings = {
        name: read_episode_file(out / "episodes" / f"{name}.jsonl")[0]
        for name in ("lora_fort", "lora_fort@validated")
    }
    assert settings["lora_fort"]["settings"]["method"] == "lora+fort"
    assert settings["lora_fort@validated"]["settings"]["method"] == "lora+fort@validated"
    fort = {name: s["settings"]["runner"]["fort"] for name, s in settings.items()}
    assert fort["lora_fort"]["alpha"] == 0.5  # the ViT LoRA recipe's α
    assert fort["lora_fort@validated"]["alpha"] in (0.0, 0.5)
