"""Batched tasks vs one task at a time (docs/benchmarks.md: "several tasks fine-tuned in one
batched computation where the tuner allows it").

On the offline DINOv2-S/14 checkpoint at ``--size`` px (default 112, crop 1.0), 5-way 1-shot
tasks with 15 queries per class from the novel synthetic scenes: the seconds per task of the
sequential path (``torch.manual_seed(seed); TunerRunner.predict``) and of
:func:`focusvit.finetune.batched.fit_predict_batched` with ``--tasks`` tasks per batch, for LoRA
and SSF, with and without the attention loss. Both paths run on the same preprocessed tensors
(preprocessing is not timed), alternately, ``--repeats`` times after an untimed warm-up; the
table shows medians, the ratio sequential / batched (> 1: batching is faster), the per-task time
of the initialisation alone (support features, head, prompts, tuner init: the part that stays
per task in both paths) and a check that both paths agree (predictions, final loss).

    python benchmarks/batched_tasks.py --tasks 4 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(size: int, tasks: int, device: torch.device):
    import focusvit
    from focusvit.finetune import episode_tensors
    from focusvit.runs import episode_seed

    backbone = focusvit.load_backbone("offline:dinov2-s14-imgfocus")
    backbone.data_config = {**backbone.data_config, "input_size": (3, size, size), "crop_pct": 1.0}
    backbone.to(device)
    scenes = focusvit.SyntheticScenes("novel", images_per_class=16)
    episodes = focusvit.sample_episodes(
        scenes.labels, n_way=5, k_shot=1, n_query=15, episodes=tasks
    )
    data = [episode_tensors(scenes, episode, backbone, device) for episode in episodes]
    seeds = [episode_seed(0, episode.index) for episode in episodes]
    return backbone, data, seeds


def run_sequential(backbone, data, seeds, tuner, fort, options, device):
    from focusvit.finetune import TunerRunner

    runner = TunerRunner(backbone, tuner, fort, options, device)
    out = []
    for (support, labels, query, _), seed in zip(data, seeds, strict=True):
        torch.manual_seed(seed)
        out.append(runner.predict(support, labels, query))
    return out


def run_batched(backbone, data, seeds, tuner, fort, options):
    from focusvit.finetune.batched import fit_predict_batched

    supports, labels, queries = ([d[i] for d in data] for i in range(3))
    return fit_predict_batched(backbone, supports, labels, queries, tuner, fort, options, seeds)


def timed(fn, device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def agreement(batched, sequential, query_labels) -> tuple[float, float, float, float]:
    """(share of equal predictions, max relative final-loss difference, accuracies)."""
    same = [float((b[0] == s[0]).float().mean()) for b, s in zip(batched, sequential, strict=True)]
    rel = 0.0
    for (_, info_b), (_, info_s) in zip(batched, sequential, strict=True):
        for key in ("ce", "attn", "total"):
            ref = info_s["final_loss"][key]
            if ref:
                rel = max(rel, abs(info_b["final_loss"][key] - ref) / abs(ref))
    acc_b = statistics.mean(
        float((b[0].cpu() == y.cpu()).float().mean())
        for b, y in zip(batched, query_labels, strict=True)
    )
    acc_s = statistics.mean(
        float((s[0].cpu() == y.cpu()).float().mean())
        for s, y in zip(sequential, query_labels, strict=True)
    )
    return statistics.mean(same), rel, acc_b, acc_s


def run_init(backbone, data, seeds, tuner, fort, options):
    """The per-task initialisation of the batched path alone (serial in both paths)."""
    from dataclasses import replace

    from focusvit.finetune.batched import _initial_state, _site_names

    sites = _site_names(backbone, tuner)
    with torch.random.fork_rng(devices=[]):
        for (support, labels, _, _), seed in zip(data, seeds, strict=True):
            torch.manual_seed(seed)
            _initial_state(backbone, support, labels, tuner, fort, replace(options), sites, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4, help="tasks per batch")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--tuners", nargs="+", default=["lora", "ssf"])
    parser.add_argument("--fort", choices=["both", "off", "on"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from focusvit.finetune import FitOptions, FortConfig, make_tuner
    from focusvit.finetune.batched import tasks_per_batch

    backbone, data, seeds = build(args.size, args.tasks, device)
    options = FitOptions()
    print(
        f"{backbone.name} at {args.size} px on {device} ({torch.get_num_threads()} threads), "
        f"5-way 1-shot, 15 queries/class, {args.tasks} tasks per batch, recipe steps, "
        f"median of {args.repeats}; tasks_per_batch() for this device: "
        + ", ".join(
            f"{name} {tasks_per_batch(backbone, 5, 75, args.size, device, tuner=name)}"
            for name in args.tuners
        )
    )
    print(
        f"{'tuner':<6} {'loss':<5} {'sequential s/task':>18} {'batched s/task':>15} "
        f"{'ratio':>6} {'init s/task':>12} {'same preds':>11} {'max rel loss diff':>18} "
        f"{'acc seq/bat %':>14}"
    )
    forts = {"both": [False, True], "off": [False], "on": [True]}[args.fort]
    query_labels = [d[3] for d in data]
    warm = FitOptions(steps=1)
    for name in args.tuners:
        tuner = make_tuner(name)
        for with_fort in forts:
            fort = FortConfig() if with_fort else None
            # warm-up (imports, allocator): one task each way, one step, untimed
            run_sequential(backbone, data[:1], seeds[:1], tuner, fort, warm, device)
            run_batched(backbone, data[:2], seeds[:2], tuner, fort, warm)
            times: dict[str, list[float]] = {"sequential": [], "batched": [], "init": []}
            seq = bat = None
            for _ in range(args.repeats):
                t_seq, seq = timed(
                    partial(run_sequential, backbone, data, seeds, tuner, fort, options, device),
                    device,
                )
                t_bat, bat = timed(
                    partial(run_batched, backbone, data, seeds, tuner, fort, options), device
                )
                t_init, _ = timed(
                    partial(run_init, backbone, data, seeds, tuner, fort, options), device
                )
                times["sequential"].append(t_seq / args.tasks)
                times["batched"].append(t_bat / args.tasks)
                times["init"].append(t_init / args.tasks)
            med = {k: statistics.median(v) for k, v in times.items()}
            same, rel, acc_b, acc_s = agreement(bat, seq, query_labels)
            print(
                f"{name:<6} {'fort' if with_fort else 'plain':<5} {med['sequential']:>18.3f} "
                f"{med['batched']:>15.3f} {med['sequential'] / med['batched']:>6.2f} "
                f"{med['init']:>12.3f} {100 * same:>10.1f}% {rel:>18.2e} "
                f"{100 * acc_s:>6.1f}/{100 * acc_b:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
