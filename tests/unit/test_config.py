"""Recipes: every shipped YAML composes and validates; bad values name their key; run keys."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from vlmtune.config import (
    RecipeConfig,
    compose_recipe,
    flatten,
    project_root,
    run_key,
    to_container,
    validate,
)
from vlmtune.config.registry import CARD_GROUPS, card_names
from vlmtune.config.schema import FREEZE_PRESETS, METHODS, qlora_missing
from vlmtune.errors import ConfigError

ROOT = project_root()
RECIPE_GROUPS = ("model", "method", "train", "tracking")
CARD_FOLDERS = {group: folder for folder, group in CARD_GROUPS.items()}  # dataset -> datasets
# Cards whose mandatory values (``???``) the user supplies on the command line.
REQUIRED_OVERRIDES = {
    ("dataset", "foodieqa"): ["dataset.root=/data/FoodieQA"],
    ("experiment", "foodieqa_internvl2_2b_lora"): ["dataset.root=/data/FoodieQA"],
}


def _folder(group: str) -> Path:
    return ROOT / CARD_FOLDERS[group] if group in CARD_FOLDERS else ROOT / "recipes" / group


def _cards() -> list[tuple[str, str]]:
    groups = (*RECIPE_GROUPS, *CARD_FOLDERS)
    return [(group, name) for group in groups for name in card_names(group)]


def _compose(group: str, name: str) -> tuple[list[str], DictConfig, RecipeConfig | None]:
    overrides = [f"{group}={name}", *REQUIRED_OVERRIDES.get((group, name), [])]
    cfg = compose_recipe(overrides)
    return overrides, cfg, validate_or_expect_qlora_refusal(cfg)


def validate_or_expect_qlora_refusal(cfg: DictConfig) -> RecipeConfig | None:
    """Validate; on a machine without CUDA/bitsandbytes qlora must be refused, naming both."""
    if cfg.method.name == "qlora" and (missing := qlora_missing()):
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert str(err.value).startswith("method.name='qlora' needs ")
        for what in missing:
            assert what in str(err.value)
        return None
    return validate(cfg)


def _assert_card_in(card: dict, composed: dict, where: str, skip: set[str]) -> None:
    for key, value in card.items():
        name = f"{where}.{key}"
        if name in skip:
            continue
        assert key in composed, f"{name} missing from the composed recipe"
        if isinstance(value, dict):
            _assert_card_in(value, composed[key], name, skip)
        else:
            assert composed[key] == value, f"{name}: card says {value!r}, got {composed[key]!r}"


# --- every shipped recipe -------------------------------------------------------------------


@pytest.mark.parametrize("group", [*RECIPE_GROUPS, *CARD_FOLDERS, "experiment"])
def test_card_names_lists_every_yaml_of_the_group(group):
    on_disk = sorted(p.stem for p in _folder(group).glob("*.yaml"))
    assert on_disk, f"no cards for group {group}"
    assert card_names(group) == on_disk


@pytest.mark.parametrize("name", card_names("experiment"))
def test_experiment_composes_and_validates(name):
    overrides = [f"experiment={name}", *REQUIRED_OVERRIDES.get(("experiment", name), [])]
    recipe = validate(compose_recipe(overrides))
    assert isinstance(recipe, RecipeConfig)
    assert recipe.experiment_name == name


@pytest.mark.parametrize(("group", "name"), _cards(), ids=[f"{g}={n}" for g, n in _cards()])
def test_card_composes_validates_and_is_what_the_recipe_holds(group, name):
    overrides, cfg, recipe = _compose(group, name)
    card = OmegaConf.to_container(OmegaConf.load(_folder(group) / f"{name}.yaml"))
    composed = OmegaConf.to_container(cfg[group], resolve=False)
    skip = {o.split("=", 1)[0] for o in overrides[1:]}
    _assert_card_in(card, composed, group, skip)
    if "name" in card and recipe is not None:
        assert getattr(recipe, group).name == card["name"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", FREEZE_PRESETS)
def test_every_method_and_freeze_preset_composes_and_validates(method, preset):
    cfg = compose_recipe(["experiment=demo", f"method={method}", f"method.freeze={preset}"])
    if (method, preset) == ("qlora", "projector_only"):  # no adapters on a 4-bit base: refused
        with pytest.raises(ConfigError, match=r"^method.freeze='projector_only' trains no"):
            validate(cfg)
        return
    recipe = validate_or_expect_qlora_refusal(cfg)
    if recipe is not None:
        assert (recipe.method.name, recipe.method.freeze) == (method, preset)


@pytest.mark.parametrize("name", card_names("experiment"))
def test_experiment_file_starts_with_the_command_that_runs_it(name):
    lines = (ROOT / "recipes" / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    commands = [line for line in header if "vlmtune run" in line or "make demo" in line]
    assert commands, f"{name}.yaml: no `vlmtune run` / `make demo` line in its header comment"
    assert any(f"experiment={name}" in line for line in header), \
        f"{name}.yaml: the header command does not select experiment={name}"


def test_foodieqa_tutorial_experiment_values():
    recipe = validate(compose_recipe(["experiment=foodieqa_internvl2_2b_lora",
                                      "dataset.root=/data/FoodieQA"]))
    assert recipe.experiment_name == "foodieqa_internvl2_2b_lora"
    assert (recipe.model.name, recipe.dataset.name, recipe.benchmark.name) == \
        ("internvl2_2b", "foodieqa", "foodieqa_heldout")
    assert recipe.method.name == "lora"
    assert recipe.method.freeze == "tutorial"
    assert (recipe.method.lora.r, recipe.method.lora.alpha) == (128, 256)
    assert recipe.method.lora.dropout == pytest.approx(0.05)
    assert recipe.train.lr == pytest.approx(3e-5)
    assert (recipe.train.batch_size, recipe.train.grad_accum) == (4, 2)
    assert (recipe.train.epochs, recipe.train.max_iters) == (10, None)
    assert recipe.dataset.root == "/data/FoodieQA"
    assert recipe.dataset.usage == "evaluation" and recipe.dataset.acknowledge_license is False


def test_demo_experiment_values_and_interpolated_paths(tmp_path):
    recipe = validate(compose_recipe(["experiment=demo", f"cache_dir={tmp_path}"]))
    assert recipe.experiment_name == "demo"
    assert recipe.model.path == f"{tmp_path}/models/tiny_internvl_s0"
    assert recipe.dataset.root == f"{tmp_path}/data/foodie_synth_s0"
    assert (recipe.method.lora.r, recipe.method.lora.dropout) == (16, 0.0)
    assert (recipe.train.lr, recipe.train.max_iters, recipe.train.batch_size) == (5e-3, 500, 8)


def test_default_recipe_without_experiment():
    recipe = validate(compose_recipe())
    assert recipe.experiment_name == "vlmtune"
    assert recipe.pipeline.stages == ["ingest", "train", "convert", "evaluate", "register"]
    assert recipe.tracking.uri == "sqlite:///mlflow.db"


def test_override_of_a_card_value_wins():
    recipe = validate(compose_recipe(["experiment=demo", "method.lora.r=8", "train.lr=1e-4"]))
    assert (recipe.method.lora.r, recipe.train.lr) == (8, 1e-4)


# --- bad values are rejected, naming the key -------------------------------------------------


BAD_VALUES = [
    (["method.name=foo"], ["method.name", "foo", "lora"]),
    (["method.freeze=none"], ["method.freeze", "tutorial"]),
    (["dataset.lang=fr"], ["dataset.lang", "fr", "zh", "en"]),
    (["train.lr=abc"], ["train.lr", "abc"]),
    (["train.lr=0"], ["train.lr", "out of range"]),
    (["train.lrr=1"], ["train.lrr"]),
    (["train.max_iters=7", "train.grad_accum=2"], ["train.max_iters=7", "train.grad_accum=2"]),
    (["train.epochs=3"], ["train.max_iters", "train.epochs"]),
    (["benchmark.scorers=[likelihood,bogus]"], ["benchmark.scorers[1]", "bogus"]),
    (["dataset=foodieqa"], ["dataset.root"]),
    (["experiment=foodieqa_internvl2_2b_lora"], ["dataset.root"]),
    (["experiment=nope"], ["experiment", "nope"]),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_VALUES,
                         ids=[" ".join(overrides) for overrides, _ in BAD_VALUES])
def test_bad_value_is_rejected_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        validate(compose_recipe(overrides))
    message = str(err.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message  # one line for the CLI


# --- flatten and run_key ---------------------------------------------------------------------


def test_flatten_joins_nested_keys_and_keeps_lists_and_empty_dicts():
    tree = {"train": {"lr": 1e-3, "sched": {"warmup": 3}}, "tags": [], "empty": {},
            "scorers": ["likelihood", {"x": 1}], "name": "demo"}
    assert flatten(tree) == {"train.lr": 1e-3, "train.sched.warmup": 3, "tags": [],
                             "empty": {}, "scorers": ["likelihood", {"x": 1}], "name": "demo"}


def test_flatten_of_a_recipe_gives_dotted_params():
    flat = flatten(to_container(validate(compose_recipe(["experiment=demo"]))))
    assert flat["train.lr"] == 5e-3
    assert flat["method.lora.r"] == 16
    assert flat["method.lora.target_modules"] is None
    assert flat["model.tiny.vocab_size"] == 2000
    assert flat["benchmark.scorers"] == ["likelihood", "generate"]
    assert all(not isinstance(v, dict) or v == {} for v in flat.values())


@cache  # composing takes ~0.2 s; the baseline key is asked for by many tests
def _key(*overrides: str, data: str = "fp-1") -> str:
    return run_key(validate(compose_recipe(["experiment=demo", *overrides])), data)


def test_run_key_is_stable_and_short_hex():
    key = _key()
    again = run_key(validate(compose_recipe(["experiment=demo"])), "fp-1")  # composed anew
    assert again == key
    assert len(key) == 10 and int(key, 16) >= 0


@pytest.mark.parametrize("override", ["method.lora.r=8", "train.lr=1e-3", "train.seed=1",
                                      "dataset.lang=en", "model.seed=1"])
def test_run_key_changes_with_what_the_run_computes(override):
    assert _key(override) != _key()


def test_run_key_changes_with_the_data_fingerprint():
    assert _key(data="fp-2") != _key(data="fp-1")


@pytest.mark.parametrize("override", ["tracking.uri=http://127.0.0.1:5000", "tracking=disabled",
                                      "output_root=/elsewhere", "pipeline=eval_only"])
def test_run_key_ignores_how_the_run_is_observed_or_stored(override):
    assert _key(override) == _key()
