"""What ``vlmtune chat`` and ``vlmtune app`` share: find a run's models, load them, build the
chat prompt with the recipe's template and generate (streamed).

A target is a run directory (its ``config.yaml`` gives family, template and system prompt; the
tuned model is ``merged/``, or base + ``adapter/`` for PLoRA, as evaluation finds it), any
model directory (base = tuned = it), or ``models:/NAME@ALIAS`` (the registered version's run).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlmtune.config.schema import ModelConfig, RecipeConfig
from vlmtune.data.templates import (
    IMAGE_PLACEHOLDER,
    ChatTemplate,
    bos_ids,
    get_template,
    render_runs,
    stop_token_ids,
)
from vlmtune.errors import ConfigError

LABELS = ("base", "tuned")


@dataclass
class Target:
    """Where the base and the tuned model of a run are, and how to prompt them."""

    model: ModelConfig
    device: str
    base: tuple[Path, Path | None]  # (model dir, adapter dir or None)
    tuned: tuple[Path, Path | None]
    run_dir: Path | None = None
    recipe: RecipeConfig | None = None


@dataclass
class Turn:
    question: str  # with one ``<image>`` placeholder per attached image
    reply: str


@dataclass
class Conversation:
    """Multi-turn history; images attach to the next user turn (``<image>\\n`` + question)."""

    turns: list[Turn] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)  # every image so far, in order
    pending: int = 0  # images attached to the coming turn

    def attach(self, image: Image.Image) -> None:
        self.images.append(image)
        self.pending += 1

    def user_text(self, question: str) -> str:
        return (IMAGE_PLACEHOLDER + "\n") * self.pending + question

    def add(self, question: str, reply: str) -> None:
        self.turns.append(Turn(self.user_text(question), reply))
        self.pending = 0

    def reset(self) -> None:
        self.turns, self.images, self.pending = [], [], 0


def resolve_target(arg: str, tracking_uri: str | None = None, device: str | None = None) -> Target:
    """A run directory, a model directory or ``models:/NAME@ALIAS`` as a :class:`Target`."""
    if arg.startswith("models:/"):
        from vlmtune.tracking.lookup import run_dir_of_model

        return resolve_target(str(run_dir_of_model(tracking_uri or "sqlite:///mlflow.db", arg)),
                              device=device)
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{arg}: no such run or model directory")
    if (path / "config.yaml").is_file():
        return _run_target(path, device)
    if (path / "config.json").is_file():
        from vlmtune.models.families import get_family

        family = get_family(_guess_family(path))
        cfg = ModelConfig(path=str(path), build="none", family=family.name,
                          chat_template=family.chat_template)
        return Target(cfg, _device(device or "auto"), (path, None), (path, None))
    raise ConfigError(f"{arg}: neither a vlmtune run directory (config.yaml) nor a model "
                      "directory (config.json)")


def load_recipe(run_dir: Path) -> RecipeConfig:
    """The run's ``config.yaml`` as a typed recipe."""
    from omegaconf import OmegaConf

    try:
        merged = OmegaConf.merge(OmegaConf.structured(RecipeConfig),
                                 OmegaConf.load(run_dir / "config.yaml"))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except Exception as err:  # noqa: BLE001 - any schema mismatch is the file's problem
        raise ConfigError(f"{run_dir / 'config.yaml'}: cannot be read as a vlmtune recipe "
                          f"({str(err).splitlines()[0]})") from None


def _run_target(run_dir: Path, device: str | None) -> Target:
    from vlmtune.models.loading import ensure_model_dir
    from vlmtune.models.plora import is_plora_adapter

    recipe = load_recipe(run_dir)
    base = ensure_model_dir(recipe.model, recipe.cache_dir)
    adapter = run_dir / "adapter"
    if is_plora_adapter(adapter):
        tuned: tuple[Path, Path | None] = (base, adapter)
    elif (run_dir / "merged").is_dir():
        tuned = (run_dir / "merged", None)
    else:
        raise ConfigError(f"{run_dir}: no tuned model (merged/ or a PLoRA adapter/); run "
                          "`vlmtune run` on it to finish training and convert")
    return Target(recipe.model, _device(device or recipe.device), (base, None), tuned, run_dir,
                  recipe)


def _device(value: str) -> str:
    from vlmtune.config.schema import resolve_device

    return resolve_device(value)


def _guess_family(path: Path) -> str:
    from vlmtune.models.families import FAMILIES

    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    for name in FAMILIES:
        if name.replace("_", "") == str(model_type).replace("_", "").replace("-", ""):
            return name
    return "internvl"


class ChatModel:
    """One loaded model (base or tuned) with the recipe's template and system prompt."""

    def __init__(self, target: Target, label: str) -> None:
        from vlmtune.models.loading import load_model
        from vlmtune.models.methods import load_adapter

        model_dir, adapter = target.base if label == "base" else target.tuned
        self.label = label
        self.loaded = load_model(model_dir, target.model, device=target.device)
        if adapter is not None:
            self.loaded.model = load_adapter(self.loaded.model, adapter)
        self.template: ChatTemplate = get_template(target.model.chat_template)
        self.system = target.model.system_prompt
        self.tok = self.loaded.tokenizer

    def prompt(self, conv: Conversation, question: str) -> tuple[list[int], dict[str, Any]]:
        """Ids of the whole history + this user turn up to the assistant header, and the
        image tensors of every image in it."""
        if conv.images:
            encoded = self.loaded.images.encode(conv.images)
            blocks, tensors = encoded.blocks, encoded.tensors
        else:
            blocks, tensors = [], {}
        turns = []
        for turn in conv.turns:
            turns += [{"from": "human", "value": turn.question},
                      {"from": "gpt", "value": turn.reply}]
        turns += [{"from": "human", "value": conv.user_text(question)},
                  {"from": "gpt", "value": "-"}]
        runs = render_runs(turns, template=self.template, image_blocks=blocks,
                           system=self.system)
        text = "".join(part for part, _ in runs[:-2])  # up to this turn's assistant header
        ids = bos_ids(self.tok) + list(self.tok.encode(text, add_special_tokens=False))
        return ids, tensors

    def stream(self, ids: list[int], tensors: dict[str, Any], *, max_new_tokens: int = 128,
               temperature: float = 0.0) -> Iterator[str]:
        """The reply so far, as tokens are generated (greedy at temperature 0); the last text
        is the decode of every generated id (see ``decode_steps``)."""
        import torch

        device = next(self.loaded.model.parameters()).device
        sampling = ({"do_sample": True, "temperature": float(temperature)} if temperature > 0
                    else {"do_sample": False})
        tokens = _TokenQueue()
        images = self.loaded.images.collate([tensors]) if tensors else {}
        kwargs = dict(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
            **{k: v.to(device) for k, v in images.items()},
            max_new_tokens=int(max_new_tokens), pad_token_id=self.tok.pad_token_id,
            eos_token_id=stop_token_ids(self.tok, self.template,
                                        self.loaded.model.generation_config),
            streamer=tokens, **sampling)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.no_grad():
                    self.loaded.model.generate(**kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(err)
            finally:
                tokens.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from decode_steps(self.tok, tokens)
        thread.join()
        if failure:
            raise failure[0]

    def reply(self, conv: Conversation, question: str, **settings: Any) -> Iterator[str]:
        """The reply to ``question`` after the history, so far (the history is not changed)."""
        ids, tensors = self.prompt(conv, question)
        yield from self.stream(ids, tensors, **settings)


class _TokenQueue:
    """A ``generate`` streamer handing each step's new ids to another thread (the prompt,
    the first thing generation puts, is skipped)."""

    def __init__(self) -> None:
        import queue

        self.steps: queue.Queue[list[int] | None] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.steps.put([int(i) for i in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.steps.put(None)

    def __iter__(self) -> Iterator[list[int]]:
        while (step := self.steps.get()) is not None:
            yield step


def stream_text(decoded: str) -> str:
    """What of a partial decode to show: without the trailing U+FFFD that a character whose
    bytes are not all generated yet (CJK, emoji split over byte tokens) decodes to."""
    return decoded.rstrip("\ufffd")


def decode_steps(tok: Any, steps: Iterable[list[int]]) -> Iterator[str]:
    """The text of the ids so far, after each step's new ids, an unfinished last character held
    back: each text extends the one before (none twice in a row) unless the decode itself
    rewrote earlier text. The last text is ``tok.decode`` of every id, unchanged (an invalid
    byte still shows there); there is always one, if only ``""``.

    A shorter text is held back too: SentencePiece's byte fallback decodes a run of byte
    tokens as one, so the bytes of a finished character followed by those of an unfinished
    one give only U+FFFD ("面条很" then "面条" + 4 U+FFFD, then "面条很好")."""
    generated: list[int] = []
    shown: str | None = None
    for step in steps:
        generated += step
        text = stream_text(tok.decode(generated, skip_special_tokens=True))
        if not (shown or "").startswith(text):
            shown = text
            yield text
    final = tok.decode(generated, skip_special_tokens=True)
    if final != shown:
        yield final


def heldout_examples(target: Target, limit: int = 4) -> list[tuple[Path, str]]:
    """(photo, question) of the run's first held-out records that have an image."""
    if target.run_dir is None or target.recipe is None:
        return []
    data = target.run_dir / "data"
    jsonl = data / f"{target.recipe.benchmark.split}.jsonl"
    manifest = data / "manifest.json"
    if not (jsonl.is_file() and manifest.is_file()):
        return []
    root = Path(json.loads(manifest.read_text())["image_root"])
    found = []
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        image = rec.get("image")
        image = image[0] if isinstance(image, list) and image else image
        if not image or not (root / image).is_file():
            continue
        question = rec["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        found.append((root / image, question))
        if len(found) >= limit:
            break
    return found


def headline_metrics(run_dir: Path | None) -> dict[str, dict[str, dict]]:
    """benchmark → base/tuned → metrics.json ``primary`` ({name, value, n})."""
    out: dict[str, dict[str, dict]] = {}
    if run_dir is None:
        return out
    for path in sorted(run_dir.glob("eval/*/*/metrics.json")):
        primary = json.loads(path.read_text()).get("primary")
        if primary:
            out.setdefault(path.parent.name, {})[path.parent.parent.name] = primary
    return out


def mlflow_run(target: Target) -> tuple[str, str] | None:
    """(tracking uri, MLflow run id) of the run, from ``pipeline_state.json``."""
    if target.run_dir is None or target.recipe is None:
        return None
    state = target.run_dir / "pipeline_state.json"
    run_id = json.loads(state.read_text()).get("mlflow_run_id") if state.is_file() else None
    if not run_id or not target.recipe.tracking.enabled:
        return None
    return str(target.recipe.tracking.uri), run_id
