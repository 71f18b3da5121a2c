"""User errors end in one clear line (CLI) or a focusvit error naming the fix (Python API).

Every case asserts the error type and that the message names what to change (the option and a
value that works); the CLI cases also assert one line on stderr, no traceback and a non-zero exit
status (130 for Ctrl-C), through the real ``@hydra.main`` entry points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import focusvit
from focusvit import cli
from focusvit.backbones import load_backbone, save_backbone
from focusvit.data.episodes import EpisodeError
from focusvit.errors import (
    CheckpointError,
    ConfigError,
    FocusVitError,
    ImageReadError,
    InputSizeError,
    SettingsMismatchError,
    UnknownModelError,
    UnsupportedMethodError,
)
from focusvit.pretraining_cli import pretrain_main
from focusvit.runconfig import image_folder
from focusvit.runs import BackboneSpec, EpisodeSpec, read_episode_file

FEWSHOT = [
    "trainer=smoke",
    "data.images_per_class=3",
    "episodes.episodes=1",
    "episodes.n_query=2",
    "progress=false",
    "report.focus_episodes=0",
]


# ----------------------------------------------------------------------------- CLI
def run_cli(main, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``(exit status, stderr)`` of a ``@hydra.main`` entry point run as its console script
    would run it (a ``sys.exit("message")`` string is what the interpreter prints to stderr)."""
    monkeypatch.setattr(sys, "argv", ["focusvit", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    code = info.value.code
    err = capsys.readouterr().err
    if isinstance(code, str):
        return 1, err + code + "\n"
    return int(code or 0), err


def no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


CLI_CASES = {
    "cnn_with_lora": (
        "fewshot",
        ["backbone=tiny_timm_cnn", "tuner=lora", "fort=off"],
        UnsupportedMethodError,
        ["'lora'", "cnn", "tuner=full"],
    ),
    "swin_with_vpt": (
        "fewshot",
        ["backbone=tiny_timm_swin", "tuner=vpt", "fort=off"],
        UnsupportedMethodError,
        ["'vpt'", "swin", "tuner=lora"],
    ),
    "imagefolder_without_path": (
        "fewshot",
        ["backbone=tiny_timm_vit", "data=imagefolder"],
        ConfigError,
        ["data.path is required", "data.path=/data/cub"],
    ),
    "negative_lr": (
        "fewshot",
        ["backbone=tiny_timm_vit", "trainer.lr=-1"],
        ConfigError,
        ["trainer", "lr must be > 0", "lr=5e-3"],
    ),
    "cuda_without_gpu": (
        "fewshot",
        ["backbone=tiny_timm_vit", "device=cuda"],
        ConfigError,
        ["no CUDA GPU", "device=cpu"],
    ),
    "unknown_device": (
        "fewshot",
        ["backbone=tiny_timm_vit", "device=tpu"],
        ConfigError,
        ["device=tpu", "device=cpu", "device=cuda"],
    ),
    "explain_unknown_device": (
        "explain",
        ["backbone=tiny_timm_vit", "device=gpu0", "inputs=synthetic:1"],
        ConfigError,
        ["device=gpu0", "device=cpu"],
    ),
    "explain_cuda_without_gpu": (
        "explain",
        ["backbone=tiny_timm_vit", "device=cuda", "inputs=synthetic:1"],
        ConfigError,
        ["no CUDA GPU", "device=cpu"],
    ),
    "prompt_larger_than_grid": (
        "explain",
        ["backbone=tiny_timm_vit", "prompting.top_k=1000", "inputs=synthetic:1"],
        ConfigError,
        ["prompting.top_k=1000", "16 patches", "prompting.top_k<=16", "prompting=top_fraction"],
    ),
    "fort_prompt_larger_than_grid": (
        "fewshot",
        ["backbone=tiny_timm_vit", "fort.top_k=1000"],
        ConfigError,
        ["fort.top_k=1000", "16 patches", "fort.top_k<=16"],
    ),
    "fort_prompt_larger_than_swin_window": (
        "fewshot",
        ["backbone=tiny_timm_swin", "tuner=lora", "fort.top_k=1000"],
        ConfigError,
        ["fort.top_k=1000", "tokens of a window", "per window", "fort.top_k<="],
    ),
    "split_without_split_file": (
        "fewshot",
        ["backbone=tiny_timm_vit", "data=imagefolder", "data.path=.", "data.split=novel"],
        ConfigError,
        ["data.split=novel", "data.split_file="],
    ),
    "pretrain_unknown_device": (
        "pretrain",
        ["device=tpu"],
        ConfigError,
        ["device=tpu", "device=cpu"],
    ),
    "missing_checkpoint": (
        "fewshot",
        ["backbone.spec=/nowhere/model.safetensors"],
        CheckpointError,
        ["/nowhere/model.safetensors does not exist", "check the path"],
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_user_error_is_one_line_naming_the_fix(case, tmp_path, monkeypatch, capsys):
    command, argv, error_type, fragments = CLI_CASES[case]
    monkeypatch.delenv("FOCUSVIT_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    no_gpu(monkeypatch)
    main = {"fewshot": cli.fewshot_main, "explain": cli.explain_main, "pretrain": pretrain_main}
    main = main[command]
    extra = {"fewshot": FEWSHOT, "explain": ["report.deletion_steps=0"]}.get(command, [])
    if "data=imagefolder" in argv:  # the synthetic scenes' option does not exist there
        extra = [item for item in extra if not item.startswith("data.")]
    status, err = run_cli(main, [*extra, *argv, f"out={tmp_path / 'out'}"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert status == 1, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"focusvit-{command}: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    # the same case through the Python entry point raises the documented error type
    monkeypatch.setenv("FOCUSVIT_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["focusvit", *extra, *argv, f"out={tmp_path / 'debug'}"])
    with pytest.raises(error_type):
        main()


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.delenv("FOCUSVIT_DEBUG", raising=False)
    monkeypatch.setattr(BackboneSpec, "load", interrupted)
    argv = [*FEWSHOT, "backbone=tiny_timm_vit", f"out={tmp_path / 'out'}"]
    try:
        status, err = run_cli(cli.fewshot_main, argv, monkeypatch, capsys)
    except KeyboardInterrupt:  # (not re-raised: it would stop the whole test session)
        pytest.fail("Ctrl-C escaped the entry point with a traceback")
    assert status == 130
    assert err.strip() == "focusvit-fewshot: interrupted; rerun the same command to resume"
    monkeypatch.setenv("FOCUSVIT_DEBUG", "1")  # the debug flag keeps the traceback
    monkeypatch.setattr(sys, "argv", ["focusvit", *argv])
    with pytest.raises(KeyboardInterrupt):
        cli.fewshot_main()


def test_console_script_one_line_and_debug_traceback(tmp_path):
    script = Path(sys.executable).parent / "focusvit-fewshot"
    if not script.exists():
        pytest.skip("focusvit-fewshot console script not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("FOCUSVIT_DEBUG", "HYDRA_FULL_ERROR")}
    env["OMP_NUM_THREADS"] = "1"
    args = [str(script), *FEWSHOT, "backbone=tiny_timm_cnn", "tuner=lora", "fort=off"]
    plain = subprocess.run(
        [*args, f"out={tmp_path / 'a'}"], capture_output=True, text=True, env=env, timeout=300
    )
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert "tuner=full" in plain.stderr and "FOCUSVIT_DEBUG=1" in plain.stderr
    debug = subprocess.run(
        [*args, f"out={tmp_path / 'b'}"],
        capture_output=True,
        text=True,
        env={**env, "FOCUSVIT_DEBUG": "1"},
        timeout=300,
    )
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "UnsupportedMethodError" in debug.stderr


# ----------------------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def vit():
    return load_backbone("tiny:timm-vit")


def _size(backbone) -> tuple[int, int]:
    return tuple(backbone.data_config["input_size"][1:])


def _corrupt_file(folder: Path) -> Path:
    path = folder / "corrupt.safetensors"
    path.write_bytes(b"this is not a safetensors file at all" * 4)
    return path


def _truncated_file(folder: Path, backbone) -> Path:
    good = save_backbone(backbone, folder / "good.safetensors", {"spec": "tiny:timm-vit"})
    path = folder / "truncated.safetensors"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (16, 16), (80 * index, 0, 0)).save(root / name / f"{index}.png")
    return root


def _episode_file(folder: Path, record: dict) -> Path:
    path = folder / "lora.jsonl"
    header = {"settings": {"x": 1}, "method": "lora"}
    good = {"method": "lora", "episode": 0, "accuracy": 0.5}
    path.write_text("".join(json.dumps(r) + "\n" for r in (header, good, record, good)))
    return path


def _evaluate_no_episodes(backbone):
    images = torch.randn(6, 3, *_size(backbone))
    dataset = focusvit.TensorDataset(images, [0, 0, 1, 1, 2, 2])
    spec = EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=2)
    return focusvit.evaluate(
        backbone, dataset, solver="prototype", episodes=spec, episode_ids=[], progress=False
    )


API_CASES = {
    "explain_batch_of_0": (
        lambda b, tmp: focusvit.explain(b, torch.empty(0, 3, *_size(b))),
        InputSizeError,
        ["no images", "at least one image"],
    ),
    "explain_integer_numpy_batch": (
        lambda b, tmp: focusvit.explain(b, np.zeros((1, 3, *_size(b)), dtype=np.int64)),
        InputSizeError,
        ["must be float", "uint8 arrays or PIL images"],
    ),
    "explain_ambiguous_numpy": (
        lambda b, tmp: focusvit.explain(b, np.zeros((3, 20, 3), dtype=np.float32)),
        InputSizeError,
        ["ambiguous", "torch.from_numpy", "PIL.Image.fromarray"],
    ),
    "explain_wrong_channels": (
        lambda b, tmp: focusvit.explain(b, torch.zeros(1, 1, *_size(b))),
        InputSizeError,
        ["(B, 3, H, W)", "got shape (1, 1,", "backbone.preprocess"],
    ),
    "preprocess_chw_tensor": (
        lambda b, tmp: b.preprocess(torch.rand(3, 40, 40)),
        InputSizeError,
        ["got a tensor of shape (3, 40, 40)", "to_pil_image", "focusvit.explain"],
    ),
    "preprocess_tensor_in_list": (
        lambda b, tmp: b.preprocess([torch.rand(3, 40, 40)]),
        InputSizeError,
        ["got a tensor", "to_pil_image"],
    ),
    "preprocess_empty_array": (
        lambda b, tmp: b.preprocess([np.zeros((0, 0, 3), dtype=np.uint8)]),
        InputSizeError,
        ["(0, 0, 3)", "no pixels", "H, W >= 1"],
    ),
    "preprocess_folder": (
        lambda b, tmp: b.preprocess([tmp]),
        ImageReadError,
        ["is a folder, not an image file", "focusvit.load_images("],
    ),
    "missing_safetensors": (
        lambda b, tmp: load_backbone(tmp / "model.safetensors"),
        CheckpointError,
        ["model.safetensors does not exist", "check the path", "save_backbone"],
    ),
    "folder_without_model": (
        lambda b, tmp: load_backbone(tmp),
        UnknownModelError,
        ["no config.json", ".safetensors file inside it"],
    ),
    "corrupt_safetensors": (
        lambda b, tmp: load_backbone(_corrupt_file(tmp)),
        CheckpointError,
        ["not a readable .safetensors file", "damaged", "save it again"],
    ),
    "truncated_safetensors": (
        lambda b, tmp: load_backbone(_truncated_file(tmp, b)),
        CheckpointError,
        ["not a readable .safetensors file", "copy it again"],
    ),
    "n_query_0": (
        lambda b, tmp: EpisodeSpec(n_query=0),
        ConfigError,
        ["n_query must be a whole number >= 1", "n_query=15"],
    ),
    "episodes_0": (
        lambda b, tmp: EpisodeSpec(episodes=0),
        ConfigError,
        ["episodes must be a whole number >= 1", "episodes=600"],
    ),
    "sample_episodes_0": (
        lambda b, tmp: focusvit.sample_episodes([0, 0, 1, 1], 2, 1, 1, episodes=0),
        EpisodeError,
        ["episodes must be >= 1", "episodes=600"],
    ),
    "evaluate_no_episode_ids": (
        lambda b, tmp: _evaluate_no_episodes(b),
        ConfigError,
        ["episode_ids is empty", "leave episode_ids unset"],
    ),
    "split_without_split_file": (
        lambda b, tmp: image_folder(str(_image_folder(tmp / "data")), split="novel"),
        ConfigError,
        ["data.split=novel needs data.split_file", "drop data.split"],
    ),
    "dataset_split_without_split_file": (
        lambda b, tmp: focusvit.ImageFolderDataset(_image_folder(tmp / "data"), split="novel"),
        ConfigError,
        ["split='novel'", "split_file"],
    ),
    "resumed_record_missing_fields": (
        lambda b, tmp: read_episode_file(_episode_file(tmp, {"method": "lora", "episode": 1})),
        SettingsMismatchError,
        ["line 3", "without accuracy", "delete that line"],
    ),
    "resumed_record_wrong_types": (
        lambda b, tmp: read_episode_file(
            _episode_file(tmp, {"method": "lora", "episode": "one", "accuracy": "high"})
        ),
        SettingsMismatchError,
        ["line 3", "episode='one'", "accuracy='high'", "delete that line"],
    ),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_error_names_the_fix(case, vit, tmp_path):
    call, error_type, fragments = API_CASES[case]
    with pytest.raises(error_type) as info:
        call(vit, tmp_path)
    assert isinstance(info.value, FocusVitError)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda x: x.double(), id="float64"),
        pytest.param(lambda x: x.half(), id="float16"),
        pytest.param(lambda x: x.numpy(), id="numpy_batch"),
        pytest.param(lambda x: x[0].numpy(), id="numpy_chw"),
        pytest.param(lambda x: x.double().numpy(), id="numpy_float64"),
    ],
)
def test_explain_converts_other_float_inputs(convert, vit):
    """Policy: floating input of another precision, and float numpy arrays laid out as tensors
    ((B, 3, H, W) / (3, H, W)), are cast to the model's dtype and explained as that tensor."""
    batch = torch.randn(1, 3, *_size(vit)).half().float()  # exact in float16 too
    expected = focusvit.explain(vit, batch, method="attention")
    got = focusvit.explain(vit, convert(batch), method="attention")
    assert got.scores.dtype == expected.scores.dtype
    torch.testing.assert_close(got.scores, expected.scores)
