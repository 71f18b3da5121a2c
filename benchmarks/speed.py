"""All speed ratios in one run: explainers, fine-tuning steps, and time per few-shot episode.

1. ``explain_speed.py``: every explainer, pytorch-grad-cam's GradCAM and captum's LayerGradCam
   as ratios to one forward pass of the same batch (ViT-S/16, 224 px), with peak memory;
2. ``fort_overhead.py``: a fine-tuning step with and without the attention-enhancement loss for
   LoRA, SSF and full fine-tuning;
3. time per 5-way 1-shot episode (support + 15 queries per class) of the offline DINOv2-S/14
   for a frozen-feature solver and the tuners, with and without the loss.

Each part runs in its own process (so one does not inherit another's allocator state), one
after the other, on the CPU and then, when a GPU is present, on CUDA as well (``--devices``).

    python benchmarks/speed.py            # the defaults below, ~15 minutes on 2 cores
    python benchmarks/speed.py --quick    # smaller batches, fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EPISODE_METHODS = ("prototype", "linear", "lora", "lora+fort", "ssf", "ssf+fort")


def run_script(name: str, arguments: list[str]) -> None:
    command = [sys.executable, str(HERE / name), *arguments]
    print(f"\n$ {' '.join(['python', f'benchmarks/{name}', *arguments])}", flush=True)
    subprocess.run(command, check=True)


def episode_times(episodes: int, image_size: int, device: str = "cpu") -> None:
    """Median seconds per episode of each method on the same episodes (none resumed)."""
    import torch
    from explain_speed import synchronize  # sibling script (benchmarks/ is on sys.path)

    import focusvit
    from focusvit.finetune import episode_tensors, make_runner, parse_method

    where = torch.device(device)

    backbone = focusvit.load_backbone("offline:dinov2-s14-imgfocus").to(device)
    if image_size:
        backbone.data_config = {
            **backbone.data_config,
            "input_size": (3, image_size, image_size),
            "crop_pct": 1.0,
        }
    scenes = focusvit.SyntheticScenes("novel", images_per_class=16)
    batches = [
        episode_tensors(scenes, episode, backbone, device)
        for episode in focusvit.sample_episodes(scenes.labels, 5, 1, 15, episodes=episodes, seed=0)
    ]
    side = backbone.data_config["input_size"][1]
    print(
        f"\noffline DINOv2-S/14 on {device}, 5-way 1-shot, 15 queries/class, {side} px, median of "
        f"{episodes} episodes after one warm-up (images already loaded); recipes of docs/recipes.md\n"
    )

    def runner(method: str):
        choice = parse_method(method)
        fort = focusvit.FortConfig() if choice.fort else None
        return make_runner(backbone, choice.tuner, choice.solver, fort, device=device)

    support, support_labels, query, _ = batches[0]
    runner("prototype").predict(support, support_labels, query)  # warm-up
    print(f"{'method':<10} {'s/episode':>10} {'x prototype':>12}")
    reference = None
    for method in EPISODE_METHODS:
        method_runner = runner(method)
        times = []
        for support, support_labels, query, _ in batches:
            synchronize(where)
            start = time.perf_counter()
            method_runner.predict(support, support_labels, query)
            synchronize(where)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        reference = reference or median
        print(f"{method:<10} {median:>10.2f} {median / reference:>12.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 repeats, 2 episodes")
    parser.add_argument(
        "--skip", default="", help="comma list of parts to skip: explain,step,episode"
    )
    parser.add_argument(
        "--devices",
        default=None,
        help="comma list of devices to time on (default: cpu, plus cuda when a GPU is present)",
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    batch, repeats, episodes = ("8", "2", 2) if args.quick else ("32", "5", 3)
    if args.devices:
        devices = args.devices.split(",")
    else:
        import torch

        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    for device in devices:
        print(f"\n######## {device}", flush=True)
        gpu_batch = "64" if device.startswith("cuda") and not args.quick else batch
        if "explain" not in skip:
            run_script(
                "explain_speed.py",
                ["--batch", gpu_batch, "--repeats", repeats, "--device", device],
            )
        if "step" not in skip:
            run_script(
                "fort_overhead.py", ["--batch", "20", "--repeats", repeats, "--device", device]
            )
        if "episode" not in skip:
            episode_times(episodes, image_size=112, device=device)


if __name__ == "__main__":
    main()
