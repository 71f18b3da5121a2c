"""The Hydra entry points on tiny models: reports, resume, bad input, and a 2-process run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from PIL import Image

import focusvit.runconfig as rc
from focusvit import SyntheticScenes, cli
from focusvit.errors import SettingsMismatchError
from focusvit.runs import BackboneSpec, read_episode_file


def read_records(path) -> list[dict]:
    return read_episode_file(path)[1]


BIN = Path(sys.executable).parent
FAST_FEWSHOT = [
    "backbone=tiny_timm_vit",
    "trainer=smoke",
    "data.images_per_class=3",
    "episodes.episodes=2",
    "episodes.n_query=2",
    "progress=false",
]


def run_entry_point(main, argv: list[str], monkeypatch) -> None:
    """Call a ``@hydra.main`` entry point in this process, as its console script would."""
    monkeypatch.setattr(sys, "argv", ["focusvit", *argv])
    main()


def compose_cfg(primary: str, overrides: list[str]):
    with initialize_config_module(rc.CONFIG_MODULE, version_base="1.3"):
        return compose(primary, overrides=overrides)


def images_of(html: str, attribute: str, value: str) -> int:
    return len(re.findall(rf'<img [^>]*data-{attribute}="{re.escape(value)}"', html))


def test_explain_entry_point_writes_a_report(tmp_path, monkeypatch):
    out = tmp_path / "explain"
    run_entry_point(
        cli.explain_main,
        ["backbone=tiny_timm_vit", "inputs=synthetic:1", f"out={out}", "report.deletion_steps=2"],
        monkeypatch,
    )
    html = (out / "report.html").read_text()
    for method in ("rollout_svd", "rollout", "attention", "gradcam", "cam"):
        assert method in html
        assert images_of(html, "explainer", method) == 1  # one per image and explainer
    assert images_of(html, "kind", "image") == 1
    scenes = SyntheticScenes("novel", images_per_class=1)
    true_class = scenes.class_names[int(scenes[0][1])]
    assert f"scene0 · {true_class}" in html  # the scene's true class next to its name
    assert 'src="http' not in html and "<link" not in html  # self-contained
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["images"]) == 1
    assert {"deletion_auc", "prompt_precision", "pointing_game"} <= {
        s["metric"] for s in metrics["summary"]
    }
    assert (out / "metrics.csv").read_text().count("\n") == 2
    assert (out / "figures" / "overlays.png").stat().st_size > 0
    assert (out / "figures" / "scene0_rollout_svd.png").stat().st_size > 0


def test_explain_own_folder_on_swin_skips_what_does_not_apply(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(photos / "red.png")
    Image.new("L", (50, 70), 128).save(photos / "grey.jpg")  # grayscale is converted
    cfg = compose_cfg(
        "explain", ["backbone=tiny_timm_swin", f"inputs={photos}", "report.deletion_steps=0"]
    )
    report = cli.run_explain(cfg, tmp_path / "out")
    html = report.read_text()
    assert images_of(html, "explainer", "gradcam") == 2
    assert images_of(html, "explainer", "rollout") == 0
    assert "skipped" in html and "does not apply to swin" in html


def test_fewshot_entry_point_writes_a_report_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fewshot"
    argv = [
        *FAST_FEWSHOT,
        "methods=[prototype,lora,lora+fort]",
        "report.max_queries=1",
        f"out={out}",
    ]
    run_entry_point(cli.fewshot_main, argv, monkeypatch)
    html = (out / "report.html").read_text()
    for method in ("prototype", "lora", "lora+fort"):
        assert f">{method}<" in html  # a row of the accuracy table
        assert len(read_records(out / "episodes" / f"{method.replace('+', '_')}.jsonl")) == 2
    assert images_of(html, "kind", "accuracy") == 1
    assert images_of(html, "kind", "focus") == 1
    assert "Attention focus before / after fine-tuning" in html
    assert "torch" in html and "hydra-core" in html  # software versions
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["accuracy"]] == ["prototype", "lora", "lora+fort"]
    stages = {r["stage"] for r in results["focus"]}
    assert stages == {"pretrained", "lora", "lora+fort"}
    assert "support_coverage_95" in results["focus"][0]
    assert (out / "accuracy.csv").exists() and (out / "focus.csv").exists()
    assert (out / "figures" / "focus_episode0.png").exists()

    before = (out / "episodes" / "lora.jsonl").read_text()
    capsys.readouterr()
    run_entry_point(cli.fewshot_main, argv, monkeypatch)  # same settings: resumed
    assert "resuming" in capsys.readouterr().out
    assert (out / "episodes" / "lora.jsonl").read_text() == before

    changed = [*argv, "fort.alpha=0.1"]
    monkeypatch.setattr(sys, "argv", ["focusvit-fewshot", *changed])
    with pytest.raises(SystemExit, match=r"fort\.alpha: None -> 0\.1.*never mixed or overwritten"):
        cli.fewshot_main()
    assert (out / "episodes" / "lora.jsonl").read_text() == before


def test_fewshot_refuses_a_folder_that_is_not_a_run(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    cfg = compose_cfg("fewshot", [*FAST_FEWSHOT, "methods=[prototype]"])
    with pytest.raises(SettingsMismatchError, match="not a focusvit run folder"):
        cli.run_fewshot(cfg, out)
    assert (out / "chapter1.tex").read_text() == "precious"


def test_more_episodes_extend_a_resumed_run(tmp_path):
    out = tmp_path / "run"
    base = [*FAST_FEWSHOT, "methods=[prototype]", "report.focus_episodes=0"]
    cli.run_fewshot(compose_cfg("fewshot", base), out)
    first = read_records(out / "episodes" / "prototype.jsonl")
    result = cli.run_fewshot(compose_cfg("fewshot", [*base, "episodes.episodes=3"]), out)
    records = read_records(out / "episodes" / "prototype.jsonl")
    assert [r["episode"] for r in records] == [0, 1, 2]
    assert records[:2] == first
    assert len(result["results"]["prototype"].accuracies) == 3


def test_wrong_type_fails_before_anything_is_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "never"
    loads = []
    monkeypatch.setattr(BackboneSpec, "load", lambda self: loads.append(self))
    monkeypatch.setattr(sys, "argv", ["focusvit-fewshot", "episodes.n_way=five", f"out={out}"])
    with pytest.raises(SystemExit) as info:
        cli.fewshot_main()
    assert info.value.code != 0
    assert "could not be converted to Integer" in capsys.readouterr().err
    assert not out.exists() and not loads


def test_two_gloo_processes_match_one_process(tmp_path):
    """torchrun: the validation episodes of select_alpha and the test episodes are shared out
    between the processes; the merged files, the chosen α and every record equal one process's."""
    torchrun = shutil.which("torchrun", path=str(BIN)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    args = [
        *FAST_FEWSHOT,
        "methods=[prototype,lora+fort]",
        "report.focus_episodes=0",
        "select_alpha.alphas=[0.5]",
        "select_alpha.episodes=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = tmp_path / "two"
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node=2",
            "--no-python",
            str(BIN / "focusvit-fewshot"),
            *args,
            f"out={multi}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in (multi / "report.html").read_text()
    single = tmp_path / "one"
    cli.run_fewshot(compose_cfg("fewshot", args), single)
    for method in ("prototype", "lora_fort"):
        one = read_records(single / "episodes" / f"{method}.jsonl")
        two = read_records(multi / "episodes" / f"{method}.jsonl")
        assert [r["episode"] for r in two] == [0, 1]
        assert [(r["episode"], r["classes"], r["accuracy"]) for r in one] == [
            (r["episode"], r["classes"], r["accuracy"]) for r in two
        ]
        for a, b in zip(one, two, strict=True):
            assert a.keys() == b.keys()
            if method == "lora_fort":  # a tuned method: the loss comparison must not be skipped
                assert a["final_loss"] and b["final_loss"]
            for key in a.get("final_loss") or {}:
                assert a["final_loss"][key] == pytest.approx(b["final_loss"][key], rel=1e-4)
    shards = sorted(p.name for p in (multi / "episodes" / "shards").iterdir())
    assert "prototype.rank0.jsonl" in shards and "prototype.rank1.jsonl" in shards
    for alpha in ("0", "0.5"):  # validation: both processes' episodes, merged, as one process
        one = read_records(single / "validation" / f"alpha={alpha}.jsonl")
        two = read_records(multi / "validation" / f"alpha={alpha}.jsonl")
        assert [r["episode"] for r in two] == [0, 1]
        assert [(r["classes"], r["accuracy"]) for r in one] == [
            (r["classes"], r["accuracy"]) for r in two
        ]
    validation_shards = {p.name for p in (multi / "validation" / "shards").iterdir()}
    assert {"alpha=0.rank0.jsonl", "alpha=0.rank1.jsonl"} <= validation_shards
    assert proc.stdout.count("choosing α on") == 1  # printed by rank 0 only
    chosen = [
        read_episode_file(folder / "episodes" / "lora_fort.jsonl")[0]["settings"]["runner"]
        for folder in (single, multi)
    ]
    assert chosen[0]["fort"]["alpha"] == chosen[1]["fort"]["alpha"]


def test_fewshot_chooses_alpha_on_validation_classes(tmp_path, capsys):
    """select_alpha.alphas: α is chosen on validation episodes (α = 0 included; α > 0 only on a
    paired gain whose 95% interval is above zero) and every +fort method is evaluated with it;
    the choice and its rule are in the report notes and the run's settings."""
    import numpy as np

    from focusvit.runs import flatten

    out = tmp_path / "run"
    overrides = [
        *FAST_FEWSHOT,
        "methods=[lora,lora+fort]",
        "report.focus_episodes=0",
        "select_alpha.alphas=[0.5]",
        "select_alpha.episodes=2",
    ]
    cli.run_fewshot(compose_cfg("fewshot", overrides), out)
    by_episode = {}
    for alpha in ("0", "0.5"):
        header, records = read_episode_file(out / "validation" / f"alpha={alpha}.jsonl")
        assert header["settings"]["dataset"]["split"] == "val" and len(records) == 2
        by_episode[float(alpha)] = {r["episode"]: r["accuracy"] for r in records}
    diff = np.array([by_episode[0.5][e] - by_episode[0.0][e] for e in sorted(by_episode[0.0])])
    chosen = 0.5 if diff.mean() - 1.96 * diff.std() / np.sqrt(len(diff)) > 1e-6 else 0.0
    header, _ = read_episode_file(out / "episodes" / "lora_fort.jsonl")
    fort_alpha = [v for k, v in flatten(header).items() if k.endswith("fort.alpha")]
    assert fort_alpha == [chosen]
    report = (out / "report.html").read_text()
    assert "chosen on 5-way" in report and "rule paired" in report
    assert json.loads((out / "settings.json").read_text())["select_alpha"]["rule"] == "paired"
    printed = capsys.readouterr().out
    assert re.search(rf"alpha {chosen:g} .*<- chosen", printed)
    assert re.search(r"alpha 0\.5 .* points vs α = 0, w/t/l \d+/\d+/\d+", printed)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["fort=off", "methods=[lora]"], "fort is off"),
        (["select_alpha.split=novel"], "other classes than the test split"),
    ],
)
def test_alpha_selection_refuses_what_would_not_be_validation(tmp_path, extra, message):
    overrides = [*FAST_FEWSHOT, "report.focus_episodes=0", "select_alpha.alphas=[0.5]", *extra]
    with pytest.raises(rc.ConfigError, match=message):
        cli.run_fewshot(compose_cfg("fewshot", overrides), tmp_path / "run")


def _folder_with_masks(root: Path) -> tuple[Path, Path]:
    """images/<class>/<i>.png, each a bright square on grey, and masks/<class>/<i>.png."""
    import numpy as np

    images, masks = root / "images", root / "masks"
    for c, name in enumerate(("cat", "dog", "owl")):
        (images / name).mkdir(parents=True)
        (masks / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((32, 32, 3), 60, np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            top = 4 + 8 * i
            pixels[top : top + 12, 4 + 6 * c : 16 + 6 * c] = (255, 80 * c, 40)
            mask[top : top + 12, 4 + 6 * c : 16 + 6 * c] = 1
            Image.fromarray(pixels).save(images / name / f"{i}.png")
            Image.fromarray(mask).save(masks / name / f"{i}.png")
    return images, masks


def test_ground_truth_prompts_on_an_image_folder_with_masks(tmp_path, monkeypatch):
    """``data=imagefolder data.mask_root=...`` gives the CLI object masks, so
    ``fort.prompts=ground_truth`` runs on a user's own data; without masks it is refused."""
    images, masks = _folder_with_masks(tmp_path)
    argv = [
        *[a for a in FAST_FEWSHOT if not a.startswith(("data.", "episodes.n_query"))],
        "data=imagefolder",
        f"data.path={images}",
        "episodes.n_way=2",
        "episodes.n_query=1",
        "methods=[lora+fort]",
        "fort.prompts=ground_truth",
        "report.focus_episodes=0",
    ]
    out = tmp_path / "with_masks"
    run_entry_point(cli.fewshot_main, [*argv, f"data.mask_root={masks}", f"out={out}"], monkeypatch)
    settings, records = read_episode_file(out / "episodes" / "lora_fort.jsonl")
    assert settings["settings"]["runner"]["fort"]["prompts"] == "ground_truth"
    assert len(records) == 2
    monkeypatch.setattr(sys, "argv", ["focusvit", *argv, f"out={tmp_path / 'no_masks'}"])
    with pytest.raises(SystemExit, match="mask"):
        cli.fewshot_main()
