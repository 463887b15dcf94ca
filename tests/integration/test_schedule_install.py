"""``vlmtune schedule install|list|remove`` through the real tools: ``crontab``, systemd units
checked by ``systemd-analyze verify``, a CronJob manifest read back as YAML."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

VLMTUNE = str(Path(os.path.abspath(sys.executable)).parent / "vlmtune")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "nightly.yaml"
    path.write_text(f"name: h10-sched-test\noverrides: [experiment=demo, "
                    f"cache_dir={tmp_path}/cache]\ntrigger: {{root: {tmp_path}}}\n")
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    return home


def schedule(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    return subprocess.run([VLMTUNE, "schedule", *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "HOME": str(home)}, timeout=120)


def crontab_lines() -> list[str]:
    done = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    return done.stdout.splitlines() if done.returncode == 0 else []


@pytest.fixture
def crontab():
    """The real crontab, restored afterwards (this test only adds and removes its own line)."""
    if shutil.which("crontab") is None:
        pytest.skip("crontab is not installed (make test installs the cron package as root)")
    before = crontab_lines()
    yield
    subprocess.run(["crontab", "-"], input="".join(f"{x}\n" for x in before), text=True,
                   check=True)


def test_cron_install_round_trips_through_crontab(spec, home, tmp_path, crontab):
    foreign = "17 4 * * * /usr/bin/true # someone else's"
    subprocess.run(["crontab", "-"], input="\n".join([*crontab_lines(), foreign]) + "\n",
                   text=True, check=True)
    expected = (f"0 3 * * * cd {tmp_path} && {VLMTUNE} retrain {spec} >> "
                f"{tmp_path}/cache/schedule/h10-sched-test/cron.log 2>&1 # vlmtune:h10-sched-test")
    dry = schedule("install", str(spec), "--cron", "0 3 * * *", "--backend", "cron",
                   "--dry-run", home=home, cwd=tmp_path)
    assert dry.stdout == expected + "\n" and expected not in crontab_lines()
    for _ in range(2):  # idempotent
        out = schedule("install", str(spec), "--cron", "0 3 * * *", "--backend", "cron",
                       home=home, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    lines = crontab_lines()
    assert lines.count(expected) == 1 and foreign in lines
    assert (tmp_path / "cache/schedule/h10-sched-test").is_dir()  # the log's folder exists
    out = schedule("install", str(spec), "--cron", "30 1 * * 0", "--backend", "cron",
                   home=home, cwd=tmp_path)  # a new time replaces the line
    tagged = [x for x in crontab_lines() if x.endswith("# vlmtune:h10-sched-test")]
    assert len(tagged) == 1 and tagged[0].startswith("30 1 * * 0 cd ")
    listed = schedule("list", home=home, cwd=tmp_path)
    assert "h10-sched-test" in listed.stdout and "cron" in listed.stdout
    out = schedule("remove", str(spec), "--backend", "cron", home=home, cwd=tmp_path)
    assert out.returncode == 0 and "removed" in out.stdout
    assert not [x for x in crontab_lines() if "vlmtune:h10-sched-test" in x]
    assert foreign in crontab_lines()


def test_a_bad_cron_expression_is_refused_naming_the_field(spec, home, tmp_path):
    out = schedule("install", str(spec), "--cron", "0 24 * * *", "--backend", "systemd",
                   home=home, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "hour field '24' has 24, out of range (allowed 0-23)" in out.stderr
    assert not (home / ".config").exists()


def test_systemd_units_verify_install_as_user_units_and_remove(spec, home, tmp_path):
    dry = schedule("install", str(spec), "--cron", "15 2 * * 1-5", "--backend", "systemd",
                   "--dry-run", home=home, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    unit_dir = home / ".config/systemd/user"
    assert not unit_dir.exists()  # --dry-run writes nothing
    assert f"# {unit_dir}/vlmtune-h10-sched-test.service" in dry.stdout
    assert f"# {unit_dir}/vlmtune-h10-sched-test.timer" in dry.stdout
    out = schedule("install", str(spec), "--cron", "15 2 * * 1-5", "--backend", "systemd",
                   home=home, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    service = (unit_dir / "vlmtune-h10-sched-test.service").read_text()
    timer = (unit_dir / "vlmtune-h10-sched-test.timer").read_text()
    assert "Type=oneshot\n" in service and f"WorkingDirectory={tmp_path}\n" in service
    assert f"ExecStart={VLMTUNE} retrain {spec}\n" in service
    assert "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 02:15:00\n" in timer
    assert "Persistent=true\n" in timer and "WantedBy=timers.target" in timer
    assert service in dry.stdout and timer in dry.stdout
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed: units written but not verified")
    checked = subprocess.run([tool, "verify", str(unit_dir / "vlmtune-h10-sched-test.service"),
                              str(unit_dir / "vlmtune-h10-sched-test.timer")],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr
    assert "systemd" in schedule("list", home=home, cwd=tmp_path).stdout
    out = schedule("remove", str(spec), "--backend", "systemd", home=home, cwd=tmp_path)
    assert out.returncode == 0 and not list(unit_dir.iterdir())


def test_systemd_verify_rejects_a_broken_unit():
    from vlmtune.schedule.systemd import UnitError, verify

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    with pytest.raises(UnitError, match="Failed to parse calendar specification"):
        verify({"x.timer": "[Timer]\nOnCalendar=*-*-* 25:00:00\nUnit=x.service\n",
                "x.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n"})


def test_kubernetes_cronjob_manifest(spec, home, tmp_path):
    args = ("install", str(spec), "--cron", "0 3 * * *", "--backend", "kubernetes",
            "--image", "registry.example.org/vlmtune:1", "--namespace", "ml",
            "--volume", "data:foodie-pvc:/data", "--volume", "state:vlmtune-state:/state")
    dry = schedule(*args, "--dry-run", home=home, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    doc = yaml.safe_load(dry.stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    assert doc["metadata"]["name"] == "vlmtune-h10-sched-test"
    assert doc["metadata"]["namespace"] == "ml"
    cron = doc["spec"]
    assert cron["schedule"] == "0 3 * * *" and cron["concurrencyPolicy"] == "Forbid"
    assert cron["startingDeadlineSeconds"] == 3600
    assert (cron["successfulJobsHistoryLimit"], cron["failedJobsHistoryLimit"]) == (3, 1)
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.org/vlmtune:1"
    assert container["command"] == [VLMTUNE, "retrain", str(spec)]
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"},
                                         {"name": "state", "mountPath": "/state"}]
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "foodie-pvc"}},
        {"name": "state", "persistentVolumeClaim": {"claimName": "vlmtune-state"}}]
    out = schedule(*args, home=home, cwd=tmp_path)
    written = home / ".config/vlmtune/kubernetes/vlmtune-h10-sched-test.yaml"
    assert out.returncode == 0 and f"kubectl apply -f {written}" in out.stdout
    assert yaml.safe_load(written.read_text()) == doc
    assert "kubernetes" in schedule("list", home=home, cwd=tmp_path).stdout
    bad = schedule(*args[:-2], "--volume", "data:/data", home=home, cwd=tmp_path)
    assert bad.returncode == 2 and "expected NAME:CLAIM:MOUNT" in bad.stderr
    assert schedule("remove", str(spec), home=home, cwd=tmp_path).returncode == 0
    assert not written.exists()
