"""The register stage on the tiny model: a first version becomes champion, a worse one stays
challenger (and says why), promote / rollback move the aliases, and ``mlflow models serve`` of
``@champion`` answers POST /invocations."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from vlmtune.cli import main as cli_main
from vlmtune.config import compose_recipe, validate
from vlmtune.pipelines.register import gate_decision
from vlmtune.pipelines.runner import run_pipeline

FAST = ["benchmarks=[heldout]", "benchmark.limit=16", "train.save_every=1000"]
NAME = "vlmtune-demo"


@pytest.fixture(scope="module")
def two_runs(shared_cache, tmp_path_factory):
    """A trained run (150 iterations: tuned accuracy 1.0 on these 16 items, base 0.19), then a
    worse one (train.max_iters=5), in one sqlite store."""
    os.environ["VLMTUNE_PROGRESS"] = "0"
    root = tmp_path_factory.mktemp("registry")
    base = ["experiment=demo", f"cache_dir={shared_cache}", f"output_root={root / 'outputs'}",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *FAST]
    good = run_pipeline(validate(compose_recipe([*base, "train.max_iters=150"])))
    worse = run_pipeline(validate(compose_recipe([*base, "train.max_iters=5"])))
    return root, good, worse


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def _decision(run_dir: Path) -> dict:
    return json.loads((run_dir / "registry.json").read_text(encoding="utf-8"))


def test_first_version_is_champion_and_a_worse_one_is_not_promoted(two_runs):
    root, good, worse = two_runs
    first, second = _decision(good.run_dir), _decision(worse.run_dir)
    assert set(first) == {"model", "version", "decision", "reason", "challenger", "champion",
                          "champion_version", "benchmark", "metric"}
    assert (first["model"], first["version"], first["decision"]) == (NAME, "1", "promoted")
    assert first["champion"] is None and first["champion_version"] is None
    assert (first["benchmark"], first["metric"]) == ("foodie_synth_sivqa", "likelihood/accuracy")
    metrics = json.loads((good.run_dir / "eval/tuned/foodie_synth_sivqa/metrics.json").read_text())
    assert first["challenger"] == metrics["likelihood"]["accuracy"]
    assert (second["version"], second["decision"]) == ("2", "not_promoted")
    assert second["champion_version"] == "1" and second["champion"] == first["challenger"]
    assert second["challenger"] <= second["champion"]
    assert "does not beat" in second["reason"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert _aliases(client) == {"champion": "1", "challenger": "2"}
    v2 = client.get_model_version(NAME, "2")
    assert v2.run_id == worse.mlflow_run_id
    assert v2.tags["vlmtune.gate.decision"] == "not_promoted"
    assert float(v2.tags["vlmtune.gate.challenger"]) == second["challenger"]
    assert float(v2.tags["vlmtune.gate.champion"]) == first["challenger"]


def test_a_rerun_registers_no_second_version(two_runs):
    root, good, _ = two_runs
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    again = run_pipeline(validate(compose_recipe(_overrides_of(good.run_dir, root))),
                         ["register"])
    assert again.ran == [] and again.skipped == ["register"]
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2


def _overrides_of(run_dir: Path, root: Path) -> list[str]:
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return ["experiment=demo", f"cache_dir={cfg['cache_dir']}",
            f"output_root={root / 'outputs'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            *FAST, f"train.max_iters={cfg['train']['max_iters']}"]


def test_gate_decision_by_hand():
    assert gate_decision(0.5, None)[0] == "promoted"
    assert gate_decision(0.75, 0.5, 0.1)[0] == "promoted"
    assert gate_decision(0.55, 0.5, 0.1)[0] == "not_promoted"  # +0.05 is within the margin
    assert gate_decision(0.5, 0.5)[0] == "not_promoted"  # a tie does not win
    assert gate_decision(1.9, 2.1, metric="likelihood/perplexity")[0] == "promoted"
    verdict, reason = gate_decision(0.9, 0.5, why_incomparable="digest a vs b")
    assert verdict == "not_promoted" and "digest a vs b" in reason


def test_promote_and_rollback_move_the_aliases(two_runs, capsys):
    root, *_ = two_runs
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert cli_main(["promote", "demo", "2", "--tracking-uri", uri]) == 0
    assert _aliases(client) == {"champion": "2", "challenger": "2", "previous": "1"}
    assert cli_main(["rollback", "demo", "--tracking-uri", uri]) == 0
    assert _aliases(client) == {"champion": "1", "challenger": "2"}
    assert cli_main(["rollback", "demo", "--tracking-uri", uri]) == 2  # no previous left
    assert cli_main(["promote", "demo", "9", "--tracking-uri", uri]) == 2
    assert "has no version 9" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def test_models_serve_of_the_champion_answers(two_runs, tmp_path):
    root, good, _ = two_runs
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
           "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))  # noqa: SIM115 - the server keeps it
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(1)
        manifest = json.loads((good.run_dir / "data/manifest.json").read_text())
        image = next(p for p in sorted(Path(manifest["image_root"]).rglob("*"))
                     if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rows = [{"image": _png_b64(), "question": "这是什么菜？"},
                {"image": str(image), "question": "What dish?"}]
        answered = _post(port, {"dataframe_records": rows})["predictions"]
        assert len(answered) == 2 and all(isinstance(a, str) for a in answered)
        one = _post(port, {"inputs": {"image": [rows[0]["image"]],
                                      "question": [rows[0]["question"]]}})["predictions"]
        assert one == answered[:1]  # greedy: the same row, the same answer
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_new_data_rescores_the_champion_like_with_like(two_runs):
    """A challenger trained on other data (another synthetic seed) is gated against the
    champion re-scored on the challenger's own held-out data, never 'not comparable'."""
    root, good, _ = two_runs
    cfg_cache = _overrides_of(good.run_dir, root)[1]
    overrides = ["experiment=demo", cfg_cache, f"output_root={root / 'outputs'}",
                 f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *FAST, "train.max_iters=5",
                 "dataset.synthetic.seed=1"]
    third = run_pipeline(validate(compose_recipe(overrides)))
    decision = _decision(third.run_dir)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert decision["decision"] in ("promoted", "not_promoted")
    assert "not comparable" not in decision["reason"]
    assert "re-scored on this run's data" in decision["reason"]
    rescored = json.loads(
        (third.run_dir / "eval/champion/foodie_synth_sivqa/metrics.json").read_text())
    assert decision["champion"] == rescored["likelihood"]["accuracy"]
    assert rescored["primary"]["n"] == 16  # this run's held-out items (benchmark.limit)
    mine = json.loads((third.run_dir / "eval/tuned/foodie_synth_sivqa/metrics.json").read_text())
    assert decision["challenger"] == mine["likelihood"]["accuracy"]
    if decision["decision"] == "not_promoted":
        assert str(champion.version) == decision["champion_version"]
