"""Peak memory of the streamed LoRA merge vs peft's in-memory merge.

Generates a synthetic LLM-shaped model (``BENCH_MERGE_SHARDS`` shards, default 4, one decoder
layer of about ``BENCH_MERGE_SHARD_MB`` MB each, default 64; float32) and a rank-16 LoRA
adapter on all seven linear layers into a temporary directory, then runs, each in a fresh
subprocess whose own children's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) is
reported:

- ``streamed``: ``vlmtune.convert.merge.merge_checkpoint`` (one tensor at a time);
- ``in-memory``: the whole model loaded, peft LoRA layers injected, ``merge_and_unload``-style
  merge, saved.

Each run's baseline is a subprocess that only imports what the run imports. Printed: each
peak, each peak above its baseline, and the ratios the acceptance asks for:
streamed / (largest shard + adapter) (want ≤ 1.3) and in-memory / whole model (want ≥ 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK = 16


def _dims(shard_mb: float) -> tuple[int, int]:
    """(hidden, intermediate) so one layer's seven fp32 weights are about ``shard_mb`` MB."""
    hidden = 256
    while (4 * hidden * hidden + 3 * hidden * int(hidden * 2.75)) * 4 < shard_mb * 1e6:
        hidden += 64
    return hidden, int(hidden * 2.75)


def _shapes(hidden: int, inter: int) -> dict[str, tuple[int, int]]:
    return {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
            "o_proj": (hidden, hidden), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
            "down_proj": (hidden, inter)}


def make_model(root: Path, shards: int, shard_mb: float) -> dict:
    base, adapter = root / "base", root / "adapter"
    base.mkdir()
    adapter.mkdir()
    hidden, inter = _dims(shard_mb)
    shapes, weight_map, lora = _shapes(hidden, inter), {}, {}
    g = torch.Generator().manual_seed(0)
    for layer in range(shards):
        file = f"model-{layer + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for name, (out_f, in_f) in shapes.items():
            mid = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"model.layers.{layer}.{mid}.{name}"
            tensors[key + ".weight"] = torch.randn(out_f, in_f, generator=g)
            lora[f"base_model.model.{key}.lora_A.weight"] = torch.randn(RANK, in_f, generator=g)
            lora[f"base_model.model.{key}.lora_B.weight"] = torch.randn(out_f, RANK, generator=g)
        save_file(tensors, str(base / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (base / "config.json").write_text(json.dumps({"model_type": "bench"}))
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "use_rslora": False,
        "target_modules": list(LINEARS), "lora_dropout": 0.0, "bias": "none"}))
    files = sorted(base.glob("*.safetensors"))
    return {"base": base, "adapter": adapter, "largest": max(f.stat().st_size for f in files),
            "model": sum(f.stat().st_size for f in files),
            "adapter_bytes": (adapter / "adapter_model.safetensors").stat().st_size}


# What each run imports, and nothing else: its baseline.
BASELINES = {"streamed": "import vlmtune.convert.merge",
             "in-memory": "import torch, safetensors.torch, peft, peft.tuners.lora"}
STREAMED = """
import sys
from vlmtune.convert.merge import merge_checkpoint
merge_checkpoint(sys.argv[1], sys.argv[2], sys.argv[3], max_shard_size="2GB", device="cpu")
"""
IN_MEMORY = """
import sys, json, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
base, adapter, out = map(Path, sys.argv[1:4])
weights = {}
for f in sorted(base.glob("*.safetensors")):
    weights.update(load_file(str(f)))
root = torch.nn.Module()
for name, w in weights.items():
    *path, _ = name.split(".")
    module = root
    for part in path[:-1]:
        if not hasattr(module, part):
            module.add_module(part, torch.nn.Module())
        module = getattr(module, part)
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    linear.weight = torch.nn.Parameter(w, requires_grad=False)
    module.add_module(path[-1], linear)
cfg = json.loads((adapter / "adapter_config.json").read_text())
inject_adapter_in_model(LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"],
                                   target_modules=cfg["target_modules"]), root)
lora = {k.removeprefix("base_model.model.").replace(".weight", ".default.weight"): v
        for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()}
root.load_state_dict(lora, strict=False)
for m in root.modules():
    if isinstance(m, LoraLayer):
        m.merge()
merged = {k.replace(".base_layer", ""): v for k, v in root.state_dict().items() if "lora_" not in k}
out.mkdir()
save_file(merged, str(out / "model.safetensors"))
"""
MEASURE = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
if done.returncode:
    sys.exit(done.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def peak_rss(code: str, *args: str) -> tuple[int, float]:
    """(peak RSS bytes of ``python -c code args`` in its own subprocess, seconds)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, code, *args], capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode:
        raise SystemExit(f"benchmark subprocess failed:\n{done.stderr}")
    return int(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> None:
    shards = int(os.environ.get("BENCH_MERGE_SHARDS", "4"))
    shard_mb = float(os.environ.get("BENCH_MERGE_SHARD_MB", "64"))
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        root = Path(tmp)
        info = make_model(root, shards, shard_mb)
        mb = 1e6
        print(f"model: {shards} shards, largest {info['largest'] / mb:.0f} MB, whole "
              f"{info['model'] / mb:.0f} MB; adapter {info['adapter_bytes'] / mb:.1f} MB")
        runs = {}
        for label, code in (("streamed", STREAMED), ("in-memory", IN_MEMORY)):
            base_rss, _ = peak_rss(BASELINES[label])
            rss, secs = peak_rss(code, str(info["base"]), str(info["adapter"]),
                                 str(root / f"out-{label}"))
            runs[label] = rss - base_rss
            print(f"{label:>10}: peak RSS {rss / mb:5.0f} MB = {base_rss / mb:4.0f} MB of "
                  f"imports + {(rss - base_rss) / mb:4.0f} MB for the merge, {secs:5.1f} s")
        bound = info["largest"] + info["adapter_bytes"]
        print(f"streamed / (largest shard + adapter) = {runs['streamed'] / bound:.2f} "
              f"(want <= 1.3)")
        print(f"in-memory / whole model = {runs['in-memory'] / info['model']:.2f} (want >= 1)")


if __name__ == "__main__":
    main()
