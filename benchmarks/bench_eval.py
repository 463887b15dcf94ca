"""Evaluation: batched vs one-at-a-time scoring of the same items, same process.

The items: the demo's synthetic FoodieQA held-out records (one image each; repeated to
``--items``) on the demo's tiny InternVL. Greedy generation (``--max-new-tokens``) and
choice likelihood are timed at batch 1 and at ``--batch-size`` (best of ``--repeats``);
the outputs are checked identical (generation: token ids; likelihood: choices, scores within
1e-4) before any ratio is printed.

    .venv/bin/python benchmarks/bench_eval.py [--batch-size 8] [--items 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from _common import demo_ingested, quiet

from vlmtune.data.templates import get_template
from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer, load_items
from vlmtune.models.loading import ensure_model_dir, load_model

TARGET = 4.0  # generation speed-up wanted at batch 8


def timed(fn, repeats: int):
    """(best seconds, result of the last call)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe, ingested = demo_ingested(tmp)
        base = load_items(ingested.heldout_path, Path(ingested.manifest["image_root"]))
        items = [dataclasses.replace(base[k % len(base)], id=f"{base[k % len(base)].id}-{k}")
                 for k in range(args.items)]
        loaded = load_model(ensure_model_dir(recipe.model), recipe.model)
        scorer = MultipleChoiceScorer(loaded, get_template(recipe.model.chat_template),
                                      recipe.model.system_prompt)
        prompts = [scorer._prompt(item) for item in items]
        bs, n, new = args.batch_size, len(items), args.max_new_tokens

        def generate(size: int) -> list[list[int]]:
            return [row for k in range(0, n, size)
                    for row in scorer.generate_ids(prompts[k:k + size], new)]

        def likelihood(size: int) -> list[dict]:
            return scorer.likelihood(items, size, "bench")

        generate(bs)  # warm-up
        print(f"{n} items (tiny InternVL, prompts {min(len(p) for p, _ in prompts)}-"
              f"{max(len(p) for p, _ in prompts)} tokens), greedy {new} new tokens, batch {bs}, "
              f"best of {args.repeats}; image tiling excluded for generation")
        t1, ids1 = timed(lambda: generate(1), args.repeats)
        tb, idsb = timed(lambda: generate(bs), args.repeats)
        if idsb != ids1:
            raise SystemExit("batched generation differs from one-at-a-time generation")
        l1, pred1 = timed(lambda: likelihood(1), args.repeats)
        lb, predb = timed(lambda: likelihood(bs), args.repeats)
        same = all(a["pred"] == b["pred"] and all(abs(x - y) <= 1e-4 for x, y in
                                                   zip(a["scores"], b["scores"], strict=True))
                   for a, b in zip(pred1, predb, strict=True))
        if not same:
            raise SystemExit("batched likelihood differs from one-at-a-time likelihood")
    ratio = t1 / tb
    print(f"  generate    one-at-a-time {n / t1:7.1f} items/s   batch {bs} {n / tb:7.1f} items/s"
          f"   ratio {ratio:.2f}x (ids identical)")
    print(f"  likelihood  one-at-a-time {n / l1:7.1f} items/s   batch {bs} {n / lb:7.1f} items/s"
          f"   ratio {l1 / lb:.2f}x (choices identical, scores within 1e-4)")
    print(f"  generation target >= {TARGET:.0f}x at batch 8: "
          f"{'met' if ratio >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
