"""Speed and memory of the explainers against one forward pass (docs/benchmarks.md).

On timm ``vit_small_patch16_224`` (random weights: speed does not depend on them; eval mode) at
224 px, every method explains the same batch with the same target classes. Each method runs in a
fresh subprocess (``--no-isolate`` runs them in this process) that alternates the method with a
no-grad forward of the same batch, so each ratio is taken under the same machine load; the table
shows the median over the repeats after a warm-up. Memory is the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the method ran, and its increase over the
peak after building the model and the batch.

    python benchmarks/explain_speed.py --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

METHODS = [
    "forward",
    "forward+backward",
    "rollout",
    "rollout_svd",
    "gradcam",
    "cam",
    "attention",
    "pytorch-grad-cam",
    "captum-LayerGradCam",
    "capture-all-layers",
]
TARGETS = {"rollout": 1.10, "rollout_svd": 1.20, "gradcam": 1.3}


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(
    model_name: str, batch: int, size: int, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, img_size=size).eval().to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    classes = torch.arange(batch, device=device) % model.num_classes
    return model, images, classes


def make_runner(
    method: str, model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> Callable[[], object]:
    """A zero-argument callable running ``method`` once on the batch."""
    if method == "forward":

        def forward() -> object:
            with torch.no_grad():
                return model(images)

        return forward
    if method == "forward+backward":

        def forward_backward() -> object:
            logits = model(images)
            logits.gather(1, classes[:, None]).sum().backward()
            model.zero_grad(set_to_none=True)
            return logits

        return forward_backward
    if method == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        grid = images.shape[-1] // 16

        def reshape(tokens: torch.Tensor) -> torch.Tensor:
            patches = tokens[:, 1:].reshape(tokens.shape[0], grid, grid, tokens.shape[-1])
            return patches.permute(0, 3, 1, 2)

        cam = GradCAM(
            model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape
        )
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        return lambda: cam(input_tensor=images, targets=targets)
    if method == "captum-LayerGradCam":
        from captum.attr import LayerGradCam

        layer_gc = LayerGradCam(model, model.blocks[-1].norm1)
        return lambda: layer_gc.attribute(
            images, target=classes, attribute_to_layer_input=False, relu_attributions=True
        )
    import focusvit
    from focusvit.explainers import explain

    adapter = focusvit.adapt(model)
    if method == "capture-all-layers":

        def capture() -> object:
            with torch.no_grad(), adapter.capture_attention() as record:
                adapter.logits(images)
            return record

        return capture
    return lambda: explain(adapter, images, method, target=classes)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(method: str, args: argparse.Namespace) -> dict:
    """Run one method (and the reference forward) in this process."""
    device = torch.device(args.device)
    model, images, classes = build(args.model, args.batch, args.size, device)
    synchronize(device)
    base = peak_mib(device)
    run = make_runner(method, model, images, classes)
    forward = make_runner("forward", model, images, classes)
    for _ in range(args.warmup):
        run()
    synchronize(device)
    peak = peak_mib(device)
    for _ in range(args.warmup):
        forward()
    method_times, forward_times = [], []
    for _ in range(args.repeats):
        forward_times.append(timed(forward, device))
        method_times.append(timed(run, device))
    return {
        "method": method,
        "seconds": statistics.median(method_times),
        "forward_seconds": statistics.median(forward_times),
        "ratio": statistics.median(m / f for m, f in zip(method_times, forward_times, strict=True)),
        "min_ratio": min(method_times) / min(forward_times),
        "peak_mib": peak,
        "extra_mib": peak - base,
    }


def measure_isolated(method: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--model",
        args.model,
        "--device",
        args.device,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"worker for {method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], args: argparse.Namespace) -> str:
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"cpu, {torch.get_num_threads()} threads"
    )
    memory = (
        "peak = CUDA allocator peak (torch.cuda.max_memory_allocated) after the method's warm-up "
        "run (MiB); +peak = increase over the peak after building model and batch"
        if args.device.startswith("cuda")
        else "peak = ru_maxrss of that process after the method's warm-up run (MiB); "
        "+peak = increase over the peak after building model and batch"
    )
    lines = [
        f"model {args.model}, batch {args.batch}, {args.size}px, {where}, "
        f"median of {args.repeats} after {args.warmup} warm-up, "
        + ("each method in a fresh process" if args.isolate else "all methods in one process"),
        "ratio = median over repeats of method time / no-grad forward time of the same batch, "
        "measured alternately in the same process; min-ratio = fastest method run / fastest forward",
        "(the 'forward' row compares the forward with itself: its distance from 1.00 shows the noise)",
        memory,
        "",
        f"{'method':<22}{'time s':>9}{'fwd s':>9}{'ratio':>8}{'min-ratio':>10}{'peak MiB':>10}"
        f"{'+peak MiB':>11}  target",
    ]
    by_name = {row["method"]: row for row in rows}
    for row in rows:
        target = TARGETS.get(row["method"])
        note = "adapter capture alone (floor of rollout)" if row["method"] == METHODS[-1] else ""
        if target is not None:
            note = f"<= {target:.2f}x " + ("ok" if row["ratio"] <= target else "MISSED")
        lines.append(
            f"{row['method']:<22}{row['seconds']:>9.3f}{row['forward_seconds']:>9.3f}"
            f"{row['ratio']:>8.2f}{row['min_ratio']:>10.2f}{row['peak_mib']:>10.0f}"
            f"{row['extra_mib']:>11.0f}  {note}"
        )
    reference = by_name.get("pytorch-grad-cam")
    if reference:
        lines.append("")
        for name in ("gradcam", "rollout_svd"):
            if name in by_name:
                share = by_name[name]["ratio"] / reference["ratio"]
                lines.append(f"{name} / pytorch-grad-cam time: {share:.2f} (target about 0.5)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args)))
        return
    rows = []
    for method in args.methods.split(","):
        if method not in METHODS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        rows.append(measure_isolated(method, args) if args.isolate else measure(method, args))
        print(f"  measured {method}: {rows[-1]['ratio']:.2f}x", file=sys.stderr, flush=True)
    print(table(rows, args))


if __name__ == "__main__":
    main()
