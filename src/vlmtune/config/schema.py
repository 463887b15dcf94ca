"""Typed schemas of the composed recipe; each validates itself and names the offending key.

Hydra merges the YAML of every group into these dataclasses (so a misspelt key or a value of
the wrong type fails at composition), then :func:`vlmtune.config.validate` builds the objects,
whose ``__post_init__`` checks the values that types cannot express.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from vlmtune.errors import ConfigError

FAMILIES = ("internvl", "llava", "llava_next", "qwen2_vl", "blip2",)
DTYPES = ("float32", "bfloat16", "float16")
METHODS = ("lora", "plora", "qlora", "full")
FREEZE_PRESETS = ("projector_only", "tutorial", "xcomposer_pretrain", "all")
ADAPTERS = ("foodieqa", "llava", "sharegpt", "hf", "csv")
FOODIEQA_TASKS = ("sivqa", "mivqa", "textqa")
LANGS = ("zh", "en")
ON_INVALID = ("drop", "raise")
SCORERS = ("likelihood", "generate")
BENCHMARK_KINDS = ("auto", "multiple_choice", "open_ended")
BENCHMARK_FORMATS = ("heldout", "foodieqa", "mmbench", "vqa")
STAGES = ("ingest", "train", "convert", "evaluate", "register")
PRECISIONS = ("bf16", "fp16", "fp32")
LAUNCHERS = ("none", "torchrun")
STRATEGIES = ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {bracket}{lo}, {hi}]")


@dataclass
class TinyModelSpec:
    """Dimensions of the tiny InternVL-architecture model built offline for demos and tests."""

    tile_size: int = 56
    patch_size: int = 14
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    vocab_size: int = 2000
    # The tiles per image the tiny build records as its own (model.max_tiles unset).
    max_tiles: int = 6

    def __post_init__(self) -> None:
        if self.tile_size % self.patch_size or (self.tile_size // self.patch_size) % 2:
            raise ConfigError(
                f"model.tiny.tile_size={self.tile_size} must be an even multiple of "
                f"model.tiny.patch_size={self.patch_size} (pixel shuffle folds 2x2 patches)")
        if self.text_heads % self.text_kv_heads:
            raise ConfigError("model.tiny.text_heads must be a multiple of "
                              "model.tiny.text_kv_heads")


@dataclass
class ModelConfig:
    name: str = "tiny_internvl"
    family: str = "internvl"
    # A local HF directory: the checkpoint, used as is and never modified. build=auto: vlmtune
    # builds its tiny model there only when the path is its own (an absent or empty path under
    # cache_dir/models, or one it built); tiny: also into any absent/empty path; none: never.
    path: str = MISSING
    build: str | None = "auto"
    seed: int = 0
    min_tiles: int = 1
    # None: the checkpoint's own limit (InternVL: its config's max_dynamic_patch, else 12).
    max_tiles: int | None = None
    dtype: str = "float32"
    chat_template: str = "internlm2"
    # None: the template's default system prompt; "": none.
    system_prompt: str | None = None
    tiny: TinyModelSpec = field(default_factory=TinyModelSpec)

    def __post_init__(self) -> None:
        check_choice("model.family", self.family, FAMILIES)
        check_choice("model.dtype", self.dtype, DTYPES)
        from vlmtune.data.templates import TEMPLATES  # the registry: any template, any family

        check_choice("model.chat_template", self.chat_template, tuple(sorted(TEMPLATES)))
        if self.build is not None:
            check_choice("model.build", self.build, ("auto", "tiny", "none"))
        check_range("model.min_tiles", self.min_tiles, 1)
        if self.max_tiles is not None:
            check_range("model.max_tiles", self.max_tiles, self.min_tiles)


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # None: every linear layer of the LLM (never the projector, vision tower or lm_head).
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        check_range("method.lora.r", self.r, 1)
        check_range("method.lora.alpha", self.alpha, 0, low_open=True)
        check_range("method.lora.dropout", self.dropout, 0.0, 1.0)


@dataclass
class MethodConfig:
    """How the model is tuned: ``name`` picks the method, ``freeze`` which parts learn."""

    name: str = "lora"
    freeze: str = "tutorial"
    # Adapter hyper-parameters of lora, plora and qlora.
    lora: LoraSpec = field(default_factory=LoraSpec)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_choice("method.name", self.name, METHODS)
        check_choice("method.freeze", self.freeze, FREEZE_PRESETS)
        if self.name == "qlora" and self.freeze == "projector_only":
            raise ConfigError("method.freeze='projector_only' trains no adapters, and a 4-bit "
                              "base is only trained through them; use method=lora (or full)")
        if self.name == "qlora" and (missing := qlora_missing()):
            raise ConfigError("method.name='qlora' needs " + " and ".join(missing) +
                              " (4-bit NF4 base weights run on CUDA only); use method=lora on "
                              "this machine")


def resolve_device(value: str) -> str:
    """``device`` as a torch device name: auto → ``cuda`` when available, else ``cpu``."""
    import torch

    if not DEVICE.match(str(value)):
        raise ConfigError(f"device={value!r} is not allowed; choose one of: auto, cpu, cuda, "
                          "cuda:N")
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={value!r} needs CUDA, and torch.cuda.is_available() is "
                              "False here; use device=cpu or device=auto")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={value!r}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here")
    return value


def qlora_missing() -> list[str]:
    """What QLoRA needs that this machine lacks."""
    import importlib.util

    import torch

    missing = [] if torch.cuda.is_available() else ["a CUDA GPU (torch.cuda.is_available())"]
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    return missing


@dataclass
class TrainConfig:
    lr: float = 2e-4
    projector_lr: float | None = None
    weight_decay: float = 0.0
    # Samples per micro-batch of each process (launcher=torchrun: a global batch holds
    # batch_size x nproc_per_node x nnodes).
    batch_size: int = 4
    grad_accum: int = 1
    # Exactly one of max_iters / epochs. An iteration is one micro-batch (as in mmengine).
    max_iters: int | None = 200
    epochs: int | None = None
    warmup_ratio: float = 0.03
    max_grad_norm: float | None = 1.0
    save_every: int = 50
    keep_last_n: int = 2
    seed: int = 0
    max_length: int = 2048
    num_workers: int = 0
    # Batches of one modality (text-only / with images) and similar length: less padding.
    group_by_length: bool = True
    # Text-only samples packed into rows of up to max_length tokens (image samples never).
    packing: bool = False
    # Compute dtype: bf16 | fp16 (CUDA only) | fp32; null = bf16 on CUDA, fp32 on CPU.
    # Trainable weights are kept in fp32 whatever it is (vlmtune.training.precision).
    precision: str | None = None
    # Every N steps (a multiple of grad_accum), score the first benchmark's first eval_items
    # items and log eval/<benchmark>/accuracy at that step; keep_best: the train stage's
    # output is the checkpoint with the best such accuracy (checkpoints/best/).
    eval_every: int | None = None
    eval_items: int = 32
    keep_best: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None:
            check_choice("train.precision", self.precision, PRECISIONS)
        check_range("train.lr", self.lr, 0.0, low_open=True)
        if self.projector_lr is not None:
            check_range("train.projector_lr", self.projector_lr, 0.0, low_open=True)
        check_range("train.batch_size", self.batch_size, 1)
        check_range("train.grad_accum", self.grad_accum, 1)
        check_range("train.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_range("train.keep_last_n", self.keep_last_n, 1)
        check_range("train.max_length", self.max_length, 16)
        if (self.max_iters is None) == (self.epochs is None):
            raise ConfigError("set exactly one of train.max_iters and train.epochs "
                              f"(got max_iters={self.max_iters}, epochs={self.epochs})")
        if self.max_iters is not None:
            check_range("train.max_iters", self.max_iters, 1)
            if self.max_iters % self.grad_accum:
                raise ConfigError(f"train.max_iters={self.max_iters} must be a multiple of "
                                  f"train.grad_accum={self.grad_accum}")
        if self.epochs is not None:
            check_range("train.epochs", self.epochs, 1)
        if self.save_every < 1 or self.save_every % self.grad_accum:
            raise ConfigError(f"train.save_every={self.save_every} must be a positive multiple "
                              f"of train.grad_accum={self.grad_accum} (checkpoints fall on "
                              "optimizer steps)")
        if self.eval_every is not None and (self.eval_every < 1
                                            or self.eval_every % self.grad_accum):
            raise ConfigError(f"train.eval_every={self.eval_every} must be a positive multiple "
                              f"of train.grad_accum={self.grad_accum} (evaluation falls on "
                              "optimizer steps)")
        check_range("train.eval_items", self.eval_items, 1)
        if self.keep_best and self.eval_every is None:
            raise ConfigError("train.keep_best=true needs train.eval_every (the best checkpoint "
                              "is chosen by the accuracy evaluated during training)")


@dataclass
class SynthSpec:
    """Generate a FoodieQA-shaped dataset into ``dataset.root`` (demo and tests)."""

    seed: int = 0
    num_dishes: int = 10
    photos_per_dish: int = 6


@dataclass
class DatasetConfig:
    name: str = "foodie_synth"
    adapter: str = "foodieqa"
    root: str = MISSING
    task: str = "sivqa"
    lang: str = "zh"
    template: int = 0
    on_invalid: str = "drop"
    heldout_fraction: float = 0.25
    split_seed: int = 0
    license: str | None = None
    # "evaluation": the licence does not cover training; training needs acknowledge_license.
    usage: str | None = None
    acknowledge_license: bool = False
    synthetic: SynthSpec | None = None
    # Adapters other than foodieqa read data_file (a file, or an HF folder; "" = root itself);
    # image paths are relative to image_dir. Both are paths inside root.
    data_file: str | None = None
    image_dir: str = ""
    # Adapter column names: id, image, question, answer (csv, hf); null switches one off.
    columns: dict[str, str | None] = field(default_factory=dict)
    # hf: which split of a saved DatasetDict to read.
    source_split: str | None = None
    # Held-out split by group (null: meta.group, else the first image, else the id), or
    # explicit: a record field naming the side, or a JSON file {"train": [ids], "heldout": [...]}.
    group_key: str | None = None
    split_column: str | None = None
    split_file: str | None = None
    min_image_side: int = 8
    max_image_side: int = 16384
    max_image_pixels: int = 178_956_970
    # Reject records longer than this many tokens (model.path's tokenizer + image tokens).
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        check_choice("dataset.adapter", self.adapter, ADAPTERS)
        if self.adapter == "foodieqa":
            check_choice("dataset.task", self.task, FOODIEQA_TASKS)
        elif self.data_file is None:
            raise ConfigError(f"dataset.data_file is required by dataset.adapter={self.adapter!r}"
                              ": the data file (or HF folder) inside dataset.root")
        check_choice("dataset.lang", self.lang, LANGS)
        check_choice("dataset.on_invalid", self.on_invalid, ON_INVALID)
        check_range("dataset.heldout_fraction", self.heldout_fraction, 0.0, 1.0, low_open=True)
        for key in ("data_file", "image_dir", "split_file"):
            value = getattr(self, key)
            parts = str(value).replace("\\", "/").split("/")
            if value is not None and (str(value).startswith(("/", "~")) or ".." in parts):
                raise ConfigError(f"dataset.{key}={value!r} must be a relative path inside "
                                  "dataset.root (no '..')")
        if self.split_column is not None and self.split_file is not None:
            raise ConfigError("set at most one of dataset.split_column and dataset.split_file")
        for key in ("min_image_side", "max_image_side", "max_image_pixels"):
            check_range(f"dataset.{key}", getattr(self, key), 1)
        if self.min_image_side > self.max_image_side:
            raise ConfigError(f"dataset.min_image_side={self.min_image_side} is above "
                              f"dataset.max_image_side={self.max_image_side}")
        if self.max_tokens is not None:
            check_range("dataset.max_tokens", self.max_tokens, 1)


@dataclass
class BenchmarkConfig:
    name: str = "foodie_synth_sivqa"
    split: str = "heldout"
    # multiple_choice (needs meta.answer_index + meta.choices), open_ended (any conversation:
    # loss / perplexity, exact match, token-F1), or auto: multiple_choice if every record is.
    kind: str = "auto"
    # The first scorer gives the primary metric (multiple choice: `accuracy`); open-ended,
    # likelihood gives loss / perplexity and generate exact match / token-F1.
    scorers: list[str] = field(default_factory=lambda: ["likelihood"])
    max_new_tokens: int = 16
    batch_size: int = 8
    limit: int | None = None
    # Where the items come from: heldout (the run's own split), foodieqa (a FoodieQA root),
    # mmbench (a VLMEvalKit TSV), vqa (open-ended JSONL / LLaVA JSON with reference answers).
    format: str = "heldout"
    # The data file (or FoodieQA root) of a non-heldout card: `benchmark_paths.<card>=FILE`.
    path: str | None = None
    # foodieqa: which file, language and prompt template.
    task: str = "sivqa"
    lang: str = "zh"
    template: int = 0
    # Which option log-likelihood picks the answer (both are reported): sum | mean (per token).
    likelihood_norm: str = "sum"

    def __post_init__(self) -> None:
        check_choice("benchmark.split", self.split, ("heldout",))
        check_choice("benchmark.format", self.format, BENCHMARK_FORMATS)
        check_choice("benchmark.likelihood_norm", self.likelihood_norm, ("sum", "mean"))
        check_choice("benchmark.kind", self.kind, BENCHMARK_KINDS)
        if not self.scorers:
            raise ConfigError("benchmark.scorers is empty; choose from: " + ", ".join(SCORERS))
        for i, scorer in enumerate(self.scorers):
            check_choice(f"benchmark.scorers[{i}]", scorer, SCORERS)


@dataclass
class TrackingConfig:
    enabled: bool = True
    # Any MLflow tracking URI: sqlite:///mlflow.db (default), http://host:5000, ...
    uri: str = "sqlite:///mlflow.db"
    # Sample CPU / memory (and GPU, with pynvml) into system/… metrics while the run runs.
    system_metrics: bool = True


@dataclass
class GateConfig:
    """The register stage's promotion gate: the new version becomes ``champion`` when its
    ``metric`` on ``benchmark`` beats the champion's by more than ``min_delta``."""

    benchmark: str | None = None  # default: the first benchmark evaluated
    metric: str | None = None  # default: its primary metric (e.g. likelihood/accuracy)
    min_delta: float = 0.0


@dataclass
class RegistryConfig:
    gate: GateConfig = field(default_factory=GateConfig)
    # Registered model name; default vlmtune-<experiment_name>.
    model_name: str | None = None


@dataclass
class PipelineConfig:
    name: str = "finetune"
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self) -> None:
        for i, stage in enumerate(self.stages):
            check_choice(f"pipeline.stages[{i}]", stage, STAGES)


@dataclass
class LauncherConfig:
    """How the train stage is started: in this process (none), or under torchrun with one
    DDP process per device (``train.batch_size`` is then each process's micro-batch)."""

    name: str = "none"
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    # 0: a free port picked on this machine (single node only).
    master_port: int = 0
    # Elastic rendezvous (multi-node without a fixed master): e.g. c10d + host:port.
    rdzv_backend: str | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    def __post_init__(self) -> None:
        check_choice("launcher.name", self.name, LAUNCHERS)
        check_range("launcher.nproc_per_node", self.nproc_per_node, 1)
        check_range("launcher.nnodes", self.nnodes, 1)
        check_range("launcher.node_rank", self.node_rank, 0, self.nnodes - 1)
        check_range("launcher.master_port", self.master_port, 0, 65535)
        if self.nnodes > 1 and not self.master_port and not self.rdzv_endpoint:
            raise ConfigError("launcher.nnodes > 1 needs launcher.master_port (and master_addr) "
                              "or launcher.rdzv_endpoint: every node must reach the same one")


@dataclass
class StrategyConfig:
    """The distributed engine of the train stage: ddp (mmengine Runner), or mmengine's
    FlexibleRunner with DeepSpeed ZeRO-2/3 or FSDP (with launcher=torchrun; CUDA, or gloo on
    the CPU)."""

    name: str = "ddp"
    # DeepSpeed: offload optimizer states to the CPU (ZeRO-Offload).
    offload_optimizer: bool = False
    # FSDP: how a checkpoint holds the optimizer state (full: one file gathered on rank 0,
    # resumable by any number of processes; local: one shard per rank, resumed by as many).
    # The trainable weights are always gathered whole.
    state_dict_type: str = "full"

    def __post_init__(self) -> None:
        check_choice("strategy.name", self.name, STRATEGIES)
        check_choice("strategy.state_dict_type", self.state_dict_type, ("full", "local"))


@dataclass
class PreviewConfig:
    """``vlmtune preview``: how many records per split, and an optional JSON Lines file."""

    n: int = 2
    json: str | None = None

    def __post_init__(self) -> None:
        check_range("preview.n", self.n, 1)


@dataclass
class RecipeConfig:
    """The whole composed recipe."""

    experiment_name: str = "vlmtune"
    output_root: str = "outputs"
    cache_dir: str = ".cache/vlmtune"
    # Where train, merge and evaluate run: auto (CUDA when available) | cpu | cuda | cuda:N.
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    # Benchmarks scored by evaluate, each logged under its card's name: `heldout` is the
    # `benchmark` card above (the run's held-out split); other names are cards in evaluation/.
    benchmarks: list[str] = field(default_factory=lambda: ["heldout"])
    # A card's data file (`path`) and item limit, per card name.
    # (recipes/config.yaml names a key per shipped card; a card of your own: +benchmark_paths.X)
    benchmark_paths: dict[str, str | None] = field(default_factory=dict)
    benchmark_limits: dict[str, int | None] = field(default_factory=dict)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)

    def __post_init__(self) -> None:
        if not self.experiment_name or "/" in self.experiment_name:
            raise ConfigError(f"experiment_name={self.experiment_name!r} must be a non-empty "
                              "name without '/'")
        device = resolve_device(self.device)
        if self.train.precision == "fp16" and not device.startswith("cuda"):
            raise ConfigError(f"train.precision='fp16' needs CUDA (device={self.device!r} runs "
                              "on the CPU); use train.precision=bf16 or fp32")
        if self.strategy.name != "ddp":
            from vlmtune.training.strategies import check_strategy

            check_strategy(self.strategy.name, self.launcher.name,
                           eval_every=self.train.eval_every, method=self.method.name)
        # not a config key: where model.build=auto may build (vlmtune's own model cache)
        self.model.cache_dir = self.cache_dir
