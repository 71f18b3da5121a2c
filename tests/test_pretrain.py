"""The pretraining recipe (``focusvit-pretrain``) on tiny configs: learning, checkpoints, resume,
validation and the Hydra entry point."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from dataclasses import replace

import pytest
import torch
from hydra import compose, initialize_config_module

import focusvit
import focusvit.pretraining
import focusvit.pretraining_cli
import focusvit.runconfig as rc
from focusvit.pretraining import (
    CHECKPOINT,
    PretrainConfig,
    build_backbone,
    pretrain,
    render_scenes,
)
from focusvit.pretraining_cli import pretrain_config, pretrain_main
from focusvit.runconfig import ConfigError
from focusvit.runs import load_state

TINY = PretrainConfig(
    model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2},
    image_size=32,
    num_classes=3,
    images_per_class=4,
    val_per_class=1,
    epochs=1,
    batch_size=4,
    lr=3e-3,
    crop_padding=2,
    device="cpu",
)


class Interrupted(Exception):
    pass


def test_importing_the_pretraining_modules_leaves_the_exported_function():
    # `import focusvit.pretraining` and the CLI module must not replace the exported function
    # `focusvit.pretrain` with a module of the same name
    assert inspect.isfunction(focusvit.pretrain)
    assert focusvit.pretrain is focusvit.pretraining.pretrain
    assert focusvit.PretrainConfig is focusvit.pretraining.PretrainConfig
    assert focusvit.pretraining_cli.pretrain_main is pretrain_main
    assert importlib.util.find_spec("focusvit.pretrain") is None  # no such module to shadow it


def test_loss_decreases_on_a_tiny_config():
    config = replace(TINY, warmup_fraction=0.0, label_smoothing=0.0, crop_padding=0)
    data = render_scenes(config)
    assert data["images"].shape == (15, 3, 32, 32) and data["images"].dtype == torch.uint8
    assert int(data["train"].sum()) == 12 and len(data["class_names"]) == 3
    backbone, _ = build_backbone(config, 3)
    x = (data["images"][data["train"]].float() / 255 - 0.5) / 0.5
    y = data["labels"][data["train"]]
    optimizer = torch.optim.AdamW(backbone.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(backbone.logits(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert max(losses[-3:]) < 0.8 * losses[0], losses


def test_checkpoint_loads_with_load_backbone_and_gives_the_same_logits(tmp_path):
    path = pretrain(TINY, tmp_path / "run", progress=False)
    assert path.name == "model.safetensors" and (tmp_path / "run" / CHECKPOINT).exists()
    loaded = focusvit.load_backbone(path)
    state = load_state(tmp_path / "run" / CHECKPOINT)
    fresh, _ = build_backbone(TINY, 3)
    fresh.model.load_state_dict(state["model"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(x), fresh.eval().logits(x), rtol=0, atol=0)
    assert loaded.num_classes == 3 and loaded.data_config["input_size"] == (3, 32, 32)
    assert loaded.data_config["crop_pct"] == 1.0
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert [h["epoch"] for h in history] == [1]
    assert 0 <= history[0]["val_acc"] <= 1
    # few-shot use: num_classes=0 drops the pretraining head, N gives a new one
    headless = focusvit.load_backbone(path, num_classes=0)
    assert headless.num_classes == 0 and headless.logits(x).shape == (2, 32)
    assert focusvit.load_backbone(path, num_classes=5).logits(x).shape == (2, 5)
    # a finished run is returned as it is
    assert pretrain(TINY, tmp_path / "run", progress=False) == path


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    config = replace(TINY, epochs=2)
    whole = pretrain(config, tmp_path / "whole", progress=False)

    def stop(epoch, metrics):
        raise Interrupted

    with pytest.raises(Interrupted):
        pretrain(config, tmp_path / "cut", progress=False, on_epoch_end=stop)
    state = load_state(tmp_path / "cut" / CHECKPOINT)
    assert state["epoch"] == 1 and not (tmp_path / "cut" / "model.safetensors").exists()
    epochs = []
    resumed = pretrain(
        config, tmp_path / "cut", progress=False, on_epoch_end=lambda e, m: epochs.append(e)
    )
    assert epochs == [2]
    a, b = focusvit.load_backbone(whole).model, focusvit.load_backbone(resumed).model
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_folder_with_other_settings_is_refused(tmp_path):
    pretrain(TINY, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.003 -> 0.001"):
        pretrain(replace(TINY, lr=1e-3), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": -2}, "batch_size must be an integer >= 1"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"warmup_fraction": 1.0}, r"warmup_fraction must be in \[0, 1\)"),
        ({"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 1\)"),
        ({"crop_padding": 16}, "crop_padding .* must be < image_size / 2"),
        ({"val_per_class": -1}, "val_per_class must be >= 0"),
        ({"arch": "vit_tiniest"}, "is not a timm model"),
        ({"model_kwargs": {"num_classes": 3}}, "must not set num_classes"),
        ({"init": "timm:vit_tiny_patch16_224"}, "init must be null"),
        ({"init": "offline:dinov2-s14-imgfocus"}, "needs arch=vit_small_patch14_dinov2"),
    ],
)
def test_bad_config_values_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **change)
    with pytest.raises(ValueError, match="unknown pretrain option"):
        PretrainConfig.from_dict({"epoch": 3})


def test_too_many_classes_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"num_classes=10000 is more than the \d+ classes of the 'base' split"
    ):
        pretrain(replace(TINY, num_classes=10_000), tmp_path, progress=False)


def compose_pretrain(overrides: list[str]):
    with initialize_config_module(rc.CONFIG_MODULE, version_base="1.3"):
        return compose("pretrain", overrides=overrides)


def test_config_group_options_compose():
    vit = pretrain_config(compose_pretrain(["pretrain_model=vit_small_cpu"]))
    assert vit == PretrainConfig()  # the yaml values are the dataclass defaults
    swin = pretrain_config(compose_pretrain(["pretrain_model=swin_small_cpu"]))
    assert swin.arch.startswith("swin") and swin.model_kwargs["depths"] == [2, 2, 2]
    dinov2 = pretrain_config(compose_pretrain([]))  # the CLI default
    assert dinov2.init == "offline:dinov2-s14-imgfocus" and dinov2.image_size % 14 == 0
    gpu = pretrain_config(compose_pretrain(["pretrain_model=vit_gpu"]))
    assert gpu.num_classes is None and gpu.epochs > vit.epochs
    with pytest.raises(ConfigError, match="epochs must be"):
        pretrain_config(compose_pretrain(["epochs=0"]))


def test_cli_runs_with_overrides_on_a_tiny_config(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    argv = [
        "focusvit-pretrain",
        "pretrain_model=vit_small_cpu",
        "image_size=32",
        "num_classes=3",
        "images_per_class=4",
        "val_per_class=1",
        "epochs=1",
        "batch_size=4",
        "crop_padding=2",
        "model_kwargs.depth=1",
        "+model_kwargs.embed_dim=32",
        "+model_kwargs.num_heads=2",
        "progress=false",
        f"out={out}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    pretrain_main()
    assert "val acc" in capsys.readouterr().out
    backbone = focusvit.load_backbone(out / "model.safetensors")
    assert backbone.embed_dim == 32 and backbone.num_layers == 1
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "lr=0.5", f"out={out}"])
    with pytest.raises(SystemExit, match=r"focusvit-pretrain: error: .*other settings"):
        pretrain_main()
