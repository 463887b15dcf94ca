"""The pipeline against a real ``mlflow server`` (sqlite backend, served artifacts) on
127.0.0.1: the server is stopped mid-training and restarted on the same port and store;
training goes on, and afterwards params, every train/loss step, the report and plots, the
registered version and its aliases read back over REST."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

MAX_ITERS = 250
NAME = "vlmtune-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, endpoint: str, **query: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


class Server:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.proc = root, port, None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", (self.root / "artifacts").as_uri(),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "a"),  # noqa: SIM115
            start_new_session=True)
        deadline = time.monotonic() + 120
        while not _up(self.port):
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None


def _steps_logged(output_root: Path) -> int:
    found = list(output_root.glob("demo/*/logs/steps.jsonl"))
    return len(found[0].read_text().splitlines()) if found else 0


@pytest.fixture(scope="module")
def served_run(shared_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    server = Server(root, _free_port())
    server.start()
    result_file = root / "result.json"
    env = {**os.environ, "VLMTUNE_PROGRESS": "0", "VLMTUNE_RESULT_FILE": str(result_file),
           "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}  # sampled before the server stops
    output_root = root / "outputs"
    cmd = [sys.executable, "-m", "vlmtune.cli", "run", "experiment=demo",
           f"cache_dir={shared_cache}", f"output_root={output_root}",
           f"tracking.uri=http://127.0.0.1:{server.port}", "benchmarks=[heldout]",
           "benchmark.limit=4", f"train.max_iters={MAX_ITERS}", "train.save_every=1000",
           "train.batch_size=2"]
    pipeline = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        # wait until some steps reached the server (flushed every 5 s), then take it away
        deadline = time.monotonic() + 400
        while not any(output_root.glob("demo/*/logs/steps.jsonl")) or _server_steps(
                server.port, root) == 0:
            assert pipeline.poll() is None, pipeline.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        at_stop = _steps_logged(output_root)
        server.stop()
        time.sleep(8)  # training goes on meanwhile; flushes fail and keep their steps
        during = _steps_logged(output_root)
        server.start()
        out, _ = pipeline.communicate(timeout=600)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    yield {"port": server.port, "rc": pipeline.returncode, "out": out, "at_stop": at_stop,
           "during": during, "result": json.loads(result_file.read_text())
           if result_file.exists() else None}
    server.stop()


def _server_steps(port: int, root: Path) -> int:
    found = list(root.glob("outputs/demo/*/pipeline_state.json"))
    if not found:
        return 0
    run_id = json.loads(found[0].read_text()).get("mlflow_run_id")
    if not run_id:
        return 0
    try:
        history = _get(port, "metrics/get-history", run_id=run_id, metric_key="train/loss")
    except OSError:
        return 0
    return len(history.get("metrics", []))


def test_no_train_loss_step_is_lost_when_the_server_restarts(served_run):
    assert served_run["rc"] == 0, served_run["out"][-4000:]
    assert 0 < served_run["at_stop"] < MAX_ITERS  # stopped mid-training
    assert served_run["during"] > served_run["at_stop"]  # and training went on without it
    run_id = served_run["result"]["mlflow_run_id"]
    history = _get(served_run["port"], "metrics/get-history", run_id=run_id,
                   metric_key="train/loss")["metrics"]
    assert sorted(int(m.get("step", 0)) for m in history) == list(range(1, MAX_ITERS + 1))


def test_params_metrics_artifacts_and_registry_read_back_over_rest(served_run):
    assert served_run["rc"] == 0, served_run["out"][-4000:]
    port, run_id = served_run["port"], served_run["result"]["mlflow_run_id"]
    run = _get(port, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.max_iters"] == str(MAX_ITERS) and params["experiment_name"] == "demo"
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"eval/foodie_synth_sivqa/accuracy", "eval_base/foodie_synth_sivqa/accuracy",
            "train/loss"} <= metrics
    assert any(k.startswith("system/") for k in metrics)  # tracking.system_metrics=true
    top = {f["path"] for f in _get(port, "artifacts/list", run_id=run_id).get("files", [])}
    assert {"report.md", "plots", "model"} <= top
    plots = _get(port, "artifacts/list", run_id=run_id, path="plots")["files"]
    assert any(f["path"].endswith(".png") for f in plots)
    model = _get(port, "registered-models/get", name=NAME)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert aliases == {"champion": "1", "challenger": "1"}
    version = _get(port, "registered-models/alias", name=NAME,
                   alias="champion")["model_version"]
    assert version["run_id"] == run_id
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags["vlmtune.gate.decision"] == "promoted"
