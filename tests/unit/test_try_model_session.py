"""The chat's line continuation, the page's load-failure message, ``models:/`` look-ups."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from vlmtune.app.chat import read_message
from vlmtune.app.session import Target, resolve_target
from vlmtune.app.web import compare_answers, load_models
from vlmtune.config.schema import ModelConfig
from vlmtune.errors import ConfigError


def test_a_trailing_backslash_continues_the_message():
    lines = iter(["options: \\", "(A) 饺子\\", "(B) 包子", "next"])
    prompts = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        return next(lines)

    assert read_message(read) == "options: \n(A) 饺子\n(B) 包子"
    assert prompts == ["you> ", "...> ", "...> "]
    assert read_message(read) == "next"


def test_the_page_names_a_model_that_cannot_be_loaded(tmp_path):
    missing = tmp_path / "nowhere"
    target = Target(ModelConfig(path=str(missing), build="none"), "cpu", (missing, None),
                    (missing, None))
    models, errors = load_models(target)
    assert models == {}
    assert set(errors) == {"base", "tuned"}
    assert errors["tuned"].startswith("The tuned model cannot be loaded: model.path=")
    base, tuned = list(compare_answers(models, errors, None, "What dish?", 8, 0.0))[-1]
    assert (base, tuned) == (errors["base"], errors["tuned"])


def test_resolve_target_refuses_what_is_neither_run_nor_model(tmp_path):
    with pytest.raises(ConfigError, match="no such run or model directory"):
        resolve_target(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="neither a vlmtune run directory"):
        resolve_target(str(tmp_path))


def test_models_alias_resolves_to_the_registered_run_dir(tmp_path):
    from mlflow.tracking import MlflowClient

    from vlmtune.tracking.lookup import run_dir_of_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_dir = tmp_path / "outputs" / "demo" / "abc123"
    run = client.create_run(client.create_experiment("demo"),
                            tags={"vlmtune.run_dir": str(run_dir)})
    client.create_registered_model("vlmtune-demo")
    version = client.create_model_version("vlmtune-demo", "file:///nowhere", run.info.run_id)
    client.set_registered_model_alias("vlmtune-demo", "champion", version.version)
    assert run_dir_of_model(uri, "models:/vlmtune-demo@champion") == Path(run_dir)
    assert run_dir_of_model(uri, f"models:/vlmtune-demo/{version.version}") == Path(run_dir)
    with pytest.raises(ConfigError, match="is not registered"):
        run_dir_of_model(uri, "models:/vlmtune-demo@previous")
    with pytest.raises(ConfigError, match="no MLflow store"):
        run_dir_of_model(f"sqlite:///{tmp_path / 'none.db'}", "models:/x@champion")


def test_a_model_directory_is_both_base_and_tuned_with_its_family_template(tiny_model_dir):
    path, _ = tiny_model_dir
    target = resolve_target(str(path), device="cpu")
    assert target.base == target.tuned == (path, None)
    assert (target.model.family, target.model.chat_template) == ("internvl", "internlm2")
    assert target.run_dir is None


def test_replies_stream_growing_snapshots_of_the_generated_tokens(tiny_model_dir):
    from vlmtune.app.session import ChatModel, Conversation
    from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer

    path, _ = tiny_model_dir
    model = ChatModel(resolve_target(str(path), device="cpu"), "tuned")
    ids, tensors = model.prompt(Conversation(), "What dish is this?")
    full = MultipleChoiceScorer(model.loaded, model.template, None).generate_ids(
        [(ids, tensors)], 8)[0]  # evaluation's greedy generation, all at once
    prefixes = [model.tok.decode(full[:k], skip_special_tokens=True)
                for k in range(1, len(full) + 1)]
    snapshots = list(model.stream(ids, tensors, max_new_tokens=8))
    assert snapshots[-1] == prefixes[-1]
    assert 1 <= len(snapshots) <= len(full) + 1
    assert all(b.startswith(a) and b != a for a, b in pairwise(snapshots))
    for shown in snapshots[:-1]:  # a prefix's decode, less an unfinished character's U+FFFD
        assert not shown.endswith("\ufffd")
        assert any(p.startswith(shown) and set(p[len(shown):]) <= {"\ufffd"} for p in prefixes)
    sampled = list(model.stream(ids, tensors, max_new_tokens=3, temperature=1.0))
    assert 1 <= len(sampled) <= 3 + 1  # one a token, and the full decode if it was held back
