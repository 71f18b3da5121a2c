"""The study layer (``focusvit.runs.study``): the episode-file naming rule, the validation-seed
rule used everywhere, the probe cache with its shard / merge, paired comparisons, a cell, and
both benchmarks re-printing the committed tables exactly as the scripts did before the move."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from focusvit.errors import ConfigError, SettingsMismatchError
from focusvit.runs import (
    Cell,
    EpisodeSpec,
    ProbeCache,
    RunDir,
    common_episodes,
    episode_file_name,
    paired,
    read_episode_file,
    shard_file,
    validation_seed,
)
from focusvit.runs.study import stored_row

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
FORT_RESULTS = ROOT / "benchmarks" / "results" / "fort_study"
FEWSHOT_RESULTS = ROOT / "benchmarks" / "results" / "fewshot_quick"


# ----------------------------------------------------------------------------- naming rule
def test_episode_file_name_is_the_one_rule():
    assert episode_file_name("lora+fort") == "lora_fort.jsonl"
    assert episode_file_name("alpha=0.05") == "alpha=0.05.jsonl"  # select_alpha's candidates
    assert RunDir("run", {}).episode_file("ssf+fort") == Path("run/episodes/ssf_fort.jsonl")
    assert Cell(Path("cell")).episode_file("vpt+fort") == Path("cell/vpt_fort.jsonl")
    for bad in ("", "a/b"):
        with pytest.raises(ConfigError, match="method name"):
            episode_file_name(bad)


def test_shard_file_names_each_process_share():
    assert shard_file("cell/plain.jsonl", 1) == Path("cell/shards/plain.rank1.jsonl")
    assert shard_file("cell/focus.json", 0) == Path("cell/shards/focus.rank0.json")


def test_committed_records_follow_the_naming_rule():
    for path in FEWSHOT_RESULTS.glob("*/*/*.jsonl"):
        header, _ = read_episode_file(path)
        assert path.name == episode_file_name(header["method"]), path


def test_no_other_copy_of_the_naming_rule():
    sources = [*ROOT.glob("focusvit/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    copies = [p for p in sources if "replace('+', '_')" in p.read_text() and p.name != "study.py"]
    assert copies == []


# ----------------------------------------------------------------------------- validation seed
def test_validation_seed_rule():
    assert validation_seed(0) == 1000 and validation_seed(7) == 1007
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="seed"):
            validation_seed(bad)


def test_committed_validation_records_use_the_validation_seed():
    """Every committed validation episode file (α selection) was drawn with
    ``validation_seed(test seed)``: the rule keeps them readable and resumable."""
    files = list(FORT_RESULTS.glob("*/*/*/*/validation/alpha=*.jsonl"))
    assert files
    for path in files:
        header, _ = read_episode_file(path)
        test_header, _ = read_episode_file(path.parents[1] / "plain.jsonl")
        episodes = header["settings"]["episodes"]
        assert episodes["split"] == "val"
        assert episodes["seed"] == validation_seed(test_header["settings"]["episodes"]["seed"])


def test_no_other_validation_seed_convention():
    """The CLI and the benchmarks draw validation episodes through ``validation_seed``; no
    ``seed + 1000`` or same-seed copy remains. (``baselines.TrainConfig.val_seed = 1`` is the
    documented exception: the episodic training of CAN / CTX selects its checkpoint with it, and
    the committed baseline tables depend on that choice.)"""
    sources = [*ROOT.glob("focusvit/**/*.py"), *ROOT.glob("benchmarks/*.py"),
               *ROOT.glob("finetune/*.py"), *ROOT.glob("baselines/*.py")]  # fmt: skip
    offsets = [p for p in sources if re.search(r"seed\s*\+\s*1000", p.read_text())]
    offsets = [p for p in offsets if p.name != "study.py"]  # the rule itself
    assert [p.name for p in offsets] == []
    users = {p.relative_to(ROOT).as_posix() for p in sources if "val_seed" in p.read_text()}
    assert users == {"baselines/training.py"}
    for path in ("focusvit/cli.py", "benchmarks/fort_study.py"):
        assert "validation_seed(" in (ROOT / path).read_text(), path


# ----------------------------------------------------------------------------- pairing
def test_paired_and_common_episodes():
    rows = common_episodes({"a": {0: 0.6, 1: 0.5, 3: 0.8}, "b": {0: 0.5, 1: 0.5, 2: 0.1, 3: 0.9}})
    assert rows == {"a": [0.6, 0.5, 0.8], "b": [0.5, 0.5, 0.9]}
    result = paired(rows["a"], rows["b"])
    diff = np.subtract(rows["a"], rows["b"])
    assert result.mean == pytest.approx(diff.mean())
    assert result.ci95 == pytest.approx(1.96 * diff.std() / np.sqrt(3))
    assert result.wtl == "1/1/1"
    with pytest.raises(ConfigError, match="same, non-empty"):
        paired([0.1], [])


# ----------------------------------------------------------------------------- probe cache
def test_probe_cache_measures_only_what_is_missing_and_keeps_meta(tmp_path):
    cache = ProbeCache(tmp_path / "focus.json")
    calls = []

    def probe(index: int) -> dict:
        calls.append(index)
        return {"plain": {"accuracy": index / 10}}

    runs = cache.measure(range(3), probe, meta={"patches": 64})
    assert calls == [0, 1, 2] and runs[2] == {"plain": {"accuracy": 0.2}}
    stored = json.loads((tmp_path / "focus.json").read_text())
    assert stored["patches"] == 64 and list(stored)[:3] == ["0", "1", "2"]
    runs = ProbeCache(tmp_path / "focus.json").measure(range(4), probe)
    assert calls == [0, 1, 2, 3] and len(runs) == 4  # only episode 3 is new
    # an entry missing a stage (a row added since) is measured again
    again = ProbeCache(tmp_path / "focus.json")
    again.measure(range(4), probe, complete=lambda entry: entry["plain"]["accuracy"] == 0.1)
    assert calls[4:] == [0, 2, 3]
    assert ProbeCache(tmp_path / "focus.json").load() and again.meta == {"patches": 64}


def test_probe_cache_merges_the_shards_of_an_interrupted_run(tmp_path):
    (tmp_path / "focus.json").write_text(json.dumps({"0": {"plain": {"a": 1}}, "patches": 9}))
    shard = shard_file(tmp_path / "focus.json", 1)
    shard.parent.mkdir()
    shard.write_text(json.dumps({"1": {"plain": {"a": 2}}, "0": {"authors": {"a": 3}}}))
    cache = ProbeCache(tmp_path / "focus.json")
    assert cache.load() == {0: {"plain": {"a": 1}, "authors": {"a": 3}}, 1: {"plain": {"a": 2}}}
    assert cache.meta == {"patches": 9}


def test_probe_cache_keeps_tensors_and_drops_entries_of_another_key(tmp_path):
    path = tmp_path / "checkpoints" / "focus.safetensors"
    maps = {"numbers": {"plain": {"a": 0.5}}, "maps": torch.arange(6.0).reshape(2, 3)}
    runs = ProbeCache(path, key="k1").measure([0], lambda i: maps)
    assert torch.equal(ProbeCache(path, key="k1").load()[0]["maps"], maps["maps"])
    assert runs[0]["numbers"] == {"plain": {"a": 0.5}}
    assert ProbeCache(path, key="other settings").load() == {}


def test_probe_cache_reads_the_cli_s_earlier_layout(tmp_path):
    from focusvit.runs import save_state

    path = tmp_path / "focus.safetensors"
    save_state(path, {"key": "k", "runs": {"0": {"numbers": {"plain": {"a": 1.0}}}}})
    assert ProbeCache(path, key="k").load() == {0: {"numbers": {"plain": {"a": 1.0}}}}


# ----------------------------------------------------------------------------- cells
def test_cell_reads_a_committed_cell_paired_by_episode():
    cell = Cell(FORT_RESULTS / "dinov2" / "premise" / "5w1s" / "ssf")
    rows = cell.stored(("plain", "authors", "validated"))
    assert set(rows) == {"plain", "authors"} and len(rows["plain"]) == 150
    assert paired(rows["authors"], rows["plain"]).wtl == "57/23/70"  # the committed table's row
    focus = cell.probe_cache("focus").load()
    assert sorted(focus) == list(range(10)) and set(focus[0]) == {"pretrained", "plain", "authors"}


def test_stored_row_refuses_records_of_other_episodes(tmp_path):
    path = FEWSHOT_RESULTS / "5w1s" / "dinov2" / "lora.jsonl"
    row = stored_row("lora", path, {"n_way": 5, "k_shot": 1, "n_query": 5, "seed": 0,
                                    "episodes": 4})  # fmt: skip
    assert row["episodes"] == 4 and row["episode_ids"] == [0, 1, 2, 3]
    with pytest.raises(SettingsMismatchError, match="--quick"):
        stored_row("lora", path, {"n_way": 5, "k_shot": 1, "n_query": 15, "seed": 0,
                                  "episodes": 4})  # fmt: skip


def test_cell_runs_rows_on_the_same_episodes_and_resumes(tmp_path):
    import focusvit
    from focusvit.finetune import make_runner
    from focusvit.runs import load_study_backbone

    backbone = load_study_backbone("tiny:timm-vit", image_size=32, num_classes=0)
    assert backbone.data_config["crop_pct"] == 1.0
    runners = {}
    for name in ("prototype", "knn"):
        runners[name] = make_runner(backbone, solver=name)
        runners[name].label = name
    dataset = focusvit.SyntheticScenes("novel", images_per_class=4)
    spec = EpisodeSpec(n_way=3, k_shot=1, n_query=2, episodes=2, seed=0, split="novel")
    cell = Cell(tmp_path, runners, dataset, spec)
    first = cell.run(progress=False)
    assert set(first) == {"prototype", "knn"}
    assert [r["classes"] for r in first["knn"].records] == [
        r["classes"] for r in first["prototype"].records
    ]
    again = cell.run(progress=False)  # resumed from the episode files, nothing recomputed
    assert again["knn"].accuracies == first["knn"].accuracies
    assert cell.stored(("prototype", "knn"))["knn"] == list(first["knn"].accuracies)


# ----------------------------------------------------------------------------- report-only
def test_fort_study_reprints_a_committed_cell_as_before(fort_study, monkeypatch, capsys, tmp_path):
    """Expected text: printed by the script before the study layer (``tests/data``)."""
    cell = Path("dinov2") / "premise" / "5w1s" / "ssf"
    shutil.copytree(FORT_RESULTS / cell, tmp_path / cell)
    argv = ["fort_study.py", "--report-only", "--out", str(tmp_path), "--backbones", "dinov2",
            "--scenes", "premise", "--settings", "5w1s", "--tuners", "ssf"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    fort_study.main()
    expected = (DATA / "fort_study_dinov2_premise_5w1s_ssf.txt").read_text()
    assert capsys.readouterr().out == expected


def test_fewshot_reprints_the_committed_grid_as_before(fewshot_bench, monkeypatch, capsys):
    """Expected text: ``--quick --report-only`` of the script before the study layer."""
    monkeypatch.chdir(ROOT)
    argv = ["fewshot.py", "--quick", "--report-only", "--out", "benchmarks/results/fewshot_quick"]
    monkeypatch.setattr(sys, "argv", argv)
    fewshot_bench.main()
    assert capsys.readouterr().out == (DATA / "fewshot_quick_report.txt").read_text()


def test_benchmarks_are_configurations_of_the_study_layer():
    for name in ("fewshot.py", "fort_study.py"):
        text = (ROOT / "benchmarks" / name).read_text()
        assert len(text.splitlines()) < 300, name
        assert "sys.path" not in text and "data_config = " not in text, name
        assert "focusvit.runs" in text and "study" in text, name
