"""``vlmtune retrain SPEC`` for real: subprocesses, the spec lock, a sqlite MLflow store and the
register stage's gate, on the tiny model.

One job history, in order (each step needs the previous one's state): the first job is killed
with SIGKILL mid-training → the next invocation takes the stale lock over, resumes the same run
and promotes it (the champion never pointed at the killed run) → the same data again is a
no-op in < 5 s → records added, two overlapping invocations → exactly one new run, gated.
Then a corrupt data file: every attempt fails, is retried, and the notification says why.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

VLMTUNE = str(Path(os.path.abspath(sys.executable)).parent / "vlmtune")
NAME = "retrain-e2e"


def retrain_popen(spec: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "VLMTUNE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([VLMTUNE, "retrain", str(spec)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def retrain(spec: Path, cwd: Path) -> tuple[int, str, str, float]:
    start = time.monotonic()
    child = retrain_popen(spec, cwd)
    out, err = child.communicate(timeout=600)
    return child.returncode, out, err, time.monotonic() - start


def write_spec(tmp_path: Path, cache: Path, *, root: Path, retries: int = 0,
               gate: bool = True, extra: tuple[str, ...] = ()) -> Path:
    overrides = [
        "experiment=demo", f"cache_dir={cache}", f"output_root={tmp_path / 'outputs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "dataset.synthetic=null",
        f"dataset.root={root}", "train.max_iters=16", "train.save_every=2",
        "benchmarks=[heldout]", "benchmark.limit=4", "benchmark.scorers=[likelihood]", *extra]
    spec = {
        "name": NAME, "overrides": overrides, "trigger": {"root": str(root), "when": "changed"},
        "gate": {"benchmark": "foodie_synth_sivqa", "metric": "accuracy", "min_delta": 0.0},
        "retries": {"count": retries, "backoff_s": 0.2},
        "notify": f"cat >> {tmp_path / 'notifications.jsonl'}",
        "state_dir": str(tmp_path / "state"),
    }
    if not gate:
        del spec["gate"]
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def notifications(tmp_path: Path) -> list[dict]:
    path = tmp_path / "notifications.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]  # one JSON line per notification


def run_dirs(tmp_path: Path) -> list[Path]:
    base = tmp_path / "outputs" / "demo"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []


def history(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "state" / "state.json").read_text())["history"]


def synth_data(root: Path) -> None:
    from vlmtune.data.synthetic import generate_foodie_synth

    generate_foodie_synth(root, seed=3, num_dishes=6, photos_per_dish=4)


def add_records(root: Path, n: int) -> None:
    path = root / "sivqa_tidy.json"
    records = json.loads(path.read_text())
    for i, record in enumerate(records[:n]):
        records.append({**record, "question_id": f"{record['question_id']}-new{i}"})
    path.write_text(json.dumps(records, ensure_ascii=False))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def mlflow_client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def mlflow_run(tmp_path: Path, run_id: str):
    return mlflow_client(tmp_path).get_run(run_id)


def needs_register_stage() -> None:
    from vlmtune.config.schema import RecipeConfig

    if "registry" not in RecipeConfig.__dataclass_fields__:
        pytest.skip("the register stage (registry section, <run_dir>/registry.json) has not "
                    "landed yet: nothing gates a retrained model")


def test_kill_resume_promote_noop_then_new_data_gated_once(tmp_path, tiny_model_dir,
                                                           shared_cache):
    needs_register_stage()
    root = tmp_path / "data"
    synth_data(root)
    spec = write_spec(tmp_path, shared_cache, root=root)

    # 1. killed with SIGKILL mid-training (the pipeline child dies with it)
    job = retrain_popen(spec, tmp_path)
    wait_for(lambda: any((d / "checkpoints" / "iter_2").is_dir() for d in run_dirs(tmp_path)),
             240, "the first checkpoint")
    job.send_signal(signal.SIGKILL)
    job.wait()
    (run_dir,) = run_dirs(tmp_path)
    wait_for(lambda: lock_is_free(run_dir / "run.lock"), 30, "the pipeline child to die")
    stages = json.loads((run_dir / "pipeline_state.json").read_text())["stages"]
    assert stages["train"]["status"] != "done"
    assert not (run_dir / "registry.json").exists()  # no champion from an unfinished run
    assert mlflow_client(tmp_path).search_model_versions() == []
    assert not (tmp_path / "state" / "state.json").exists()

    # 2. the next invocation takes the lock over, resumes that run and promotes it
    code, out, err, _ = retrain(spec, tmp_path)
    assert code == 0, err[-3000:]
    assert f"taking over the lock of PID {job.pid}" in out
    assert run_dirs(tmp_path) == [run_dir]
    log = (run_dir / "logs" / "vlmtune.log").read_text()
    assert "train: resumed at iteration" in log
    decision = json.loads((run_dir / "registry.json").read_text())
    assert decision["decision"] == "promoted"
    (first,) = notifications(tmp_path)
    assert first["outcome"] == "promoted" and first["attempts"] == 1
    assert first["champion_version"] == str(decision["version"])
    assert first["spec"] == NAME and len(first["data_fingerprint"]) == 32
    run = mlflow_run(tmp_path, first["run_id"])
    assert run.info.status == "FINISHED"
    champion = mlflow_client(tmp_path).get_model_version(decision["model"], decision["version"])
    assert champion.run_id == first["run_id"]  # the champion is the resumed, finished run
    assert run.data.tags["vlmtune.schedule"] == NAME
    assert run.data.tags["vlmtune.schedule.outcome"] == "promoted"

    # 3. same data: a no-op, in seconds, with no new run
    code, out, err, wall = retrain(spec, tmp_path)
    assert code == 0, err
    assert "no new data" in out and wall < 5, (wall, out)
    assert run_dirs(tmp_path) == [run_dir]
    assert notifications(tmp_path)[-1]["outcome"] == "skipped"

    # 4. records added; two overlapping invocations → exactly one new run, gated
    add_records(root, 8)
    a = retrain_popen(spec, tmp_path)
    line = a.stdout.readline()
    assert "new data" in line and "running the pipeline" in line, line
    code_b, out_b, _, wall_b = retrain(spec, tmp_path)
    assert code_b == 0 and f"is running (PID {a.pid})" in out_b and wall_b < 5
    out_a, err_a = a.communicate(timeout=600)
    assert a.returncode == 0, err_a[-3000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2
    (new_dir,) = [d for d in dirs if d != run_dir]
    gated = json.loads((new_dir / "registry.json").read_text())
    assert gated["decision"] in ("promoted", "not_promoted")
    outcomes = [n["outcome"] for n in notifications(tmp_path)]
    assert outcomes == ["promoted", "skipped", "skipped", gated["decision"]]
    assert [h["outcome"] for h in history(tmp_path)] == ["promoted", "skipped",
                                                         gated["decision"]]
    assert history(tmp_path)[-1]["run_dir"] == str(new_dir)
    champion_version = notifications(tmp_path)[-1]["champion_version"]
    champion = mlflow_client(tmp_path).get_model_version(decision["model"], champion_version)
    assert mlflow_run(tmp_path, champion.run_id).info.status == "FINISHED"
    expected = gated["version"] if gated["decision"] == "promoted" else decision["version"]
    assert champion_version == str(expected)

    shown = subprocess.run([VLMTUNE, "schedule", "history", str(spec)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert shown.stdout.count("promoted") >= 1 and "skipped" in shown.stdout
    assert first["run_id"] in shown.stdout


def test_a_failing_job_is_retried_then_reported(tmp_path, shared_cache):
    root = tmp_path / "data"
    synth_data(root)
    (root / "sivqa_tidy.json").write_text("[{not json")  # a data error
    spec = write_spec(tmp_path, shared_cache, root=root, retries=1, gate=False)
    code, out, err, _ = retrain(spec, tmp_path)
    assert code == 1
    assert out.count("failed: exit 2:") == 2 and "retrying in 0.2 s" in out
    (note,) = notifications(tmp_path)
    assert note["outcome"] == "failed" and note["attempts"] == 2
    assert "sivqa_tidy.json" in note["reason"] and note["champion_version"] is None
    assert note["run_id"] is None
    (job,) = history(tmp_path)
    assert job["outcome"] == "failed" and job["attempts"] == 2
    assert not json.loads((tmp_path / "state" / "state.json").read_text())["last_success"]


@pytest.mark.parametrize("bad", ["name: [x]\n", "{not yaml"])
def test_a_bad_spec_exits_2_in_one_line(tmp_path, bad):
    spec = tmp_path / "bad.yaml"
    spec.write_text(bad)
    code, out, err, _ = retrain(spec, tmp_path)
    assert code == 2 and err.startswith("vlmtune: error: ") and "Traceback" not in err
    assert str(spec) in err
