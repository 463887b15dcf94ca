"""Padding: length-grouped modality batches vs random batches on a mixed-length set.

The set: copies of the ingested synthetic FoodieQA training records (one image each) and
text-only copies of them, each given 0-8 extra question/answer turns, so lengths vary
several-fold; more samples per modality than one megabatch (50 batches).
Batches are drawn by each sampler (the grouped one from the dataset's cheap length estimates);
padding is measured on the real tokenized lengths, over three epochs. Also shown: how many
batches mix text-only and image samples, and the padding left with text-only packing.

    .venv/bin/python benchmarks/bench_padding.py [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from _common import demo_ingested, quiet

from vlmtune.data.collate import ConversationDataset
from vlmtune.data.templates import IMAGE_PLACEHOLDER, get_template
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.training.packing import PackedDataset
from vlmtune.training.sampler import (
    LengthGroupedBatchSampler,
    ShuffleBatchSampler,
    padding_fraction,
)

EPOCHS = 3
PACK = 2048  # max_length, and the packed row length (train.max_length default)


def mixed_records(train_jsonl: Path, copies: int = 3, seed: int = 0) -> list[dict]:
    """``copies`` image records and text-only records per training record, each with 0-8 extra
    turns from other records."""
    base = [json.loads(line) for line in train_jsonl.read_text(encoding="utf-8").splitlines()]
    turns = [r["conversations"] for r in base]
    rng = random.Random(seed)
    out = []
    for i, rec in enumerate(base * copies):
        for with_image in (True, False):
            conv = [dict(t) for t in rec["conversations"]]
            if not with_image:
                conv[0]["value"] = conv[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
            for _ in range(rng.randint(0, 8)):
                q, a = rng.choice(turns)
                conv += [{"from": "human", "value": q["value"].replace(IMAGE_PLACEHOLDER, "")},
                         {"from": "gpt", "value": a["value"]}]
            new = {"id": f"{rec['id']}-{'img' if with_image else 'txt'}-{i}",
                   "conversations": conv}
            if with_image:
                new["image"] = rec["image"]
            out.append(new)
    return out


def batches_over(sampler, epochs: int) -> list[list[int]]:
    return [b for e in range(epochs) for b in sampler.epoch_batches(e)]


def mixing(batches: list[list[int]], image: list[bool]) -> float:
    return sum(len({image[i] for i in b}) > 1 for b in batches) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe, ingested = demo_ingested(tmp)
        records = mixed_records(ingested.train_path)
        path = tmp / "mixed.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")
        loaded = load_model(ensure_model_dir(recipe.model), recipe.model)
        dataset = ConversationDataset(path, Path(ingested.manifest["image_root"]),
                                      loaded.tokenizer, loaded.images,
                                      template=get_template(recipe.model.chat_template),
                                      system=recipe.model.system_prompt, max_length=PACK)
        real = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
        keys = dataset.modality_lengths()
        packed = PackedDataset(dataset, max_length=PACK)

    image = [has_image for has_image, _ in keys]
    bs = args.batch_size
    random_batches = batches_over(ShuffleBatchSampler(len(real), bs, seed=0), EPOCHS)
    grouped_batches = batches_over(LengthGroupedBatchSampler(keys, bs, seed=0), EPOCHS)
    packed_real = [sum(real[i] for i in item) for item in packed.items]
    packed_batches = batches_over(LengthGroupedBatchSampler(packed.modality_lengths(), bs,
                                                            seed=0), EPOCHS)
    text, images = image.count(False), image.count(True)
    print(f"{len(real)} records ({text} text-only, {images} with an image), real lengths "
          f"{min(real)}-{max(real)} tokens (mean {sum(real) / len(real):.0f}); batch {bs}, "
          f"{EPOCHS} epochs")
    pad_random = padding_fraction(random_batches, real)
    pad_grouped = padding_fraction(grouped_batches, real)
    pad_packed = padding_fraction(packed_batches, packed_real)
    print(f"  random batches          padding {pad_random:6.1%}   batches mixing modalities "
          f"{mixing(random_batches, image):6.1%}")
    print(f"  length-grouped batches  padding {pad_grouped:6.1%}   batches mixing modalities "
          f"{mixing(grouped_batches, image):6.1%}")
    print(f"  grouped + text packing  padding {pad_packed:6.1%}   ({text} text-only samples in "
          f"{sum(1 for img, _ in packed.modality_lengths() if not img)} rows of <= {PACK} tokens)")
    print(f"  ratio grouped/random padding: {pad_grouped / pad_random:.3f} (target: grouped "
          f"<= 5% padding; {'met' if pad_grouped <= 0.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
