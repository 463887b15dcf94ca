"""xtuner InternVL training checkpoints (``iter_N.pth``) → tensors under official names.

Two shapes: a single mmengine file (``{"state_dict": …, "meta": …, "message_hub": …}``) or a
DeepSpeed directory holding ``mp_rank_00_model_states.pt`` (``{"module": …}``). Keys are as
xtuner's ``InternVL_V1_5`` wrapper names them: ``model.mlp1.*`` always, ``model.vision_model.*``
/ ``model.language_model.*`` when those were trained, and LoRA under peft names
(``model.language_model.base_model.model.model.layers.N.attention.wqkv.lora_A.default.weight``).

Loading is ``torch.load(weights_only=True)`` with an exact allowlist: numpy's array/scalar
reconstruction (mmengine's logged history) and inert stand-ins for mmengine's ``HistoryBuffer``
and ``ConfigDict`` and for the ``getattr`` with which a ``HistoryBuffer`` pickles its bound
methods (the stand-in returns a placeholder string, it never looks anything up); a pickle that
needs any other global is refused.

LoRA scale: the ``.pth`` holds no adapter config. The rank is read from the tensor shapes
(``lora_A`` is r × in); alpha cannot be recovered from weights, so it is ``--lora-alpha``
(default 256, the InternVL2 FoodieQA tutorial's r=128 / alpha=256); a given ``--lora-r`` must
match the shapes. The update ``W += B·A·alpha/r`` is added in the official (interleaved) space,
as xtuner's own converter does.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmtune.convert.lora import Adapter, adapter_from_tensors
from vlmtune.errors import CheckpointError

log = logging.getLogger(__name__)
DEEPSPEED_FILE = "mp_rank_00_model_states.pt"
TUTORIAL_R, TUTORIAL_ALPHA = 128, 256.0
_PEFT_WRAP = {"language_model.base_model.model.": "language_model.",
              "vision_model.base_model.model.": "vision_model."}


class _Inert:
    """Stands in for a logging object in a checkpoint; keeps its state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _InertDict(dict):
    """Stands in for mmengine's ``ConfigDict`` (a dict subclass)."""


def _method_reference(obj: Any, name: str) -> str:
    """Stands in for ``getattr`` where a pickle names a bound method (mmengine's
    ``HistoryBuffer`` pickles its statistics methods so); never looks anything up."""
    return f"<method {name}>"


def _allowlist() -> list:
    core = np._core if hasattr(np, "_core") else np.core
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32",
                                          "bool")]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, core.multiarray.scalar,
            *dtypes,
            (_Inert, "mmengine.logging.history_buffer.HistoryBuffer"),
            (_InertDict, "mmengine.config.config.ConfigDict"),
            (_method_reference, "__builtin__.getattr"), (_method_reference, "builtins.getattr")]


def is_xtuner_checkpoint(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix in (".pth", ".pt")
    return path.is_dir() and any(path.rglob(DEEPSPEED_FILE))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of an xtuner checkpoint (either shape), keys as xtuner wrote them."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob(DEEPSPEED_FILE))
        if not found:
            raise CheckpointError(f"{path} is a directory without {DEEPSPEED_FILE}; is it an "
                                  "xtuner DeepSpeed checkpoint?")
        data, key = _safe_load(found[0]), "module"
    else:
        data, key = _safe_load(path), "state_dict"
    state = data.get(key) if isinstance(data, dict) else None
    if state is None and isinstance(data, dict) and ("module" in data or "state_dict" in data):
        state = data.get("module") or data.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no {key!r} state dict in the checkpoint")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _safe_load(file: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_allowlist()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{file}: refused to unpickle it: it needs a global outside "
                              f"vlmtune's allowlist ({first})") from err


def official_tensors(state: dict[str, torch.Tensor], *, lora_alpha: float = TUTORIAL_ALPHA,
                     lora_r: int | None = None) -> Adapter:
    """xtuner keys → an :class:`Adapter` over official tensor names (LoRA pairs + replaced)."""
    renamed = {}
    for key, tensor in state.items():
        name = key.removeprefix("model.")
        for wrapped, plain in _PEFT_WRAP.items():
            if name.startswith(wrapped):
                name = plain + name.removeprefix(wrapped)
        if ".base_layer." in name:
            name = name.replace(".base_layer.", ".")
        renamed[name] = tensor
    ranks = {t.shape[0] for k, t in renamed.items() if ".lora_A." in k}
    if len(ranks) > 1:
        raise CheckpointError(f"LoRA ranks differ between layers ({sorted(ranks)}); not supported")
    rank = ranks.pop() if ranks else (lora_r or TUTORIAL_R)
    if lora_r is not None and lora_r != rank:
        raise CheckpointError(f"--lora-r={lora_r} but the checkpoint's lora_A tensors have "
                              f"rank {rank}")
    adapter = adapter_from_tensors({"base_model.model." + k: v for k, v in renamed.items()},
                                   r=rank, alpha=lora_alpha)
    log.info("xtuner checkpoint: %d LoRA pairs (r=%d, alpha=%g), %d full tensors",
             len(adapter.pairs), rank, lora_alpha, len(adapter.replaced))
    return adapter


def import_xtuner(checkpoint: Path, out: Path, *, base: Path, official: bool = False,
                  force: bool = False, lora_alpha: float = TUTORIAL_ALPHA,
                  lora_r: int | None = None, max_shard_size: int | str = "2GB",
                  device: str = "auto") -> Path:
    """xtuner ``checkpoint`` applied to the official ``base`` (LoRA merged) → ``out``,
    transformers-native, or the official layout with ``official``."""
    from vlmtune.convert.merge import AdapterPatch
    from vlmtune.convert.official import patched_official_dir, require_official, to_native_dir
    from vlmtune.convert.shards import tensor_names

    require_official(base)
    adapter = official_tensors(load_state_dict(checkpoint), lora_alpha=lora_alpha, lora_r=lora_r)
    patch = AdapterPatch(adapter, tensor_names(base), device)
    if official:
        return patched_official_dir(base, out, patch, force=force, max_shard_size=max_shard_size)
    return to_native_dir(base, out, force=force, max_shard_size=max_shard_size, patch=patch)
