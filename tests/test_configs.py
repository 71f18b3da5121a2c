"""Every Hydra config under focusvit.configs composes and instantiates; bad values fail early."""

from __future__ import annotations

from importlib import resources

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from PIL import Image

import focusvit.runconfig as rc
from focusvit.cli import validate_explain, validate_fewshot
from focusvit.finetune import RECIPES, TUNERS, FitOptions, FortConfig, TunerConfig, resolve_fort
from focusvit.runs import BackboneSpec, EpisodeSpec

CONFIGS = resources.files("focusvit.configs")
#: groups composed by focusvit-explain; every other group of ours belongs to focusvit-fewshot
EXPLAIN_GROUPS = {"explainer", "prompting"}
#: groups owned by other entry points (composed and tested by their own tests)
OTHER_GROUPS = {"baseline", "pretrain_model"}
#: data groups that read a local copy or the hub (data.path / data.root required)
DATA_WITH_ROOT = {
    "hf", "cub", "mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100", "cars", "places",
    "plantae", "aircraft", "pets",
}  # fmt: skip


def _options() -> list[tuple[str, str]]:
    found = []
    for group in sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()):
        if group.startswith("_"):
            continue
        for item in sorted(CONFIGS.joinpath(group).iterdir()):
            if item.name.endswith(".yaml"):
                found.append((group, item.name[: -len(".yaml")]))
    # the tuner options are the library's tuner dataclasses, registered in Hydra's ConfigStore
    found += [("tuner", name) for name in TUNERS]
    return found


OPTIONS = _options()


def _compose(primary: str, overrides: list[str]):
    with initialize_config_module(rc.CONFIG_MODULE, version_base="1.3"):
        return compose(primary, overrides=overrides)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(3):
            Image.new("RGB", (40, 40), (80 * c, 20 * i, 90)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cub_tree(tmp_path_factory):
    """A miniature CUB_200_2011/images tree (3 of the official class folders), for data=cub."""
    from focusvit.data import standard_splits

    root = tmp_path_factory.mktemp("cub")
    for c, name in enumerate(standard_splits("cub")["all"][:3]):
        (root / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (80 * c, 20 * i, 90)).save(
                root / "images" / name / f"{i}.png"
            )
    return root


def test_the_tree_has_every_group_of_the_issue():
    groups = {g for g, _ in OPTIONS}
    assert {"backbone", "explainer", "prompting", "tuner", "fort", "data", "episodes"} <= groups
    assert {"trainer", "experiment"} <= groups
    names = {f"{g}/{o}" for g, o in OPTIONS}
    for required in (
        "tuner/linear",
        "tuner/full",
        "tuner/lora",
        "tuner/vpt",
        "tuner/ssf",
        "fort/recipe",
        "data/synthetic",
        "data/imagefolder",
        "episodes/5w1s",
        "episodes/5w5s",
        "episodes/20w1s",
    ):
        assert required in names
    hub = {o for g, o in OPTIONS if g == "backbone" and o.startswith(("timm_", "hf_"))}
    for family in ("dino_vitb16", "dinov2_s", "deit_s", "swin_t"):
        assert any(family in o and o.startswith("timm_") for o in hub), family
        assert any(family in o and o.startswith("hf_") for o in hub), family


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
@pytest.mark.filterwarnings("ignore:.* of the 200 all classes of cub:UserWarning")
def test_every_config_composes_and_instantiates(group, option, image_folder, cub_tree):
    if group in OTHER_GROUPS:
        pytest.skip(f"configs/{group}/ belongs to another entry point and is tested there")
    if group in EXPLAIN_GROUPS:
        value = f"[{option}]" if group == "explainer" else option
        cfg = _compose("explain", [f"{group}={value}", "inputs=samples"])
        plan = validate_explain(cfg)
        if group == "explainer":
            (explainer,) = plan.explainers.values()
            assert explainer.name == option
        else:
            assert isinstance(plan.prompts, rc.PromptSpec)
        return
    if group == "data" and option in DATA_WITH_ROOT:
        pytest.skip("needs a local copy; composed and built in tests/test_dataset_sources.py")
    overrides = [f"{group}={option}"]
    if (group == "data" and option == "imagefolder") or (group, option) == (
        "experiment",
        "fort_official",
    ):
        overrides.append(f"data.path={image_folder}")
    if (group, option) == ("experiment", "fort_paper"):  # data=cub, every class
        overrides.append(f"data.root={cub_tree}")
    cfg = _compose("fewshot", overrides)
    built = {
        name: rc.build(cfg, name) for name in ("backbone", "episodes", "tuner", "fort", "trainer")
    }
    assert isinstance(built["backbone"], BackboneSpec)
    assert isinstance(built["episodes"], EpisodeSpec)
    assert isinstance(built["tuner"], TunerConfig)
    if (group, option) in (("experiment", "vpt"), ("experiment", "linear"), ("fort", "off")):
        assert built["fort"] is None  # no attention loss, as in the official code
    else:
        assert isinstance(built["fort"], FortConfig)
    assert isinstance(built["trainer"], FitOptions)
    data = rc.instantiate(cfg.data, "data")
    assert len(data.labels) > 0 and data.class_names
    if group == "backbone" and option.startswith("tiny_"):
        backbone = built["backbone"].load()
        assert backbone.family in ("vit", "swin", "cnn")


EXPERIMENT_RECIPES = {
    "vit_full": ("vit", "full"),
    "vit_ssf": ("vit", "ssf"),
    "vit_lora": ("vit", "lora"),
    "swin_full": ("swin", "full"),
    "swin_ssf": ("swin", "ssf"),
    "swin_lora": ("swin", "lora"),
    "vpt": ("vit", "vpt"),
    "linear": ("vit", "linear"),
}


@pytest.mark.parametrize("experiment", sorted(EXPERIMENT_RECIPES))
def test_experiments_reproduce_the_design_recipes(experiment):
    """What an experiment trains with, once resolved against a backbone of its family, is the
    recipe of docs/recipes.md (the experiments set no value of their own)."""
    from types import SimpleNamespace

    family, tuner = EXPERIMENT_RECIPES[experiment]
    recipe = RECIPES[(family, tuner)]
    cfg = _compose("fewshot", [f"experiment={experiment}"])
    assert rc.build(cfg, "tuner").name == tuner
    options = rc.build(cfg, "trainer")
    assert recipe.override(**options.recipe_overrides()) == recipe
    fort = rc.build(cfg, "fort")
    if recipe.alpha > 0:
        resolved = resolve_fort(SimpleNamespace(family=family, name=experiment), tuner, fort)
        assert (resolved.alpha, resolved.tau) == (recipe.alpha, recipe.tau)
        assert (resolved.top_k, resolved.top_fraction) == (recipe.top_k, recipe.top_fraction)
    else:
        assert fort is None
    if family == "swin":
        assert "swin" in cfg.backbone.spec


def test_primary_defaults_validate():
    plan = validate_fewshot(_compose("fewshot", []))
    assert plan.methods == ["lora", "lora+fort"]
    assert plan.backbone.spec == "offline:dinov2-s14-imgfocus"
    assert plan.backbone.num_classes == 0
    quick = validate_fewshot(_compose("fewshot", ["experiment=quickstart"]))
    assert quick.methods == ["lora", "lora+fort"] and quick.episodes.episodes <= 5
    off = validate_fewshot(_compose("fewshot", ["fort=off"]))
    assert off.methods == ["lora"]
    explain = validate_explain(_compose("explain", ["inputs=samples"]))
    assert list(explain.explainers) == ["rollout_svd", "rollout", "attention", "gradcam", "cam"]


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as info:
        _compose("fewshot", ["backbone=vit_huge_nonexistent"])
    message = str(info.value)
    assert "Available options in 'backbone'" in message
    assert "offline_dinov2_s14" in message and "tiny_timm_vit" in message
    with pytest.raises(MissingConfigException, match="lora"):
        _compose("fewshot", ["tuner=lorra"])


@pytest.mark.parametrize(
    "override",
    ["episodes.n_way=five", "trainer.steps=many", "fort.alpha=strong", "backbone.image_size=big"],
)
def test_wrong_type_fails_while_composing(override):
    with pytest.raises(ConfigCompositionException):
        _compose("fewshot", [override])


def test_unknown_key_fails_while_composing():
    with pytest.raises(ConfigCompositionException, match="nway"):
        _compose("fewshot", ["episodes.nway=3"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["methods=[prototype,lora_fort]"], "unknown method"),
        (["methods=[lora+fort]", "fort=off"], "fort is off"),
        (["methods=[ridge+fort]"], "drop fort"),
        (["tuner=linear"], "fort=off"),
        (["fort.alpha=-1"], "alpha must be >= 0"),
        (["trainer.head_init=svm_magic"], "head_init"),
        (["episodes.k_shot=0"], "k_shot"),
        (["episodes.n_way=500"], "class"),
        (["data=imagefolder", "data.path=/nonexistent/cub"], "not a directory"),
        # the family told from the spec alone (a hub model here would be refused before the
        # download: this machine has no hub access)
        (["backbone=tiny_timm_cnn", "tuner=lora", "fort=off"], "does not apply to cnn"),
        (["backbone=tiny_timm_swin", "tuner=vpt", "fort=off"], "does not apply to swin"),
        (["backbone.spec=timm:resnet50", "tuner=ssf", "fort=off"], "tuner=full or tuner=linear"),
        (["backbone.spec=timm:resnet50", "tuner=full"], "needs a transformer"),
    ],
)
def test_bad_values_fail_before_the_model_loads(overrides, match):
    from focusvit.backbones import FocusVitError

    cfg = _compose("fewshot", overrides)
    with pytest.raises((rc.ConfigError, FocusVitError, ValueError), match=match):
        validate_fewshot(cfg)


def test_explain_needs_inputs_and_valid_explainers():
    with pytest.raises(rc.ConfigError, match="inputs is required"):
        validate_explain(_compose("explain", []))
    with pytest.raises(rc.ConfigError, match="does not exist"):
        validate_explain(_compose("explain", ["inputs=/nonexistent/photos"]))
    with pytest.raises(rc.ConfigError, match="options are"):
        validate_explain(_compose("explain", ["inputs=samples", "+explainer.gradcam.sharpness=2"]))


# ----------------------------------------------------------------------------- one default each
# Issue 30: a YAML file holds only what differs from the dataclass it feeds; the defaults live
# in the dataclasses (the Hydra schema), never restated. Each file is checked against the
# defaults of its node: the primary configs against their schema, a group option against the
# dataclass of its group, a `@package _global_` option against the schema of its command.


def _defaults_of(schema) -> dict:
    """The defaults of a dataclass (or a dataclass instance) as plain values ('???': unset)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)


def _command_defaults(command: str) -> dict:
    """The defaults of a command's schema, with each group node replaced by its dataclass."""
    from focusvit.pretraining_cli import PretrainConf

    if command == "pretrain":
        return _defaults_of(PretrainConf)
    schema = rc.ExplainConf if command == "explain" else rc.FewshotConf
    defaults = _defaults_of(schema)
    groups = {"backbone": BackboneSpec, "episodes": EpisodeSpec, "prompting": rc.PromptSpec}
    groups |= {"fort": FortConfig, "trainer": FitOptions}
    for key, cls in groups.items():
        if key in defaults:
            defaults[key] = _defaults_of(cls)
    return defaults


def _baseline_defaults(node: dict) -> dict:
    from focusvit.baselines.config import baseline_schema

    names = [d for d in node.get("defaults", []) if isinstance(d, str) and "schema" in d]
    assert names, "a baseline YAML names its schema: defaults: [/baseline_<method>_schema, _self_]"
    method = names[0].strip("/").removeprefix("baseline_").removesuffix("_schema")
    return _defaults_of(baseline_schema(method))


#: group -> the defaults its options are checked against
GROUP_DEFAULTS = {
    "backbone": lambda node: _defaults_of(BackboneSpec),
    "episodes": lambda node: _defaults_of(EpisodeSpec),
    "prompting": lambda node: _defaults_of(rc.PromptSpec),
    "trainer": lambda node: _defaults_of(FitOptions),
    "fort": lambda node: _defaults_of(FortConfig),
    "experiment": lambda node: _command_defaults("fewshot"),  # @package _global_
    "pretrain_model": lambda node: _command_defaults("pretrain"),  # @package _global_
    "baseline": _baseline_defaults,  # @package _global_, on the schema it names
}
#: groups of `_target_` nodes: no dataclass schema, their keys are the command-line surface
#: (Hydra needs a key in the file to override it without `+`), so they are not checked
TARGET_GROUPS = {"data", "explainer"}
#: values that equal a schema default on purpose, with the reason
KEPT = {
    ("fort/off.yaml", "fort"): "replaces the FortConfig that fort=recipe composes by null",
}


def restated_defaults(node: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Dotted keys of ``node`` whose value equals the default (nested dataclasses recursed)."""
    found = []
    for key, value in node.items():
        if key in ("defaults", "hydra") and not prefix:
            continue
        if key not in defaults:
            continue
        default = defaults[key]
        if isinstance(value, dict) and isinstance(default, dict) and value and default:
            found += restated_defaults(value, default, f"{prefix}{key}.")
        elif value == default:
            found.append(f"{prefix}{key}")
    return found


def _yaml_files() -> list[str]:
    names = [p.name for p in CONFIGS.iterdir() if p.name.endswith(".yaml")]
    for group in sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()):
        if group.startswith("_"):
            continue
        folder = CONFIGS.joinpath(group)
        names += [f"{group}/{p.name}" for p in folder.iterdir() if p.name.endswith(".yaml")]
    return sorted(names)


@pytest.mark.parametrize("name", _yaml_files())
def test_yaml_holds_only_what_differs_from_the_dataclass_defaults(name):
    import yaml

    node = yaml.safe_load(CONFIGS.joinpath(name).read_text()) or {}
    group, _, _ = name.rpartition("/")
    if group in TARGET_GROUPS:
        assert "_target_" in node, f"{name}: an option of {group} instantiates a _target_"
        return
    if not group:
        defaults = _command_defaults(name.removesuffix(".yaml"))
    else:
        assert group in GROUP_DEFAULTS, f"{name}: say which dataclass the {group} group feeds"
        defaults = GROUP_DEFAULTS[group](node)
    restated = [k for k in restated_defaults(node, defaults) if (name, k) not in KEPT]
    assert not restated, (
        f"{name} restates the dataclass default of {', '.join(restated)}; delete those keys (the "
        "default lives in the dataclass, the Hydra schema)"
    )


def test_the_restated_default_check_sees_a_restated_value():
    defaults = _defaults_of(EpisodeSpec)
    assert restated_defaults({"n_way": 5, "episodes": 600}, defaults) == ["n_way"]
    pretrain = _command_defaults("pretrain")
    node = {"defaults": ["pretrain_schema"], "lr": 1.0e-3, "model_kwargs": {}, "epochs": 3}
    assert restated_defaults(node, pretrain) == ["lr", "model_kwargs"]
    fewshot = _command_defaults("fewshot")
    node = {"backbone": {"num_classes": 0, "resize": None}, "report": {"dpi": 100}}
    assert restated_defaults(node, fewshot) == ["backbone.resize", "report.dpi"]


def test_the_baseline_configs_read_through_the_config_store():
    from focusvit.baselines import CANConfig, CTXConfig, TrainConfig, load_config

    assert load_config("can") == ("can", CANConfig(), TrainConfig())
    assert load_config(CONFIGS.joinpath("baseline/ctx.yaml")) == ("ctx", CTXConfig(), TrainConfig())
    method, model, train = load_config("ctx", ["model.key_dim=64", "train.episodes=7"])
    assert (method, model, train) == ("ctx", CTXConfig(key_dim=64), TrainConfig(episodes=7))
    with pytest.raises(rc.ConfigError, match="temprature"):
        load_config("can", ["model.temprature=1"])
    with pytest.raises(rc.ConfigError, match="positive integer"):
        load_config("can", ["train.episodes=0"])


def test_backbone_spec_carries_every_load_backbone_argument():
    import dataclasses
    import inspect

    from focusvit.backbones import load_backbone

    parameters = inspect.signature(load_backbone).parameters
    fields = {f.name: f for f in BackboneSpec.__dataclass_fields__.values()}
    for name, parameter in parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            assert fields["model_kwargs"].default_factory() == {}
            continue
        assert name in fields, f"BackboneSpec lacks load_backbone's {name}"
        default = fields[name].default
        expected = parameter.default
        if expected is inspect.Parameter.empty:  # required (spec)
            assert default is dataclasses.MISSING, name
        else:
            assert default == expected, name
    cfg = _compose(
        "fewshot",
        ["backbone=tiny_timm_vit", "backbone.resize=letterbox", "backbone.image_size=48"],
    )
    spec = rc.build(cfg, "backbone")
    assert (spec.resize, spec.image_size, spec.pretrained) == ("letterbox", 48, True)
    adapter = spec.load()
    assert adapter.data_config["resize"] == "letterbox"
    assert tuple(adapter.data_config["input_size"][1:]) == (48, 48)
    wide = BackboneSpec("tiny:timm-vit", image_size=(32, 48)).load()  # (H, W) from Python
    assert tuple(wide.data_config["input_size"][1:]) == (32, 48)
    with pytest.raises(rc.ConfigError, match="resize"):
        rc.build(_compose("fewshot", ["backbone.resize=pad"]), "backbone")
