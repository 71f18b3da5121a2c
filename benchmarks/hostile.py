"""Hostile sweep (issue 32, "Nothing silently wrong"): replays hostile inputs against the Python
API, the files the package reads, its output paths and the two command lines, and counts how
each one ends.

Outcomes per case:

- ``clean``: refused as it should be: a :class:`focusvit.errors.FocusVitError` with a one-line
  message (API), or exit status 1 with exactly one stderr line ``focusvit-<cmd>: error: ...`` and
  no traceback (CLI). A hostile input with a defined handled result (``lr=1e6`` recorded as a
  diverged episode, a split file with a UTF-8 byte-order mark keeping its first class) is
  ``clean`` when that result is right.
- ``ok``: a control case with valid input succeeded.
- ``raw``: any other exception (a ``TypeError`` / ``KeyError`` / ``RuntimeError`` of torch,
  numpy, PIL ...), or a focusvit error whose message spans several lines.
- ``traceback``: a CLI run whose stderr holds ``Traceback`` or more than one line, or whose exit
  status is not 1.
- ``accepted``: a call that should have been refused returned normally, or a handled result that
  is wrong (silently wrong), or a refusal that wrote its output first.
- ``broken``: a control case (or a handled hostile input) that was refused or gave a wrong result.

It is a measurement, not a test: it always exits 0. The last lines are a table of counts per
category and outcome, then one line per case that is neither ``clean`` nor ``ok``.

    .venv/bin/python benchmarks/hostile.py                 # every case, ~3.5 CPU-minutes
    .venv/bin/python benchmarks/hostile.py --list          # the case names, by category
    .venv/bin/python benchmarks/hostile.py --category fit_task --category configs
    .venv/bin/python benchmarks/hostile.py --case explain.target_str_cat -v   # one case

Each API case runs in this process in a fresh temporary folder, on tiny random models
(``tiny:timm-vit`` ...); the CLI cases run ``focusvit-explain`` / ``focusvit-fewshot`` as
subprocesses, two at a time beside them. Run as root, the read-only-folder cases are left out
(root writes anywhere).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import focusvit
from focusvit.errors import FocusVitError

OUTCOMES = ("clean", "ok", "raw", "traceback", "accepted", "broken")
INF, NAN = float("inf"), float("nan")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
BIN = Path(sys.executable).parent

#: what a case expects: a refusal, a specific handled result (hostile input), either of those,
#: or success (a control)
REFUSE, RESULT, EITHER, OK = "refuse", "result", "either", "ok"


# ----------------------------------------------------------------------------- framework
@dataclass
class Workspace:
    """What a case may use: its own empty folder and tiny models shared between cases (every
    focusvit call that changes a backbone restores it; cases that might not use :meth:`fresh`)."""

    root: Path
    models: dict[str, Any] = field(default_factory=dict)
    tmp: Path = Path()

    def model(self, name: str = "timm-vit") -> Any:
        if name not in self.models:
            self.models[name] = focusvit.load_backbone(f"tiny:{name}")
        return self.models[name]

    def fresh(self, name: str = "timm-vit", **kwargs: Any) -> Any:
        return focusvit.load_backbone(f"tiny:{name}", **kwargs)

    def folder(self, name: str) -> Path:
        self.tmp = self.root / name.replace("/", "_")
        self.tmp.mkdir(parents=True)
        return self.tmp


@dataclass(frozen=True)
class Case:
    """One hostile (or control) input.

    Attributes:
        name: ``category.short_name`` (unique).
        call: runs the case in a :class:`Workspace`; for CLI cases returns a :class:`CliRun`.
        expect: ``refuse`` (hostile input), ``result`` (hostile input with a defined handled
            result, checked by ``check``), ``either`` (a refusal or a right result) or ``ok``
            (a control with valid input).
        check: for a call that returned: ``None`` when the value is right, else what is wrong.
        cli: the case runs a command line (classified by its exit status and stderr).
    """

    name: str
    call: Callable[[Workspace], Any]
    expect: str = REFUSE
    check: Callable[[Any], str | None] | None = None
    cli: bool = False

    @property
    def category(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str = ""


@dataclass
class CliRun:
    command: str
    returncode: int
    stderr: str
    problem: str | None = None  # a refusal that still wrote something
    out: Path | None = None


class SilentlyWrong(Exception):
    """Raised by a case that caught a silently wrong effect beside the call's own outcome (a
    refusal that left a temporary file behind, an output replaced)."""


def first_line(text: str, limit: int = 160) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify_error(case: Case, error: BaseException) -> Result:
    message = str(error).strip()
    what = f"{type(error).__name__}: {first_line(message)}"
    if isinstance(error, SilentlyWrong):
        return Result(case, "broken" if case.expect == OK else "accepted", message)
    if case.expect == OK:
        return Result(case, "broken", f"control refused: {what}")
    if not isinstance(error, FocusVitError):
        return Result(case, "raw", what)
    if "\n" in message:
        return Result(case, "raw", f"{len(message.splitlines())}-line message: {what}")
    if case.expect == RESULT:
        return Result(case, "broken", f"refused instead of handled: {what}")
    return Result(case, "clean", what)


def classify_value(case: Case, value: Any) -> Result:
    problem = case.check(value) if case.check else None
    if case.expect == REFUSE:
        return Result(case, "accepted", problem or f"returned {first_line(repr(value), 100)}")
    if problem:
        return Result(case, "broken" if case.expect == OK else "accepted", problem)
    return Result(case, "ok" if case.expect == OK else "clean", "")


def classify_cli(case: Case, run: CliRun) -> Result:
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    head = first_line(run.stderr)
    if run.returncode == 0:
        if case.expect == REFUSE:
            return Result(case, "accepted", f"exit 0; stderr: {head or '(empty)'}")
        return classify_value(case, run)
    if case.expect in (OK, RESULT):
        return Result(case, "broken", f"exit {run.returncode}: {head}")
    prefix = f"focusvit-{run.command}: error: "
    if "Traceback" in run.stderr or run.returncode != 1 or len(lines) != 1:
        return Result(case, "traceback", f"exit {run.returncode}, {len(lines)} lines: {head}")
    if not lines[0].startswith(prefix):
        return Result(case, "traceback", f"not a '{prefix}' line: {head}")
    if run.problem:
        return Result(case, "accepted", f"refused, but {run.problem}: {head}")
    return Result(case, "clean", head)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Warnings and stray prints of a case stay out of the table."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")) as sink:
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            sink.close()


def run_case(case: Case, workspace: Workspace) -> Result:
    workspace.folder(case.name)
    if case.cli:  # (a subprocess, in a worker thread: no process-wide redirections here)
        return classify_cli(case, case.call(workspace))
    state = torch.random.get_rng_state()
    try:
        with quiet():
            value = case.call(workspace)
    except (Exception, RecursionError, SystemExit) as error:
        return classify_error(case, error)
    finally:
        torch.random.set_rng_state(state)
    return classify_value(case, value)


def run_cases(cases: list[Case], root: Path | None = None, verbose: bool = False) -> list[Result]:
    """Run ``cases`` (CLI cases two at a time in subprocesses, beside the API cases)."""
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="focusvit-hostile-")) if owned else root
    workspace = Workspace(root)
    results: dict[str, Result] = {}
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures: dict[str, Future] = {}
            for case in (c for c in cases if c.cli):
                cli_space = Workspace(root)
                futures[case.name] = pool.submit(run_case, case, cli_space)
            for case in (c for c in cases if not c.cli):
                results[case.name] = run_case(case, workspace)
                report_progress(results[case.name], verbose)
            for name, future in futures.items():
                results[name] = future.result()
                report_progress(results[name], verbose)
    finally:
        if owned:
            unlock(root)
            shutil.rmtree(root, ignore_errors=True)
    return [results[c.name] for c in cases]


def report_progress(result: Result, verbose: bool) -> None:
    if verbose:
        print(f"{result.outcome:9s} {result.case.name}: {result.detail}", file=sys.stderr)


def unlock(root: Path) -> None:
    """Make the read-only folders of the cases writable again, so they can be removed."""
    for folder, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)


# ----------------------------------------------------------------------------- fixtures
def png(path: Path, size: tuple[int, int] = (16, 16), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 3) -> Path:
    for k, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i}.png", colour=(60 * k, 20 * i, 100))
    return root


def split_folder(ws: Workspace) -> tuple[Path, Path]:
    """An image folder of classes a..d and a split file: val a b c, novel b c d."""
    root = image_folder(ws.tmp / "data", classes=("a", "b", "c", "d"))
    split = ws.tmp / "splits.txt"
    split.write_text("val a\nval b\nval c\nnovel b\nnovel c\nnovel d\n")
    return root, split


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(path: Path, side: int) -> Path:
    """A tiny PNG file declaring a ``side`` x ``side`` 1-bit image (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (side // 8 + 1) * 4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )
    return path


def checkpoint(ws: Workspace, meta: dict | str | None) -> Path:
    """A ``.safetensors`` file of the tiny ViT's weights with focusvit metadata ``meta``."""
    from safetensors.torch import save_file

    path = ws.tmp / "model.safetensors"
    state = {k: v.contiguous() for k, v in ws.model().model.state_dict().items()}
    text = meta if isinstance(meta, str) or meta is None else json.dumps(meta)
    save_file(state, str(path), metadata=None if text is None else {"focusvit": text})
    return path


def hf_folder(ws: Workspace, config_class: str = "ViTConfig", **extra: Any) -> Path:
    import transformers

    folder = ws.tmp / "hf"
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = getattr(transformers, config_class)(intermediate_size=32, **small)
    config.save_pretrained(folder)
    if extra:
        values = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**values, **extra}))
    return folder


@contextlib.contextmanager
def no_prompt() -> Iterator[None]:
    """``input()`` (a y/N prompt) fails the case instead of waiting."""
    real = builtins.input

    def prompted(*args: Any) -> str:
        raise RuntimeError(f"prompted the user: {args[0] if args else ''}".strip())

    builtins.input = prompted
    try:
        yield
    finally:
        builtins.input = real


@contextlib.contextmanager
def no_gpu() -> Iterator[None]:
    real = torch.cuda.is_available, torch.cuda.device_count
    torch.cuda.is_available, torch.cuda.device_count = (lambda: False), (lambda: 0)
    try:
        yield
    finally:
        torch.cuda.is_available, torch.cuda.device_count = real


def batch(ws: Workspace, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


def support(n_way: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2 * n_way, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return images, torch.arange(n_way).repeat(2)


def scenes(split: str = "novel", classes: int = 3) -> focusvit.SyntheticScenes:
    return focusvit.SyntheticScenes(split, images_per_class=3, num_classes=classes)


SPEC = dict(n_way=3, k_shot=1, n_query=2, episodes=1)


def spec(**overrides: Any) -> focusvit.EpisodeSpec:
    return focusvit.EpisodeSpec(**{**SPEC, **overrides})


def evaluate(ws: Workspace, data: Any = None, **options: Any) -> Any:
    """``focusvit.evaluate`` on the tiny ViT, 3-way 1-shot, one episode, one step."""
    options.setdefault("episodes", spec())
    if options.get("solver") is None:
        options.setdefault("tuner", "lora")
        options.setdefault("steps", 1)
    return focusvit.evaluate(
        ws.model(), scenes() if data is None else data, progress=False, **options
    )


def fit(ws: Workspace, images: Any = None, labels: Any = None, **options: Any) -> Any:
    """Enter and leave ``fit_task`` (one step); returns the predictions on the support set."""
    x, y = support()
    images = x if images is None else images
    labels = y if labels is None else labels
    options.setdefault("steps", 1)
    with focusvit.fit_task(ws.model(), images, labels, **options) as task:
        return task.predict(x)


def tensor_data(n: int = 6, **kwargs: Any) -> focusvit.TensorDataset:
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
    labels = kwargs.pop("labels", [i % 3 for i in range(n)])
    return focusvit.TensorDataset(images, labels, **kwargs)


def make(name: str, call: Callable[[Workspace], Any], **kwargs: Any) -> Case:
    return Case(name, call, **kwargs)


# ----------------------------------------------------------------------------- loading
def loading_cases() -> list[Case]:
    load = focusvit.load_backbone
    cases = [
        make("loading.spec_none", lambda ws: load(None)),
        make("loading.spec_int", lambda ws: load(123)),
        make("loading.spec_empty", lambda ws: load("")),
        make("loading.spec_blank", lambda ws: load("   ")),
        make("loading.spec_unknown_prefix", lambda ws: load("nope:thing")),
        make("loading.spec_unknown_tiny", lambda ws: load("tiny:nope")),
        make("loading.spec_list", lambda ws: load(["tiny:timm-vit"])),
        make("loading.missing_file", lambda ws: load(ws.tmp / "model.safetensors")),
        make("loading.empty_folder", lambda ws: load(ws.tmp)),
        make("loading.text_file", lambda ws: load(write(ws.tmp / "notes.txt", "hello"))),
        make("loading.zero_byte_file", lambda ws: load(write(ws.tmp / "m.safetensors", ""))),
        make("loading.garbage_file", lambda ws: load(write(ws.tmp / "m.safetensors", "x" * 99))),
        make("loading.pretrained_str", lambda ws: load("tiny:timm-vit", pretrained="yes")),
        make("loading.pretrained_int", lambda ws: load("tiny:timm-vit", pretrained=1)),
        make("loading.image_size_odd", lambda ws: load("tiny:timm-vit", image_size=33)),
        make("loading.image_size_negative", lambda ws: load("tiny:timm-vit", image_size=-32)),
        make("loading.image_size_zero", lambda ws: load("tiny:timm-vit", image_size=0)),
        make("loading.image_size_str", lambda ws: load("tiny:timm-vit", image_size="abc")),
        make("loading.image_size_float", lambda ws: load("tiny:timm-vit", image_size=32.5)),
        make("loading.image_size_triple", lambda ws: load("tiny:timm-vit", image_size=(1, 2, 3))),
        make("loading.resize_unknown", lambda ws: load("tiny:timm-vit", resize="bogus")),
        make("loading.resize_int", lambda ws: load("tiny:timm-vit", resize=5)),
        make("loading.kwargs_tiny_depth", lambda ws: load("tiny:timm-vit", depth=1)),
        make(
            "loading.kwargs_timm_depth_abc",
            lambda ws: load("timm:vit_tiny_patch16_224", pretrained=False, depth="abc"),
        ),
        make(
            "loading.kwargs_timm_unknown",
            lambda ws: load("timm:vit_tiny_patch16_224", pretrained=False, no_such_arg=1),
        ),
        make("loading.kwargs_hf", lambda ws: load(hf_folder(ws), pretrained=False, depth=1)),
        make("loading.reset_head_negative", lambda ws: ws.fresh().reset_head(-1)),
        make("loading.reset_head_float", lambda ws: ws.fresh().reset_head(2.5)),
        make("loading.reset_head_str", lambda ws: ws.fresh().reset_head("3")),
        make("loading.reset_head_hf_negative", lambda ws: ws.fresh("hf-vit").reset_head(-1)),
        make("loading.backbone_spec_classes_str", lambda ws: backbone_spec(num_classes="5")),
        make("loading.backbone_spec_classes_float", lambda ws: backbone_spec(num_classes=2.5)),
        make("loading.backbone_spec_size_str", lambda ws: backbone_spec(image_size="abc")),
        make("loading.backbone_spec_size_negative", lambda ws: backbone_spec(image_size=-1)),
        make("loading.checkpoint_no_spec", lambda ws: load(checkpoint(ws, {"num_classes": 5}))),
        make(
            "loading.checkpoint_other_spec",
            lambda ws: load(checkpoint(ws, {"spec": "tiny:hf-vit"})),
        ),
        make("loading.checkpoint_self_spec", self_checkpoint),
        make(
            "loading.checkpoint_bad_classes",
            lambda ws: load(checkpoint(ws, {"spec": "tiny:timm-vit", "num_classes": "x"})),
        ),
        make("loading.checkpoint_meta_not_json", lambda ws: load(checkpoint(ws, "{not json"))),
        make("loading.checkpoint_meta_list", lambda ws: load(checkpoint(ws, "[1, 2]"))),
        make("loading.checkpoint_no_meta", lambda ws: load(checkpoint(ws, None))),
        make(
            "loading.checkpoint_spec_unknown",
            lambda ws: load(checkpoint(ws, {"spec": "nope:nothing"})),
        ),
        make(
            "loading.checkpoint_kwargs_str",
            lambda ws: load(checkpoint(ws, {"spec": "tiny:timm-vit", "model_kwargs": "abc"})),
        ),
        make("loading.checkpoint_truncated", truncated_checkpoint),
        make("loading.hf_without_weights", lambda ws: load(hf_folder(ws))),
        make("loading.hf_pickled_weights", pickled_folder),
        make(
            "loading.hf_text_config", lambda ws: load(hf_folder(ws, "BertConfig"), pretrained=False)
        ),
        make("loading.hf_auto_map", auto_map_folder),
        make("loading.hf_config_not_json", broken_config_folder),
        make("loading.hf_config_list", lambda ws: load(write_config(ws, "[1, 2]"))),
        make("loading.save_spec_str", lambda ws: save(ws, "tiny:timm-vit")),
        make("loading.control_tiny", lambda ws: load("tiny:timm-vit", num_classes=3), expect=OK),
        make("loading.control_round_trip", round_trip, expect=OK),
    ]
    for value in (2.5, "5", True, -1, NAN, [5]):
        cases.append(
            make(
                f"loading.num_classes_{label(value)}",
                lambda ws, v=value: load("tiny:timm-vit", num_classes=v),
            )
        )
    return cases


def label(value: Any) -> str:
    """A short case-name suffix for ``value``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, str):
        return f"str_{value}".replace(" ", "_").replace(".", "p") if value else "str_empty"
    if isinstance(value, int) and abs(value) >= 2**63:
        return f"2pow{value.bit_length() - 1}"
    if isinstance(value, list | tuple):
        return "list_" + "_".join(label(v) for v in value) if value else "list_empty"
    return str(value).replace("-", "minus").replace(".", "p").replace("+", "")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def backbone_spec(**kwargs: Any) -> Any:
    from focusvit.runs import BackboneSpec

    return BackboneSpec(spec="tiny:timm-vit", **kwargs)


def self_checkpoint(ws: Workspace) -> Any:
    return focusvit.load_backbone(checkpoint(ws, {"spec": str(ws.tmp / "model.safetensors")}))


def truncated_checkpoint(ws: Workspace) -> Any:
    path = checkpoint(ws, {"spec": "tiny:timm-vit"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return focusvit.load_backbone(path)


def pickled_folder(ws: Workspace) -> Any:
    folder = hf_folder(ws)
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    real = torch.load

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torch.load was called on a pickled file")

    torch.load = refuse
    try:
        return focusvit.load_backbone(folder)
    finally:
        torch.load = real


def auto_map_folder(ws: Workspace) -> Any:
    folder = hf_folder(ws, auto_map={"AutoModel": "modeling.Model"})
    (folder / "modeling.py").write_text("raise RuntimeError('custom code of the folder ran')\n")
    with no_prompt():
        return focusvit.load_backbone(folder, pretrained=False)


def write_config(ws: Workspace, text: str) -> Path:
    folder = ws.tmp / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    return folder


def broken_config_folder(ws: Workspace) -> Any:
    return focusvit.load_backbone(write_config(ws, '{"model_type": "vit", '), pretrained=False)


def save(ws: Workspace, spec_value: Any, path: Path | None = None) -> Path:
    return focusvit.save_backbone(ws.model(), path or ws.tmp / "m.safetensors", spec_value)


def round_trip(ws: Workspace) -> Any:
    path = save(ws, {"spec": "tiny:timm-vit"})
    return focusvit.load_backbone(path)


# ----------------------------------------------------------------------------- preprocess
def preprocess_cases() -> list[Case]:
    def pre(value: Callable[[Workspace], Any], **kwargs: Any) -> Callable[[Workspace], Any]:
        return lambda ws: ws.model().preprocess(value(ws), **kwargs)

    photo = Image.new("RGB", (40, 30), (10, 200, 30))
    cases = [
        make("preprocess.none", pre(lambda ws: None)),
        make("preprocess.int", pre(lambda ws: 123)),
        make("preprocess.float", pre(lambda ws: 1.5)),
        make("preprocess.bytes", pre(lambda ws: b"abc")),
        make("preprocess.png_bytes", pre(lambda ws: b"\x89PNG\r\n\x1a\n")),
        make("preprocess.empty_list", pre(lambda ws: [])),
        make("preprocess.list_of_none", pre(lambda ws: [None])),
        make("preprocess.list_of_int", pre(lambda ws: [123])),
        make("preprocess.dict", pre(lambda ws: {"a": photo})),
        make("preprocess.missing_path", pre(lambda ws: [ws.tmp / "nope.png"])),
        make("preprocess.folder", pre(lambda ws: [ws.tmp])),
        make("preprocess.text_as_png", pre(lambda ws: [write(ws.tmp / "x.png", "not an image")])),
        make("preprocess.zero_byte_png", pre(lambda ws: [write(ws.tmp / "x.png", "")])),
        make("preprocess.bomb_error", pre(lambda ws: [bomb_png(ws.tmp / "bomb.png", 100_000)])),
        make("preprocess.bomb_warning", pre(lambda ws: [bomb_png(ws.tmp / "bomb.png", 10_000)])),
        make("preprocess.tensor_chw", pre(lambda ws: torch.rand(3, 40, 40))),
        make("preprocess.tensor_in_list", pre(lambda ws: [torch.rand(3, 40, 40)])),
        make("preprocess.array_empty", pre(lambda ws: [np.zeros((0, 0, 3), np.uint8)])),
        make("preprocess.array_5_channels", pre(lambda ws: [np.zeros((8, 8, 5), np.uint8)])),
        make("preprocess.array_4d", pre(lambda ws: [np.zeros((1, 8, 8, 3), np.uint8)])),
        make("preprocess.array_nan", pre(lambda ws: [np.full((8, 8, 3), NAN, np.float32)])),
        make("preprocess.array_object", pre(lambda ws: [np.array([[None]], dtype=object)])),
        make("preprocess.array_complex", pre(lambda ws: [np.zeros((8, 8, 3), np.complex64)])),
        make("preprocess.size_negative", pre(lambda ws: [photo], size=-1)),
        make("preprocess.size_str", pre(lambda ws: [photo], size="abc")),
        make("preprocess.resize_unknown", pre(lambda ws: [photo], resize="bogus")),
        make("preprocess.load_images_none", lambda ws: focusvit.load_images(None)),
        make("preprocess.load_images_int", lambda ws: focusvit.load_images(123)),
        make("preprocess.load_images_list_none", lambda ws: focusvit.load_images([None])),
        make("preprocess.load_images_missing", lambda ws: focusvit.load_images(ws.tmp / "x.png")),
        make("preprocess.load_images_empty_dir", lambda ws: focusvit.load_images(ws.tmp)),
        make("preprocess.masks_none", lambda ws: ws.model().preprocess_masks([None])),
        make("preprocess.masks_empty", lambda ws: ws.model().preprocess_masks([])),
        make("preprocess.control_pil", pre(lambda ws: [photo]), expect=OK),
        make(
            "preprocess.control_uint8", pre(lambda ws: [np.zeros((9, 7, 3), np.uint8)]), expect=OK
        ),
    ]
    return cases


# ----------------------------------------------------------------------------- explain
def explain_cases() -> list[Case]:
    def explain(images: Callable[[Workspace], Any], **kwargs: Any) -> Callable[[Workspace], Any]:
        kwargs.setdefault("method", "attention")
        return lambda ws: focusvit.explain(ws.model(), images(ws), **kwargs)

    def prompts(**kwargs: Any) -> Callable[[Workspace], Any]:
        return lambda ws: focusvit.make_prompts(
            focusvit.explain(ws.model(), batch(ws), method="attention"), **kwargs
        )

    one = batch
    cases = [
        make("explain.images_none", explain(lambda ws: None)),
        make("explain.images_int", explain(lambda ws: 123)),
        make("explain.images_bytes", explain(lambda ws: b"abc")),
        make("explain.images_empty_list", explain(lambda ws: [])),
        make("explain.images_empty_batch", explain(lambda ws: torch.empty(0, 3, 32, 32))),
        make("explain.images_int_tensor", explain(lambda ws: torch.zeros(1, 3, 32, 32).long())),
        make("explain.images_one_channel", explain(lambda ws: torch.zeros(1, 1, 32, 32))),
        make("explain.images_2d", explain(lambda ws: torch.zeros(32, 32))),
        make("explain.images_nan", explain(lambda ws: torch.full((1, 3, 32, 32), NAN))),
        make("explain.images_inf", explain(lambda ws: torch.full((1, 3, 32, 32), INF))),
        make("explain.images_odd_size", explain(lambda ws: torch.zeros(1, 3, 33, 33))),
        make("explain.images_tiny", explain(lambda ws: torch.zeros(1, 3, 4, 4))),
        make("explain.method_unknown", explain(one, method="nope")),
        make("explain.method_int", explain(one, method=123)),
        make("explain.method_none", explain(one, method=None)),
        make("explain.option_unknown", explain(one, no_such_option=1)),
        make("explain.rollout_discard_2", explain(one, method="rollout", discard_ratio=2.0)),
        make("explain.rollout_fusion_unknown", explain(one, method="rollout", head_fusion="x")),
        make("explain.gradcam_layer_unknown", explain(one, method="gradcam", layer="nope")),
        make("explain.control_cam_on_vit", explain(one, method="cam"), expect=OK),
        make("explain.target_tensor_long", explain(one, target=torch.tensor([0, 1, 2]))),
        make("explain.target_tensor_2d", explain(one, target=torch.zeros(1, 2).long())),
        make("explain.target_callable_shape", explain(one, target=lambda logits: logits)),
        make("explain.prompts_top_k_0", prompts(top_k=0)),
        make("explain.prompts_top_k_1000", prompts(top_k=1000)),
        make("explain.prompts_top_k_float", prompts(top_k=2.5)),
        make("explain.prompts_fraction_2", prompts(top_fraction=2.0)),
        make("explain.prompts_fraction_nan", prompts(top_fraction=NAN)),
        make("explain.prompts_coverage_2", prompts(coverage=2.0)),
        make("explain.prompts_two_sizes", prompts(top_k=2, top_fraction=0.5)),
        make("explain.prompts_weighting", prompts(weighting="bogus")),
        make("explain.prompts_none", lambda ws: focusvit.make_prompts(None)),
        make(
            "explain.prompts_nan_scores", lambda ws: focusvit.make_prompts(torch.full((4, 4), NAN))
        ),
        make("explain.deletion_steps_negative", lambda ws: curve(ws, steps=-1)),
        make("explain.deletion_steps_float", lambda ws: curve(ws, steps=2.5)),
        make("explain.deletion_baseline_unknown", lambda ws: curve(ws, baseline="bogus")),
        make("explain.pointing_mask_shape", pointing_wrong_mask),
        make("explain.control_attention", explain(one), expect=OK),
        make("explain.control_prompts", prompts(top_k=3), expect=OK),
    ]
    for target in ("cat", 1.5, -1, 99, True, NAN):
        cases.append(make(f"explain.target_{label(target)}", explain(one, target=target)))
    cases.append(make("explain.target_float_tensor", explain(one, target=torch.tensor([0.5]))))
    return cases


def curve(ws: Workspace, **kwargs: Any) -> Any:
    x = batch(ws)
    scores = focusvit.explain(ws.model(), x, method="attention")
    return focusvit.deletion(ws.model(), x, scores, **kwargs)


def pointing_wrong_mask(ws: Workspace) -> Any:
    scores = focusvit.explain(ws.model(), batch(ws), method="attention")
    return focusvit.pointing_game(scores, torch.ones(2, 5, 7, dtype=torch.bool))


# ----------------------------------------------------------------------------- fit_task
def fit_task_cases() -> list[Case]:
    x, y = support()
    cases = [
        make(
            "fit_task.class_without_support",
            lambda ws: fit(ws, labels=torch.tensor([0, 0, 2, 2, 0, 2])),
        ),
        make("fit_task.float_labels", lambda ws: fit(ws, labels=y.float())),
        make("fit_task.negative_labels", lambda ws: fit(ws, labels=y - 1)),
        make("fit_task.labels_2d", lambda ws: fit(ws, labels=y[:, None])),
        make("fit_task.labels_list", lambda ws: fit(ws, labels=[0, 1, 2, 0, 1, 2])),
        make("fit_task.labels_too_few", lambda ws: fit(ws, labels=y[:2])),
        make("fit_task.labels_bool", lambda ws: fit(ws, labels=y.bool())),
        make("fit_task.uint8_batch", lambda ws: fit(ws, images=(x * 50).to(torch.uint8))),
        make("fit_task.empty_batch", lambda ws: fit(ws, x[:0], torch.tensor([], dtype=torch.long))),
        make("fit_task.list_batch", lambda ws: fit(ws, images=[x])),
        make("fit_task.numpy_batch", lambda ws: fit(ws, images=x.numpy())),
        make("fit_task.nan_batch", lambda ws: fit(ws, images=torch.full_like(x, NAN))),
        make("fit_task.chw_batch", lambda ws: fit(ws, images=x[0], labels=y[:1])),
        make("fit_task.one_channel", lambda ws: fit(ws, images=x[:, :1])),
        make("fit_task.tuner_unknown", lambda ws: fit(ws, tuner="nope")),
        make("fit_task.tuner_int", lambda ws: fit(ws, tuner=123)),
        make("fit_task.tuner_options_unknown", lambda ws: fit(ws, tuner_options={"nope": 1})),
        make("fit_task.lora_rank_0", lambda ws: fit(ws, tuner_options={"rank": 0})),
        make("fit_task.lora_alpha_str", lambda ws: fit(ws, tuner_options={"alpha": "1"})),
        make("fit_task.lora_dropout_str", lambda ws: fit(ws, tuner_options={"dropout": "0.1"})),
        make("fit_task.lora_alpha_inf", lambda ws: fit(ws, tuner_options={"alpha": INF})),
        make("fit_task.fort_str", lambda ws: fit(ws, fort="yes")),
        make("fit_task.fort_layers_5", lambda ws: fit(ws, fort=focusvit.FortConfig(layers=[5]))),
        make("fit_task.steps_negative", lambda ws: fit(ws, steps=-1)),
        make("fit_task.steps_float", lambda ws: fit(ws, steps=2.5)),
        make("fit_task.lr_zero", lambda ws: fit(ws, lr=0)),
        make("fit_task.lr_str", lambda ws: fit(ws, lr="1e-3")),
        make("fit_task.optimizer_unknown", lambda ws: fit(ws, optimizer="nope")),
        make("fit_task.head_init_unknown", lambda ws: fit(ws, head_init="nope")),
        make("fit_task.head_init_text_vit", lambda ws: fit(ws, head_init="text")),
        make("fit_task.unknown_keyword", lambda ws: fit(ws, no_such_option=1)),
        make("fit_task.options_dict", lambda ws: fit(ws, options={"lr": 1e-3})),
        make("fit_task.vpt_on_swin", lambda ws: fit_swin(ws, tuner="vpt")),
        make("fit_task.lora_on_cnn", lambda ws: fit_cnn(ws, tuner="lora")),
        make("fit_task.control_lora", lambda ws: fit(ws), expect=OK, check=predictions_ok),
        make("fit_task.control_rng_kept", rng_kept, expect=OK, check=truthy("global RNG changed")),
    ]
    return cases


def fit_swin(ws: Workspace, **options: Any) -> Any:
    x = torch.randn(3, 3, 64, 64)
    with focusvit.fit_task(ws.model("timm-swin"), x, torch.arange(3), steps=1, **options):
        return None


def fit_cnn(ws: Workspace, **options: Any) -> Any:
    x = torch.randn(3, 3, 32, 32)
    with focusvit.fit_task(ws.model("timm-cnn"), x, torch.arange(3), steps=1, **options):
        return None


def predictions_ok(value: Any) -> str | None:
    if not isinstance(value, torch.Tensor) or value.shape != (6,):
        return f"predictions {value!r}"
    return None


def rng_kept(ws: Workspace) -> bool:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fit(ws, steps=2)
    return torch.equal(torch.rand(3), expected)


def truthy(problem: str) -> Callable[[Any], str | None]:
    return lambda value: None if value is True else problem


# ----------------------------------------------------------------------------- configs
def configs_cases() -> list[Case]:
    from focusvit.baselines import TrainConfig
    from focusvit.finetune import FitOptions, FortConfig, LoraConfig, SSFConfig, VPTConfig

    cases: list[Case] = []

    def add(prefix: str, build: Callable[..., Any], key: str, values: list[Any]) -> None:
        for value in values:
            cases.append(
                make(
                    f"configs.{prefix}_{key}_{label(value)}",
                    lambda ws, v=value: build(**{key: v}),
                )
            )

    add("fort", FortConfig, "alpha", [NAN, INF, -0.1, "0.1", [0.1]])
    add("fort", FortConfig, "tau", [0, NAN, INF, -1, "1"])
    add("fort", FortConfig, "top_k", [0, 2.5, "3", [1], True])
    add("fort", FortConfig, "top_fraction", [0, 2, NAN, "0.5"])
    add("fort", FortConfig, "layers", [[], "first", ["a"], [1.5], 5, None])
    add("fort", FortConfig, "query_rows", ["x"])
    add("fort", FortConfig, "weighting", ["x"])
    for value in ("nope", 3):  # checked when the prompts are made: through fit_task
        cases.append(
            make(
                f"configs.fort_explainer_{label(value)}_fit",
                lambda ws, v=value: fit(ws, fort=FortConfig(explainer=v)),
            )
        )
    add("fort", FortConfig, "target_sum", ["x"])
    add("fort", FortConfig, "shift_mask", ["yes"])
    for layers in ([5], [2], [-3]):
        cases.append(
            make(
                f"configs.fort_layers_{label(layers)}_on_2_blocks",
                lambda ws, v=layers: FortConfig(layers=v).layer_indices(2),
            )
        )
    add("fit_options", FitOptions, "lr", [0, -1, INF, -INF, NAN, "1e-3", True])
    add("fit_options", FitOptions, "steps", [-1, 2.5, "3", NAN])
    add("fit_options", FitOptions, "weight_decay", [NAN, -1, "0.1"])
    add("fit_options", FitOptions, "momentum", [NAN, 2, "0.9"])
    add("fit_options", FitOptions, "optimizer", ["nope"])
    add("fit_options", FitOptions, "head_init", ["nope", None])
    add("train", TrainConfig, "lr", [0, -1, INF, NAN, "0.1"])
    add("train", TrainConfig, "episodes", [0, 2.5])
    add("train", TrainConfig, "weight_decay", [NAN, -1, "0"])
    add("train", TrainConfig, "grad_clip", [NAN, INF])
    add("train", TrainConfig, "momentum", [2, NAN])
    add("train", TrainConfig, "lr_milestones", [["a"], [2], "0.5"])
    add("train", TrainConfig, "seed", [-1, 1.5, 2**70])
    add("episode_spec", focusvit.EpisodeSpec, "seed", [-1, 1.5, 2**70, True, "0"])
    add("episode_spec", focusvit.EpisodeSpec, "n_way", [1, 0, 2.5])
    add("episode_spec", focusvit.EpisodeSpec, "k_shot", [0])
    add("episode_spec", focusvit.EpisodeSpec, "n_query", [0])
    add("episode_spec", focusvit.EpisodeSpec, "episodes", [0, "5"])
    add("episode_spec", focusvit.EpisodeSpec, "split", [3])
    add("lora", LoraConfig, "rank", [0, 2.5])
    add("lora", LoraConfig, "alpha", [NAN, INF, "1"])
    add("lora", LoraConfig, "dropout", [1.0, "0.1"])
    add("lora", LoraConfig, "targets", [[], [""], 3])
    add("vpt", VPTConfig, "num_tokens", [0, 2.5])
    add("vpt", VPTConfig, "init_std", [0, INF, "x"])
    add("vpt", VPTConfig, "deep", ["yes"])
    add("ssf", SSFConfig, "targets", [[], 3])
    cases += [
        make("configs.evaluate_tasks_per_batch_2p5", lambda ws: evaluate(ws, tasks_per_batch=2.5)),
        make("configs.evaluate_tasks_per_batch_0", lambda ws: evaluate(ws, tasks_per_batch=0)),
        make("configs.evaluate_tasks_per_batch_str", lambda ws: evaluate(ws, tasks_per_batch="2")),
        make("configs.evaluate_episode_ids_dup", lambda ws: evaluate(ws, episode_ids=[0, 0])),
        make("configs.evaluate_episode_ids_negative", lambda ws: evaluate(ws, episode_ids=[-1])),
        make("configs.evaluate_episode_ids_str", lambda ws: evaluate(ws, episode_ids="01")),
        make("configs.evaluate_tuner_unknown", lambda ws: evaluate(ws, tuner="nope")),
        make("configs.evaluate_solver_unknown", lambda ws: evaluate(ws, solver="nope")),
        make(
            "configs.evaluate_tuner_and_solver",
            lambda ws: evaluate(ws, solver="prototype", tuner="lora"),
        ),
        make(
            "configs.evaluate_solver_with_fort",
            lambda ws: evaluate(ws, solver="prototype", fort=True),
        ),
        make(
            "configs.evaluate_linear_with_fort", lambda ws: evaluate(ws, tuner="linear", fort=True)
        ),
        make(
            "configs.evaluate_solver_with_lr", lambda ws: evaluate(ws, solver="prototype", lr=1e-3)
        ),
        make("configs.evaluate_device_tpu", lambda ws: evaluate(ws, device="tpu")),
        make("configs.evaluate_device_int", lambda ws: evaluate(ws, device=3)),
        make("configs.evaluate_device_cuda_no_gpu", cuda_without_gpu),
        make("configs.evaluate_episodes_dict", lambda ws: evaluate(ws, episodes={"n_way": 3})),
        make("configs.evaluate_too_few_classes", lambda ws: evaluate(ws, episodes=spec(n_way=5))),
        make("configs.evaluate_too_few_images", lambda ws: evaluate(ws, episodes=spec(k_shot=3))),
        make("configs.evaluate_dataset_list", lambda ws: evaluate(ws, data=[], solver="prototype")),
        make(
            "configs.evaluate_transform_unknown",
            lambda ws: evaluate(ws, solver="prototype", feature_transform="x"),
        ),
        make("configs.evaluate_unknown_keyword", lambda ws: evaluate(ws, no_such_option=1)),
        make(
            "configs.evaluate_fort_alpha_nan", lambda ws: evaluate(ws, fort=FortConfig(alpha=NAN))
        ),
        make("configs.split_val_on_novel_folder", split_mismatch),
        make("configs.select_alpha_novel_folder", lambda ws: alpha_on(ws, novel_folder(ws))),
        make("configs.select_alpha_novel_scenes", lambda ws: alpha_on(ws, scenes("novel"))),
        make(
            "configs.select_alpha_novel_tensors",
            lambda ws: alpha_on(ws, tensor_data(split="novel")),
        ),
        make("configs.select_alpha_negative", lambda ws: alpha_on(ws, scenes("val"), [-1.0])),
        make("configs.select_alpha_nan", lambda ws: alpha_on(ws, scenes("val"), [NAN])),
        make("configs.select_alpha_inf", lambda ws: alpha_on(ws, scenes("val"), [INF])),
        make("configs.select_alpha_str", lambda ws: alpha_on(ws, scenes("val"), "abc")),
        make("configs.control_episode_spec", lambda ws: spec(seed=3), expect=OK),
        make(
            "configs.control_evaluate_prototype",
            lambda ws: evaluate(ws, solver="prototype"),
            expect=OK,
            check=has_accuracy,
        ),
    ]
    return cases


def cuda_without_gpu(ws: Workspace) -> Any:
    with no_gpu():
        return evaluate(ws, device="cuda")


def novel_folder(ws: Workspace) -> Any:
    root, split = split_folder(ws)
    return focusvit.ImageFolderDataset(root, split="novel", split_file=split)


def split_mismatch(ws: Workspace) -> Any:
    data = novel_folder(ws)
    return evaluate(ws, data, solver="prototype", episodes=spec(split="val"))


def alpha_on(ws: Workspace, data: Any, alphas: Any = (0.5,)) -> Any:
    from focusvit.finetune import FitOptions, select_alpha

    return select_alpha(
        ws.model(), data, "lora", alphas, spec(), options=FitOptions(steps=1), progress=False
    )


def has_accuracy(result: Any) -> str | None:
    if not result.accuracies or not all(0 <= a <= 1 for a in result.accuracies):
        return f"no valid accuracy: {result}"
    return None


# ----------------------------------------------------------------------------- divergence
def divergence_cases() -> list[Case]:
    from focusvit.finetune import FortConfig

    return [
        make(
            "divergence.evaluate_lr_1e6",
            lambda ws: evaluate(ws, tuner="full", lr=1e6, steps=None),
            expect=RESULT,
            check=all_diverged,
        ),
        make(
            "divergence.evaluate_lr_1e6_fort",
            lambda ws: evaluate(ws, tuner="full", fort=FortConfig(), lr=1e6, steps=None),
            expect=RESULT,
            check=all_diverged,
        ),
        make("divergence.evaluate_lr_inf", lambda ws: evaluate(ws, tuner="full", lr=INF)),
        make("divergence.evaluate_lr_nan", lambda ws: evaluate(ws, tuner="full", lr=NAN)),
        make("divergence.evaluate_lr_0", lambda ws: evaluate(ws, tuner="full", lr=0)),
        make("divergence.evaluate_lr_negative", lambda ws: evaluate(ws, tuner="full", lr=-1)),
        make("divergence.fit_task_lr_1e6", lambda ws: fit(ws, tuner="full", lr=1e6, steps=None)),
        make(
            "divergence.fit_task_alpha_1e12",
            lambda ws: fit(ws, tuner="full", fort=FortConfig(alpha=1e12), lr=1e3, steps=None),
        ),
        make(
            "divergence.baseline_lr_1e6",
            train_baseline_lr_1e6,
            expect=EITHER,
            check=losses_finite,
        ),
    ]


def all_diverged(result: Any) -> str | None:
    if result.accuracies or result.diverged != result.episodes:
        return f"recorded as accuracy: {result}"
    return None


def train_baseline_lr_1e6(ws: Workspace) -> list[float]:
    """Episodic training of the CAN baseline on a tiny Conv-4 with lr=1e6 (NaN by episode 5):
    a NaN loss must stop it, never hand back NaN weights as a trained model. Returns the
    losses, NaN appended when a weight is not finite."""
    from focusvit.baselines import TrainConfig, build_baseline, train_episodic

    model = build_baseline("can", encoder="conv4", widths=[8], image_size=48, num_classes=3)
    labels = torch.arange(3).repeat_interleave(4)
    images = torch.randn(len(labels), 3, 48, 48, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        episodes=6, n_way=3, k_shot=1, n_query=2, lr=1e6, validate_every=0, lr_milestones=[]
    )
    result = train_episodic(
        model, focusvit.TensorDataset(images, labels), config=config, progress=False
    )
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return [h["loss"] for h in result.history] + ([] if finite else [NAN])


def losses_finite(losses: list[float]) -> str | None:
    if all(math.isfinite(loss) for loss in losses):
        return None
    return f"trained on NaN without a word (losses {[f'{x:.3g}' for x in losses]})"


# ----------------------------------------------------------------------------- feature cache
def cache_cases() -> list[Case]:
    """The on-disk feature cache must follow the dataset's content: after each change its
    features equal fresh ones and the accuracies with the cache equal those without it."""
    return [
        make(
            "cache.edited_images",
            lambda ws: cached_vs_uncached(ws, recolour),
            expect=RESULT,
            check=same_accuracies,
        ),
        make(
            "cache.swapped_class_folders",
            lambda ws: cached_vs_uncached(ws, swap_classes),
            expect=RESULT,
            check=same_accuracies,
        ),
        make(
            "cache.two_roots_one_cache", two_roots_one_cache, expect=RESULT, check=same_accuracies
        ),
        make(
            "cache.truncated_cache_file",
            lambda ws: cached_vs_uncached(ws, truncate_cache),
            expect=RESULT,
            check=same_accuracies,
        ),
    ]


COLOURS = ((220, 30, 30), (30, 200, 40), (40, 60, 230))


def noisy_folder(root: Path, offset: int = 0) -> Path:
    """Classes a, b, c of noisy images of one colour each (PNG sizes differ with the noise)."""
    for k, (name, colour) in enumerate(zip("abc", COLOURS, strict=True)):
        for i in range(4):
            noisy_png(root / name / f"{i}.png", colour, offset + 10 * k + i)
    return root


def noisy_png(path: Path, colour: tuple[int, int, int], seed: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def accuracies(ws: Workspace, root: Path, **options: Any) -> list[float]:
    data = focusvit.ImageFolderDataset(root)
    episodes = spec(episodes=6, seed=1)
    return evaluate(ws, data, solver="prototype", episodes=episodes, **options).accuracies


def cached_vs_uncached(ws: Workspace, change: Callable[[Path, Path], None]) -> tuple:
    """After ``change(root, cache_dir)`` to a dataset whose features are cached on disk:
    ``(accuracies with the cache, without it, whether the cached features equal fresh ones)``."""
    root, cache = noisy_folder(ws.tmp / "data"), ws.tmp / "cache"
    accuracies(ws, root, feature_cache_dir=cache)
    change(root, cache)
    same = same_features(ws, root, cache)
    return (
        accuracies(ws, root, feature_cache_dir=cache),
        accuracies(ws, root, cache_features=False),
        same,
    )


def same_features(ws: Workspace, root: Path, cache: Path) -> bool:
    from focusvit.finetune.features import FeatureCache

    data = focusvit.ImageFolderDataset(root)
    indices = list(range(len(data)))
    cached = FeatureCache(ws.model(), data, directory=cache)(indices)
    fresh = FeatureCache(ws.model(), data)(indices)
    return torch.allclose(cached, fresh, atol=1e-5)


def recolour(root: Path, cache: Path) -> None:
    for i in range(3):  # class a's images take class b's colour, edited in place
        noisy_png(root / "a" / f"{i}.png", COLOURS[1], 500 + i, size=25)


def swap_classes(root: Path, cache: Path) -> None:
    os.rename(root / "b", root / "x")
    os.rename(root / "c", root / "b")
    os.rename(root / "x", root / "c")


def truncate_cache(root: Path, cache: Path) -> None:
    for path in cache.glob("*.safetensors"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def two_roots_one_cache(ws: Workspace) -> tuple:
    one, two = noisy_folder(ws.tmp / "one"), noisy_folder(ws.tmp / "two", offset=1000)
    for i in range(4):  # the second root's class c looks like class a
        noisy_png(two / "c" / f"{i}.png", COLOURS[0], 2000 + i)
    cache = ws.tmp / "cache"
    accuracies(ws, one, feature_cache_dir=cache)
    same = same_features(ws, two, cache)
    cached = accuracies(ws, two, feature_cache_dir=cache)
    return cached, accuracies(ws, two, cache_features=False), same


def same_accuracies(found: tuple) -> str | None:
    cached, uncached, same = found
    if not same:
        return "the cache gave stale features"
    return None if cached == uncached else f"cached {cached} != uncached {uncached}"


# ----------------------------------------------------------------------------- records
def records_cases() -> list[Case]:
    from focusvit.runs import EpisodeLog, atomic_write_text, save_state

    settings = {"x": 1}
    cases = [
        make("records.evaluate_output_symlink", lambda ws: evaluate_to(ws, symlink(ws))),
        make("records.evaluate_output_directory", lambda ws: evaluate_to(ws, ws.tmp)),
        make(
            "records.evaluate_output_fifo", lambda ws: with_fifo(ws, lambda p: evaluate_to(ws, p))
        ),
        make(
            "records.evaluate_output_readonly", lambda ws: evaluate_to(ws, readonly(ws) / "m.jsonl")
        ),
        make("records.evaluate_output_one_line_of_notes", lambda ws: to_notes(ws, "my notes\n")),
        make("records.evaluate_output_notes", lambda ws: to_notes(ws, "my notes\nmore notes\n")),
        make("records.evaluate_output_other_settings", other_settings),
        make("records.evaluate_resume_other_tensors", resume_other_tensors),
        make("records.evaluate_resume_other_root", resume_other_root),
        make(
            "records.episode_log_symlink", lambda ws: EpisodeLog(symlink(ws), "m", settings).open()
        ),
        make(
            "records.episode_log_fifo",
            lambda ws: with_fifo(ws, lambda p: EpisodeLog(p, "m", settings).open()),
        ),
        make("records.atomic_write_symlink", lambda ws: atomic_write_text(symlink(ws), "x")),
        make("records.atomic_write_directory", lambda ws: atomic_write_text(ws.tmp, "x")),
        make(
            "records.atomic_write_readonly",
            lambda ws: atomic_write_text(readonly(ws) / "a.txt", "x"),
        ),
        make("records.save_state_symlink", lambda ws: save_state(symlink(ws), {"step": 1})),
        make("records.save_state_directory", lambda ws: save_state(ws.tmp, {"step": 1})),
        make(
            "records.save_backbone_symlink",
            lambda ws: save(ws, {"spec": "tiny:timm-vit"}, symlink(ws)),
        ),
        make(
            "records.save_backbone_directory",
            lambda ws: save(ws, {"spec": "tiny:timm-vit"}, ws.tmp),
        ),
        make(
            "records.save_backbone_readonly",
            lambda ws: save(ws, {"spec": "tiny:timm-vit"}, readonly(ws) / "m.safetensors"),
        ),
        make(
            "records.save_backbone_fifo",
            lambda ws: with_fifo(ws, lambda p: save(ws, {"spec": "tiny:timm-vit"}, p)),
        ),
        make("records.run_dir_is_file", lambda ws: run_dir(write(ws.tmp / "out", "x"))),
        make("records.overlay_grid_symlink", overlay_to_symlink, expect=EITHER, check=no_problem),
        make("records.read_episode_file_bad_record", bad_record),
        make("records.two_writers_interleaved", two_writers, expect=RESULT, check=both_halves),
        make("records.disk_full_append", disk_full_append),
        make("records.disk_full_atomic_write", disk_full_atomic_write),
        make("records.disk_full_save_state", lambda ws: disk_full_safetensors(ws, "state")),
        make("records.disk_full_save_backbone", lambda ws: disk_full_safetensors(ws, "backbone")),
        make(
            "records.control_evaluate_output",
            lambda ws: evaluate_to(ws, ws.tmp / "runs" / "m.jsonl"),
            expect=OK,
            check=has_accuracy,
        ),
    ]
    return cases


def no_problem(value: str | None) -> str | None:
    return value


def symlink(ws: Workspace) -> Path:
    target = write(ws.tmp / "real.txt", "keep\n")
    link = ws.tmp / "link.jsonl"
    link.symlink_to(target)
    return link


def readonly(ws: Workspace) -> Path:
    folder = ws.tmp / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def with_fifo(ws: Workspace, call: Callable[[Path], Any]) -> Any:
    """``call(fifo)`` with a reader held open, so that opening it to write never blocks."""
    fifo = ws.tmp / "pipe.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return call(fifo)
    finally:
        os.close(reader)


def evaluate_to(ws: Workspace, output: Path, data: Any = None, **options: Any) -> Any:
    options.setdefault("solver", "prototype")
    return evaluate(ws, data, output=output, **options)


def to_notes(ws: Workspace, text: str) -> Any:
    """``evaluate`` writing into a text file that is no episode file (it must be refused, never
    overwritten)."""
    return evaluate_to(ws, write(ws.tmp / "notes.jsonl", text))


def other_settings(ws: Workspace) -> Any:
    path = ws.tmp / "m.jsonl"
    evaluate_to(ws, path, feature_transform="l2n")
    return evaluate_to(ws, path, feature_transform="none")


def resume_other_tensors(ws: Workspace) -> Any:
    path = ws.tmp / "m.jsonl"
    evaluate_to(ws, path, tensor_data(9))
    other = tensor_data(9)
    other.images = other.images + 1
    return evaluate_to(ws, path, focusvit.TensorDataset(other.images, other.labels))


def resume_other_root(ws: Workspace) -> Any:
    path = ws.tmp / "m.jsonl"
    one = image_folder(ws.tmp / "one")
    two = image_folder(ws.tmp / "two")
    png(two / "a" / "0.png", colour=(1, 2, 3))
    evaluate_to(ws, path, focusvit.ImageFolderDataset(one))
    return evaluate_to(ws, path, focusvit.ImageFolderDataset(two))


def run_dir(path: Path) -> Any:
    from focusvit.runs import RunDir

    return RunDir(path, {"a": 1}).check()


def overlay_to_symlink(ws: Workspace) -> Any:
    x = batch(ws)
    scores = focusvit.explain(ws.model(), x, method="attention")
    link = ws.tmp / "grid.png"
    link.symlink_to(write(ws.tmp / "real.png", "keep"))
    focusvit.save_overlay_grid(x.clamp(0, 1), {"attention": scores}, None, link)
    return None if link.is_symlink() else "the symbolic link was replaced by a file"


def two_writers(ws: Workspace) -> list[int]:
    """Two writers of one episode file, interleaved: the second appends episode 5 after the
    first opened the file, then the first rewrites it with its own episodes."""
    from focusvit.runs import EpisodeLog

    path, settings = ws.tmp / "m.jsonl", {"x": 1}
    first, second = EpisodeLog(path, "m", settings), EpisodeLog(path, "m", settings)
    first.open()
    second.open()
    second.append({"method": "m", "episode": 5, "accuracy": 0.25})
    first.rewrite([{"method": "m", "episode": 0, "accuracy": 0.5}])
    return sorted(r["episode"] for r in EpisodeLog(path, "m", settings).records())


def both_halves(episodes: list[int]) -> str | None:
    return None if episodes == [0, 5] else f"episodes {episodes} kept of [0, 5]"


@contextlib.contextmanager
def disk_full_after(allowed: int) -> Iterator[None]:
    """``os.write`` writes ``allowed`` more bytes to files (fd > 2), then fails with ENOSPC."""
    import errno

    real = os.write
    left = {"bytes": allowed}

    def write(fd: int, data: Any) -> int:
        if fd <= 2:
            return real(fd, data)
        if left["bytes"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = real(fd, bytes(data[: left["bytes"]]))
        left["bytes"] -= count
        return count

    os.write = write
    try:
        yield
    finally:
        os.write = real


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def refused_cleanly(folder: Path, call: Callable[[], Any], keep: Path | None = None) -> Any:
    """``call()``; a refusal that leaves a temporary file or changes ``keep`` is silently
    wrong."""
    before = keep.read_bytes() if keep is not None else None
    try:
        return call()
    except Exception as error:
        if not isinstance(error, FocusVitError):
            if leftovers(folder):  # a raw error: kept raw, with what it left behind
                error.args = (f"{error} (and left {leftovers(folder)} behind)",)
            raise
        if leftovers(folder):
            raise SilentlyWrong(f"refused, but left {leftovers(folder)} behind") from None
        if keep is not None and keep.read_bytes() != before:
            raise SilentlyWrong(f"refused, but {keep.name} was changed") from None
        raise


def disk_full_append(ws: Workspace) -> Any:
    from focusvit.runs import EpisodeLog

    log = EpisodeLog(ws.tmp / "m.jsonl", "m", {"x": 1})
    log.open()
    log.append({"method": "m", "episode": 0, "accuracy": 0.5})

    def append() -> None:
        with disk_full_after(7):
            log.append({"method": "m", "episode": 1, "accuracy": 0.5})

    return refused_cleanly(ws.tmp, append, keep=log.path)


def disk_full_atomic_write(ws: Workspace) -> Any:
    from focusvit.runs import atomic_write_text

    path = ws.tmp / "settings.json"
    atomic_write_text(path, "old\n")

    def rewrite() -> None:
        with disk_full_after(3):
            atomic_write_text(path, "a much longer new text\n")

    return refused_cleanly(ws.tmp, rewrite, keep=path)


def disk_full_safetensors(ws: Workspace, what: str) -> Any:
    """``save_state`` / ``save_backbone`` over an existing file when safetensors' writer fails
    as on a full disk (a part of the file written, then its error)."""
    import safetensors.torch

    from focusvit.runs import save_state

    path = ws.tmp / "out.safetensors"
    if what == "state":
        save_state(path, {"w": torch.ones(2), "step": 1})
    else:
        save(ws, {"spec": "tiny:timm-vit"}, path)
    real = safetensors.torch.save_file

    def full(tensors: Any, filename: Any, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\0" * 8)
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    def write() -> Any:
        safetensors.torch.save_file = full
        try:
            if what == "state":
                return save_state(path, {"w": torch.zeros(2), "step": 2})
            return save(ws, {"spec": "tiny:timm-vit"}, path)
        finally:
            safetensors.torch.save_file = real

    return refused_cleanly(ws.tmp, write, keep=path)


def bad_record(ws: Workspace) -> Any:
    from focusvit.runs import read_episode_file

    lines = [{"settings": {}, "method": "m"}, {"method": "m", "episode": "x", "accuracy": []}]
    path = write(ws.tmp / "m.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return read_episode_file(path)


# ----------------------------------------------------------------------------- data files
def data_cases() -> list[Case]:
    from focusvit.data import read_split

    folder = focusvit.ImageFolderDataset
    cases = [
        make("data.split_file_bom", bom_split, expect=RESULT, check=first_class_kept),
        make("data.split_dir_bom", bom_split_dir, expect=RESULT, check=first_class_kept),
        make("data.empty_class_folder", empty_class),
        make("data.root_missing", lambda ws: folder(ws.tmp / "nope")),
        make("data.root_none", lambda ws: folder(None)),
        make("data.root_is_file", lambda ws: folder(write(ws.tmp / "f.txt", "x"))),
        make("data.root_without_images", lambda ws: folder(ws.tmp)),
        make(
            "data.split_without_file", lambda ws: folder(image_folder(ws.tmp / "d"), split="novel")
        ),
        make("data.split_file_missing", lambda ws: read_split(ws.tmp / "nope.txt", "novel")),
        make("data.split_file_undecodable", undecodable_split),
        make("data.split_file_unknown_class", unknown_split_class),
        make("data.split_file_empty_split", empty_split),
        make(
            "data.split_int",
            lambda ws: folder(image_folder(ws.tmp / "d"), split=3, split_file=ws.tmp),
        ),
        make("data.classes_str", lambda ws: folder(image_folder(ws.tmp / "d"), classes="ab")),
        make("data.classes_missing", lambda ws: folder(image_folder(ws.tmp / "d"), classes=["zz"])),
        make("data.corrupt_image_load", corrupt_image),
        make(
            "data.mask_root_missing",
            lambda ws: folder(image_folder(ws.tmp / "d"), mask_root=ws.tmp / "nope"),
        ),
        make(
            "data.tensor_images_list",
            lambda ws: focusvit.TensorDataset([torch.zeros(3, 4, 4)], [0]),
        ),
        make(
            "data.tensor_images_3d", lambda ws: focusvit.TensorDataset(torch.zeros(2, 4, 4), [0, 1])
        ),
        make(
            "data.tensor_labels_float",
            lambda ws: tensor_data(labels=[0.5, 1.5, 2.5, 0.5, 1.5, 2.5]),
        ),
        make("data.tensor_labels_negative", lambda ws: tensor_data(labels=[-1, 0, 1, -1, 0, 1])),
        make("data.tensor_labels_mismatch", lambda ws: tensor_data(labels=[0, 1])),
        make("data.tensor_class_names_short", lambda ws: tensor_data(class_names=["a"])),
        make("data.tensor_labels_str", lambda ws: tensor_data(labels="012012")),
        make("data.tensor_split_int", lambda ws: tensor_data(split=3)),
        make("data.scenes_split_unknown", lambda ws: focusvit.SyntheticScenes("test")),
        make(
            "data.scenes_per_class_negative",
            lambda ws: focusvit.SyntheticScenes(images_per_class=-1),
        ),
        make("data.scenes_per_class_zero", lambda ws: focusvit.SyntheticScenes(images_per_class=0)),
        make(
            "data.scenes_per_class_float", lambda ws: focusvit.SyntheticScenes(images_per_class=2.5)
        ),
        make(
            "data.scenes_per_class_str", lambda ws: focusvit.SyntheticScenes(images_per_class="3")
        ),
        make("data.scenes_classes_negative", lambda ws: focusvit.SyntheticScenes(num_classes=-1)),
        make("data.scenes_classes_zero", lambda ws: focusvit.SyntheticScenes(num_classes=0)),
        make("data.scenes_classes_str", lambda ws: focusvit.SyntheticScenes(num_classes="2")),
        make("data.scenes_seed_negative", lambda ws: focusvit.SyntheticScenes(seed=-1)),
        make(
            "data.sample_episodes_way_float",
            lambda ws: focusvit.sample_episodes([0, 0, 1, 1], 2.5, 1, 1),
        ),
        make(
            "data.sample_episodes_seed_negative",
            lambda ws: focusvit.sample_episodes([0, 0, 1, 1], 2, 1, 1, seed=-1),
        ),
        make(
            "data.sample_episodes_labels_none", lambda ws: focusvit.sample_episodes(None, 2, 1, 1)
        ),
        make(
            "data.sample_episodes_labels_str", lambda ws: focusvit.sample_episodes("0011", 2, 1, 1)
        ),
        make("data.control_folder", lambda ws: folder(image_folder(ws.tmp / "d")), expect=OK),
        make("data.control_scenes_load", lambda ws: scenes().load(0), expect=OK),
    ]
    return cases


def bom_split(ws: Workspace) -> Any:
    root = image_folder(ws.tmp / "d")
    split = ws.tmp / "splits.txt"
    split.write_text("novel a\nnovel b\nval c\n", encoding="utf-8-sig")
    return focusvit.ImageFolderDataset(root, split="novel", split_file=split)


def bom_split_dir(ws: Workspace) -> Any:
    root = image_folder(ws.tmp / "d")
    (ws.tmp / "splits").mkdir()
    (ws.tmp / "splits" / "novel.txt").write_text("a\nb\n", encoding="utf-8-sig")
    return focusvit.ImageFolderDataset(root, split="novel", split_file=ws.tmp / "splits")


def first_class_kept(data: Any) -> str | None:
    return None if data.class_names == ["a", "b"] else f"classes {data.class_names}"


def empty_class(ws: Workspace) -> Any:
    root = image_folder(ws.tmp / "d")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images")
    return focusvit.ImageFolderDataset(root).class_names


def undecodable_split(ws: Workspace) -> Any:
    from focusvit.data import read_split

    path = ws.tmp / "bad.txt"
    path.write_bytes(b"novel \xff\xfe\n")
    return read_split(path, "novel")


def unknown_split_class(ws: Workspace) -> Any:
    root = image_folder(ws.tmp / "d")
    split = write(ws.tmp / "splits.txt", "novel a\nnovel zz\n")
    return focusvit.ImageFolderDataset(root, split="novel", split_file=split)


def empty_split(ws: Workspace) -> Any:
    root = image_folder(ws.tmp / "d")
    split = write(ws.tmp / "splits.txt", "val a\nval b\n")
    return focusvit.ImageFolderDataset(root, split="novel", split_file=split)


def corrupt_image(ws: Workspace) -> Any:
    root = image_folder(ws.tmp / "d")
    write(root / "a" / "0.png", "not a png")
    return focusvit.ImageFolderDataset(root).load(0)


# ----------------------------------------------------------------------------- command lines
EXPLAIN = ("backbone=tiny_timm_vit", "inputs=synthetic:1", "report.deletion_steps=0",
           "explainer=attention", "progress=false")  # fmt: skip
FEWSHOT = ("backbone=tiny_timm_vit", "trainer=smoke", "data.images_per_class=3",
           "episodes.episodes=1", "episodes.n_query=2", "progress=false",
           "report.focus_episodes=0")  # fmt: skip


def cli(
    command: str,
    *argv: str,
    out: str = "new",
    env: dict | None = None,
    prepare: Callable[[Workspace], list[str]] | None = None,
) -> Callable:
    """A case running ``focusvit-<command>`` with the cheap settings, ``argv`` and an ``out``:
    ``new`` (a fresh folder: after a refusal it must not hold ``settings.json``), ``file`` (an
    existing file, which must keep its text) or ``readonly`` (in a read-only folder)."""

    def call(ws: Workspace) -> CliRun:
        base = EXPLAIN if command == "explain" else FEWSHOT
        target = cli_out(ws, out)
        script = BIN / f"focusvit-{command}"
        entry = f"from focusvit.cli import {command}_main; {command}_main()"
        args = [str(script)] if script.exists() else [sys.executable, "-c", entry]
        environment = {
            k: v for k, v in os.environ.items() if k not in ("FOCUSVIT_DEBUG", "HYDRA_FULL_ERROR")
        }
        environment.update(OMP_NUM_THREADS="1", **(env or {}))
        extra = prepare(ws) if prepare else []
        done = subprocess.run(
            [*args, *base, *argv, *extra, f"out={target}"],
            capture_output=True,
            text=True,
            env=environment,
            timeout=300,
            cwd=ws.tmp,
            stdin=subprocess.DEVNULL,
        )
        problem = wrote(target, out, done.returncode)
        return CliRun(command, done.returncode, done.stderr, problem, target)

    return call


def cli_out(ws: Workspace, out: str) -> Path:
    if out == "file":
        return write(ws.tmp / "a_file", "keep")
    if out == "readonly":
        return readonly(ws) / "run"
    return ws.tmp / "out"


def wrote(target: Path, out: str, returncode: int) -> str | None:
    """What a refused run wrote to its ``out`` anyway (None: nothing)."""
    if returncode == 0:
        return None
    if out == "file" and target.read_text() != "keep":
        return f"it overwrote the file {target.name}"
    if out != "file" and (target / "settings.json").exists():
        return "it wrote settings.json first"
    return None


def colliding_names(ws: Workspace) -> list[str]:
    """Images named ``a b``, ``a_b``, ``a:b``, ``A_b`` (one figure each, none overwritten)."""
    for k, name in enumerate(("a b", "a_b", "a:b", "A_b")):
        png(ws.tmp / "inputs" / f"{name}.png", colour=(60 * k, 10, 10))
    return [f"inputs={ws.tmp / 'inputs'}"]


def four_figures(run: CliRun) -> str | None:
    figures = sorted(p.name for p in (run.out / "figures").glob("*_attention.png"))
    return None if len(figures) == 4 else f"4 images gave {len(figures)} figures: {figures}"


def cli_cases() -> list[Case]:
    no_cuda = {"CUDA_VISIBLE_DEVICES": ""}
    explain = [
        ("out_file", (), "file"),
        ("out_readonly", (), "readonly"),
        ("inputs_synthetic_abc", ("inputs=synthetic:abc",), "new"),
        ("inputs_missing_file", ("inputs=/nonexistent/x.png",), "new"),
        ("report_batch_size_0", ("report.batch_size=0",), "new"),
        ("report_deletion_steps_negative", ("report.deletion_steps=-1",), "new"),
        ("prompting_coverage_2", ("prompting=coverage", "prompting.coverage=2"), "new"),
        ("prompting_coverage_key_on_top_k", ("prompting.coverage=2",), "new"),
        ("model_kwargs_depth_abc", ("backbone.model_kwargs.depth=abc",), "new"),
        ("unknown_key", ("no_such_key=1",), "new"),
        ("mistyped_value", ("report.batch_size=abc",), "new"),
        ("unknown_group_option", ("explainer=nope",), "new"),
        ("override_syntax", ("report.batch_size==",), "new"),
        ("target_cat", ("target=cat",), "new"),
    ]
    fewshot = [
        ("out_file", (), "file"),
        ("out_readonly", (), "readonly"),
        ("episodes_seed_negative", ("episodes.seed=-1",), "new"),
        ("trainer_lr_inf", ("trainer.lr=inf",), "new"),
        ("trainer_lr_nan", ("trainer.lr=nan",), "new"),
        ("trainer_lr_0", ("trainer.lr=0",), "new"),
        ("fort_alpha_nan", ("fort.alpha=nan",), "new"),
        ("report_focus_episodes_negative", ("report.focus_episodes=-1",), "new"),
        ("report_max_queries_0", ("report.max_queries=0",), "new"),
        ("model_kwargs_depth_abc", ("backbone.model_kwargs.depth=abc",), "new"),
        ("unknown_key", ("no_such_key=1",), "new"),
        ("mistyped_value", ("episodes.episodes=abc",), "new"),
        ("unknown_group_option", ("tuner=nope",), "new"),
        ("fort_layers_5", ("fort.layers=[5]",), "new"),
        ("methods_repeated", ("methods=[lora,lora]",), "new"),
        ("images_per_class_0", ("data.images_per_class=0",), "new"),
    ]
    cases = [
        Case(f"cli_explain.{name}", cli("explain", *argv, out=out), cli=True)
        for name, argv, out in explain
    ]
    cases.append(
        Case("cli_explain.device_cuda_no_gpu", cli("explain", "device=cuda", env=no_cuda), cli=True)
    )
    cases.append(Case("cli_explain.control", cli("explain"), expect=OK, cli=True))
    cases.append(
        Case(
            "cli_explain.figure_names_collide",
            cli("explain", prepare=colliding_names),
            expect=RESULT,
            check=four_figures,
            cli=True,
        )
    )
    cases += [
        Case(f"cli_fewshot.{name}", cli("fewshot", *argv, out=out), cli=True)
        for name, argv, out in fewshot
    ]
    cases.append(
        Case("cli_fewshot.device_cuda_no_gpu", cli("fewshot", "device=cuda", env=no_cuda), cli=True)
    )
    cases.append(Case("cli_fewshot.control", cli("fewshot"), expect=OK, cli=True))
    return cases


# ----------------------------------------------------------------------------- the sweep
READONLY_NOTE = (
    "note: running as root, the read-only-folder cases are left out (root writes anywhere)"
)
CATEGORIES: dict[str, Callable[[], list[Case]]] = {
    "loading": loading_cases,
    "preprocess": preprocess_cases,
    "explain": explain_cases,
    "fit_task": fit_task_cases,
    "configs": configs_cases,
    "divergence": divergence_cases,
    "records": records_cases,
    "cache": cache_cases,
    "data": data_cases,
    "cli_explain": lambda: [c for c in cli_cases() if c.category == "cli_explain"],
    "cli_fewshot": lambda: [c for c in cli_cases() if c.category == "cli_fewshot"],
}


def all_cases(categories: list[str] | None = None) -> list[Case]:
    """Every case of ``categories`` (default all), names checked unique. As root the
    read-only-folder cases are left out (root writes anywhere: see :data:`READONLY_NOTE`)."""
    cases = [case for name in categories or CATEGORIES for case in CATEGORIES[name]()]
    if IS_ROOT:
        cases = [case for case in cases if "readonly" not in case.name]
    repeated = [name for name, n in Counter(c.name for c in cases).items() if n > 1]
    if repeated:
        raise ValueError(f"case names repeat: {repeated}")
    return cases


def table(results: list[Result]) -> str:
    counts: dict[str, Counter] = {}
    for result in results:
        counts.setdefault(result.case.category, Counter())[result.outcome] += 1
    total = Counter()
    for counter in counts.values():
        total.update(counter)
    header = ["category", "cases", *OUTCOMES]
    rows = [
        [name, str(sum(c.values())), *(str(c[o]) for o in OUTCOMES)]
        for name, c in [*counts.items(), ("total", total)]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


def findings(results: list[Result]) -> list[str]:
    return [
        f"{r.outcome:9s} {r.case.name}: {r.detail}"
        for r in results
        if r.outcome not in ("clean", "ok")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", action="append", choices=list(CATEGORIES), help="repeatable")
    parser.add_argument(
        "--case", action="append", help="run only these cases, of any category (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="each outcome on stderr")
    args = parser.parse_args(argv)
    cases = all_cases(None if args.case else args.category)
    if args.case:
        unknown = sorted(set(args.case) - {c.name for c in cases})
        if unknown:
            parser.error(f"unknown case names {unknown}; see --list")
        cases = [c for c in cases if c.name in set(args.case)]
    if args.list:
        for case in cases:
            print(f"{case.name}  [{case.expect}]")
        print(f"{len(cases)} cases")
        return 0
    torch.set_num_threads(1)
    results = run_cases(cases, verbose=args.verbose)
    if IS_ROOT:
        print(READONLY_NOTE)
    print(table(results))
    for line in findings(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
