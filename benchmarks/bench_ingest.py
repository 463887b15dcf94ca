"""Ingest throughput and memory on FoodieQA-shaped data with real image files.

Generates 4,000 distinct small JPEGs and FoodieQA sivqa records over them (about 5 questions a
photo), then measures, in this process:

- the baseline: ``json.load`` of the task file + a PIL ``verify()`` of each record's image;
- ``ingest_dataset`` (foodieqa adapter, JSON array): records/s including the image checks,
  the source fingerprint, and a re-ingest of unchanged data (cache hit);
- ``ingest_dataset`` on the same records as LLaVA JSONL (the streaming path);

and, in fresh subprocesses, the peak resident memory (ru_maxrss) of ingesting 20k vs 100k
records, for the streaming JSONL source and for the FoodieQA JSON array (which a JSON parser
loads whole). ``BENCH_INGEST_RECORDS=20000,100000`` sets the two sizes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

PHOTOS = 4000
SIDE = 48


def make_photos(root: Path, n: int) -> list[str]:
    rng = random.Random(0)
    rels = []
    for i in range(n):
        rel = f"images/{i // 500:02d}/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        noise = bytes(rng.getrandbits(8) for _ in range(SIDE * SIDE * 3 // 16))
        im = Image.frombytes("RGB", (SIDE // 4, SIDE // 4), noise).resize((SIDE, SIDE))
        im.save(root / rel, "JPEG", quality=80)
        rels.append(rel)
    return rels


def make_records(n: int, photos: list[str]) -> list[dict]:
    records = []
    for i in range(n):
        photo = photos[i % len(photos)]
        records.append({
            "question": f"图片中的菜叫什么名字？#{i}", "question_en": f"What is the dish? #{i}",
            "choices": ["红烧肉", "饺子", "麻婆豆腐", "北京烤鸭"],
            "choices_en": ["braised pork", "dumplings", "mapo tofu", "Peking duck"],
            "answer": str(i % 4), "question_type": "food-name", "food_name": "饺子",
            "question_id": f"sivqa-bench-{i}",
            "food_meta": {"main_ingredient": ["白菜"], "id": i % len(photos), "food_name": "饺子",
                          "food_type": "东北菜", "food_location": "餐馆", "food_file": photo},
        })
    return records


def write_dataset(root: Path, photos_from: Path, n: int) -> None:
    """``root``: sivqa_tidy.json (JSON array), data.jsonl (LLaVA records), images/ (hard links:
    a symlink out of the root would be rejected)."""
    from vlmtune.data.foodieqa import sivqa_record_to_conversation

    photos = [f"images/{i // 500:02d}/{i}.jpg" for i in range(PHOTOS)]
    for rel in photos:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(photos_from / rel, root / rel)
        except OSError:
            shutil.copyfile(photos_from / rel, root / rel)
    records = make_records(n, photos)
    (root / "sivqa_tidy.json").write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    with open(root / "data.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(sivqa_record_to_conversation(rec), ensure_ascii=False) + "\n")


def baseline(root: Path) -> float:
    """Seconds for json.load + PIL verify of each record's image."""
    start = time.perf_counter()
    records = json.loads((root / "sivqa_tidy.json").read_text(encoding="utf-8"))
    for rec in records:
        with Image.open(root / rec["food_meta"]["food_file"]) as im:
            im.verify()
    return time.perf_counter() - start


def cfg_for(root: Path, source: str):
    from vlmtune.config.schema import DatasetConfig

    if source == "foodieqa":
        return DatasetConfig(name="bench", adapter="foodieqa", root=str(root))
    return DatasetConfig(name="bench", adapter="llava", root=str(root), data_file="data.jsonl")


def timed_ingest(root: Path, source: str, out: Path, cache: Path | None = None,
                 fingerprint: str | None = "bench"):
    """Seconds and result of one ingest; ``fingerprint=None`` fingerprints the source too."""
    from vlmtune.data.ingest import ingest_dataset

    start = time.perf_counter()
    result = ingest_dataset(cfg_for(root, source), out, fingerprint=fingerprint,
                            cache_dir=cache)
    return time.perf_counter() - start, result


def child(root: str, source: str, out: str) -> None:
    """Ingest in a fresh process; print the RSS after imports and the peak (MiB).

    The peak is VmHWM (reset by exec), not ru_maxrss, which a child inherits from its parent.
    """
    os.environ["VLMTUNE_PROGRESS"] = "0"
    from vlmtune.data.ingest import ingest_dataset  # noqa: F401 - imported before measuring

    before = _status_mib("VmRSS")
    seconds, result = timed_ingest(Path(root), source, Path(out))
    peak = _status_mib("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "seconds": seconds,
                      "kept": result.manifest["counts"]["kept"]}))


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(root: Path, source: str, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(root), source,
                          str(work / f"mem-{source}-{root.name}")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    os.environ["VLMTUNE_PROGRESS"] = "0"
    sizes = [int(s) for s in os.environ.get("BENCH_INGEST_RECORDS", "20000,100000").split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        t0 = time.perf_counter()
        make_photos(work / "photos", PHOTOS)
        for n in sizes:
            write_dataset(work / f"n{n}", work / "photos", n)
        print(f"data: {PHOTOS} JPEGs ({SIDE}x{SIDE}), {sizes} FoodieQA-shaped records "
              f"({time.perf_counter() - t0:.1f} s to generate); {os.cpu_count()} cores, load "
              f"average {os.getloadavg()[0]:.1f}")
        small = work / f"n{sizes[0]}"
        n = sizes[0]

        base = baseline(small)
        print(f"baseline json.load + PIL verify per record: {n / base:8.0f} records/s")
        from vlmtune.data.ingest import open_source, source_fingerprint

        start = time.perf_counter()
        source_fingerprint(open_source(cfg_for(small, "foodieqa")))
        fp = time.perf_counter() - start
        print(f"source fingerprint (records + {PHOTOS} images): {fp:6.2f} s "
              f"({n / fp:.0f} records/s)")
        for source in ("foodieqa", "llava"):
            seconds, result = timed_ingest(small, source, work / f"out-{source}")
            assert result.manifest["counts"]["kept"] == n, result.manifest
            print(f"ingest {source:8s} ({'JSON array' if source == 'foodieqa' else 'JSONL'}): "
                  f"{n / seconds:8.0f} records/s  ratio vs baseline {base / seconds:5.2f}x")
        cache = work / "cache"
        timed_ingest(small, "foodieqa", work / "out-c1", cache, fingerprint=None)
        seconds, result = timed_ingest(small, "foodieqa", work / "out-c2", cache,
                                       fingerprint=None)
        assert result.cache_hit
        print(f"re-ingest unchanged data (fingerprint + cache hit): {seconds:6.2f} s")

        for source in ("llava", "foodieqa"):
            mem = {m: measure_memory(work / f"n{m}", source, work) for m in sizes}
            lo, hi = mem[sizes[0]], mem[sizes[-1]]
            growth = (hi["peak"] - lo["peak"]) * 2**20 / (sizes[-1] - sizes[0])
            print(f"peak RSS {source:8s}: {sizes[0]}: {lo['peak']:6.1f} MiB, {sizes[-1]}: "
                  f"{hi['peak']:6.1f} MiB (ratio {hi['peak'] / lo['peak']:.3f}, {growth:.0f} "
                  f"B/record; after imports {lo['before']:.1f} MiB; "
                  f"{sizes[-1] / hi['seconds']:.0f} records/s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
