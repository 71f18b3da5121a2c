"""Re-check the committed α choices of ``fort_study.py`` with the paired rule (issue 31).

For every cell under ``--out`` with a ``selection.json``: both rules of
:func:`focusvit.finetune.select_alpha` applied to the recorded validation accuracies
(``validation/alpha=*.jsonl``, no training), the paired differences from α = 0, and, where the
choice changes, what the change means on the test classes, read from the cell's test rows
(``plain`` is α = 0, ``authors`` the recipe α, ``validated`` the recorded choice); "not
measured" when no test row holds one of the two α.

    python benchmarks/alpha_rule.py [--out benchmarks/results/fort_study]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from focusvit.finetune import read_selection
from focusvit.finetune.selection import RULE_TEXT
from focusvit.runs import paired
from focusvit.runs.records import read_episode_file
from focusvit.runs.study import common_episodes, row_accuracies

HERE = Path(__file__).resolve().parent


def test_rows(folder: Path) -> dict[float, Path]:
    """The cell's test episode files by the α they were run with (from their headers)."""
    rows = {}
    for name in ("plain", "authors", "validated"):
        header = read_episode_file(folder / f"{name}.jsonl")[0]
        if header is not None:
            fort = header["settings"]["runner"].get("fort") or {}
            rows.setdefault(float(fort.get("alpha") or 0.0), folder / f"{name}.jsonl")
    return rows


def test_effect(folder: Path, old: float, new: float) -> str:
    """``α new − α old`` on the test episodes both rows hold, or "not measured"."""
    rows = test_rows(folder)
    if old not in rows or new not in rows:
        return f"not measured (test rows for α {', '.join(f'{a:g}' for a in sorted(rows))})"
    both = common_episodes({a: row_accuracies(rows[a]) for a in (new, old)})
    p = paired(both[new], both[old])
    return (
        f"α {new:g} − α {old:g} = {100 * p.mean:+.1f} ± {100 * p.ci95:.1f} points, "
        f"w/t/l {p.wtl} ({len(both[new])} test episodes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "fort_study"))
    out = Path(parser.parse_args().out)
    changed, cells = [], sorted(p.parent for p in out.rglob("selection.json"))
    print(f"validation: paired difference from α = 0 in points (95% interval, w/t/l); paired rule: "
          f"{RULE_TEXT['paired']}")  # fmt: skip
    for folder in cells:
        recorded = json.loads((folder / "selection.json").read_text())
        old, new = read_selection(folder, "best_mean"), read_selection(folder, "paired")
        name = " · ".join(folder.relative_to(out).parts)
        rule = recorded.get("rule", "best_mean, unrecorded")
        print(f"\n== {name}: recorded α {recorded['alpha']:g} ({rule}; best_mean again: "
              f"{old.alpha:g}), paired rule: {new.alpha:g}")  # fmt: skip
        print(new.table().split("\n", 1)[1])
        if new.alpha == recorded["alpha"]:
            print("test classes: unchanged choice")
            continue
        changed.append(name)
        effect = test_effect(folder, float(recorded["alpha"]), new.alpha)
        print(f"test classes, paired choice − recorded choice: {effect}")
    print(f"\n{len(changed)} of {len(cells)} committed choices change under the paired rule"
          + "".join(f"\n  {n}" for n in changed))  # fmt: skip


if __name__ == "__main__":
    main()
