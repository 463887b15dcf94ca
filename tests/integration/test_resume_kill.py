"""Exact resume after SIGKILL: a killed and resumed run logs the losses of an uninterrupted one.

The training job is this file run as a script (``python test_resume_kill.py ROOT [STALL]``):
a tiny dropout model on token samples of two modalities and varied lengths, length-grouped
batches, grad_accum 2, trained through ``vlmtune.training.engine.train``; each step's loss is
appended to ``ROOT/losses.jsonl``; at step STALL the job sleeps, to be killed there.
Three fresh interpreters import torch + mmengine: ~17 s here (up to ~35 s on a loaded machine).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

MAX_ITERS, SAVE_EVERY, KEEP, KILL_AFTER = 16, 4, 2, 8
VOCAB = 40


# --- the job ---------------------------------------------------------------------------------


class DropoutLM(nn.Module):
    """Embedding → dropout → linear next-token model: its losses depend on the torch RNG."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.embed = nn.Embedding(VOCAB, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, input_ids, attention_mask, labels):
        logits = self.head(self.drop(self.embed(input_ids)))
        return type("Out", (), {"loss": nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)})


class Samples(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.rows = [torch.randint(0, VOCAB, (int(n),), generator=g)
                     for n in torch.randint(3, 15, (22,), generator=g)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]

    def modality_lengths(self) -> list[tuple[bool, int]]:
        return [(i % 4 == 0, len(r)) for i, r in enumerate(self.rows)]


def collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = labels[i, :len(r)] = r
    return {"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels}


def job(root: Path, stall_at: int | None) -> None:
    from safetensors.torch import save_file

    from vlmtune.config.schema import TrainConfig
    from vlmtune.training.engine import train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model = DropoutLM()
    cfg = TrainConfig(lr=2e-2, batch_size=3, grad_accum=2, max_iters=MAX_ITERS,
                      save_every=SAVE_EVERY, keep_last_n=KEEP, warmup_ratio=0.25)
    losses = (root / "losses.jsonl").open("a")

    def on_step(step: int, metrics: dict[str, float]) -> None:
        losses.write(json.dumps({"step": step, "loss": metrics["train/loss"]}) + "\n")
        losses.flush()
        if step == stall_at:
            time.sleep(600)  # mid-accumulation: the test kills the job here

    train(model, dataset=Samples(), collate_fn=collate,
          param_groups=[{"params": list(model.parameters())}], cfg=cfg,
          work_dir=root / "logs", checkpoint_dir=root / "checkpoints", on_step=on_step)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              root / "final.safetensors")


# --- the test --------------------------------------------------------------------------------


def start(root: Path, stall_at: int | None = None) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, str(root)] + ([str(stall_at)] if stall_at else [])
    env = {**os.environ, "VLMTUNE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}  # fastest for tiny
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return out


def losses(root: Path) -> dict[int, float]:
    path = root / "losses.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # whole lines only
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


def checkpoints(root: Path) -> list[str]:
    return sorted((p.name for p in (root / "checkpoints").iterdir()),
                  key=lambda n: int(n.split("_")[-1].split(".")[0]))


def test_sigkill_mid_accumulation_then_resume_matches_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    # A (uninterrupted) runs beside B (killed after step KILL_AFTER + 1, mid-accumulation).
    a = start(tmp_path / "a")
    b = start(tmp_path / "b", stall_at=KILL_AFTER + 1)
    deadline = time.monotonic() + 90
    marker = tmp_path / "b" / "checkpoints" / f"iter_{KILL_AFTER}" / "COMPLETED"
    while not (marker.exists() and KILL_AFTER + 1 in losses(tmp_path / "b")):
        assert b.poll() is None, b.communicate()[0]
        assert time.monotonic() < deadline, "job B did not reach its stall point"
        time.sleep(0.05)
    os.kill(b.pid, signal.SIGKILL)
    b.communicate(timeout=30)
    assert b.returncode == -signal.SIGKILL
    finish(a)
    assert sorted(losses(tmp_path / "b")) == list(range(1, KILL_AFTER + 2))
    assert checkpoints(tmp_path / "b") == ["iter_4", "iter_8"]

    # A save killed before its marker: newer, but must be skipped (and reported).
    shutil.copytree(tmp_path / "b/checkpoints/iter_8", tmp_path / "b/checkpoints/iter_12")
    (tmp_path / "b/checkpoints/iter_12/COMPLETED").unlink()

    out = finish(start(tmp_path / "b"))
    assert "ignoring" in out and "iter_12" in out and "no COMPLETED marker" in out, out

    full, resumed = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(full) == list(range(1, MAX_ITERS + 1))
    assert len(set(full.values())) == MAX_ITERS  # dropout: no two steps alike
    # B logged 1..9 before the kill, then 9..16 again from iter_8: step 9 is redone
    lines = [json.loads(x)["step"] for x in (tmp_path / "b/losses.jsonl").read_text().splitlines()]
    assert lines == list(range(1, KILL_AFTER + 2)) + list(range(KILL_AFTER + 1, MAX_ITERS + 1))
    for step in range(1, MAX_ITERS + 1):
        assert abs(resumed[step] - full[step]) <= 1e-5, (step, resumed[step], full[step])
    final_a = load_file(tmp_path / "a" / "final.safetensors")
    final_b = load_file(tmp_path / "b" / "final.safetensors")
    for name, tensor in final_a.items():
        torch.testing.assert_close(final_b[name], tensor, rtol=0, atol=1e-6)
    # keep-last-N held across the resume; the half-written iter_12 was replaced by a full one
    assert checkpoints(tmp_path / "b") == ["iter_12", "iter_16"]
    assert (tmp_path / "b/checkpoints/iter_12/COMPLETED").exists()


if __name__ == "__main__":
    job(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
