"""The text head (beyond the paper) against FORT's support-set head, on the synthetic scenes.

For a CLIP / SigLIP model loaded with its text tower, on N-way K-shot episodes of the novel
synthetic scenes (same episodes for every row): the zero-shot text head alone (``head_init=
"text"``, 0 steps), the support-set SVM head alone (``head_init="svm"``, 0 steps), and the tuner
(default LoRA, its recipe) started from each head. Class names are given to the text tower as
the glyph they draw (``"U+2297 ⊗"`` -> ``"the symbol ⊗"``), in the template ``--template``.
Prints one row per method: mean accuracy ± 95% interval, and the paired difference text − svm.

    python benchmarks/text_head.py --spec hf:openai/clip-vit-base-patch16 --episodes 100
    python benchmarks/text_head.py --smoke     # tiny random CLIP, offline: the plumbing only

``--smoke`` uses a random-weight tiny CLIP and a word-level tokenizer built here: its numbers
say nothing about the method (chance level), only that the path runs.
"""

from __future__ import annotations

import argparse
import copy
import time


def glyph_names(names: list[str]) -> list[str]:
    """``"U+2297 ⊗"`` -> ``"the symbol ⊗"`` (names without a code point are kept)."""
    return [f"the symbol {n.split(' ', 1)[1]}" if n.startswith("U+") else n for n in names]


def by_episode(result) -> dict[int, float]:
    """Episode id -> accuracy of the finished (not diverged) episodes of a result."""
    return {int(r["episode"]): r["accuracy"] for r in result.records if not r.get("diverged")}


def smoke_backbone():
    """The tiny random CLIP with a word-level tokenizer over the words of the prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    import focusvit

    backbone = focusvit.load_backbone("tiny:hf-clip", num_classes=0)
    words = ["[PAD]", "<bos>", "[UNK]", "<eos>", "a", "photo", "of", "the", "symbol", "."]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 3)]
    )
    backbone.tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="<bos>",
        eos_token="<eos>",
    )  # fmt: skip
    return backbone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="hf:openai/clip-vit-base-patch16")
    parser.add_argument("--smoke", action="store_true", help="tiny random CLIP, offline")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--n-query", type=int, default=15)
    parser.add_argument("--tuner", default="lora")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import focusvit
    from focusvit.runs.stats import mean_and_ci

    backbone = smoke_backbone() if args.smoke else focusvit.load_backbone(args.spec, num_classes=0)
    if not backbone.has_text_tower:
        raise SystemExit(f"{backbone.name} has no text tower: load a full CLIP or SigLIP model")
    scenes = focusvit.SyntheticScenes("novel")
    named = copy.copy(scenes)
    named.class_names = glyph_names(list(scenes.class_names))
    size = backbone.data_config["input_size"][1:]
    spec = focusvit.EpisodeSpec(
        n_way=args.way, k_shot=args.shot, n_query=args.n_query, episodes=args.episodes,
        seed=args.seed,
    )  # fmt: skip
    print(f"{backbone.name} at {size[0]}x{size[1]}, {args.way}-way {args.shot}-shot, "
          f"{args.episodes} episodes of the novel synthetic scenes")  # fmt: skip
    rows = {}
    for label, tuner, head, steps in (
        ("text head alone (zero-shot)", "linear", "text", 0),
        ("svm head alone", "linear", "svm", 0),
        (f"{args.tuner} from the text head", args.tuner, "text", None),
        (f"{args.tuner} from the svm head", args.tuner, "svm", None),
    ):
        start = time.perf_counter()
        overrides = {"head_init": head} | ({"steps": steps} if steps is not None else {})
        result = focusvit.evaluate(
            backbone, named, tuner=tuner, episodes=spec, progress=False, **overrides
        )
        rows[label] = result
        seconds = time.perf_counter() - start
        print(
            f"  {label:32s} {100 * result.mean:5.1f} ± {100 * result.ci95:4.1f}  ({seconds:.0f} s)"
        )
    for text_label, svm_label in (
        ("text head alone (zero-shot)", "svm head alone"),
        (f"{args.tuner} from the text head", f"{args.tuner} from the svm head"),
    ):
        text, svm = (by_episode(rows[label]) for label in (text_label, svm_label))
        common = sorted(set(text) & set(svm))  # paired by episode (diverged ones left out)
        mean, half = mean_and_ci([text[e] - svm[e] for e in common])
        print(f"  paired ({text_label}) − ({svm_label}): {100 * mean:+.1f} ± {100 * half:.1f}")


if __name__ == "__main__":
    main()
