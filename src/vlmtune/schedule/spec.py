"""A retraining spec: the YAML file (or ``recipes/schedule/<name>.yaml`` card) that
``vlmtune retrain`` runs.

    name: nightly-foodie
    overrides: [experiment=demo, dataset.root=/data/foodie, train.max_iters=200]
    trigger: {root: /data/foodie, when: changed}
    gate: {benchmark: heldout, metric: accuracy, min_delta: 0.01}
    retries: {count: 2, backoff_s: 30}
    notify: "mail -s vlmtune ops@example.org"

Optional: ``state_dir`` (default ``<cache_dir>/schedule/<name>``, ``cache_dir`` taken from the
overrides, else the recipe default ``.cache/vlmtune``). Errors are one line naming the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune.errors import ConfigError

WHEN = ("changed", "always")
KEYS = ("name", "overrides", "trigger", "gate", "retries", "notify", "state_dir")
DEFAULT_CACHE_DIR = ".cache/vlmtune"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Trigger:
    root: Path
    when: str = "changed"


@dataclass(frozen=True)
class Gate:
    benchmark: str | None = None
    metric: str | None = None
    min_delta: float = 0.0


@dataclass(frozen=True)
class Retries:
    count: int = 0
    backoff_s: float = 30.0


@dataclass(frozen=True)
class RetrainSpec:
    name: str
    path: Path
    overrides: tuple[str, ...]
    trigger: Trigger
    gate: Gate | None
    retries: Retries
    notify: str | None
    state_dir: Path


def schedule_cards_dir() -> Path:
    """``recipes/schedule/`` (as ``vlmtune.config.registry.recipes_dir``, without importing
    Hydra: the no-op path stays light)."""
    home = os.environ.get("VLMTUNE_HOME")
    root = Path(home).resolve() if home else Path(__file__).resolve().parents[3]
    return root / "recipes" / "schedule"


def resolve_spec_path(spec: str) -> Path:
    """``spec`` as a YAML path, else the card of that name in ``recipes/schedule/``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    card = schedule_cards_dir() / f"{spec}.yaml"
    if "/" not in spec and card.is_file():
        return card.resolve()
    cards = sorted(p.stem for p in schedule_cards_dir().glob("*.yaml"))
    raise ConfigError(f"retrain spec {spec!r}: no such file, nor a card in "
                      f"{schedule_cards_dir()} (cards: {', '.join(cards) or 'none'})")


def load_spec(spec: str) -> RetrainSpec:
    """Read and validate the spec (a path or a card name)."""
    import yaml

    path = resolve_spec_path(spec)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})"
                          ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a retrain spec is a mapping with keys {', '.join(KEYS)}")
    return parse_spec(raw, path)


def parse_spec(raw: dict[str, Any], path: Path) -> RetrainSpec:
    """The validated spec; ``path`` names the file in errors and anchors relative paths."""
    def fail(key: str, problem: str) -> ConfigError:
        joint = "" if problem.startswith("=") else " "
        return ConfigError(f"{path}: {key}{joint}{problem}")

    for key in ("name", "overrides", "trigger"):
        if key not in raw:
            raise fail(key, "is required")
    name = raw["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise fail("name", f"={name!r} must be letters, digits, '.', '_' or '-'")
    overrides = raw["overrides"]
    if not isinstance(overrides, list) or not all(
            isinstance(o, str) and "=" in o for o in overrides):
        raise fail("overrides", "must be a list of key=value strings, e.g. [experiment=demo]")
    trigger = _mapping(raw, "trigger", fail)
    _only(trigger, "trigger", ("root", "when"), fail)
    if not isinstance(trigger.get("root"), str) or not trigger["root"]:
        raise fail("trigger.root", "is required: the folder whose new data starts a job")
    when = trigger.get("when", "changed")
    if when not in WHEN:
        raise fail("trigger.when", f"={when!r} is not allowed (changed, always)")
    gate = None
    if raw.get("gate") is not None:
        g = _mapping(raw, "gate", fail)
        _only(g, "gate", ("benchmark", "metric", "min_delta"), fail)
        for key in ("benchmark", "metric"):
            if g.get(key) is not None and not isinstance(g[key], str):
                raise fail(f"gate.{key}", f"={g[key]!r} must be a string")
        gate = Gate(g.get("benchmark"), g.get("metric"),
                    _number(g.get("min_delta", 0.0), "gate.min_delta", fail))
    r = _mapping(raw, "retries", fail) if raw.get("retries") is not None else {}
    _only(r, "retries", ("count", "backoff_s"), fail)
    count = r.get("count", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise fail("retries.count", f"={count!r} must be an integer >= 0")
    backoff = _number(r.get("backoff_s", 30.0), "retries.backoff_s", fail)
    if backoff < 0:
        raise fail("retries.backoff_s", f"={backoff!r} must be >= 0")
    notify = raw.get("notify")
    if notify is not None and (not isinstance(notify, str) or not notify.strip()):
        raise fail("notify", f"={notify!r} must be a shell command (a string)")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise fail(unknown[0], f"is not a retrain spec key ({', '.join(KEYS)})")
    state_dir = raw.get("state_dir") or str(
        Path(_override(overrides, "cache_dir") or DEFAULT_CACHE_DIR) / "schedule" / name)
    return RetrainSpec(name=name, path=path, overrides=tuple(overrides),
                       trigger=Trigger(_absolute(trigger["root"]), when), gate=gate,
                       retries=Retries(count, backoff), notify=notify,
                       state_dir=_absolute(state_dir))


def gate_overrides(gate: Gate | None) -> list[str]:
    """The spec's gate as the recipe's ``registry.gate`` overrides (the register stage's)."""
    if gate is None:
        return []
    out = [f"registry.gate.{key}={value}" for key, value in
           (("benchmark", gate.benchmark), ("metric", gate.metric)) if value is not None]
    return [*out, f"registry.gate.min_delta={gate.min_delta}"]


def _override(overrides: list[str], key: str) -> str | None:
    for item in reversed(overrides):
        name, _, value = item.lstrip("+~").partition("=")
        if name == key:
            return value
    return None


def _absolute(path: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _mapping(raw: dict, key: str, fail) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise fail(key, f"={value!r} must be a mapping")
    return value


def _only(value: dict, key: str, allowed: tuple[str, ...], fail) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise fail(f"{key}.{unknown[0]}", f"is not a key of {key} ({', '.join(allowed)})")


def _number(value: Any, key: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(key, f"={value!r} must be a number")
    return float(value)
