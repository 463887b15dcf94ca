"""``vlmtune promote EXPERIMENT VERSION`` / ``vlmtune rollback EXPERIMENT``: aliases by hand.

    vlmtune promote demo 3        # champion → v3, the old champion → previous
    vlmtune rollback demo         # champion → previous

The registered model is ``vlmtune-EXPERIMENT`` in ``--tracking-uri`` (default
sqlite:///mlflow.db).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmtune.errors import ConfigError, VlmtuneError


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"vlmtune {prog}")
    parser.add_argument("experiment", help="experiment name (model vlmtune-EXPERIMENT)")
    if prog == "promote":
        parser.add_argument("version", help="the model version to make champion")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="the MLflow store (default sqlite:///mlflow.db)")
    return parser


def main_promote(argv: list[str]) -> int:
    return main(argv, "promote")


def main_rollback(argv: list[str]) -> int:
    return main(argv, "rollback")


def main(argv: list[str], command: str = "promote") -> int:
    args = _parser(command).parse_args(argv)
    try:
        name = f"vlmtune-{args.experiment}"
        if args.tracking_uri.startswith("sqlite:///") and not Path(
                args.tracking_uri.removeprefix("sqlite:///")).is_file():
            raise ConfigError(f"no MLflow store at --tracking-uri={args.tracking_uri}")
        from vlmtune.tracking.registry import Registry

        registry = Registry(args.tracking_uri)
        if command == "promote":
            print(promote(registry, name, str(args.version)))
        else:
            print(rollback(registry, name))
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2
    return 0


def promote(registry, name: str, version: str) -> str:
    """``champion`` → ``version``; the champion it replaces → ``previous``."""
    registry.get(name, version)  # ConfigError when there is no such version
    old = registry.by_alias(name, "champion")
    if old is not None and old.version == version:
        return f"{name} version {version} is already champion"
    if old is not None:
        registry.set_alias(name, "previous", old.version)
    registry.set_alias(name, "champion", version)
    registry.set_tags(name, version, {"vlmtune.gate.decision": "promoted_by_hand"})
    was = f" (previous: v{old.version})" if old else ""
    return f"{name}: champion → v{version}{was}"


def rollback(registry, name: str) -> str:
    """``champion`` → the ``previous`` version (which then carries no alias of its own)."""
    previous = registry.by_alias(name, "previous")
    if previous is None:
        raise ConfigError(f"{name} has no 'previous' version to roll back to "
                          f"(aliases: {registry.aliases(name) or 'none'})")
    old = registry.by_alias(name, "champion")
    registry.set_alias(name, "champion", previous.version)
    registry.delete_alias(name, "previous")
    if old is not None:
        registry.set_tags(name, old.version, {"vlmtune.gate.decision": "rolled_back"})
    was = f" (was v{old.version})" if old else ""
    return f"{name}: champion → v{previous.version}{was}"
