"""Strict keys (a key outside the schema is refused, even with ``+``), group typos, run key."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_dir

from vlmtune.config import compose_recipe, run_key, validate
from vlmtune.config.registry import recipes_dir, register_configs
from vlmtune.errors import ConfigError
from vlmtune.pipelines.inputs import model_identity


def _refusal(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate(compose_recipe(["experiment=demo", *overrides]))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("override", "named", "suggested"), [
    ("+train.learning_rate=1e-4", "train.learning_rate", "train.lr"),
    ("++train.learning_rate=1e-4", "train.learning_rate", "train.lr"),
    ("trian.lr=1", "trian.lr", "train.lr"),
    ("+method.lora.rank=8", "method.lora.rank", "method.lora.r"),
    ("+train.gradient_accumulation_steps=2", "train.gradient_accumulation_steps",
     "train.grad_accum"),
    ("+dataset.synthetic.sed=1", "dataset.synthetic.sed", "dataset.synthetic.seed"),
])
def test_a_key_outside_the_schema_is_refused_with_the_nearest_valid_key(override, named,
                                                                        suggested):
    message = _refusal(override)
    assert f"unknown config key {named!r}" in message
    assert message.endswith(f"did you mean {suggested}?")


def test_a_key_added_to_the_composed_tree_is_refused_by_validate():
    """Composed by Hydra directly (no command-line check): validate still refuses it."""
    register_configs()
    with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=["experiment=demo", "+train.learning_rate=1e-4"])
    assert cfg.train.learning_rate == 1e-4  # what Hydra accepts, and nothing would read
    with pytest.raises(ConfigError, match=r"did you mean train\.lr\?"):
        validate(cfg)


def test_free_form_maps_take_any_key():
    recipe = validate(compose_recipe(["dataset=csv_example", "+dataset.columns.caption=text"]))
    assert recipe.dataset.columns["caption"] == "text"


@pytest.mark.parametrize(("override", "hint", "options"), [
    ("model=tiny_intern", "did you mean model=tiny_internvl?",
     "available: internvl2_2b, tiny_blip2, tiny_internvl, tiny_llava, tiny_llava_next, "
     "tiny_qwen2_vl"),
    ("dataset=lava_example", "did you mean dataset=llava_example?", "llava_example"),
    ("method=lorra,plora", "did you mean method=lora?", "available: full, lora, plora, qlora"),
])
def test_a_group_typo_names_the_options_and_the_nearest(override, hint, options):
    message = _refusal(override)
    assert message.startswith(f"{override.split('=')[0]}=")
    assert hint in message and options in message


# --- the run key covers only what training computes ------------------------------------------


def _key(*overrides: str, identity: dict | None = None) -> str:
    return run_key(validate(compose_recipe(["experiment=demo", *overrides])), "fp", identity)


@pytest.mark.parametrize("override", ["benchmark.limit=3", "benchmark.scorers=[generate]",
                                      "benchmark.max_new_tokens=4", "train.num_workers=2",
                                      "pipeline=eval_only", "tracking=disabled",
                                      "preview.n=5", "device=cpu"])
def test_run_key_ignores_evaluation_and_observation_settings(override, tmp_path):
    model = {"path": str(tmp_path)}
    assert _key(override, identity=model) == _key(identity=model)


def test_run_key_uses_the_normalised_dataset_root(tmp_path):
    root = tmp_path / "data"
    assert _key(f"dataset.root={root}/") == _key(f"dataset.root={root}")
    assert _key(f"dataset.root={root}/../other") != _key(f"dataset.root={root}")


def test_run_key_uses_the_normalised_model_path(tmp_path):
    (tmp_path / "m").mkdir()
    plain = _key(f"model.path={tmp_path}/m", "model.build=none")
    assert _key(f"model.path={tmp_path}/m/", "model.build=none") == plain
    assert _key(f"model.path={tmp_path}/./x/../m", "model.build=none") == plain
    assert _key(f"model.path={tmp_path}/other", "model.build=none") != plain


def _checkpoint(path, hidden: int = 8):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    (path / "model.safetensors").write_bytes(b"0" * 64)
    (path / "tokenizer.json").write_text("{}")
    return path


def test_model_identity_follows_the_checkpoint_files_not_the_string(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    first = model_identity(ckpt)
    assert first == model_identity(f"{ckpt}/")
    assert first["path"] == str(ckpt) and first["config"] == {"hidden_size": 8}
    assert first["weights"] == {"model.safetensors": [64, (ckpt / "model.safetensors")
                                                      .stat().st_mtime_ns]}
    os.utime(ckpt / "model.safetensors", ns=(1, 1))  # the weights were replaced
    touched = model_identity(ckpt)
    assert touched != first
    _checkpoint(ckpt, hidden=16)
    assert model_identity(ckpt)["config"] == {"hidden_size": 16}
    assert _key(identity=touched) != _key(identity=model_identity(ckpt))


def test_model_identity_of_vlmtunes_tiny_model_does_not_change_when_it_is_built(tmp_path):
    before = model_identity(tmp_path / "tiny", build="tiny")  # not built yet
    _checkpoint(tmp_path / "tiny")
    (tmp_path / "tiny" / "vlmtune_tiny.json").write_text("{}")
    assert model_identity(tmp_path / "tiny", build="tiny") == before
