"""``vlmtune <command> [hydra overrides]``: run the pipeline, or one stage of it.

    vlmtune run experiment=demo
    vlmtune run -m experiment=demo method.lora.r=8,16
    vlmtune ingest dataset=foodieqa dataset.root=/data/FoodieQA
"""

from __future__ import annotations

import logging
import os
import sys

COMMANDS = {
    "run": "the whole pipeline (the recipe's pipeline.stages)",
    "ingest": "dataset → data/{train,heldout}.jsonl + manifest.json",
    "train": "fine-tune → checkpoints/, adapter/",
    "convert": "merge the adapter → merged/",
    "evaluate": "base vs tuned on the held-out benchmark → eval/, report.md",
}
# Commands with their own arguments (not Hydra overrides): one module each under vlmtune.cli,
# exposing ``main(argv: list[str]) -> int``; imported only when called.
PLAIN_COMMANDS: dict[str, tuple[str, str]] = {}

USAGE = "usage: vlmtune <command> [key=value ...] [-m]\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {text}" for name, text in
    {**COMMANDS, **{k: v[1] for k, v in PLAIN_COMMANDS.items()}}.items()) + (
    "\n\nOverrides are Hydra's: experiment=demo train.lr=1e-4 method.lora.r=8 ...\n"
    "Show the composed recipe: vlmtune run experiment=demo --cfg job")


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
        return module.main(overrides)
    if command not in COMMANDS:
        print(f"vlmtune: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    _offline_and_quiet()
    import hydra

    from vlmtune.config import register_configs
    from vlmtune.config.registry import recipes_dir

    register_configs()

    @hydra.main(config_path=str(recipes_dir()), config_name="config", version_base="1.3")
    def app(cfg) -> None:
        _run(command, cfg)

    sys.argv = [f"vlmtune-{command}", *overrides]
    app()
    return 0


def _run(command: str, cfg) -> None:
    from vlmtune.config import validate
    from vlmtune.errors import VlmtuneError
    from vlmtune.pipelines.runner import run_pipeline
    from vlmtune.summary import print_summary

    _configure_logging()
    try:
        recipe = validate(cfg)
        stages = None if command == "run" else [command]
        result = run_pipeline(recipe, stages)
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("vlmtune: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    print_summary(result)


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
