"""``vlmtune <command> [hydra overrides]``: run the pipeline, or one stage of it.

    vlmtune run experiment=demo
    vlmtune run -m experiment=demo method.lora.r=8,16
    vlmtune ingest dataset=foodieqa dataset.root=/data/FoodieQA

Keys and group choices are checked before Hydra composes anything (one line, exit 2, with a
did-you-mean); ``--wait`` is vlmtune's own flag, taken out before Hydra sees the arguments.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

COMMANDS = {
    "run": "the whole pipeline (the recipe's pipeline.stages)",
    "ingest": "dataset → data/{train,heldout}.jsonl + manifest.json",
    "train": "fine-tune → checkpoints/, adapter/",
    "convert": "merge the adapter → merged/",
    "evaluate": "base vs tuned on the held-out benchmark → eval/, report.md",
    "preview": "the first samples as training encodes them (preview.n=2, preview.json=FILE)",
}
# Commands with their own arguments (not Hydra overrides): one module each under vlmtune.cli,
# exposing ``main(argv: list[str]) -> int``; imported only when called.
PLAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "checkpoint": ("checkpoint", "convert / merge / inspect model directories"),
    "retrain": ("retrain", "one scheduled retraining job: vlmtune retrain SPEC"),
    "schedule": ("schedule", "install | list | remove | history of retraining schedules"),
    "compare": ("compare", "metrics table, config diff and overlaid curves of runs"),
    "promote": ("registry", "registry: vlmtune promote EXPERIMENT VERSION (→ @champion)"),
    "rollback": ("registry", "registry: vlmtune rollback EXPERIMENT (@champion → @previous)"),
    "chat": ("chat", "talk to a run's tuned model in the terminal (/image, /base)"),
    "app": ("app", "web page: base and tuned answers side by side (needs .[app])"),
}

USAGE = "usage: vlmtune <command> [key=value ...] [-m] [--wait]\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {text}" for name, text in
    {**COMMANDS, **{k: v[1] for k, v in PLAIN_COMMANDS.items()}}.items()) + (
    "\n\nOverrides are Hydra's: experiment=demo train.lr=1e-4 method.lora.r=8 ...\n"
    "  -m, --multirun   sweep: method.lora.r=8,16 runs one job per value, then one table\n"
    "  --wait           if another vlmtune run holds the run directory, wait for it\n"
    "                   (default: refuse, naming its PID)\n"
    "Show the composed recipe: vlmtune run experiment=demo --cfg job")
MULTIRUN_FLAGS = ("-m", "--multirun")
HYDRA_PRINT_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help",
                     "--shell-completion", "-sc")
# Hydra flags that take a value as the next argument.
HYDRA_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp",
                     "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = argv[0], argv[1:]
    if command in PLAIN_COMMANDS:
        import importlib

        _offline_and_quiet()
        module = importlib.import_module(f"vlmtune.cli.{PLAIN_COMMANDS[command][0]}")
        return getattr(module, f"main_{command}", module.main)(overrides)
    if command not in COMMANDS:
        print(f"vlmtune: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    wait = "--wait" in overrides
    overrides = [a for a in overrides if a != "--wait"]
    _offline_and_quiet()
    import hydra

    from vlmtune.config import register_configs
    from vlmtune.config.registry import recipes_dir
    from vlmtune.errors import VlmtuneError

    register_configs()
    try:
        _check_command_line(overrides)
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2

    @hydra.main(config_path=str(recipes_dir()), config_name="config", version_base="1.3")
    def app(cfg) -> dict:
        return _run(command, cfg, wait=wait)

    sys.argv = [f"vlmtune-{command}", *overrides]
    app()
    return 0


def _check_command_line(args: list[str]) -> None:
    """Unknown keys and group choices (sweeps too) as one-line errors; without ``-m`` the
    recipe is also composed and validated once, so Hydra's own errors (a value of the wrong
    type) read the same way, and values and the tracking server are checked before the heavy
    imports (torch, transformers, mlflow: seconds)."""
    from vlmtune.config import compose_recipe, validate
    from vlmtune.config.strict import check_overrides
    from vlmtune.tracking.probe import check_reachable

    overrides, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in HYDRA_VALUE_FLAGS
            continue
        if "=" in arg and not arg.lstrip("+~").startswith("hydra"):
            overrides.append(arg)
    check_overrides(overrides)
    if not any(a in MULTIRUN_FLAGS for a in args):
        cfg = compose_recipe(overrides)
        if any(a.split("=")[0] in HYDRA_PRINT_FLAGS for a in args):
            return  # printing the recipe (--cfg job …) shows it even when a value is wrong
        if cfg.tracking.enabled:  # first: validating may import torch (device=auto)
            check_reachable(str(cfg.tracking.uri))
        validate(cfg)


def _task_overrides() -> tuple[list[str], str | None]:
    """This job's command-line overrides (a sweep's job: with its own values), and its
    ``sweep job <num>`` label in a sweep (None otherwise)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # no Hydra app running (called from a test)
        return [], None
    overrides = list(hydra_cfg.overrides.task)
    label = (f"sweep job {hydra_cfg.job.num}: {' '.join(overrides)}"
             if hydra_cfg.mode == RunMode.MULTIRUN else None)
    return overrides, label


def _run(command: str, cfg, *, wait: bool = False) -> dict:
    """One job: validate, run, print its summary; returns what a sweep's table needs."""
    from vlmtune.config import validate
    from vlmtune.errors import VlmtuneError
    from vlmtune.pipelines.runner import run_pipeline
    from vlmtune.summary import print_summary

    _configure_logging()
    overrides, label = _task_overrides()
    if label:
        print(label)
    try:
        recipe = validate(cfg)
        if command == "preview":
            from vlmtune.cli.preview import preview

            return preview(recipe)
        stages = None if command == "run" else [command]
        result = run_pipeline(recipe, stages, overrides=overrides, wait=wait)
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("vlmtune: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    print_summary(result)
    summary = {"overrides": overrides, "run_dir": str(result.run_dir.resolve()),
               "run_key": result.run_key, "mlflow_run_id": result.mlflow_run_id,
               "ran": result.ran, "skipped": result.skipped}
    if path := os.environ.get("VLMTUNE_RESULT_FILE"):  # read by vlmtune retrain
        uri = recipe.tracking.uri if recipe.tracking.enabled else None
        Path(path).write_text(json.dumps({**summary, "tracking_uri": uri}), encoding="utf-8")
    return summary


def _offline_and_quiet() -> None:
    """Nothing is ever downloaded; library chatter stays below our own output."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                       "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)


def _configure_logging() -> None:
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, log_time_format="%H:%M:%S")
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s",
                        force=True)
    logging.getLogger("vlmtune").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
