"""The attention-enhancement loss as one package, ``focusvit.finetune.attention_loss`` (Wang,
Jie, Deng, "Focus Your Attention when Few-Shot Classification", NeurIPS 2023;
``docs/concepts/loss.md``): one objective per backbone family in a registry, every refusal in
one place with one error type, one prompt-size check, and the prompt source as a setting."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import LIBRARY_FOLDERS, tiny_adapter

import focusvit
from focusvit.data import TensorDataset
from focusvit.errors import ConfigError, UnsupportedMethodError
from focusvit.finetune import RECIPES, evaluate, fit_task, make_runner, parse_method
from focusvit.finetune import attention_loss as al
from focusvit.finetune.attention_loss import (
    OBJECTIVES,
    AttentionLossUnsupportedError,
    ColumnarObjective,
    FortConfig,
    SwinObjective,
    check_prompt_size,
    compute_loss,
    fort_settings,
    loss_capture,
    loss_layers,
    objective_for,
    prompt_targets,
    refuse_fort,
    resolve_fort,
)
from focusvit.prompting import last_block_of_each_stage, prompt_count, swin_window_prompts
from focusvit.runconfig import PromptSpec
from focusvit.runs import EpisodeSpec, to_plain

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "finetune" / "attention_loss"


def support(backbone, n: int = 3, seed: int = 0):
    h, w = backbone.data_config["input_size"][1:]
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=generator)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):  # one rectangle per image, at another place each time
        top, left = 2 + 3 * i, 1 + 5 * i
        masks[i, top : top + h // 3, left : left + w // 2] = True
    return images, torch.arange(n), masks


# ----------------------------------------------------------------------------- registry
def test_one_objective_per_family_gives_layers_capture_targets_and_loss():
    assert set(OBJECTIVES) == {"vit", "swin"}
    assert isinstance(OBJECTIVES["vit"], ColumnarObjective)
    assert isinstance(OBJECTIVES["swin"], SwinObjective)
    for name, kind in (("timm-vit", ColumnarObjective), ("timm-swin", SwinObjective)):
        backbone = tiny_adapter(name)
        assert type(objective_for(backbone)) is kind
        images, labels, _ = support(backbone)
        fort = resolve_fort(backbone, "lora", FortConfig(alpha=1.0, tau=1.0, top_k=2))
        layers = loss_layers(backbone, fort)
        if name == "timm-vit":
            assert layers == [backbone.num_layers - 1]
        else:
            assert layers == last_block_of_each_stage(backbone)
        targets = prompt_targets(backbone, images, labels, fort)
        with loss_capture(backbone, fort, layers) as record:
            backbone.logits(images)
        loss = compute_loss(backbone, fort, record, targets)
        assert loss.ndim == 0 and torch.isfinite(loss)


def test_a_registered_objective_serves_its_family():
    class Probe(ColumnarObjective):
        family = "probe-family"

    try:
        al.register_objective(Probe())
        refuse_fort(tuner="lora", family="probe-family")  # no refusal: it has an objective
    finally:
        OBJECTIVES.pop("probe-family", None)
    with pytest.raises(AttentionLossUnsupportedError):
        refuse_fort(tuner="lora", family="probe-family")


# ----------------------------------------------------------------------------- refusals
def test_the_error_type_is_both_a_config_and_an_unsupported_method_error():
    assert issubclass(AttentionLossUnsupportedError, ConfigError)
    assert issubclass(AttentionLossUnsupportedError, UnsupportedMethodError)


def test_a_solver_is_refused_once_with_one_type():
    with pytest.raises(AttentionLossUnsupportedError, match="drop fort"):
        refuse_fort(solver="ridge")
    with pytest.raises(AttentionLossUnsupportedError, match="solver 'ridge'"):
        parse_method("ridge+fort")
    with pytest.raises(AttentionLossUnsupportedError, match="solver 'ridge'"):
        make_runner(tiny_adapter("timm-vit"), solver="ridge", fort=True)


def test_the_linear_probe_is_refused_once_with_one_type():
    backbone = tiny_adapter("timm-vit")
    images, labels, _ = support(backbone)
    calls = [
        lambda: parse_method("linear+fort"),
        lambda: make_runner(backbone, tuner="linear", fort=True),
        lambda: resolve_fort(backbone, "linear", FortConfig()),
    ]
    messages = set()
    for call in calls:
        with pytest.raises(AttentionLossUnsupportedError, match="frozen features") as error:
            call()
        messages.add(str(error.value))
    with (
        pytest.raises(AttentionLossUnsupportedError, match="frozen features"),
        fit_task(backbone, images, labels, tuner="linear", fort=FortConfig(alpha=0.5)),
    ):
        pass
    assert len(messages) == 1, messages  # the same refusal, not three copies


def test_a_model_without_attention_is_refused_once_with_one_type():
    cnn = tiny_adapter("timm-cnn")
    images, labels, _ = support(cnn)
    with pytest.raises(AttentionLossUnsupportedError, match="needs a transformer"):
        objective_for(cnn)
    with pytest.raises(AttentionLossUnsupportedError, match="needs a transformer"):
        make_runner(cnn, tuner="full", fort=True)
    with (
        pytest.raises(AttentionLossUnsupportedError, match="needs a transformer"),
        fit_task(cnn, images, labels, tuner="full", fort=FortConfig(alpha=0.5)),
    ):
        pass


def test_a_recipe_without_alpha_and_layers_out_of_range_are_refused():
    backbone = tiny_adapter("timm-vit")
    with pytest.raises(AttentionLossUnsupportedError, match=r"FortConfig\(alpha="):
        resolve_fort(backbone, "vpt", FortConfig())
    assert resolve_fort(backbone, "vpt", FortConfig(alpha=0.1)).alpha == 0.1
    with pytest.raises(ConfigError, match="does not have") as error:
        resolve_fort(backbone, "lora", FortConfig(layers=[backbone.num_layers]))
    assert not isinstance(error.value, AttentionLossUnsupportedError)


# ----------------------------------------------------------------------------- prompt size
BAD_SIZES = [
    {"top_k": 0},
    {"top_k": 2.5},
    {"top_k": True},
    {"top_fraction": 0.0},
    {"top_fraction": 1.5},
    {"top_fraction": True},
]


@pytest.mark.parametrize("size", BAD_SIZES, ids=str)
def test_one_prompt_size_check_for_fort_config_prompts_and_the_cli(size):
    top_k, top_fraction = size.get("top_k"), size.get("top_fraction")
    with pytest.raises(ConfigError) as direct:
        check_prompt_size(top_k, top_fraction)
    with pytest.raises(ConfigError) as fort:
        FortConfig(**size)
    with pytest.raises(ConfigError) as count:
        prompt_count(196, **size)
    with pytest.raises(ConfigError) as spec:
        PromptSpec(**{"top_k": None, **size})
    assert str(fort.value) == str(direct.value) == str(count.value)
    assert str(spec.value) == str(direct.value).replace("top_", "prompting.top_")


def test_both_sizes_and_a_size_larger_than_the_model_are_refused_by_the_same_check():
    with pytest.raises(ConfigError, match="not both"):
        FortConfig(top_k=3, top_fraction=0.1)
    with pytest.raises(ConfigError, match="not both"):
        prompt_count(196, 3, 0.1)
    vit = tiny_adapter("timm-vit")
    size = tuple(vit.data_config["input_size"][1:])
    h, w = vit.grid_size(size)
    with pytest.raises(ConfigError, match=rf"fort\.top_k=999 is more than the {h * w} patches"):
        al.check_fits(vit, FortConfig(top_k=999), size)
    al.check_fits(vit, FortConfig(top_k=h * w), size)  # fits
    swin = tiny_adapter("timm-swin")
    size = tuple(swin.data_config["input_size"][1:])
    with pytest.raises(ConfigError, match=r"fort\.top_k=999 .* tokens of a window"):
        al.check_fits(swin, FortConfig(top_k=999), size)


def test_one_prompt_size_value_for_the_recipes_and_the_config():
    from focusvit.prompting.prompts import DEFAULT_TOP_K, VIT_TOP_FRACTION

    assert VIT_TOP_FRACTION == DEFAULT_TOP_K / 196 == 14 / 196
    vit_recipes = [r for (family, _), r in RECIPES.items() if family == "vit" and r.alpha]
    assert vit_recipes and all(r.top_fraction == VIT_TOP_FRACTION for r in vit_recipes)
    assert al.VIT_TOP_FRACTION is VIT_TOP_FRACTION


# ----------------------------------------------------------------------------- ground truth
def oracle_targets(masks: torch.Tensor, grid, fort: FortConfig) -> torch.Tensor:
    """The ground-truth prompts as ``benchmarks/fort_study.py`` made them before they were a
    setting: pool each mask to the grid, top-P by coverage, weights rescaled to sum to P."""
    count = grid[0] * grid[1]
    size = fort.top_k or max(1, round(fort.top_fraction * count))
    targets = torch.zeros(len(masks), count)
    for row, mask in enumerate(masks.float()):
        cover = F.adaptive_avg_pool2d(mask[None, None], grid).flatten()
        top = cover.topk(size).indices
        weights = cover[top].clamp_min(1e-6)
        targets[row, top] = weights / weights.sum() * size
    return targets


@pytest.mark.parametrize("size", [{"top_k": 3}, {"top_fraction": 14 / 196}], ids=str)
def test_ground_truth_prompts_are_the_top_patches_by_mask_coverage(size):
    backbone = tiny_adapter("timm-vit")
    images, labels, masks = support(backbone)
    fort = resolve_fort(backbone, "lora", FortConfig(prompts="ground_truth", **size))
    grid = backbone.grid_size(tuple(images.shape[-2:]))
    expected = oracle_targets(masks, grid, fort)
    assert torch.equal(prompt_targets(backbone, images, labels, fort, masks), expected)
    with fit_task(
        backbone, images, labels, tuner="lora", fort=fort, steps=1, support_masks=masks
    ) as task:
        assert torch.equal(task.prompt_targets, expected)
        assert task.losses[0]["attn"] > 0
    multi_hot = replace(fort, weighting="multi_hot")
    multi_hot = prompt_targets(backbone, images, labels, multi_hot, masks)
    assert torch.equal(multi_hot, (expected > 0).float())


def test_ground_truth_prompts_need_masks_of_the_support_images():
    backbone = tiny_adapter("timm-vit")
    images, labels, masks = support(backbone)
    fort = FortConfig(prompts="ground_truth", alpha=1.0, tau=1.0, top_k=3)
    with (
        pytest.raises(ConfigError, match="support_masks"),
        fit_task(backbone, images, labels, tuner="lora", fort=fort, steps=1),
    ):
        pass
    with pytest.raises(ConfigError, match=r"\(M, H, W\)"):
        prompt_targets(backbone, images, labels, fort, masks[:2])
    with pytest.raises(ConfigError, match="prompts must be one of"):
        FortConfig(prompts="oracle")
    data = TensorDataset(torch.randn(12, 3, *images.shape[-2:]), torch.arange(3).repeat(4))
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=1, episodes=1, seed=0)
    with pytest.raises(ConfigError, match="TensorDataset has none"):
        evaluate(backbone, data, tuner="lora", fort=fort, episodes=spec, progress=False, steps=1)


def test_swin_ground_truth_prompts_are_top_p_per_window():
    backbone = tiny_adapter("timm-swin")
    images, labels, masks = support(backbone)
    fort = resolve_fort(backbone, "lora", FortConfig(prompts="ground_truth", top_k=2))
    truth = prompt_targets(backbone, images, labels, fort, masks)
    explained = swin_window_prompts(backbone, images, top_k=2).targets
    assert [t.shape for t in truth] == [t.shape for t in explained]
    assert all(bool((t.sum(-1) <= 2).all()) for t in truth)
    assert any(not torch.equal(a, b) for a, b in zip(truth, explained, strict=True))


def test_the_prompt_source_is_recorded_in_the_settings(tmp_path):
    assert to_plain(FortConfig(prompts="ground_truth"))["prompts"] == "ground_truth"
    backbone = tiny_adapter("timm-vit")
    images, _, masks = support(backbone, n=12)
    data = TensorDataset(images, torch.arange(3).repeat(4), masks=masks)
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=1, episodes=2, seed=0)
    records = {}
    for prompts in ("explainer", "ground_truth"):
        fort = FortConfig(alpha=1.0, tau=1.0, top_k=3, prompts=prompts)
        out = tmp_path / f"{prompts}.jsonl"
        evaluate(backbone, data, tuner="lora", fort=fort, episodes=spec, progress=False,
                 steps=1, output=out)  # fmt: skip
        records[prompts] = json.loads(out.read_text().splitlines()[0])["settings"]
    fort_record = records["ground_truth"]["runner"]["fort"]
    assert fort_record["prompts"] == "ground_truth"
    assert "prompts" not in records["explainer"]["runner"]["fort"]
    # one file cannot hold both: resuming with the other prompt source is refused
    with pytest.raises(focusvit.errors.SettingsMismatchError, match="prompts"):
        evaluate(backbone, data, tuner="lora", fort=FortConfig(alpha=1.0, tau=1.0, top_k=3),
                 episodes=spec, progress=False, steps=1,
                 output=tmp_path / "ground_truth.jsonl")  # fmt: skip


def test_records_written_before_the_prompt_source_existed_still_match():
    """The explainer default is left out of the record, so the committed study records (written
    before ``prompts`` existed) hold the same ``fort`` settings as a run today."""
    path = ROOT / "benchmarks/results/fort_study/pretrained/premise/5w1s/lora/authors.jsonl"
    if not path.exists():
        pytest.skip("committed study records not present")
    stored = json.loads(path.read_text().splitlines()[0])["settings"]["runner"]["fort"]
    now = fort_settings(
        FortConfig(alpha=stored["alpha"], tau=stored["tau"], top_fraction=stored["top_fraction"])
    )
    assert now == stored


# ----------------------------------------------------------------------------- architecture
SCANNED = (*(folder for folder in LIBRARY_FOLDERS if folder != "backbones"), "benchmarks", "tests")

#: phrases of the refusals; only the package may raise them
REFUSALS = (
    "needs a transformer",
    "trains only the head on frozen features",
    "needs fine-tuning; solver",
    "has no attention-loss weight",
    "must be a whole number of patches",
)


def library_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        files += [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    return [p for p in files if PACKAGE not in p.parents and p.name != Path(__file__).name]


def _imports_from_package(node: ast.ImportFrom, path: Path) -> bool:
    module = node.module or ""
    if node.level == 0:
        return module.startswith("focusvit.finetune.attention_loss")
    package_dir = path.parent
    for _ in range(node.level - 1):
        package_dir = package_dir.parent
    return package_dir == ROOT / "finetune" and module.split(".")[0] == "attention_loss"


def test_no_module_outside_the_package_imports_its_private_names():
    offenders = []
    for path in library_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _imports_from_package(node, path):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or any(part.startswith("_") for part in (node.module or "").split(".")):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                value = node.value
                if isinstance(value, ast.Name) and value.id in ("attention_loss", "al"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def raised_texts(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of the string parts of every ``raise`` statement in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise):
            parts = [
                n.value
                for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
            found.append((node.lineno, "".join(parts)))
    return found


def test_the_refusals_and_the_size_check_live_only_in_their_one_place():
    found = []
    for path in library_files():
        if "tests" in path.relative_to(ROOT).parts or path == ROOT / "prompting" / "prompts.py":
            continue
        for line, text in raised_texts(path):
            found += [f"{path.relative_to(ROOT)}:{line}: {p!r}" for p in REFUSALS if p in text]
    assert not found, found
    size_checks = [t for _, t in raised_texts(ROOT / "prompting" / "prompts.py") if "top_k" in t]
    assert size_checks  # the one prompt-size check raises there
    assert not (ROOT / "finetune" / "losses.py").exists()
    for name in ("make_prompt_targets", "_attention_loss", "_loss_capture", "_loss_layers"):
        assert not hasattr(__import__("focusvit.finetune.trainer").finetune.trainer, name), name
