"""The tuner registry (docs/concepts/tuners.md): each tuner is one module of
``focusvit.finetune.tuners`` holding its config, its injection and its batched variant,
registered once with capability flags; code outside that package asks the flags, never the
tuner's name.

The architecture check reads the source with :mod:`ast` (nothing is imported): a comparison
(``==``, ``!=``, ``in``, ``not in``, ``match`` cases) with a registered tuner's name as a string
literal anywhere in ``finetune/`` outside ``finetune/tuners/`` fails, naming file and line.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import focusvit
from focusvit import finetune
from focusvit.errors import ConfigError, FocusVitError, UnsupportedMethodError
from focusvit.finetune import batched, tuners
from focusvit.finetune.tuners import (
    TUNERS,
    TunedModel,
    TunerConfig,
    TunerSpec,
    make_tuner,
    register,
    tuner_spec,
    tuner_specs,
)

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "finetune"
TUNER_PACKAGE = FINETUNE / "tuners"
NAMES = ("linear", "full", "lora", "vpt", "ssf")
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


# ----------------------------------------------------------------------------- architecture
def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    """Tuner names among the string literals of ``node`` (a constant or a literal collection)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [name for element in node.elts for name in _names_in(element, names)]
    return []


def tuner_name_comparisons(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of every comparison with a tuner name literal in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, COMPARISONS) for op in node.ops):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, name) for name in _names_in(operand, names)]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, name) for name in _names_in(node.value, names)]
    return sorted(set(found))


def outside_files() -> list[Path]:
    """The Python files of ``finetune/`` outside the tuner package."""
    return sorted(
        p
        for p in FINETUNE.rglob("*.py")
        if "__pycache__" not in p.parts and TUNER_PACKAGE not in p.parents
    )


def test_no_branch_on_a_tuner_name_outside_the_tuner_modules():
    assert outside_files() and FINETUNE / "trainer.py" in outside_files()
    found = {
        path.relative_to(ROOT).as_posix(): hits
        for path in outside_files()
        if (hits := tuner_name_comparisons(path, set(TUNERS)))
    }
    report = "\n".join(
        f"  {path}:{line}: compares with the tuner name {name!r}"
        for path, hits in found.items()
        for line, name in hits
    )
    assert not found, (
        "code outside finetune/tuners/ branches on a tuner's name; ask a capability flag of "
        f"tuner_spec(tuner) (or add one in the tuner's module) instead:\n{report}"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("if tuner == 'lora':\n    pass\n", [(1, "lora")]),
        ("ok = 'ssf' != name\n", [(1, "ssf")]),
        ("ok = name in ('linear', 'full', 'other')\n", [(1, "full"), (1, "linear")]),
        ("ok = name not in {'vpt'}\n", [(1, "vpt")]),
        ("match name:\n    case 'lora':\n        pass\n", [(2, "lora")]),
        ("x = 'lora'\ny = {'lora': 1}\nz = f(tuner='lora')\n", []),
        ("ok = kind == 'fold' or n < 'lora'\n", []),
    ],
)  # fmt: skip
def test_the_scan_finds_every_comparison_form(tmp_path, source, expected):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert tuner_name_comparisons(path, set(NAMES)) == expected


def test_the_tuner_package_imports_nothing_else_of_finetune():
    """No import circle: the tuner modules import only each other (and the rest of focusvit
    outside ``focusvit.finetune``)."""
    found = []
    for path in sorted(TUNER_PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level > 1
                or (node.level == 0 and (node.module or "").startswith("focusvit.finetune"))
            ):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, f"tuner modules import other finetune modules: {found}"


def test_one_module_per_tuner_registers_it_once():
    modules = {}
    for path in sorted(TUNER_PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register"
        ]
        if calls:
            modules[path.stem] = len(calls)
    assert modules == dict.fromkeys(NAMES, 1)
    for spec in tuner_specs():
        assert spec.tuned.__module__ == spec.config.__module__ == f"{tuners.__name__}.{spec.name}"


def test_the_old_tuner_modules_are_gone():
    for old in ("lora", "ssf", "vpt"):
        assert importlib.util.find_spec(f"focusvit.finetune.{old}") is None
    assert not (FINETUNE / "tuners.py").exists()


# ----------------------------------------------------------------------------- registry
def test_each_tuner_is_registered_once_in_order():
    specs = tuner_specs()
    assert tuple(s.name for s in specs) == NAMES == tuple(TUNERS)
    assert len({s.config for s in specs}) == len({s.tuned for s in specs}) == len(NAMES)
    for spec in specs:
        assert TUNERS[spec.name] is spec.config and spec.tuned.config_class is spec.config
        assert tuner_spec(spec.name) is spec is tuner_spec(spec.config())


def test_registering_a_name_again_is_refused_and_changes_nothing():
    lora = tuner_spec("lora")
    with pytest.raises(ConfigError, match="'lora' is already registered"):
        register(TunerSpec(lora.config, lora.tuned, label="LoRA again"))
    assert tuner_spec("lora") is lora and tuple(TUNERS) == NAMES


def test_a_spec_must_pair_its_config_with_its_injection():
    class OtherConfig(TunerConfig):
        name = "other"

    with pytest.raises(ConfigError, match="config_class must be OtherConfig"):
        register(TunerSpec(OtherConfig, TunedModel, label="other"))
    assert "other" not in TUNERS


def test_capability_flags():
    flags = {
        s.name: (s.trains_backbone, s.supports_attention_loss, s.needs_peft, s.merge)
        for s in tuner_specs()
    }
    assert flags == {
        "linear": (False, False, False, "noop"),
        "full": (True, True, False, "noop"),
        "lora": (True, True, True, "fold"),
        "vpt": (True, True, False, "unsupported"),
        "ssf": (True, True, False, "unsupported"),
    }
    assert {s.name: s.random_options for s in tuner_specs() if s.random_options} == {
        "lora": ("dropout",),
        "vpt": ("dropout",),
    }
    for spec in tuner_specs():  # every random option is a field of the config
        assert all(hasattr(spec.config(), option) for option in spec.random_options)
    assert batched.BATCHED_TUNERS == ("lora", "ssf")
    assert [s.name for s in tuner_specs() if s.batched is not None] == ["lora", "ssf"]


@pytest.mark.parametrize("lookup", [tuner_spec, make_tuner])
def test_an_unknown_tuner_names_the_known_ones(lookup):
    with pytest.raises(UnsupportedMethodError, match=r"available: linear, full, lora, vpt, ssf$"):
        lookup("adapter")


def test_bad_options_name_the_tuner_and_are_focusvit_errors():
    with pytest.raises(TypeError, match="bad options for tuner 'ssf'") as error:
        make_tuner("ssf", rank=4)
    assert isinstance(error.value, FocusVitError)


def test_public_names_are_the_package_objects():
    for name in ("TunerConfig", "LinearConfig", "FullConfig", "LoraConfig", "SSFConfig"):
        assert getattr(finetune, name) is getattr(tuners, name)
    for name in ("LoraConfig", "VPTConfig", "applicable_tuners", "apply_tuner"):
        assert getattr(focusvit, name) is getattr(tuners, name)
    assert finetune.make_tuner is tuners.make_tuner and finetune.TUNERS is tuners.TUNERS
    assert batched.BatchingUnsupportedError is tuners.BatchingUnsupportedError
    assert finetune.BatchingUnsupportedError is tuners.BatchingUnsupportedError
