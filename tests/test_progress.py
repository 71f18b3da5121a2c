"""Progress of the long report steps: bars on stderr (only on a terminal, or never with
``progress=False``) and ``focusvit-explain``'s per-image log lines written as the run goes."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from conftest import tiny_adapter
from PIL import Image

from focusvit.explainers import EXPLAINERS
from focusvit.reports import explain as explain_report
from focusvit.reports.progress import progress_bar
from focusvit.runconfig import PromptSpec


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _use_bar(bar, steps: int) -> None:
    for _ in range(steps):
        bar.update()
    bar.close()


def test_bar_shows_on_a_terminal_only_and_never_when_switched_off():
    terminal = Terminal()
    _use_bar(progress_bar(3, "work", "image", file=terminal), 3)
    assert "work" in terminal.getvalue() and "3/3" in terminal.getvalue()

    switched_off = Terminal()
    _use_bar(progress_bar(3, "work", "image", progress=False, file=switched_off), 3)
    assert switched_off.getvalue() == ""

    pipe = io.StringIO()  # a log file, a pipe, CI output: no carriage-return lines
    _use_bar(progress_bar(3, "work", "image", file=pipe), 3)
    assert pipe.getvalue() == ""


def test_bar_goes_to_stderr_by_default(monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _use_bar(progress_bar(2, "to stderr", "image"), 2)
    assert "to stderr" in terminal.getvalue()
    assert capsys.readouterr().out == ""


def _explain(progress: bool, **kwargs):
    backbone = tiny_adapter("timm-vit")
    batch = torch.randn(2, 3, 32, 32)
    explainers = {name: EXPLAINERS[name]() for name in ("rollout", "gradcam")}
    return explain_report.explain_images(
        backbone,
        batch,
        ["a", "b"],
        explainers,
        PromptSpec(top_k=3),
        deletion_steps=2,
        batch_size=1,
        progress=progress,
        **kwargs,
    )


@pytest.mark.parametrize("progress", [True, False])
def test_explain_images_bar_per_image_and_explainer(progress, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    results = _explain(progress)
    assert set(results.explanations) == {"rollout", "gradcam"}
    shown = terminal.getvalue()
    if progress:  # one unit per image and explainer, the explainer named
        assert "4/4" in shown and "explain rollout" in shown and "explain gradcam" in shown
    else:
        assert shown == ""


def test_explain_images_reports_each_image_as_soon_as_it_is_done(monkeypatch):
    events = []
    real_explain = explain_report.explain

    def explain(backbone, images, method, target=None):
        events.append(("explain", method.name, len(images)))
        return real_explain(backbone, images, method=method, target=target)

    monkeypatch.setattr(explain_report, "explain", explain)
    results = _explain(
        False, on_image=lambda method, index, name, metrics: events.append((method, index, name))
    )
    assert events == [
        ("explain", "rollout", 1),
        ("rollout", 0, "a"),  # image a is reported before image b is explained
        ("explain", "rollout", 1),
        ("rollout", 1, "b"),
        ("explain", "gradcam", 1),
        ("gradcam", 0, "a"),
        ("explain", "gradcam", 1),
        ("gradcam", 1, "b"),
    ]
    metrics = results.metrics["rollout"]
    assert set(metrics) >= {"deletion_auc", "insertion_auc", "prompt_patches"}
    assert metrics["prompt_patches"].tolist() == [3.0, 3.0]


def test_explain_images_same_results_in_any_chunk_size():
    backbone = tiny_adapter("timm-vit")
    batch = torch.randn(3, 3, 32, 32)
    explainers = {"rollout_svd": EXPLAINERS["rollout_svd"]()}
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    runs = [
        explain_report.explain_images(
            backbone,
            batch,
            ["a", "b", "c"],
            explainers,
            PromptSpec(top_k=3),
            masks=masks,
            deletion_steps=2,
            batch_size=size,
            progress=False,
        )
        for size in (1, 2, 8)
    ]
    for run in runs[1:]:
        assert torch.equal(
            run.explanations["rollout_svd"].scores, runs[0].explanations["rollout_svd"].scores
        )
        assert torch.equal(run.prompts["rollout_svd"].mask, runs[0].prompts["rollout_svd"].mask)
        for metric, values in runs[0].metrics["rollout_svd"].items():
            assert torch.allclose(run.metrics["rollout_svd"][metric], values), metric


def test_explain_command_writes_its_log_file_as_it_goes(tmp_path, monkeypatch):
    """The log holds image 1's line before image 2 is explained (flushed per line)."""
    from focusvit import cli

    out = tmp_path / "explain"
    log = out / "focusvit-explain.log"
    seen_at_each_call: list[str] = []
    real_explain = explain_report.explain

    def explain(backbone, images, method, target=None):
        seen_at_each_call.append(log.read_text() if log.exists() else "")
        return real_explain(backbone, images, method=method, target=target)

    monkeypatch.setattr(explain_report, "explain", explain)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "focusvit-explain",
            "backbone=tiny_timm_vit",
            "inputs=synthetic:2",
            "explainer=[rollout]",
            "report.batch_size=1",
            "report.deletion_steps=0",
            f"out={out}",
        ],
    )
    cli.explain_main()
    assert len(seen_at_each_call) == 2
    assert "rollout 1/2 scene0" not in seen_at_each_call[0]
    assert "rollout 1/2 scene0: prompt_patches" in seen_at_each_call[1]  # before the run ends
    lines = log.read_text().splitlines()
    assert any("rollout 2/2 scene1: prompt_patches" in line for line in lines)
    assert (out / "report.html").exists()


def test_attention_focus_accepts_progress(monkeypatch, tmp_path):
    from focusvit.data import ImageFolderDataset
    from focusvit.finetune import FitOptions, make_runner
    from focusvit.reports.fewshot import attention_focus
    from focusvit.runs import EpisodeSpec

    root = tmp_path / "data"
    for folder, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
        (root / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), tuple(c + 10 * i for c in colour)).save(
                root / folder / f"{i}.png"
            )
    dataset = ImageFolderDataset(root)
    backbone = tiny_adapter("timm-vit")
    spec = EpisodeSpec(n_way=2, k_shot=1, n_query=1, episodes=1, seed=0)
    fort = type("Fort", (), {"explainer": "rollout", "top_k": 2, "top_fraction": None})()
    runners = {
        "prototype": make_runner(backbone, solver="prototype"),
        "lora": make_runner(backbone, tuner="lora", options=FitOptions(steps=1)),
    }
    shown = {}
    for progress in (True, False):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        focus = attention_focus(backbone, dataset, runners, 0, spec, fort, progress=progress)
        assert set(focus["maps"]) == {"pretrained", "lora"}
        shown[progress] = terminal.getvalue()
    assert "attention focus, episode 0" in shown[True] and "2/2" in shown[True]
    assert shown[False] == ""
