"""``vlmtune chat RUN_OR_MODEL``: talk to a tuned model in the terminal.

    vlmtune chat outputs/demo/3fa2c1d0e9
    vlmtune chat models:/vlmtune-demo@champion --tracking-uri sqlite:///mlflow.db

RUN_OR_MODEL: a run directory (its tuned model, the recipe's template and system prompt), a
model directory, or ``models:/NAME@ALIAS`` from the MLflow registry. In the chat:
``/image PATH``, ``/base`` (toggle base / tuned), ``/reset``, ``/quit``; a line ending in
``\\`` continues on the next line.
"""

from __future__ import annotations

import argparse
import sys

from vlmtune.errors import VlmtuneError


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments ``vlmtune chat`` and ``vlmtune app`` share."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("target", metavar="RUN_OR_MODEL",
                   help="a run directory, a model directory or models:/NAME@ALIAS")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                   help="where models:/ names are looked up (default sqlite:///mlflow.db)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or auto (default: the run's device)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    return p


def main(argv: list[str]) -> int:
    args = parser("vlmtune chat", "chat with a tuned model in the terminal").parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from vlmtune.app.chat import run_chat
    from vlmtune.app.session import resolve_target

    try:
        target = resolve_target(args.target, args.tracking_uri, args.device)
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2
    return run_chat(target, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
