"""The bundled MMBench-format sample of the synthetic dishes (``mmbench_synth`` card).

``python -m vlmtune.evaluation.benchmarks.sample [OUT.tsv]`` writes it: one "which dish is
this?" question per dish (English names, 4 options), each photo as base64 JPEG; the second
question of each dish asks "where is it from?" on the same photo, so its ``image`` cell is the
first row's ``index`` (the VLMEvalKit reuse convention). Rotations are left to the evaluator.
"""

from __future__ import annotations

import base64
import csv
import io
import sys
from pathlib import Path

import numpy as np

from vlmtune.data.synthetic import DISHES, _draw_photo

DEFAULT_OUT = Path("datasets/samples/mmbench_synth/mmbench_synth.tsv")
COLUMNS = ("index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category",
           "l2-category", "split")
NUM_DISHES = 6


def rows(seed: int = 0, num_dishes: int = NUM_DISHES) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    dishes = DISHES[:num_dishes]
    out = []
    for d, dish in enumerate(dishes):
        buf = io.BytesIO()
        _draw_photo(dish, rng).save(buf, format="JPEG", quality=85)
        image = base64.b64encode(buf.getvalue()).decode("ascii")
        for q, (attr, question, category) in enumerate((
                ("name", "Which dish is shown in the picture?", "dish_recognition"),
                ("region", "Which region is this dish from?", "dish_region"))):
            others = sorted({getattr(x, attr)[1] for x in DISHES} - {getattr(dish, attr)[1]})
            picks = list(rng.choice(len(others), size=3, replace=False))
            options = [getattr(dish, attr)[1], *(others[i] for i in picks)]
            order = list(rng.permutation(4))
            options = [options[i] for i in order]
            index = 2 * d + q
            out.append({"index": str(index), "image": image if q == 0 else str(2 * d),
                        "question": question, "hint": "nan" if q == 0 else
                        "The picture shows a Chinese dish.",
                        **dict(zip("ABCD", options, strict=True)),
                        "answer": "ABCD"[order.index(0)], "category": category,
                        "l2-category": "food", "split": "dev"})
    return out


def write(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows(seed))
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
