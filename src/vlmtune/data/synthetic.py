"""A tiny synthetic dataset in FoodieQA's on-disk shape (``sivqa_tidy.json`` + ``images/``).

Every dish has its own colour and pattern, so the photo alone determines the answer to each
question; a model that learns to read the photo can reach full accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlmtune.errors import ConfigError

GENERATOR_VERSION = 2
MARKER = ".synth.json"
TASK_FILE = "sivqa_tidy.json"
JPEG_QUALITY = 90
SIZES = ((64, 64), (96, 64), (64, 96), (128, 64), (64, 128), (96, 96))


@dataclass(frozen=True)
class Dish:
    slug: str
    name: tuple[str, str]  # (zh, en)
    ingredient: tuple[str, str]
    region: tuple[str, str]
    food_type: tuple[str, str]
    colour: tuple[int, int, int]
    pattern: str


# fmt: off
DISHES: tuple[Dish, ...] = (
    Dish("hongshaorou", ("红烧肉", "braised pork belly"), ("五花肉", "pork belly"),
         ("湖南", "Hunan"), ("湘菜", "Hunan cuisine"), (220, 30, 30), "hstripes"),
    Dish("jiaozi", ("饺子", "dumplings"), ("白菜", "napa cabbage"),
         ("东北", "Northeast China"), ("东北菜", "Northeastern cuisine"), (230, 220, 40), "dots"),
    Dish("mapodoufu", ("麻婆豆腐", "mapo tofu"), ("豆腐", "tofu"),
         ("四川", "Sichuan"), ("川菜", "Sichuan cuisine"), (240, 130, 20), "checker"),
    Dish("beijingkaoya", ("北京烤鸭", "Peking roast duck"), ("鸭肉", "duck"),
         ("北京", "Beijing"), ("京菜", "Beijing cuisine"), (120, 70, 30), "rings"),
    Dish("xiaolongbao", ("小笼包", "xiaolongbao"), ("面粉", "wheat flour"),
         ("上海", "Shanghai"), ("本帮菜", "Shanghai cuisine"), (200, 200, 200), "triangles"),
    Dish("gongbaojiding", ("宫保鸡丁", "kung pao chicken"), ("鸡肉", "chicken"),
         ("贵州", "Guizhou"), ("黔菜", "Guizhou cuisine"), (40, 180, 50), "vstripes"),
    Dish("dandanmian", ("担担面", "dan dan noodles"), ("面条", "wheat noodles"),
         ("重庆", "Chongqing"), ("渝菜", "Chongqing cuisine"), (220, 40, 170), "waves"),
    Dish("tangcupaigu", ("糖醋排骨", "sweet and sour pork ribs"), ("排骨", "pork ribs"),
         ("江苏", "Jiangsu"), ("苏菜", "Jiangsu cuisine"), (140, 50, 200), "diagonal"),
    Dish("xihongshichaojidan", ("西红柿炒鸡蛋", "tomato and egg stir-fry"), ("鸡蛋", "egg"),
         ("河南", "Henan"), ("豫菜", "Henan cuisine"), (30, 200, 200), "cross"),
    Dish("fotiaoqiang", ("佛跳墙", "buddha jumps over the wall"), ("鲍鱼", "abalone"),
         ("福建", "Fujian"), ("闽菜", "Fujian cuisine"), (40, 70, 220), "diamonds"),
    Dish("qingzhengluyu", ("清蒸鲈鱼", "steamed sea bass"), ("鲈鱼", "sea bass"),
         ("广东", "Guangdong"), ("粤菜", "Cantonese cuisine"), (20, 90, 40), "grid"),
    Dish("guoqiaomixian", ("过桥米线", "crossing-the-bridge noodles"), ("米线", "rice noodles"),
         ("云南", "Yunnan"), ("滇菜", "Yunnan cuisine"), (20, 30, 100), "bigdot"),
)
# fmt: on

# question_type -> (attribute, zh question, en question)
QUESTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("food-name", "name", "图片中的菜叫什么名字？", "What is the name of the dish in the picture?"),
    (
        "main-ingredient",
        "ingredient",
        "图片中的食物的主要食材是什么？",
        "What is the main ingredient of the food in the picture?",
    ),
    (
        "region",
        "region",
        "图片中的食物是哪个地区的特色菜？",
        "Which region is the food in the picture a speciality of?",
    ),
)
LOCATIONS = ("餐馆", "家里")


def generate_foodie_synth(
    root: Path, *, seed: int = 0, num_dishes: int = 10, photos_per_dish: int = 6
) -> Path:
    """Write the synthetic dataset under ``root`` (no-op if it is already there); return root."""
    root = Path(root)
    dishes = _select_dishes(num_dishes, photos_per_dish)
    params = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_dishes": num_dishes,
        "photos_per_dish": photos_per_dish,
    }
    if _read_marker(root) == params:
        return root
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise ConfigError(
            f"refusing to write synthetic data into non-empty {root}: "
            "it was not made by the synthetic generator"
        )
    tmp = root.parent / f".{root.name}.synth-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_all(tmp, dishes, seed, photos_per_dish)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")
        _swap_into_place(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def text_corpus(*, num_dishes: int = 10) -> list[str]:
    """Every zh/en string the generator can put in questions and choices (for tokenizers)."""
    out: list[str] = []
    for _, _, q_zh, q_en in QUESTIONS:
        out += [q_zh, q_en]
    for d in _select_dishes(num_dishes, 1):
        out += [*d.name, *d.ingredient, *d.region, *d.food_type]
    return list(dict.fromkeys(out))


def _select_dishes(num_dishes: int, photos_per_dish: int) -> tuple[Dish, ...]:
    if not 4 <= num_dishes <= len(DISHES):
        raise ConfigError(
            f"num_dishes={num_dishes}: must be between 4 (one answer + 3 "
            f"distractors) and {len(DISHES)} (the built-in dishes)"
        )
    if photos_per_dish < 1:
        raise ConfigError(f"photos_per_dish={photos_per_dish}: must be at least 1")
    return DISHES[:num_dishes]


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``, replacing an empty dir or an older synthetic generation."""
    if root.exists():
        old = root.parent / f".{root.name}.synth-old-{os.getpid()}"
        root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(root)


def _write_all(out: Path, dishes: tuple[Dish, ...], seed: int, photos_per_dish: int) -> None:
    rng = np.random.default_rng([seed, 1])
    records: list[dict] = []
    photo_id = 0
    for d_idx, dish in enumerate(dishes):
        (out / "images" / dish.slug).mkdir(parents=True, exist_ok=True)
        for k in range(photos_per_dish):
            rel = f"images/{dish.slug}/{k}.jpg"
            photo = _draw_photo(dish, np.random.default_rng([seed, 0, d_idx, k]))
            photo.save(out / rel, format="JPEG", quality=JPEG_QUALITY)
            meta = {
                "main_ingredient": [dish.ingredient[0]],
                "id": photo_id,
                "food_name": dish.name[0],
                "food_type": dish.food_type[0],
                "food_location": LOCATIONS[k % len(LOCATIONS)],
                "food_file": rel,
            }
            for qtype, attr, q_zh, q_en in QUESTIONS:
                rec = _question(dish, dishes, attr, rng)
                records.append(
                    {
                        "question": q_zh,
                        "question_en": q_en,
                        **rec,
                        "question_type": qtype,
                        "food_name": dish.name[0],
                        "question_id": f"sivqa-synth-{len(records)}",
                        "food_meta": dict(meta),
                    }
                )
            photo_id += 1
    text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    (out / TASK_FILE).write_text(text, encoding="utf-8")


def _question(dish: Dish, dishes: tuple[Dish, ...], attr: str, rng: np.random.Generator) -> dict:
    """Four shuffled choices: the dish's value of ``attr`` and three other dishes' values."""
    others = [getattr(d, attr) for d in dishes if d is not dish]
    picked = [others[i] for i in rng.choice(len(others), size=3, replace=False)]
    options = [getattr(dish, attr), *picked]
    order = [int(i) for i in rng.permutation(len(options))]
    return {
        "choices": [options[i][0] for i in order],
        "choices_en": [options[i][1] for i in order],
        "answer": str(order.index(0)),
    }


def _draw_photo(dish: Dish, rng: np.random.Generator) -> Image.Image:
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    period = float(rng.uniform(10.0, 18.0))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x = xx + rng.uniform(0, period)
    y = yy + rng.uniform(0, period)
    mask = _pattern_mask(dish.pattern, x, y, xx, yy, period, rng)
    fg = np.clip(np.array(dish.colour) + rng.integers(-15, 16, size=3), 0, 255)
    # The background is a shade of the dish's own colour: the hue identifies the dish in
    # every photo, the pattern and its scale, offset, size and noise vary between photos.
    bg = np.clip(fg * rng.uniform(0.45, 0.65) + rng.integers(-10, 11, size=3), 0, 255)
    pixels = np.where(mask[..., None], fg, bg) + rng.normal(0.0, 5.0, size=(h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _pattern_mask(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    p: float,
    rng: np.random.Generator,
) -> np.ndarray:
    mx, my = x % p - p / 2, y % p - p / 2  # position inside the current cell, centred
    if kind == "hstripes":
        return y % p < p / 2
    if kind == "vstripes":
        return x % p < p / 2
    if kind == "diagonal":
        return (x + y) % p < p / 2
    if kind == "waves":
        return (y + 3.0 * np.sin(x / 3.0)) % p < p / 2
    if kind == "dots":
        return mx**2 + my**2 < (0.3 * p) ** 2
    if kind == "checker":
        return (x // p + y // p) % 2 == 0
    if kind == "triangles":
        return x % p < y % p
    if kind == "cross":
        return ((np.abs(mx) < 0.12 * p) & (np.abs(my) < 0.4 * p)) | (
            (np.abs(my) < 0.12 * p) & (np.abs(mx) < 0.4 * p)
        )
    if kind == "diamonds":
        return np.abs(mx) + np.abs(my) < 0.3 * p
    if kind == "grid":
        return (np.abs(mx) < 0.1 * p) | (np.abs(my) < 0.1 * p)
    h, w = xx.shape
    cx, cy = w / 2 + rng.uniform(-5, 5), h / 2 + rng.uniform(-5, 5)
    r = np.hypot(xx - cx, yy - cy)
    if kind == "rings":
        return (r // (p / 2)) % 2 == 0
    if kind == "bigdot":
        return r < min(h, w) * rng.uniform(0.28, 0.4)
    raise ValueError(f"unknown pattern {kind!r}")
