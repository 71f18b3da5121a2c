"""Every deliberate error of the library is a :class:`focusvit.errors.FocusVitError` (issue 30).

The scan reads the source with :mod:`ast` (nothing is imported): library code raises no bare
``ValueError`` / ``TypeError`` / ``RuntimeError`` / ``KeyError`` / ``IndexError``; a user's
mistake raises the fitting ``focusvit.errors`` subclass (each also subclasses the builtin, so an
``except ValueError`` around it keeps working), and the CLIs print every one of them as one
``focusvit-<cmd>: error: ...`` line. The only bare raises left are internal invariants, listed
in :data:`ALLOWED` with the reason each cannot be a user's mistake.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
from conftest import LIBRARY_FOLDERS

from focusvit import errors

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = LIBRARY_FOLDERS
BUILTINS = ("ValueError", "TypeError", "RuntimeError", "KeyError", "IndexError")

#: ``(builtin, fragment of the raise statement) -> where, and why it is no user's mistake``
#: (matched anywhere in the library, so a module that moves keeps its entry)
ALLOWED = {
    ("RuntimeError", "shifted-window mask"): (
        "backbones/capture.py, internal invariant: the Swin shift mask is built by the adapter "
        "for the logits of the same block; a mismatch is a bug of the family adapter"
    ),
    ("RuntimeError", "does not match its window geometry"): (
        "prompting/swin.py, internal invariant: the window geometry and the captured logits "
        "come from the same adapter and block"
    ),
    ("RuntimeError", "SSF at {name} expected {channels} channels"): (
        "the batched SSF hook, internal invariant: it is sized from the module it is attached to"
    ),
    ("RuntimeError", "SSF expected {c} channels"): (
        "ScaleShift, internal invariant: it is sized from the channel count of its own module"
    ),
}


def bare_raises(path: Path) -> list[tuple[int, str, str]]:
    """``(line, builtin, source of the raise)`` of every ``raise X(...)`` / ``raise X`` of a
    builtin error type in a file."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        name = getattr(target, "id", None)
        if name in BUILTINS:
            found.append((node.lineno, name, ast.get_source_segment(source, node) or ""))
    return sorted(found)


def library_files() -> list[Path]:
    return sorted(
        path
        for folder in LIBRARY
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def _allowed(name: str, text: str) -> bool:
    return any(name == builtin and fragment in text for builtin, fragment in ALLOWED)


def test_library_code_raises_focusvit_errors():
    found = [
        f"  {path.relative_to(ROOT).as_posix()}:{line}: raise {name}(...)"
        for path in library_files()
        for line, name, text in bare_raises(path)
        if not _allowed(name, text)
    ]
    assert not found, (
        "a deliberate error must be a focusvit.errors.FocusVitError subclass (ConfigError, "
        "ArgumentError, UsageError, LayerIndexError, ...) whose message says what was wrong and "
        "how to fix it; an internal invariant goes into ALLOWED with its reason:\n"
        + "\n".join(found)
    )


def test_every_allowed_raise_still_exists():
    """A stale entry would let a new bare raise of the same text slip through."""
    raises = [(name, text) for path in library_files() for _, name, text in bare_raises(path)]
    for (builtin, fragment), reason in ALLOWED.items():
        hits = [text for name, text in raises if name == builtin and fragment in text]
        assert len(hits) == 1, (builtin, fragment, reason, hits)


def test_the_scan_covers_the_library():
    files = {p.relative_to(ROOT).as_posix() for p in library_files()}
    for folder in LIBRARY:
        assert any(f.startswith(f"{folder}/") for f in files), folder


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise ValueError('bad')\n", [(1, "ValueError")]),
        ("def f():\n    raise TypeError\n", [(2, "TypeError")]),
        ("try:\n    pass\nexcept OSError as e:\n    raise KeyError('k') from e\n", [(4, "KeyError")]),
        ("if x:\n    raise RuntimeError(\n        'x'\n    )\n", [(2, "RuntimeError")]),
        ("raise IndexError(f'{i} out of range')\n", [(1, "IndexError")]),
        ("raise ConfigError('bad')\nraise\nraise errors.ValueError('x')\n", []),
        ("x = 'raise ValueError()'\nassert isinstance(e, ValueError)\n", []),
    ],
)  # fmt: skip
def test_the_scan_finds_every_raise_form(tmp_path, source, expected):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert [(line, name) for line, name, _ in bare_raises(path)] == expected


# ----------------------------------------------------------------------------- the error types
ERROR_TYPES = sorted(
    (
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls) and issubclass(cls, errors.FocusVitError)
        and cls is not errors.FocusVitError
    ),
    key=lambda cls: cls.__name__,
)  # fmt: skip


def test_every_error_type_is_also_a_builtin_error():
    """``except ValueError`` (``TypeError``, ...) written before a conversion still catches."""
    for cls in ERROR_TYPES:
        builtin = [base for base in cls.__mro__ if base.__module__ == "builtins"]
        assert builtin[0] is not Exception, f"{cls.__name__} subclasses no specific builtin"
        assert cls.__doc__, f"{cls.__name__} needs a docstring saying when it is raised"


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda cls: cls.__name__)
def test_the_cli_prints_every_error_type_as_one_line(cls, monkeypatch, capsys):
    from focusvit.cli import _guard

    def fail():
        raise cls("what was wrong\n    and how to fix it")

    monkeypatch.delenv("FOCUSVIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        _guard("focusvit-fewshot", fail)
    message = str(info.value.code)
    assert message.splitlines() == [message]
    assert message.startswith("focusvit-fewshot: error: what was wrong and how to fix it")


@pytest.mark.parametrize(
    "cls", [errors.UsageError, errors.ArgumentError, errors.LayerIndexError], ids=str
)
def test_the_pretrain_cli_prints_a_library_error_as_one_line(cls, tmp_path, monkeypatch, capsys):
    """Through the real ``focusvit-pretrain`` entry point (Hydra included)."""
    import focusvit.pretraining_cli as pretraining_cli

    def fail(cfg, out_dir=None):
        raise cls("a refusal\nnaming its fix")

    monkeypatch.delenv("FOCUSVIT_DEBUG", raising=False)
    monkeypatch.setattr(pretraining_cli, "run_pretrain", fail)
    monkeypatch.setattr(sys, "argv", ["focusvit-pretrain", f"out={tmp_path / 'out'}"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        pretraining_cli.pretrain_main()
    assert str(info.value.code) == (
        "focusvit-pretrain: error: a refusal naming its fix (FOCUSVIT_DEBUG=1 shows the traceback)"
    )
    assert "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- converted raises
def test_converted_errors_keep_their_builtin_type_and_name_the_fix(tmp_path):
    from focusvit.reports.html import write_json
    from focusvit.runs import save_state

    with pytest.raises(errors.ArgumentError, match="convert it") as info:
        save_state(tmp_path / "state.safetensors", {"value": object()})
    assert isinstance(info.value, TypeError)
    with pytest.raises(errors.ArgumentError, match="convert the key"):
        save_state(tmp_path / "state.safetensors", {(1, 2): 1})
    with pytest.raises(errors.ArgumentError, match="convert it"):
        write_json(tmp_path / "data.json", {"value": object()})


def test_layer_and_capture_errors_are_focusvit_errors():
    from focusvit.backbones import load_backbone
    from focusvit.explainers.attention import block_indices

    vit = load_backbone("tiny:timm-vit")
    n = vit.num_layers
    with pytest.raises(errors.LayerIndexError, match=rf"use 0\.\.{n - 1}") as info:
        block_indices(vit, [n])
    assert isinstance(info.value, IndexError)
    with pytest.raises(errors.LayerIndexError, match="counted from the last block"):
        vit._normalise_layers([-n - 1])
    with vit.capture_attention(layers=0) as record, pytest.raises(errors.UsageError) as info:
        record[0]
    assert isinstance(info.value, RuntimeError) and "forward pass" in str(info.value)


def test_tuner_misuse_raises_usage_and_argument_errors():
    from focusvit.backbones import load_backbone
    from focusvit.finetune import apply_tuner, make_tuner

    vit = load_backbone("tiny:timm-vit", num_classes=0)
    with pytest.raises(errors.ArgumentError, match="not both"):
        apply_tuner(vit, make_tuner("lora"), rank=2)
    with pytest.raises(errors.ArgumentError, match="BackboneAdapter"):
        apply_tuner(object(), "lora")
    tuner = apply_tuner(vit, "lora")
    with pytest.raises(errors.UsageError, match="already has an active 'lora' tuner"):
        apply_tuner(vit, "lora")
    tuner.remove()
    with pytest.raises(errors.UsageError, match="apply_tuner again"):
        tuner.trainable_parameters()
