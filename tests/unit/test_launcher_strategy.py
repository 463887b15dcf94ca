"""The launcher and strategy groups: composition, validation, the torchrun command line, the
FlexibleRunner configs, and how the batch sampler shards a global batch over ranks."""

from __future__ import annotations

import inspect
import re
import sys

import pytest

from vlmtune.config import compose_recipe, validate
from vlmtune.errors import ConfigError
from vlmtune.training.sampler import EpochBatchSampler


def test_torchrun_card_composes_and_builds_the_torchrun_command():
    from vlmtune.training.distributed import torchrun_command

    recipe = validate(compose_recipe(["experiment=demo", "launcher=torchrun",
                                      "launcher.nproc_per_node=4", "launcher.master_port=29511",
                                      "device=cpu"]))
    assert (recipe.launcher.name, recipe.launcher.nproc_per_node) == ("torchrun", 4)
    assert recipe.strategy.name == "ddp"
    cmd = torchrun_command(recipe.launcher, "vlmtune.pipelines.train_worker", ["RUN", "KEY"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4",
                   "--nnodes=1", "--max-restarts=0", "--node-rank=0",
                   "--master-addr=127.0.0.1", "--master-port=29511", "-m",
                   "vlmtune.pipelines.train_worker", "RUN", "KEY"]


def test_rendezvous_endpoint_replaces_the_master_address():
    from vlmtune.config.schema import LauncherConfig
    from vlmtune.training.distributed import torchrun_command

    launcher = LauncherConfig(name="torchrun", nproc_per_node=8, nnodes=2,
                              rdzv_endpoint="head:29400", rdzv_id="job7")
    cmd = torchrun_command(launcher, "m", [])
    assert cmd[3:9] == ["--nproc-per-node=8", "--nnodes=2", "--max-restarts=0",
                        "--rdzv-backend=c10d", "--rdzv-endpoint=head:29400", "--rdzv-id=job7"]


@pytest.mark.parametrize(("override", "key"), [
    ("launcher.nproc_per_node=0", "launcher.nproc_per_node"),
    ("launcher.node_rank=1", "launcher.node_rank"),
    ("launcher.name=mpirun", "launcher.name"),
])
def test_bad_launcher_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_recipe(["experiment=demo", "device=cpu", override]))


SHARDED = ["deepspeed_zero2", "deepspeed_zero3", "fsdp"]


@pytest.mark.parametrize("strategy", SHARDED)
def test_sharded_strategies_validate_on_the_cpu_under_torchrun(strategy):
    recipe = validate(compose_recipe(["experiment=demo", f"strategy={strategy}",
                                      "launcher=torchrun", "device=cpu"]))
    assert (recipe.strategy.name, recipe.launcher.name) == (strategy, "torchrun")


@pytest.mark.parametrize(("strategy", "extra", "message"), [
    ("fsdp", [], "strategy=fsdp shards the model over processes: use it with launcher=torchrun"),
    ("deepspeed_zero3", ["launcher=torchrun", "train.eval_every=10"],
     "train.eval_every with strategy=deepspeed_zero3"),
])
def test_sharded_strategies_refuse_what_they_cannot_do(strategy, extra, message):
    cfg = compose_recipe(["experiment=demo", f"strategy={strategy}", "device=cpu", *extra])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_sharded_strategies_refuse_4bit_weights():
    # (on the CPU method=qlora is refused before, for want of CUDA)
    from vlmtune.training.strategies import check_strategy

    with pytest.raises(ConfigError, match="method=qlora with strategy=fsdp"):
        check_strategy("fsdp", "torchrun", method="qlora")


def test_deepspeed_strategy_names_the_missing_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real(name, *a))
    cfg = compose_recipe(["experiment=demo", "strategy=deepspeed_zero2", "launcher=torchrun",
                          "device=cpu"])
    with pytest.raises(ConfigError, match=r"strategy=deepspeed_zero2 needs the deepspeed "
                                          r"package \(pip install 'vlmtune\[deepspeed\]'\)"):
        validate(cfg)


def test_unknown_strategy_card_is_refused():
    with pytest.raises(ConfigError, match="strategy='zero9' is not a strategy card"):
        compose_recipe(["strategy=zero9"])


def test_fsdp_config_builds_mmengine_fsdp_strategy_and_wraps_what_trains(tmp_path):
    import torch
    from mmengine._strategy import FSDPStrategy

    from vlmtune.training.strategies import flexible_runner_config

    cfg = flexible_runner_config("fsdp", grad_accum=2, max_grad_norm=1.0, batch_size=2,
                                 precision="bf16", device="cuda:1")
    strategy = dict(cfg)
    assert strategy.pop("type") == "FSDPStrategy"
    # mmengine accepts every key (constructing it needs no GPU; it opens a log in work_dir)
    FSDPStrategy(**strategy, work_dir=str(tmp_path))
    wrapper = cfg["model_wrapper"]
    assert (wrapper["device_id"], wrapper["use_orig_params"]) == (1, True)
    cpu = flexible_runner_config("fsdp", grad_accum=1, max_grad_norm=None, batch_size=2,
                                 precision="fp32", device="cpu")
    assert cpu["model_wrapper"]["device_id"] == torch.device("cpu")
    # The policy: a module whose own parameters train is a unit of its own (its flat
    # parameter holds one dtype); frozen modules only by size (1M parameters).
    policy = wrapper["auto_wrap_policy"]
    trained, frozen = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4).requires_grad_(False)
    assert policy(module=trained, recurse=False, nonwrapped_numel=20)
    assert not policy(module=frozen, recurse=False, nonwrapped_numel=20)
    assert policy(module=frozen, recurse=False, nonwrapped_numel=2_000_000)


def test_fsdp_never_splits_a_tied_weight_over_units():
    import torch

    from vlmtune.training.strategies import fsdp_wrap_policy, tied_owners

    class Tied(torch.nn.Module):  # input and output embeddings tied, as in Qwen2-0.5B
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 4))
            self.head = torch.nn.Linear(4, 8, bias=False)
            self.head.weight = self.inner[0].weight

    model = Tied()
    tied = tied_owners(model)
    assert tied == [{id(model.inner[0]), id(model.head)}]
    policy = fsdp_wrap_policy(1_000_000, tied)
    # every module trains (full fine-tuning): the untied linear is a unit; neither owner of
    # the tied weight nor `inner` (one owner without the other) is; the root holds both.
    assert policy(module=model.inner[1], recurse=False, nonwrapped_numel=20)
    for module in (model.inner[0], model.head, model.inner):
        assert not policy(module=module, recurse=False, nonwrapped_numel=2_000_000)
    assert policy(module=model, recurse=False, nonwrapped_numel=2_000_000)


def test_zero3_config_fits_mmengine_deepspeed_strategy():
    from mmengine._strategy import DeepSpeedStrategy

    from vlmtune.training.strategies import flexible_runner_config

    cfg = flexible_runner_config("deepspeed_zero3", grad_accum=4, max_grad_norm=0.5,
                                 batch_size=3, precision="bf16", device="cuda:0",
                                 offload_optimizer=True)
    strategy = dict(cfg)
    assert strategy.pop("type") == "DeepSpeedStrategy"
    inspect.signature(DeepSpeedStrategy.__init__).bind(None, **strategy)  # known keys only
    assert strategy["zero_optimization"]["stage"] == 3
    assert strategy["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    # offloaded, the optimizer vlmtune hands over (torch's AdamW) steps on the CPU
    assert strategy["config"] == {"zero_force_ds_cpu_optimizer": False}
    assert (strategy["gradient_accumulation_steps"], strategy["train_micro_batch_size_per_gpu"],
            strategy["gradient_clipping"]) == (4, 3, 0.5)
    assert strategy["bf16"] == {"enabled": True}


class _Fixed(EpochBatchSampler):
    """Two global batches per epoch: six samples, then one."""

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return [[10, 11, 12, 13, 14, 15], [16]]

    def __len__(self) -> int:
        return 2


def _first(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_gives_each_rank_a_disjoint_share_of_every_global_batch():
    shares = [_first(_Fixed(6, 0).shard(rank, 2), 2) for rank in (0, 1)]
    assert shares[0] == [[10, 12, 14], [16]]
    assert shares[1] == [[11, 13, 15], [16]]  # a one-sample batch is repeated, never empty
    three = [_first(_Fixed(6, 0).shard(rank, 3), 1)[0] for rank in range(3)]
    assert three == [[10, 13], [11, 14], [12, 15]]
    # the position stays a count of global batches; a resumed rank starts at its share
    assert _first(_Fixed(6, 0, start=1).shard(1, 2), 2) == [[16], [11, 13, 15]]
    assert _Fixed(6, 0).shard(1, 2).state(3)["world_size"] == 2
    assert "world_size" not in _Fixed(6, 0).state(3)


def test_run_key_ignores_where_processes_meet_but_not_how_many_there_are():
    from vlmtune.config import run_key

    def key(*extra):
        return run_key(validate(compose_recipe(["experiment=demo", "device=cpu",
                                                "launcher=torchrun", *extra])), "fp")

    base = key()
    assert key("launcher.master_port=29512", "launcher.master_addr=10.0.0.1") == base
    assert key("launcher.nproc_per_node=4") != base  # the global batch changes
