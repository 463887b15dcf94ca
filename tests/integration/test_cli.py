"""The console entry point: clean errors, Hydra sweeps over the registered card groups."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def vlmtune(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMTUNE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_invalid_value_fails_before_work_with_the_key_named(tmp_path):
    out = vlmtune("run", "experiment=demo", "method.freeze=everything",
                  f"output_root={tmp_path}/outputs", cwd=tmp_path)
    assert out.returncode == 2
    assert "method.freeze='everything' is not allowed" in out.stderr
    assert "tutorial" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()


def test_unknown_command_prints_usage(tmp_path):
    out = vlmtune("fly", cwd=tmp_path)
    assert out.returncode == 2 and "usage: vlmtune" in out.stderr


def test_multirun_sweeps_a_card_group_value_and_ends_with_one_table(tmp_path, shared_cache):
    out = vlmtune("run", "-m", "experiment=demo", "dataset.split_seed=0,1", "pipeline=eval_only",
                  "benchmark.limit=3", "benchmark.scorers=[likelihood]",
                  f"cache_dir={shared_cache}", f"output_root={tmp_path}/outputs",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_dirs = sorted((tmp_path / "outputs" / "demo").iterdir())
    assert len(run_dirs) == 2
    assert all((d / "data" / "manifest.json").exists() for d in run_dirs)
    assert out.stdout.count("MLflow run id:") == 2
    assert "sweep: 2 jobs" in out.stdout
    for num in (0, 1):
        assert f"sweep job {num}: experiment=demo dataset.split_seed={num} " in out.stdout

    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()  # its own timestamped folder
    assert (sweep_dir / "multirun.yaml").is_file()
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["swept"] == ["dataset.split_seed"]
    jobs = summary["jobs"]
    assert [j["num"] for j in jobs] == [0, 1]
    assert {j["run_dir"] for j in jobs} == {str(d.resolve()) for d in run_dirs}
    md = (sweep_dir / "sweep_summary.md").read_text().splitlines()
    assert md[2].startswith("| job | dataset.split_seed | foodie_synth_sivqa ")
    for num, job in enumerate(jobs):
        base = job["metrics"]["foodie_synth_sivqa"]["base"]
        assert base["n"] == 3 and 0 <= base["value"] <= 1
        assert "tuned" not in job["metrics"]["foodie_synth_sivqa"]  # eval_only: base only
        assert f"dataset.split_seed={num}" in job["overrides"]
        assert md[4 + num].startswith(f"| {num} | {num} | {base['value']:.3f} (n=3) | – |")
        job_dir = sweep_dir / str(num)
        assert json.loads((job_dir / "job.json").read_text())["run_dir"] == job["run_dir"]
        assert (job_dir / "run").resolve() == Path(job["run_dir"])


# --- strict keys and group typos: one line, exit 2, before any work --------------------------


@pytest.mark.parametrize(("override", "expected"), [
    ("+train.learning_rate=1e-4", "unknown config key 'train.learning_rate'; did you mean "
                                  "train.lr?"),
    ("model=tiny_intern", "model='tiny_intern' is not a model card; did you mean "
                          "model=tiny_internvl? available: internvl2_2b, tiny_blip2, "
                          "tiny_internvl, tiny_llava, tiny_llava_next, tiny_qwen2_vl"),
])
def test_unknown_key_or_group_choice_is_one_line_with_a_suggestion(override, expected,
                                                                   tmp_path):
    out = vlmtune("run", "experiment=demo", override, f"output_root={tmp_path}/outputs",
                  "--cfg", "job", cwd=tmp_path)  # --cfg job: Hydra would print and exit 0
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == f"vlmtune: error: {expected}\n"
    assert out.stdout == ""
    assert not (tmp_path / "outputs").exists()


# --- an unreachable tracking server fails fast -----------------------------------------------


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_in_seconds_naming_the_key(tmp_path, shared_cache):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    out = vlmtune("run", "experiment=demo", f"tracking.uri={uri}", f"cache_dir={shared_cache}",
                  f"output_root={tmp_path}/outputs", cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert out.returncode == 2, out.stderr
    assert elapsed < 15, elapsed
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vlmtune: error: tracking.uri={uri!r} is "
                                                   "not reachable"), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "outputs").exists()


# --- one run per run directory ---------------------------------------------------------------


HOLD = """
import sys, time
from pathlib import Path
from vlmtune.pipelines.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_lock(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_run_in_the_same_run_dir_refuses_naming_the_pid_or_waits(tmp_path,
                                                                          shared_cache, caplog):
    import logging
    import threading

    from vlmtune.config import compose_recipe, validate
    from vlmtune.pipelines.runner import run_pipeline

    overrides = ["experiment=demo", "tracking=disabled", f"cache_dir={shared_cache}",
                 f"output_root={tmp_path}/outputs"]
    recipe = validate(compose_recipe(overrides))
    run_dir = run_pipeline(recipe, ["ingest"]).run_dir
    log = run_dir / "logs" / "vlmtune.log"
    holder = hold_lock(run_dir)
    try:
        out = vlmtune("ingest", *overrides, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr == (f"vlmtune: error: {run_dir} is in use by another vlmtune run "
                              f"(PID {holder.pid}); wait for it to finish, or add --wait to "
                              "start when it does\n")
        # --wait (run_pipeline(wait=True) here, to spare a second interpreter start; it
        # installs a SIGTERM handler, so it runs in this thread and a helper thread releases)
        before, seen = log.read_text(), []

        def release_once_waiting() -> None:
            deadline = time.monotonic() + 60
            while f"waiting for PID {holder.pid}" not in caplog.text:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            seen.append(log.read_text())  # still blocked: nothing logged in the run dir
            holder.kill()  # the kernel releases the lock; the PID left in the file is stale

        with caplog.at_level(logging.INFO, logger="vlmtune"):
            releaser = threading.Thread(target=release_once_waiting)
            releaser.start()
            result = run_pipeline(recipe, ["ingest"], wait=True)
            releaser.join()
    finally:
        holder.kill()
        holder.wait()
    assert f"waiting for PID {holder.pid}, which is running in {run_dir}" in caplog.text
    assert seen == [before]
    assert result.skipped == ["ingest"]
    assert log.read_text().count("stage ingest: inputs unchanged") == 1
