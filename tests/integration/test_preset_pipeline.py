"""Every method × freeze preset through the default pipeline (ingest → train → convert →
evaluate), and exactly the preset's parts trained in the result.

The expected parts come from the preset table of the README / ``models/methods.py`` docstring
(written out here by hand, not read from ``PRESETS``): an adapter method also changes the LLM's
linear weights once merged; ``full`` trains the parts themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmtune.config import compose_recipe, validate
from vlmtune.models.families import get_family
from vlmtune.models.loading import load_model
from vlmtune.models.methods import load_adapter
from vlmtune.pipelines.runner import run_pipeline

PARTS = ("vision", "projector", "llm", "lm_head")
# (method kind, preset) → parts whose weights must change; every other part stays bit-identical
TRAINED = {
    ("adapter", "projector_only"): {"projector"},
    ("adapter", "tutorial"): {"projector", "llm"},
    ("adapter", "xcomposer_pretrain"): {"vision", "projector", "llm"},
    ("adapter", "all"): {"vision", "projector", "llm"},
    ("full", "projector_only"): {"projector"},
    ("full", "tutorial"): {"llm", "projector"},
    ("full", "xcomposer_pretrain"): {"vision", "projector"},
    ("full", "all"): {"vision", "projector", "llm", "lm_head"},
}
FAST = ["train.max_iters=2", "train.save_every=2", "train.lr=5e-2", "train.warmup_ratio=0.0",
        "benchmark.limit=4", "benchmark.scorers=[likelihood]", "tracking=disabled"]


def part_of(name: str, family) -> str | None:
    """The family part a tensor belongs to; file keys may lack the module tree's ``model.``."""
    for part in PARTS:
        prefix = getattr(family, part)
        for p in {prefix, prefix.removeprefix("model.")}:
            if name.startswith(p + "."):
                return part
    return None


def effective_plora_state(model) -> dict[str, torch.Tensor]:
    """The weights a base + PLoRA-adapter model computes with, under the base's names
    (``modules_to_save`` copies replace the originals; adapter A/B weights left out)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        name = name.removeprefix("base_model.model.")
        name = name.replace(".modules_to_save.default.", ".").replace(".base_layer.", ".")
        state[name] = tensor
    return state


def changed_parts(base: dict, tuned: dict, family) -> tuple[set[str], set[str]]:
    """(parts with at least one changed tensor, parts whose tensors are all identical)."""
    changed, same = set(), set()
    for name, tensor in base.items():
        part = part_of(name, family)
        if part is None:
            continue
        (same if torch.equal(tensor, tuned[name]) else changed).add(part)
    return changed, same - changed


@pytest.mark.parametrize("freeze", ["projector_only", "tutorial", "xcomposer_pretrain", "all"])
@pytest.mark.parametrize("method", ["lora", "plora", "full"])
def test_method_preset_completes_pipeline(method, freeze, demo_overrides, tiny_model_dir):
    model_dir, _ = tiny_model_dir
    recipe = validate(compose_recipe([*demo_overrides, f"method={method}",
                                      f"method.freeze={freeze}", *FAST]))
    result = run_pipeline(recipe)
    assert result.ran == ["ingest", "train", "convert", "evaluate", "register"]
    run_dir = result.run_dir
    metrics = json.loads((run_dir / "eval/tuned/foodie_synth_sivqa/metrics.json").read_text())
    assert metrics["likelihood"]["n"] == 4

    family = get_family("internvl")
    if method == "plora" and freeze != "projector_only":
        assert not (run_dir / "merged").exists()  # PLoRA is never merged
        loaded = load_model(model_dir, recipe.model)
        base = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        tuned = effective_plora_state(load_adapter(loaded.model, run_dir / "adapter"))
        expected = TRAINED[("adapter", freeze)] - {"llm"}  # its LoRA stays outside the weights
    else:
        base = load_file(Path(model_dir) / "model.safetensors")
        tuned = load_file(run_dir / "merged/model.safetensors")
        expected = TRAINED[("full" if method == "full" else "adapter", freeze)]
    changed, same = changed_parts(base, tuned, family)
    present = {p for p in PARTS if any(part_of(n, family) == p for n in base)}  # lm_head: tied
    assert changed == expected & present
    assert same == present - expected
