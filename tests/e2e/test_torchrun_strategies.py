"""``strategy=fsdp|deepspeed_zero2|deepspeed_zero3`` through mmengine's FlexibleRunner, for real:
two gloo processes on the CPU (FSDP's CPU device, DeepSpeed's CPU accelerator).

The reference is an independent engine: the same recipe under ``strategy=ddp`` (mmengine's
Runner + DDP). Sharding changes where parameters, gradients and optimizer state live, not the
arithmetic, so every step's loss must equal DDP's (fp32: within 1e-5) and the trained weights
must agree within one optimizer step (lr 2e-4; Adam's normalised update amplifies the last
bits of near-zero gradients). A run killed with SIGKILL after its first checkpoint resumes from
the strategy's own checkpoint (FSDP optimizer state gathered on rank 0; DeepSpeed's
per-rank ZeRO partitions) to the uninterrupted losses.
"""

from __future__ import annotations

import pytest
from safetensors.torch import load_file
from tests.fixtures.torchrun import (
    MAX_ITERS,
    SAVE_EVERY,
    assert_same_losses,
    finish,
    kill_after_first_checkpoint,
    losses,
    overrides,
    run_dir,
    start,
)

pytest.importorskip("deepspeed", reason="make test installs vlmtune[deepspeed]")

LR = 2e-4  # the demo's train.lr


def _trainable(root, iteration=MAX_ITERS):
    return load_file(run_dir(root) / "checkpoints" / f"iter_{iteration}"
                     / "trainable.safetensors")


def _shards(root, strategy):
    ckpt = run_dir(root) / "checkpoints" / f"iter_{SAVE_EVERY}"
    if strategy.startswith("fsdp"):
        return sorted(p.name for p in ckpt.glob("optimizer*.pt"))
    return sorted(p.name for p in (ckpt / "deepspeed" / "zero").glob("*optim_states.pt"))


EXPECTED_SHARDS = {
    "fsdp": ["optimizer.pt"],  # strategy.state_dict_type=full: gathered on rank 0
    "fsdp-local": ["optimizer_rank0.pt", "optimizer_rank1.pt"],  # one shard per rank
    "deepspeed_zero2": ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                        "zero_pp_rank_1_mp_rank_00_optim_states.pt"],
    "deepspeed_zero3": ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                        "zero_pp_rank_1_mp_rank_00_optim_states.pt"],
}
EXPECTED_SHARDS["deepspeed_zero3-offload"] = EXPECTED_SHARDS["deepspeed_zero3"]


VARIANTS = {"fsdp-local": ["strategy.state_dict_type=local"],
            "deepspeed_zero3-offload": ["strategy.offload_optimizer=true"]}


@pytest.mark.parametrize("strategy", [
    "fsdp",
    "deepspeed_zero3",
    pytest.param("deepspeed_zero2", marks=pytest.mark.slow),  # ZeRO-3's code path, less
    pytest.param("fsdp-local", marks=pytest.mark.slow),
    pytest.param("deepspeed_zero3-offload", marks=pytest.mark.slow),  # ZeRO-Offload
])
def test_sharded_strategy_trains_like_ddp_and_resumes_after_sigkill(
        strategy, tmp_path, shared_cache, ddp_reference):
    args = overrides(tmp_path, shared_cache, "[ingest,train]",
                     f"strategy={strategy.partition('-')[0]}", *VARIANTS.get(strategy, []))
    kill_after_first_checkpoint(args, tmp_path)
    assert _shards(tmp_path, strategy) == EXPECTED_SHARDS[strategy]
    out = finish(start(args))
    assert "resumed from" in out and "Traceback" not in out
    # steps 1..SAVE_EVERY trained before the kill, the rest after resuming: each once, and
    # each equal to DDP's
    assert_same_losses(losses(tmp_path), losses(ddp_reference))
    want, got = _trainable(ddp_reference), _trainable(tmp_path)
    assert set(got) == set(want) and len(got) > 0  # every trainable tensor, whole
    for name, tensor in want.items():
        assert got[name].shape == tensor.shape, name
        assert float((got[name] - tensor).abs().max()) < LR, name
    # The output is the final weights in a fresh model: the adapter holds them, in its dtype.
    adapter = load_file(run_dir(tmp_path) / "adapter" / "adapter_model.safetensors")
    assert len(adapter) == len(got)
    reference = load_file(run_dir(ddp_reference) / "adapter" / "adapter_model.safetensors")
    assert set(adapter) == set(reference)
    for name, tensor in reference.items():
        assert float((adapter[name] - tensor).abs().max()) < LR, name


@pytest.mark.slow
def test_full_finetuning_with_tied_embeddings_under_fsdp_follows_ddp(tmp_path, shared_cache):
    """The tiny model ties its input and output embeddings (as Qwen2-0.5B-based InternVL2-1B
    does): under method=full both train, and FSDP must keep the tied weight in one unit."""
    def train(strategy):
        root = tmp_path / strategy
        finish(start(overrides(root, shared_cache, "[ingest,train]", "method=full",
                               f"strategy={strategy}")))
        return root

    fsdp, ddp = train("fsdp"), train("ddp")
    assert_same_losses(losses(fsdp), losses(ddp))
    assert (run_dir(fsdp) / "trained" / "config.json").is_file()
