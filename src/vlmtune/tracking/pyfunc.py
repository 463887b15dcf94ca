"""The registered model as an MLflow pyfunc: rows ``{image, question}`` → answers.

``image`` is a local path or a base64-encoded PNG/JPEG (or absent: text only). The model is
loaded by vlmtune's own loading (``artifacts["model_dir"]``, plus ``adapter_dir`` for PLoRA)
and answers by the evaluation's greedy generation, so ``mlflow models serve -m
models:/vlmtune-<exp>@champion --env-manager local`` needs nothing but this environment.
"""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

MAX_NEW_TOKENS = 64


class VlmtunePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        import torch

        from vlmtune.config.schema import ModelConfig, TinyModelSpec
        from vlmtune.data.templates import get_template
        from vlmtune.evaluation.open_ended import OpenEndedScorer
        from vlmtune.models.loading import load_model
        from vlmtune.models.methods import load_adapter

        fields = json.loads(Path(context.artifacts["vlmtune_model"]).read_text("utf-8"))
        fields["tiny"] = TinyModelSpec(**fields.get("tiny") or {})
        fields.pop("cache_dir", None)
        cfg = ModelConfig(**{**fields, "path": context.artifacts["model_dir"], "build": "none"})
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_model(Path(context.artifacts["model_dir"]), cfg, device=device)
        if context.artifacts.get("adapter_dir"):
            loaded.model = load_adapter(loaded.model, Path(context.artifacts["adapter_dir"]))
        loaded.model.eval()
        self.scorer = OpenEndedScorer(loaded, get_template(cfg.chat_template), cfg.system_prompt)

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> list[str]:
        from vlmtune.evaluation.open_ended import OpenItem

        rows = _rows(model_input)
        max_new = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        with tempfile.TemporaryDirectory(prefix="vlmtune-serve-") as tmp:
            items = []
            for i, row in enumerate(rows):
                question = str(row.get("question") or "")
                image = _image_path(row.get("image"), Path(tmp) / f"{i}.img")
                text = f"<image>\n{question}" if image else question
                items.append(OpenItem(id=str(i), images=[image] if image else [],
                                      turns=[{"from": "human", "value": text},
                                             {"from": "gpt", "value": "-"}]))
            preds = self.scorer.generate(items, batch_size=max(1, len(items)),
                                         max_new_tokens=max_new, label="serve")
        return [p["output"] for p in preds]


def _rows(model_input: Any) -> list[dict]:
    """A DataFrame (``dataframe_records``), a list of dicts, or one dict (``inputs``)."""
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):  # {"image": [...], "question": [...]}: columns
        columns = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in model_input.items()}
        if columns and all(isinstance(v, list) for v in columns.values()):
            n = len(next(iter(columns.values())))
            return [{k: v[i] for k, v in columns.items()} for i in range(n)]
        return [columns]
    return [dict(r) for r in model_input]


def _image_path(value: Any, spill: Path) -> Path | None:
    """A local image path as is; base64 image bytes written to ``spill``; None for none."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    text = str(value)
    if len(text) < 4096 and Path(text).expanduser().is_file():
        return Path(text).expanduser()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        spill.write_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise ValueError("image must be a local file path or base64 PNG/JPEG bytes") from None
    return spill
