"""Preflight: every check that can fail before work does, with one line naming the key."""

from __future__ import annotations

import pytest

from vlmtune.config import compose_recipe, validate
from vlmtune.errors import ConfigError
from vlmtune.pipelines.preflight import preflight

ALL = ["ingest", "train", "convert", "evaluate"]


def recipe_of(*overrides: str):
    return validate(compose_recipe(["experiment=demo", *overrides]))


def test_missing_dataset_root_is_named(tmp_path):
    recipe = recipe_of("dataset=llava_example", f"dataset.root={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match=r"^dataset\.root=.*nope.* does not exist") as err:
        preflight(recipe, ["ingest"])
    assert "\n" not in str(err.value)


def test_licence_is_checked_before_training_only(tmp_path):
    (tmp_path / "sivqa_tidy.json").write_text("[]")
    (tmp_path / "images").mkdir()
    recipe = recipe_of("dataset=foodieqa", f"dataset.root={tmp_path}",
                       f"model.path={tmp_path / 'absent'}")
    with pytest.raises(ConfigError, match=r"dataset\.acknowledge_license=true"):
        preflight(recipe, ALL)
    preflight(recipe, ["ingest"])  # ingesting an evaluation-only dataset is fine


def test_missing_model_is_named_before_ingest(tmp_path):
    recipe = recipe_of("dataset=llava_example", f"model.path={tmp_path / 'm'}")
    with pytest.raises(ConfigError, match=r"^model\.path=.*does not exist"):
        preflight(recipe, ALL)
    preflight(recipe, ["ingest"])  # no model needed to ingest (no dataset.max_tokens)
    assert not (tmp_path / "m").exists()


def test_multiple_choice_data_fits_a_multiple_choice_benchmark(tmp_path):
    recipe = recipe_of("dataset=csv_example", "benchmark.kind=multiple_choice",
                       f"cache_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"benchmark\.kind=multiple_choice"):
        preflight(recipe, ["evaluate"])
    preflight(validate(compose_recipe(["experiment=demo", "dataset=csv_example",
                                       "benchmark.kind=open_ended", f"cache_dir={tmp_path}"])),
              ["evaluate"])


def test_qlora_without_adapters_is_refused_at_validation():
    with pytest.raises(ConfigError, match=r"^method\.freeze='projector_only' trains no adapters"):
        recipe_of("method=qlora", "method.freeze=projector_only")
