"""Exact resume after SIGKILL: a killed and resumed run logs the losses of an uninterrupted one,
and MLflow gets every step exactly once.

The training job is this file run as a script (``python test_resume_kill.py ROOT [STALL
[FLUSH_AT]]``): a tiny dropout model on token samples of two modalities and varied lengths,
length-grouped batches, grad_accum 2, trained through ``vlmtune.training.engine.train``; each
step's loss is appended to ``ROOT/losses.jsonl``; at step STALL the job sleeps, to be killed
there. With ``MLFLOW_URI`` set, the steps also go to that MLflow store through
``StepMetrics`` as the train stage wires it (flushed before every checkpoint; its 5 s timer
replaced by one flush at step FLUSH_AT, so what is buffered at the kill is known).
Four fresh interpreters import torch + mmengine: ~25 s here (more on a loaded machine).
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


def job(root: Path, stall_at: int | None, flush_at: int | None) -> None:
    from safetensors.torch import save_file

    from vlmtune.config.schema import TrainConfig
    from vlmtune.training.engine import train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model = DropoutLM()
    cfg = TrainConfig(lr=2e-2, batch_size=3, grad_accum=2, max_iters=MAX_ITERS,
                      save_every=SAVE_EVERY, keep_last_n=KEEP, warmup_ratio=0.25)
    losses = (root / "losses.jsonl").open("a")
    sink = mlflow_steps(root)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        losses.write(json.dumps({"step": step, "loss": metrics["train/loss"]}) + "\n")
        losses.flush()
        if sink is not None:
            sink(step, metrics)
            if step == flush_at:
                sink.flush()  # as the 5 s timer would
        if step == stall_at:
            time.sleep(600)  # the test kills the job here

    train(model, dataset=Samples(), collate_fn=collate,
          param_groups=[{"params": list(model.parameters())}], cfg=cfg,
          work_dir=root / "logs", checkpoint_dir=root / "checkpoints", on_step=on_step,
          before_checkpoint=sink and (lambda step: sink.flush()))
    if sink is not None:
        sink.flush()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              root / "final.safetensors")


def mlflow_steps(root: Path):
    """StepMetrics into the MLflow store at $MLFLOW_URI, reopening the run of ROOT/run_id."""
    if "MLFLOW_URI" not in os.environ:
        return None
    from vlmtune.tracking import MlflowTracker, StepMetrics

    tracker = MlflowTracker(os.environ["MLFLOW_URI"], "kill")
    id_file = root / "run_id"
    run_id = tracker.start("kill", run_id=id_file.read_text() if id_file.exists() else None)
    id_file.write_text(run_id)
    return StepMetrics(tracker, every_s=3600)


# --- the test --------------------------------------------------------------------------------


def start(root: Path, stall_at: int | None = None, flush_at: int | None = None,
          mlflow_uri: str | None = None) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, str(root), str(stall_at or 0), str(flush_at or 0)]
    env = {**os.environ, "VLMTUNE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}  # fastest for tiny
    env.pop("MLFLOW_URI", None)
    if mlflow_uri:
        env["MLFLOW_URI"] = mlflow_uri
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


def kill_when(proc: subprocess.Popen, root: Path, checkpoint: int, step: int) -> str:
    """SIGKILL ``proc`` once checkpoint ``iter_<checkpoint>`` is complete and ``step`` logged."""
    deadline = time.monotonic() + 90
    marker = root / "checkpoints" / f"iter_{checkpoint}" / "COMPLETED"
    while not (marker.exists() and step in losses(root)):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"the job did not reach step {step}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return out


def mlflow_losses(uri: str, root: Path) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history((root / "run_id").read_text(), "train/loss")
    return sorted((m.step, m.value) for m in history)


def test_sigkill_mid_accumulation_then_resume_matches_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    b_root = tmp_path / "b"
    # A (uninterrupted) runs beside B, killed after step KILL_AFTER + 1 (mid-accumulation),
    # with nothing flushed to MLflow after the checkpoint at KILL_AFTER.
    a = start(tmp_path / "a")
    kill_when(start(b_root, stall_at=KILL_AFTER + 1, mlflow_uri=uri), b_root, KILL_AFTER,
              KILL_AFTER + 1)
    finish(a)
    assert sorted(losses(b_root)) == list(range(1, KILL_AFTER + 2))
    assert checkpoints(b_root) == ["iter_4", "iter_8"]
    # flushed before each checkpoint: 1..8 reached MLflow; 9 was still buffered
    assert [s for s, _ in mlflow_losses(uri, b_root)] == list(range(1, KILL_AFTER + 1))

    # A save killed before its marker: newer, but must be skipped (and reported).
    shutil.copytree(b_root / "checkpoints/iter_8", b_root / "checkpoints/iter_12")
    (b_root / "checkpoints/iter_12/COMPLETED").unlink()

    # Resumed from iter_8, killed again at step 14 after a flush at step 13 (past iter_12).
    out = kill_when(start(b_root, stall_at=14, flush_at=13, mlflow_uri=uri), b_root, 12, 14)
    assert "ignoring" in out and "iter_12" in out and "no COMPLETED marker" in out, out
    assert [s for s, _ in mlflow_losses(uri, b_root)] == list(range(1, 14))

    finish(start(b_root, mlflow_uri=uri))  # resumes from iter_12: step 13 is trained again

    full, resumed = losses(tmp_path / "a"), losses(b_root)
    assert sorted(full) == list(range(1, MAX_ITERS + 1))
    assert len(set(full.values())) == MAX_ITERS  # dropout: no two steps alike
    # B logged 1..9, then 9..14 from iter_8, then 13..16 from iter_12
    lines = [json.loads(x)["step"] for x in (b_root / "losses.jsonl").read_text().splitlines()]
    assert lines == [*range(1, 10), *range(9, 15), *range(13, MAX_ITERS + 1)]
    for step in range(1, MAX_ITERS + 1):
        assert abs(resumed[step] - full[step]) <= 1e-5, (step, resumed[step], full[step])
    # MLflow: every step exactly once, each the uninterrupted run's loss
    logged = mlflow_losses(uri, b_root)
    assert [s for s, _ in logged] == list(range(1, MAX_ITERS + 1))
    for step, value in logged:
        assert abs(value - full[step]) <= 1e-5, (step, value, full[step])
    final_a = load_file(tmp_path / "a" / "final.safetensors")
    final_b = load_file(b_root / "final.safetensors")
    for name, tensor in final_a.items():
        torch.testing.assert_close(final_b[name], tensor, rtol=0, atol=1e-6)
    # keep-last-N held across the resumes; the half-written iter_12 was replaced by a full one
    assert checkpoints(b_root) == ["iter_12", "iter_16"]
    assert (b_root / "checkpoints/iter_12/COMPLETED").exists()


if __name__ == "__main__":
    job(Path(sys.argv[1]), int(sys.argv[2]) or None, int(sys.argv[3]) or None)
