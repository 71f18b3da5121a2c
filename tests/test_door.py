"""Validation at the door (issue 32): loading, explaining and the CLIs refuse bad arguments with
one focusvit error naming the fix; figure file names are unique per image."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

import focusvit
from focusvit import cli
from focusvit.backbones import load_backbone
from focusvit.errors import (
    CheckpointError,
    ConfigError,
    FocusVitError,
    UnsupportedFamilyError,
)
from focusvit.reports.explain import unique_stems


@pytest.fixture(scope="module")
def vit():
    return load_backbone("tiny:timm-vit")


@pytest.mark.parametrize("value", [2.5, "5", True, -1])
def test_num_classes_must_be_a_whole_number(value):
    with pytest.raises(ConfigError, match="num_classes must be a whole number >= 0"):
        load_backbone("tiny:timm-vit", num_classes=value)


def test_model_kwargs_are_never_silently_ignored():
    with pytest.raises(ConfigError, match="depth"):
        load_backbone("tiny:timm-vit", depth=1)
    with pytest.raises(ConfigError, match="model_kwargs"):
        load_backbone("timm:vit_tiny_patch16_224", pretrained=False, depth="abc")


def _checkpoint(tmp_path, vit, meta) -> str:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in vit.model.state_dict().items()}
    save_file(state, str(path), metadata={"focusvit": json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"num_classes": 5}, "names no model spec"),
        ({"spec": "tiny:hf-vit"}, "do not fit the architecture"),
        ({"spec": "SELF"}, "is a checkpoint file"),
        ({"spec": "tiny:timm-vit", "num_classes": "x"}, "malformed"),
    ],
)
def test_checkpoint_metadata_is_checked(meta, fragment, vit, tmp_path):
    if meta.get("spec") == "SELF":
        meta = {"spec": str(tmp_path / "model.safetensors")}
    path = _checkpoint(tmp_path, vit, meta)
    with pytest.raises(CheckpointError, match=fragment):
        load_backbone(path)


def _hf_folder(tmp_path, name, config_class="ViTConfig"):
    import transformers

    folder = tmp_path / name
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    getattr(transformers, config_class)(intermediate_size=32, **small).save_pretrained(folder)
    return folder


def test_hf_folder_without_safetensors_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"no \.safetensors weights"):
        load_backbone(_hf_folder(tmp_path, "empty"))


def test_pickled_weights_are_refused_never_unpickled(tmp_path, monkeypatch):
    folder = _hf_folder(tmp_path, "pickled")
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_backbone(folder)


def test_text_model_folder_is_refused(tmp_path):
    with pytest.raises(UnsupportedFamilyError, match="not an image backbone"):
        load_backbone(_hf_folder(tmp_path, "bert", "BertConfig"), pretrained=False)


def test_custom_code_folder_is_refused_without_prompt(tmp_path, monkeypatch):
    folder = _hf_folder(tmp_path, "custom")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted"))
    with pytest.raises(UnsupportedFamilyError, match="trust_remote_code=False"):
        load_backbone(folder, pretrained=False)


@pytest.mark.parametrize("target", ["cat", 1.5, -1, 99, True, torch.tensor([0.5])])
def test_explain_target_is_checked(target, vit):
    with pytest.raises(ConfigError, match="target"):
        focusvit.explain(vit, torch.randn(1, 3, 32, 32), method="attention", target=target)


@pytest.mark.parametrize("images", [None, 123, b"abc"])
def test_explain_refuses_non_images(images, vit):
    with pytest.raises(FocusVitError, match="images must be"):
        focusvit.explain(vit, images, method="attention")


def test_unknown_method_is_a_config_error(vit):
    with pytest.raises(ConfigError, match="available"):
        focusvit.explain(vit, torch.randn(1, 3, 32, 32), method="nope")


def test_figure_stems_are_unique():
    stems = unique_stems(["a b", "a_b", "a:b", "A_b", "scene0", "scene0"])
    assert len({s.lower() for s in stems}) == len(stems)
    assert stems[1] == "a_b" and stems[4] == "scene0"
    assert unique_stems(["a b"]) == unique_stems(["a b"])  # stable across runs


# ----------------------------------------------------------------------------- CLI
def run(main, argv, monkeypatch, capsys) -> str:
    monkeypatch.delenv("FOCUSVIT_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["focusvit", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    code = info.value.code
    assert isinstance(code, str) or code == 1, (code, err)
    text = (err + (code if isinstance(code, str) else "")).strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    return text


EXPLAIN = ["backbone=tiny_timm_vit", "inputs=synthetic:1", "report.deletion_steps=0"]
FEWSHOT = ["backbone=tiny_timm_vit", "trainer=smoke", "data.images_per_class=3", "progress=false"]


@pytest.mark.parametrize(
    ("main", "argv", "fragment"),
    [
        ("explain", ["inputs=synthetic:abc"], "inputs=synthetic:abc"),
        ("explain", ["report.batch_size=0"], "report.batch_size"),
        ("explain", ["report.deletion_steps=-1"], "report.deletion_steps"),
        ("explain", ["prompting=coverage", "prompting.coverage=2"], "prompting.coverage"),
        ("explain", ["no_such_key=1"], "no_such_key"),
        ("explain", ["report.batch_size=abc"], "batch_size"),
        ("fewshot", ["report.focus_episodes=-1"], "report.focus_episodes"),
        ("fewshot", ["report.max_queries=0"], "report.max_queries"),
        ("fewshot", ["backbone.model_kwargs.depth=abc"], "depth"),
    ],
)
def test_cli_errors_are_one_line(main, argv, fragment, tmp_path, monkeypatch, capsys):
    entry = {"explain": cli.explain_main, "fewshot": cli.fewshot_main}[main]
    base = EXPLAIN if main == "explain" else FEWSHOT
    line = run(entry, [*base, *argv, f"out={tmp_path / 'out'}"], monkeypatch, capsys)
    assert line.startswith(f"focusvit-{main}: error: ")
    assert fragment in line


def test_cli_out_is_checked_before_writing(tmp_path, monkeypatch, capsys):
    file = tmp_path / "a_file"
    file.write_text("x")
    line = run(cli.explain_main, [*EXPLAIN, f"out={file}"], monkeypatch, capsys)
    assert "is a file, not a folder" in line
    assert file.read_text() == "x"
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            line = run(cli.explain_main, [*EXPLAIN, f"out={locked / 'run'}"], monkeypatch, capsys)
            assert "read-only" in line
            assert not (locked / "run").exists()
        finally:
            locked.chmod(0o700)


# ----------------------------------------------------------------------------- raw images
@pytest.mark.parametrize("bad", [None, 123, b"\x89PNG", [None], []])
def test_preprocess_refuses_what_is_not_an_image_with_the_fix(bad):
    backbone = focusvit.load_backbone("tiny:timm-vit")
    with pytest.raises(focusvit.errors.InputSizeError, match="preprocess"):
        backbone.preprocess(bad)


def test_a_decompression_bomb_is_one_image_read_error(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over the limit
    with pytest.raises(focusvit.errors.ImageReadError, match=r"bomb\.png.*too large"):
        focusvit.load_images([path])


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "0.9", True, float("nan")])
def test_crop_pct_is_checked_at_the_door(value):
    with pytest.raises(ConfigError, match=r"crop_pct must be a number in \(0, 1\]"):
        load_backbone("tiny:timm-vit", crop_pct=value)
    with pytest.raises(ConfigError, match="crop_pct"):
        focusvit.runs.BackboneSpec(spec="tiny:timm-vit", crop_pct=value)


def test_crop_pct_sets_the_centre_crop_of_preprocessing():
    from PIL import Image

    image = Image.new("RGB", (64, 64))
    image.paste((255, 0, 0), (0, 0, 64, 8))  # a red band at the top edge
    kept = load_backbone("tiny:timm-vit", image_size=32, crop_pct=1.0)
    cropped = focusvit.runs.BackboneSpec(spec="tiny:timm-vit", image_size=32, crop_pct=0.5).load()
    assert kept.data_config["crop_pct"] == 1.0 and cropped.data_config["crop_pct"] == 0.5
    top_kept = kept.preprocess([image])[0, 0, 0, 0]
    top_cropped = cropped.preprocess([image])[0, 0, 0, 0]
    assert top_kept > top_cropped  # the band is inside the full image, cut by the half crop
