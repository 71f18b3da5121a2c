"""The shared number predicates of :mod:`focusvit.checks`, and the rule that the packages use
them instead of writing their own ``isinstance(value, bool) or not isinstance(value, int)``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import LIBRARY_FOLDERS

from focusvit.checks import check_number, is_finite_number, is_number, is_whole_number
from focusvit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCANNED = LIBRARY_FOLDERS

NAN, INF = math.nan, math.inf

# value, is_number, is_finite_number, is_whole_number (no minimum)
CASES = [
    (True, False, False, False),
    (False, False, False, False),
    (1, True, True, True),
    (1.5, True, True, False),
    (NAN, True, False, False),
    (INF, True, False, False),
    (-INF, True, False, False),
    (-1, True, True, True),
    (np.int64(3), True, True, True),
    (np.float32(0.5), True, True, False),
    (np.bool_(True), False, False, False),
    ("3", False, False, False),
    (None, False, False, False),
    (3.0, True, True, False),
    (10**400, True, True, True),  # too large for a float, still a finite whole number
]


@pytest.mark.parametrize(("value", "number", "finite", "whole"), CASES, ids=repr)
def test_predicates(value, number, finite, whole):
    assert is_number(value) is number
    assert is_finite_number(value) is finite
    assert is_whole_number(value) is whole


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [
        (1, 1, True),
        (0, 1, False),
        (0, 0, True),
        (-1, 0, False),
        (-1, None, True),
        (-1, -1, True),
        (np.int64(3), 3, True),
        (np.int64(3), 4, False),
        (True, 0, False),
        (False, 0, False),
        (1.0, 1, False),
        (1.5, 1, False),
        (NAN, 0, False),
        (INF, 0, False),
        ("3", 1, False),
        (None, 0, False),
    ],
)
def test_whole_number_minimum(value, minimum, expected):
    assert is_whole_number(value, minimum) is expected


def test_check_number_message():
    check_number(0.5, "dropout", "in [0, 1)", lambda p: 0 <= p < 1, "dropout=0.1")
    check_number(np.float32(0.5), "dropout", "in [0, 1)", lambda p: 0 <= p < 1, "dropout=0.1")
    for bad in (True, "0.1", None, NAN, INF, 1.0):
        with pytest.raises(ConfigError) as error:
            check_number(bad, "LoRA dropout", "in [0, 1)", lambda p: 0 <= p < 1, "dropout=0.1")
        assert str(error.value) == (
            f"LoRA dropout must be a finite number in [0, 1), got {bad!r}; e.g. dropout=0.1"
        )


def test_tuners_base_reexports_check_number():
    from focusvit.finetune.tuners import base

    assert base.check_number is check_number
    assert "check_number" in base.__all__


# ----------------------------------------------------------------------------- one place
# an isinstance() argument: a name, attribute or call (the walrus form included)
_ARG = r"(?:[^,()]|\([^()]*\))+"
# a number type (or a tuple / union naming one)
_NUMBER = r"[^()]*\b(?:int|float|Real|Integral|Number|integer|floating)\b[^()]*"
_BOOL = rf"isinstance\(\s*{_ARG},\s*bool\s*\)"
_NUM = rf"isinstance\(\s*{_ARG},\s*\(?{_NUMBER}\)?\s*\)"
TWIN = re.compile(
    rf"(?:{_BOOL}\s*(?:or|and)\s+(?:not\s+)?{_NUM}"  # isinstance(v, bool) or not isinstance(v, int)
    rf"|{_NUM}\s*(?:or|and)\s+(?:not\s+)?{_BOOL})"  # isinstance(v, Real) and not isinstance(v, bool)
)

#: twins left on purpose: path -> (at most how many, why)
ALLOWED = {
    "focusvit/checks.py": (2, "the one definition"),
}


def _twins() -> dict[str, int]:
    found = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            hits = TWIN.findall(path.read_text(encoding="utf-8"))
            if hits:
                found[path.relative_to(ROOT).as_posix()] = len(hits)
    return found


def test_the_twin_pattern_matches_the_old_forms():
    old = [
        "isinstance(value, bool) or not isinstance(value, int) or value < 1",
        "not isinstance(value, int) or isinstance(value, bool) or value < 1",
        "isinstance(value, Real) and not isinstance(value, bool)",
        "isinstance(v, (int, np.integer)) and not isinstance(v, bool)",
        "isinstance(x, numbers.Real) and not isinstance(x, bool)",
        "isinstance(value, bool)\n        or not isinstance(value, (int, float))",
        "isinstance(value := getattr(module, attr, None), (int, float))\n"
        "                    and not isinstance(value, bool)",
        "isinstance(label, bool) or not isinstance(label, int | np.integer)",
    ]
    for text in old:
        assert TWIN.search(text), text
    for flag in (
        "if not isinstance(self.shift_mask, bool):",
        "isinstance(value, bool) or isinstance(value, str)",
        "value is None or isinstance(seed, bool) or not 0 <= value",
    ):
        assert not TWIN.search(flag), flag


def test_number_checks_live_in_one_place():
    found = _twins()
    unexpected = {p: n for p, n in found.items() if n > ALLOWED.get(p, (0, ""))[0]}
    assert not unexpected, (
        "hand-written number checks; use focusvit.checks.is_number / is_finite_number / "
        f"is_whole_number (or allow-list them with a reason): {unexpected}"
    )
    assert found.get("focusvit/checks.py") == ALLOWED["focusvit/checks.py"][0]


def test_numpy_numbers_accepted_at_the_door_are_recorded_as_plain_numbers(tmp_path):
    """An ``EpisodeSpec`` and a tuner config built from numpy scalars write the same episode
    file as Python numbers (JSON cannot hold numpy scalars; a resume must not see a change)."""
    import torch
    from conftest import tiny_adapter

    import focusvit
    from focusvit.data import TensorDataset
    from focusvit.finetune import LoraConfig
    from focusvit.runs import EpisodeSpec, fingerprint

    backbone = tiny_adapter("timm-vit", num_classes=0)
    data = TensorDataset(torch.rand(12, 3, 16, 16), [0] * 4 + [1] * 4 + [2] * 4)
    spec = EpisodeSpec(
        n_way=np.int64(3), k_shot=1, n_query=np.int32(2), episodes=2, seed=np.int64(1)
    )
    assert type(spec.n_way) is int and type(spec.seed) is int
    options = LoraConfig(rank=np.int64(2), alpha=np.float32(2.0))
    assert fingerprint(options) == fingerprint(LoraConfig(rank=2, alpha=2.0))
    output = tmp_path / "lora.jsonl"
    first = focusvit.evaluate(
        backbone, data, tuner=options, steps=2, episodes=spec,
        output=output, progress=False,
    )  # fmt: skip
    resumed = focusvit.evaluate(
        backbone, data, tuner=LoraConfig(rank=2, alpha=2.0), steps=2,
        episodes=EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=2, seed=1),
        output=output, progress=False,
    )  # fmt: skip
    assert resumed.accuracies == first.accuracies
