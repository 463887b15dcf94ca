"""Training throughput: vlmtune's engine (mmengine Runner + hooks) vs a plain torch + peft loop.

Both train the demo's tiny InternVL with LoRA on the same batches (the engine's length-grouped
order over the ingested synthetic FoodieQA set), from the same initial weights, with the same
optimizer, schedule, clipping and gradient accumulation, both through a DataLoader. Samples
are tokenized and tiled once beforehand, so the figure is the training loop's own cost. Runs
alternate and the best of each is kept; one torch thread by default, as the steadiest figure
on a shared machine. Target: engine ≥ 0.95 × plain.

    .venv/bin/python benchmarks/bench_train.py [--iters 80] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from _common import demo_ingested, quiet
from torch.utils.data import DataLoader

from vlmtune.data.collate import Collator, ConversationDataset
from vlmtune.data.templates import get_template
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.models.methods import apply_method
from vlmtune.tracking.tracker import MlflowTracker, StepMetrics
from vlmtune.training.engine import build_batch_sampler, train

VARIANTS = {"plain": "plain torch + peft loop", "engine": "vlmtune engine",
            "engine+mlflow": "engine + MLflow (train stage)"}


class Cached(torch.utils.data.Dataset):
    """A dataset's samples computed once (the loop, not tokenization, is measured)."""

    def __init__(self, dataset: ConversationDataset) -> None:
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.keys = dataset.modality_lengths()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]

    def modality_lengths(self) -> list[tuple[bool, int]]:
        return self.keys


def setup(cache: Path, iters: int):
    recipe, ingested = demo_ingested(cache, f"train.max_iters={iters}",
                                     f"train.save_every={iters}", "train.grad_accum=2",
                                     "train.warmup_ratio=0.1")
    image_root = Path(ingested.manifest["image_root"])
    model_dir = ensure_model_dir(recipe.model)
    loaded = load_model(model_dir, recipe.model)
    dataset = ConversationDataset(ingested.train_path, image_root, loaded.tokenizer, loaded.images,
                                  template=get_template(recipe.model.chat_template),
                                  system=recipe.model.system_prompt,
                                  max_length=recipe.train.max_length)
    return recipe, model_dir, Cached(dataset), Collator(loaded.tokenizer.pad_token_id,
                                                       loaded.images.collate)


def fresh(recipe, model_dir):
    loaded = load_model(model_dir, recipe.model)
    torch.manual_seed(0)
    return apply_method(loaded.model, loaded.family, recipe.method, lr=recipe.train.lr,
                        projector_lr=recipe.train.projector_lr,
                        weight_decay=recipe.train.weight_decay,
                        image_token_id=loaded.image_token_id)


class Clock:
    """Wall and process-CPU seconds, in total and from the first step's end to the last's."""

    def __init__(self) -> None:
        self.start = (time.perf_counter(), time.process_time())
        self.steps: list[tuple[float, float]] = []
        self.losses: list[float] = []

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append((time.perf_counter(), time.process_time()))
        self.losses.append(metrics["train/loss"])

    def result(self) -> dict[str, float]:
        end = (time.perf_counter(), time.process_time())
        first, last = self.steps[0], self.steps[-1]
        return {"wall": end[0] - self.start[0], "cpu": end[1] - self.start[1],
                "step_wall": last[0] - first[0], "step_cpu": last[1] - first[1],
                "losses": self.losses}


def run_engine(recipe, model_dir, dataset, collate, work: Path,
               mlflow: bool = False) -> dict[str, float]:
    """``vlmtune.training.engine.train``; ``mlflow``: each step's metrics logged to an MLflow
    sqlite store, as the pipeline's train stage does."""
    tuned = fresh(recipe, model_dir)
    buffered = None
    if mlflow:  # as the train stage does: buffered per-step metrics, flushed at the end
        tracker = MlflowTracker(f"sqlite:///{work / 'mlflow.db'}", "bench")
        tracker.start("bench")
        buffered = StepMetrics(tracker)
    clock = Clock()

    def step(step: int, metrics: dict[str, float]) -> None:
        if buffered is not None:
            buffered(step, metrics)
        clock.step(step, metrics)

    train(tuned.model, dataset=dataset, collate_fn=collate, param_groups=tuned.param_groups,
          cfg=recipe.train, work_dir=work / "logs", checkpoint_dir=work / "ckpt",
          on_step=step)
    if buffered is not None:
        buffered.flush()
    return clock.result()


def run_plain(recipe, model_dir, dataset, collate) -> dict[str, float]:
    """The loop a user would write: load, forward, backward, clip, step, schedule."""
    cfg = recipe.train
    tuned = fresh(recipe, model_dir)
    model = tuned.model
    clock = Clock()
    loader = DataLoader(dataset, batch_sampler=build_batch_sampler(dataset, cfg),
                        collate_fn=collate)
    model.train()
    optimizer = torch.optim.AdamW(tuned.param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = round(cfg.warmup_ratio * cfg.max_iters)
    warmup = 0 if warmup == 1 else warmup

    def factor(i: int) -> float:  # the engine's: linear from 1e-3 to 1 at warmup - 1, cosine
        if i < warmup:
            return 1e-3 + (1 - 1e-3) * i / (warmup - 1)
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / (cfg.max_iters - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    params = [p for group in tuned.param_groups for p in group["params"]]
    for i, batch in zip(range(cfg.max_iters), loader, strict=False):
        loss = model(**batch, use_cache=False).loss
        (loss / cfg.grad_accum).backward()
        if (i + 1) % cfg.grad_accum == 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        schedule.step()
        clock.step(i + 1, {"train/loss": float(loss.detach())})  # as the engine reports
    return clock.result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                        help="skip the run that logs every step to MLflow")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe, model_dir, dataset, collate = setup(tmp / "cache", args.iters)
        sampler = iter(build_batch_sampler(dataset, recipe.train))
        batches = [collate([dataset[i] for i in next(sampler)]) for _ in range(args.iters)]
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        steady = tokens - int(batches[0]["attention_mask"].sum())
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for r in range(args.repeats):
            runs["plain"].append(run_plain(recipe, model_dir, dataset, collate))
            runs["engine"].append(run_engine(recipe, model_dir, dataset, collate,
                                             tmp / f"e{r}"))
            if args.mlflow:
                runs["engine+mlflow"].append(run_engine(recipe, model_dir, dataset, collate,
                                                        tmp / f"m{r}", mlflow=True))
    cfg = recipe.train
    print(f"tiny InternVL + LoRA r={recipe.method.lora.r}, {args.iters} iterations of batch "
          f"{cfg.batch_size} (grad_accum {cfg.grad_accum}), {tokens} tokens, "
          f"{torch.get_num_threads()} torch thread(s), best of {args.repeats} alternating runs")
    gap = max(abs(a - b) for a, b in zip(runs["plain"][0]["losses"], runs["engine"][0]["losses"],
                                         strict=True))
    print(f"  same training: largest per-step loss difference, engine vs plain: {gap:.1e}")
    best = {name: {k: min(r[k] for r in rs) for k in rs[0] if k != "losses"}
            for name, rs in runs.items() if rs}
    p = best["plain"]
    print(f"  {'':24s} {'end to end':>22s} {'per step (after the 1st)':>26s}   ratio to plain")
    print(f"  {'':24s} {'tok/s':>10s} {'tok/CPU-s':>11s} {'tok/s':>12s} {'tok/CPU-s':>13s}"
          f"   (CPU end to end, CPU per step, wall per step)")
    for name, b in best.items():
        print(f"  {VARIANTS[name]:24s} {tokens / b['wall']:10.0f} {tokens / b['cpu']:11.0f} "
              f"{steady / b['step_wall']:12.0f} {steady / b['step_cpu']:13.0f}   "
              f"{p['cpu'] / b['cpu']:.3f}  {p['step_cpu'] / b['step_cpu']:.3f}  "
              f"{p['step_wall'] / b['step_wall']:.3f}")
    e = best["engine"]
    print(f"  engine/plain (target >= 0.95): {p['cpu'] / e['cpu']:.3f} end to end, "
          f"{p['step_cpu'] / e['step_cpu']:.3f} per step (CPU time: steady on a shared machine)")


if __name__ == "__main__":
    main()
