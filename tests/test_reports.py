"""HTML reports: self-contained, numbers match, and they render in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_adapter
from PIL import Image

from focusvit.explainers import make_explainer
from focusvit.reports.explain import explain_images, write_explain_report
from focusvit.reports.fewshot import write_fewshot_report
from focusvit.runconfig import PromptSpec
from focusvit.runs import EpisodeLog, EvaluationResult, merge_records, read_episode_file, shard

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found: install the Debian package 'chromium' "
    "(make setup-chromium, as root) to run the render tests",
)


@pytest.fixture(scope="module")
def explain_report(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    backbone = tiny_adapter("timm-vit")
    batch = torch.randn(3, 3, 32, 32)
    explainers = {n: make_explainer(n) for n in ("rollout_svd", "gradcam", "cam")}
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    results = explain_images(
        backbone,
        batch,
        ["a", "b", "c"],
        explainers,
        PromptSpec(top_k=4),
        masks=masks,
        deletion_steps=2,
    )
    out = tmp_path_factory.mktemp("explain")
    return write_explain_report(out, results, "tiny:timm-vit", "backbone: tiny", {"torch": "x"})


@pytest.fixture(scope="module")
def fewshot_report(tmp_path_factory) -> Path:
    results = {}
    for method, accs in (("lora", [0.2, 0.4, 0.6]), ("lora+fort", [0.4, 0.6, 0.8])):
        result = EvaluationResult(method)
        result.accuracies = accs
        result.records = [
            {"episode": i, "accuracy": a, "final_loss": {"total": 1.0}, "trainable": 10}
            for i, a in enumerate(accs)
        ]
        results[method] = result
    grid = (4, 4)
    images = torch.rand(2, 3, 32, 32)
    maps = {
        s: {"support": torch.rand(2, *grid), "query": torch.rand(2, *grid)}
        for s in ("pretrained", "lora")
    }
    focus = {
        "episode": 0,
        "grid": grid,
        "support": images,
        "query": images,
        "prompts": torch.rand(2, *grid) > 0.7,
        "maps": maps,
        "numbers": {
            "pretrained": {"support_coverage_95": 14.0},
            "lora": {"support_coverage_95": 9.0},
        },
    }
    out = tmp_path_factory.mktemp("fewshot")
    return write_fewshot_report(
        out, results, [focus], "few-shot", "setting", "cfg: 1", {"torch": "x"}
    )


def test_explain_report_is_self_contained_and_matches_its_json(explain_report):
    html = explain_report.read_text()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(sources) == 3 * 4  # image + 3 explainers per image
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    data = json.loads((explain_report.parent / "metrics.json").read_text())
    assert data["explainers"] == ["rollout_svd", "gradcam", "cam"]
    row = next(
        r for r in data["summary"] if r["explainer"] == "cam" and r["metric"] == "prompt_patches"
    )
    assert row["mean"] == 4.0 and row["n"] == 3
    csv_lines = (explain_report.parent / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("image,") and len(csv_lines) == 4


def test_fewshot_report_numbers(fewshot_report):
    html = fewshot_report.read_text()
    assert "lora+fort" in html and "60.000" in html  # mean accuracy of lora+fort in %
    data = json.loads((fewshot_report.parent / "results.json").read_text())
    fort = next(r for r in data["accuracy"] if r["method"] == "lora+fort")
    assert fort["mean"] == pytest.approx(0.6)
    assert fort["ci95"] == pytest.approx(1.96 * np.std([0.4, 0.6, 0.8]) / np.sqrt(3))
    assert (fewshot_report.parent / "figures" / "accuracy.png").exists()
    assert (fewshot_report.parent / "figures" / "focus_episode0.png").exists()
    assert "support_coverage_95" in (fewshot_report.parent / "focus.csv").read_text()


def _legend(html: str) -> str:
    """The metric legend paragraph of an explain report (after the summary table)."""
    return html.split("</table>", 1)[1].split("</p>", 1)[0]


def _small_report(tmp_path, backbone, **options) -> tuple[str, dict]:
    torch.manual_seed(0)
    batch = torch.randn(2, 3, 32, 32)
    explainers = {n: make_explainer(n) for n in ("gradcam", "random")}
    options = {"deletion_steps": 0, **options}
    results = explain_images(
        backbone, batch, ["a", "b"], explainers, PromptSpec(top_k=4), **options
    )
    report = write_explain_report(tmp_path, results, backbone.name, "", {"torch": "x"})
    return report.read_text(), json.loads((tmp_path / "metrics.json").read_text())


def test_explain_report_names_imagenet_classes_of_an_imagenet_head(tmp_path):
    from focusvit.backbones import imagenet_class_names

    backbone = tiny_adapter("timm-vit", num_classes=1000)
    html, data = _small_report(tmp_path, backbone)
    names = imagenet_class_names()
    assert data["logits"] == "classes" and data["num_outputs"] == 1000
    for row in data["images"]:
        name = names[row["predicted_class"]]
        assert row["predicted_name"] == name
        assert html_escape(f"predicted {name} ({row['predicted_class']})") in html
    assert "No classification head" not in html


def test_explain_report_names_classes_given_and_true_labels(tmp_path):
    backbone = tiny_adapter("timm-vit")  # 5 classes without known names
    html, data = _small_report(tmp_path / "unnamed", backbone)
    assert "no known names" in html and "pass class_names" in html
    assert "predicted class " in html  # indices only
    names = ["ant", "bee", "cat", "dog", "eel"]
    html, data = _small_report(
        tmp_path / "named", backbone, class_names=names, labels=["cat", None]
    )
    first = data["images"][0]
    assert first["label"] == "cat" and "label" not in data["images"][1]
    assert first["predicted_name"] == names[first["predicted_class"]]
    assert f"label cat, predicted {names[first['predicted_class']]}" in html
    with pytest.raises(ValueError, match="one name per output of the head"):
        _small_report(tmp_path / "bad", backbone, class_names=names[:3])
    with pytest.raises(ValueError, match=r"one class name \(or None\) per image"):
        _small_report(tmp_path / "bad", backbone, labels=["cat"])


def test_explain_report_states_that_headless_logits_are_pooled_features(tmp_path):
    backbone = tiny_adapter("timm-vit", num_classes=0)
    html, data = _small_report(tmp_path, backbone)
    assert data["logits"] == "pooled features" and data["class_names"] is None
    assert data["num_outputs"] == backbone.num_features
    assert "No classification head" in html and "pooled features" in html
    assert "largest feature feature " in html
    assert all("predicted_name" not in row for row in data["images"])


def test_explain_report_counts_are_integers(explain_report):
    html = explain_report.read_text()
    data = json.loads((explain_report.parent / "metrics.json").read_text())
    for row in data["images"]:
        assert row["cls_coverage_95"] == int(row["cls_coverage_95"])
        assert isinstance(row["cls_coverage_95"], int)
        for method in ("rollout_svd", "gradcam", "cam"):
            assert row[f"{method}.prompt_patches"] == 4
            assert isinstance(row[f"{method}.prompt_patches"], int)
    assert "prompt_patches 4," in html and "prompt_patches 4.000" not in html
    assert re.search(r"cls_coverage_95 \d+[,<]", html)
    assert ">4 ± 0<" in html  # summary cell of the prompt size
    csv_text = (explain_report.parent / "metrics.csv").read_text()
    assert ",4.0," not in csv_text and ",4," in csv_text


def test_explain_report_legend_lists_only_computed_metrics(tmp_path, explain_report):
    full = _legend(explain_report.read_text())
    for metric in ("deletion_auc", "prompt_precision", "pointing_game", "cls_coverage_95"):
        assert f"<i>{metric}</i>" in full
    backbone = tiny_adapter("timm-vit")
    html, data = _small_report(tmp_path, backbone)  # no masks, no deletion curves
    legend = _legend(html)
    computed = {row["metric"] for row in data["summary"]}
    assert computed == {"prompt_patches", "cls_attention_on_prompt"}
    for metric in ("deletion_auc", "insertion_auc", "prompt_precision", "pointing_game"):
        assert metric not in legend
    for metric in (*computed, "cls_coverage_95"):
        assert f"<i>{metric}</i>" in legend


def test_fewshot_report_names_episode_classes_from_the_dataset(tmp_path):
    from focusvit.data import ImageFolderDataset
    from focusvit.reports.fewshot import attention_focus
    from focusvit.runs import EpisodeSpec

    root = tmp_path / "data"
    for folder, colour in (("cardinal", (200, 20, 20)), ("jay", (20, 20, 200))):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), tuple(c + 10 * i for c in colour)).save(
                root / folder / f"{i}.png"
            )
    dataset = ImageFolderDataset(root)
    backbone = tiny_adapter("timm-vit")
    spec = EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=1, seed=0)
    fort = type("Fort", (), {"explainer": "rollout", "top_k": 2, "top_fraction": None})()
    focus = attention_focus(backbone, dataset, {}, 0, spec, fort)
    assert sorted(focus["classes"]) == ["cardinal", "jay"]
    assert focus["support_labels"] == [0, 1] and focus["query_labels"] == [0, 1]
    report = write_fewshot_report(
        tmp_path / "out", {}, [focus], "few-shot", "setting", "", {"torch": "x"}
    )
    html = report.read_text()
    assert f"(classes: {', '.join(focus['classes'])})" in html


def test_fewshot_report_counts_and_legend(fewshot_report):
    html = fewshot_report.read_text()
    focus = html.split("<h2>Attention focus", 1)[1]
    legend = focus.split("</p>", 1)[0]
    assert "<i>support_coverage_95</i>" in legend
    assert "mass" not in legend and "accuracy" not in legend  # not computed in this run
    table = focus.split("<table>", 1)[1].split("</table>", 1)[0]
    assert ">14<" in table and ">9<" in table and "14.000" not in table


def test_sharding_and_merging_are_canonical(tmp_path):
    ids = list(range(7))
    parts = [shard(ids, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == ids and parts[1] == [1, 4]
    records = [{"method": "m", "episode": i, "accuracy": i / 10} for i in ids]
    single = EpisodeLog(tmp_path / "single.jsonl", "m", {"a": 1})
    multi = EpisodeLog(tmp_path / "multi.jsonl", "m", {"a": 1})
    single.rewrite(records)
    multi.rewrite([r for p in reversed(parts) for r in records if r["episode"] in p])
    assert single.path.read_bytes() == multi.path.read_bytes()
    assert merge_records([records[:2], records[1:3]]) == records[:3]  # duplicates dropped
    with single.path.open("a") as handle:
        handle.write('{"method": "m", "episo')  # cut line
    header, read = read_episode_file(single.path)
    assert header == {"settings": {"a": 1}, "method": "m"} and read == records
    assert single.open() == {r["episode"]: r for r in records}  # the cut line is dropped
    assert single.path.read_bytes() == multi.path.read_bytes()


def test_process_group_waits_hours_not_torch_minutes(monkeypatch):
    """The main process alone fine-tunes the report's focus episodes while the others wait in a
    barrier: the group is created with the long timeout (env override checked, bad values named)."""
    import torch.distributed as dist

    from focusvit.errors import ConfigError
    from focusvit.runs import DistContext
    from focusvit.runs.distributed import DEFAULT_TIMEOUT_MINUTES, TIMEOUT_ENV

    created = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: created.update(kwargs))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    context = DistContext.from_env("cpu")
    assert (context.rank, context.world_size, context.backend) == (1, 2, "gloo")
    assert created["timeout"].total_seconds() == DEFAULT_TIMEOUT_MINUTES * 60 > 30 * 60
    monkeypatch.setenv(TIMEOUT_ENV, "90")
    DistContext.from_env("cpu")
    assert created["timeout"].total_seconds() == 90 * 60
    for bad in ("0", "soon"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=TIMEOUT_ENV):
            DistContext.from_env("cpu")


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    import tempfile

    # no network here: without these flags Chromium keeps retrying its background connections
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line and re.search(r"error|uncaught|failed", line, re.IGNORECASE)
    ]


@needs_chromium
def test_console_error_detection_works(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom');</script></body></html>")
    proc = _chromium("--virtual-time-budget=2000", "--dump-dom", page.as_uri())
    assert _console_errors(proc.stderr), proc.stderr[-2000:]


@needs_chromium
@pytest.mark.parametrize("which", ["explain_report", "fewshot_report"])
def test_report_renders_in_headless_chromium(which, request):
    report: Path = request.getfixturevalue(which)
    proc = _chromium("--virtual-time-budget=5000", "--dump-dom", report.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _console_errors(proc.stderr)
    body = re.search(r"<body[^>]*>", proc.stdout).group(0)
    total = len(re.findall(r'<img [^>]*src="data:image/png', report.read_text()))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    broken = int(re.search(r'data-images-broken="(\d+)"', body).group(1))
    assert (loaded, broken) == (total, 0)  # every image decoded with a non-zero natural size


@needs_chromium
def test_report_screenshot_shows_the_heat_maps(explain_report, tmp_path):
    shot = tmp_path / "shot.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", explain_report.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[0] > 0 and pixels.shape[1] > 0
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 120).mean() > 0.01  # coloured heat-map pixels, not a blank page


def test_attention_focus_measures_the_attention_on_the_object_masks(tmp_path):
    """``*_mass_on_object`` equals the CLS attention summed over the masked half of the grid,
    computed here patch by patch; datasets without masks get no such number."""
    from focusvit.data import ImageFolderDataset
    from focusvit.data.episodes import sample_episode
    from focusvit.explainers import cls_attention
    from focusvit.reports.fewshot import attention_focus
    from focusvit.runs import EpisodeSpec

    backbone = tiny_adapter("timm-vit")
    height, width = backbone.data_config["input_size"][1:]
    root, masks = tmp_path / "data", tmp_path / "masks"
    generator = np.random.default_rng(0)
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        (masks / folder).mkdir(parents=True)
        for i in range(2):
            pixels = generator.integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i}.png")
            mask = np.zeros((height, width), np.uint8)
            mask[:, : width // 2] = 255  # the left half of the image is the object
            Image.fromarray(mask).save(masks / folder / f"{i}.png")
    spec = EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=1, seed=0)
    fort = type("Fort", (), {"explainer": "rollout", "top_k": 2, "top_fraction": None})()
    dataset = ImageFolderDataset(root, mask_root=masks)
    numbers = attention_focus(backbone, dataset, {}, 0, spec, fort)["numbers"]["pretrained"]

    episode = sample_episode(dataset.labels, 0, 2, 1, 1, 0)
    h, w = backbone.grid_size((height, width))
    for part, indices in (("support", episode.support), ("query", episode.query)):
        images = backbone.preprocess([dataset.load(i) for i in indices])
        with torch.no_grad():
            attention = cls_attention(backbone, images).view(-1, h, w)
        expected = [
            sum(float(a[r, c]) for r in range(h) for c in range(w // 2)) / float(a.sum())
            for a in attention
        ]
        assert numbers[f"{part}_mass_on_object"] == pytest.approx(np.mean(expected), rel=1e-5)
        assert 0 < numbers[f"{part}_mass_on_object"] < 1

    without = attention_focus(backbone, ImageFolderDataset(root), {}, 0, spec, fort)
    assert not any("object" in k for k in without["numbers"]["pretrained"])
