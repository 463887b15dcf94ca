"""Retrain specs, cron expressions, the trigger fingerprint, the spec lock and the mapping of
the register stage's ``registry.json`` onto a job outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlmtune.errors import ConfigError
from vlmtune.schedule.cron import parse_cron
from vlmtune.schedule.job import gate_outcome
from vlmtune.schedule.lock import job_lock
from vlmtune.schedule.spec import gate_overrides, load_spec, parse_spec
from vlmtune.schedule.trigger import fingerprint_root

ISSUE_SPEC = """\
name: nightly-foodie
overrides: [experiment=demo, dataset.root=/data/foodie, train.max_iters=200]
trigger: {root: /data/foodie, when: changed}
gate: {benchmark: heldout, metric: accuracy, min_delta: 0.01}
retries: {count: 2, backoff_s: 30}
notify: "mail -s vlmtune ops@example.org"
"""


def test_the_issue_spec_loads_with_every_key(tmp_path):
    path = tmp_path / "nightly.yaml"
    path.write_text(ISSUE_SPEC)
    spec = load_spec(str(path))
    assert spec.name == "nightly-foodie"
    assert spec.overrides == ("experiment=demo", "dataset.root=/data/foodie",
                              "train.max_iters=200")
    assert spec.trigger.root == Path("/data/foodie") and spec.trigger.when == "changed"
    assert (spec.gate.benchmark, spec.gate.metric, spec.gate.min_delta) == (
        "heldout", "accuracy", 0.01)
    assert (spec.retries.count, spec.retries.backoff_s) == (2, 30.0)
    assert spec.notify == "mail -s vlmtune ops@example.org"
    # no cache_dir override: the recipe default, relative to where the job runs
    assert spec.state_dir == Path.cwd() / ".cache/vlmtune/schedule/nightly-foodie"
    assert gate_overrides(spec.gate) == ["registry.gate.benchmark=heldout",
                                         "registry.gate.metric=accuracy",
                                         "registry.gate.min_delta=0.01"]


def test_state_dir_follows_the_cache_dir_override(tmp_path):
    raw = {"name": "n", "overrides": ["experiment=demo", f"cache_dir={tmp_path}/c"],
           "trigger": {"root": str(tmp_path)}}
    spec = parse_spec(raw, tmp_path / "s.yaml")
    assert spec.state_dir == tmp_path / "c" / "schedule" / "n"
    assert spec.gate is None and spec.retries.count == 0 and spec.trigger.when == "changed"


@pytest.mark.parametrize(("change", "message"), [
    ({"trigger": {"root": "/d", "when": "sometimes"}},
     "trigger.when='sometimes' is not allowed (changed, always)"),
    ({"retries": {"count": -1}}, "retries.count=-1 must be an integer >= 0"),
    ({"retries": {"count": 1, "backoff": 3}},
     "retries.backoff is not a key of retries (count, backoff_s)"),
    ({"gate": {"min_delta": "big"}}, "gate.min_delta='big' must be a number"),
    ({"overrides": "experiment=demo"}, "overrides must be a list of key=value strings"),
    ({"name": "a b"}, "name='a b' must be letters, digits"),
    ({"trigger": {"when": "always"}}, "trigger.root is required"),
    ({"schedule": "daily"}, "schedule is not a retrain spec key"),
])
def test_a_bad_spec_is_one_line_naming_the_key(tmp_path, change, message):
    raw = {"name": "n", "overrides": ["experiment=demo"], "trigger": {"root": "/d"}, **change}
    with pytest.raises(ConfigError) as err:
        parse_spec(raw, tmp_path / "s.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(tmp_path / "s.yaml") in str(err.value)


def test_an_unknown_spec_names_the_cards(tmp_path):
    with pytest.raises(ConfigError, match="no such file, nor a card in .*cards: nightly_demo"):
        load_spec("nightly-nope")


def test_the_shipped_card_loads_by_name_and_composes():
    from vlmtune.config import compose_recipe, validate

    spec = load_spec("nightly_demo")
    assert spec.path.name == "nightly_demo.yaml"
    assert spec.trigger.root == Path.cwd() / "data/foodie_nightly"
    recipe = validate(compose_recipe([*spec.overrides]))
    assert recipe.experiment_name == "demo" and recipe.train.max_iters == 200
    assert recipe.dataset.synthetic is None and recipe.dataset.root == "data/foodie_nightly"


# --- cron expressions ---------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "message"), [
    ("61 * * * *", "minute field '61' has 61, out of range (allowed 0-59)"),
    ("0 24 * * *", "hour field '24' has 24, out of range (allowed 0-23)"),
    ("0 3 0 * *", "day-of-month field '0' has 0, out of range (allowed 1-31)"),
    ("0 3 * 13 *", "month field '13' has 13, out of range (allowed 1-12"),
    ("0 3 * * 8", "day-of-week field '8' has 8, out of range (allowed 0-7"),
    ("0 3 * * fun", "day-of-week field 'fun' has 'fun', not a number"),
    ("*/0 * * * *", "minute field '*/0' has an invalid step '0'"),
    ("0 5-3 * * *", "hour field '5-3' has a backwards range '5-3'"),
    ("0 3 * *", "a cron expression has 5 fields"),
    ("@reboot", "unknown macro"),
])
def test_a_bad_cron_expression_is_refused_naming_the_field(expression, message):
    with pytest.raises(ConfigError) as err:
        parse_cron(expression)
    assert message in str(err.value)


@pytest.mark.parametrize(("expression", "calendars"), [
    ("0 3 * * *", ["*-*-* 03:00:00"]),
    ("@daily", ["*-*-* 00:00:00"]),
    ("*/15 9-17 * * 1-5",
     ["Mon,Tue,Wed,Thu,Fri *-*-* 09,10,11,12,13,14,15,16,17:00,15,30,45:00"]),
    ("30 2 1,15 jan-mar *", ["*-01,02,03-01,15 02:30:00"]),
    ("0 0 * * 7", ["Sun *-*-* 00:00:00"]),  # 7 is Sunday too
    # both day fields restricted: cron runs on either, systemd ANDs, so two calendars
    ("0 3 1 * mon", ["*-*-01 03:00:00", "Mon *-*-* 03:00:00"]),
])
def test_cron_to_systemd_on_calendar(expression, calendars):
    assert parse_cron(expression).on_calendar() == calendars


# --- trigger fingerprint ------------------------------------------------------------------------


def test_the_fingerprint_sees_added_records_not_touches(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"q": 1}]))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"jpg")
    first = fingerprint_root(tmp_path)
    assert first.hashed == 2 and set(first.files) == {"data.json", "images/a.jpg"}
    again = fingerprint_root(tmp_path, first.files)
    assert again.digest == first.digest and again.hashed == 0  # nothing read
    os.utime(data, ns=(1, 1))  # touched, same content: re-read, same fingerprint
    touched = fingerprint_root(tmp_path, again.files)
    assert touched.digest == first.digest and touched.hashed == 1
    data.write_text(json.dumps([{"q": 1}, {"q": 2}]))  # a record added
    assert fingerprint_root(tmp_path, touched.files).digest != first.digest
    with pytest.raises(ConfigError, match="trigger.root="):
        fingerprint_root(tmp_path / "missing")


def test_an_added_file_changes_the_fingerprint(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    before = fingerprint_root(tmp_path).digest
    (tmp_path / "b.json").write_text("[]")
    assert fingerprint_root(tmp_path).digest != before


# --- the spec lock --------------------------------------------------------------------------


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vlmtune.schedule.lock import job_lock
    with job_lock(Path(sys.argv[1])) as lock:
        print("held" if lock.held else "busy", flush=True)
        time.sleep(60)
""")


def test_a_second_holder_is_refused_with_the_pid_and_a_killed_one_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with job_lock(tmp_path) as lock:
            assert not lock.held and lock.holder == str(child.pid)
    finally:
        child.kill()
        child.wait()
    with job_lock(tmp_path) as lock:  # the kernel released it; the PID is left in the file
        assert lock.held and lock.stale == str(child.pid)
    with job_lock(tmp_path) as lock:  # a clean release leaves no PID behind
        assert lock.held and lock.stale is None


# --- registry.json → outcome ----------------------------------------------------------------


def _decision(tmp_path, **fields) -> Path:
    (tmp_path / "registry.json").write_text(json.dumps({
        "model": "vlmtune-demo", "version": "3", "reason": "", "challenger": 0.6,
        "champion": 0.5, "champion_version": "2", "benchmark": "b", "metric": "accuracy",
        **fields}))
    return tmp_path


def test_promoted_names_the_new_version_not_promoted_keeps_the_champion(tmp_path):
    promoted = gate_outcome(_decision(tmp_path, decision="promoted"))
    assert (promoted.outcome, promoted.champion_version) == ("promoted", "3")
    assert promoted.reason == "vlmtune-demo version 3 is the new champion"
    kept = gate_outcome(_decision(tmp_path, decision="not_promoted",
                                  reason="challenger 0.50 < champion 0.60 + 0.01"))
    assert (kept.outcome, kept.champion_version) == ("not_promoted", "2")
    assert kept.reason == "challenger 0.50 < champion 0.60 + 0.01"


def test_a_missing_or_odd_registry_file_is_a_failure(tmp_path):
    missing = gate_outcome(tmp_path)
    assert missing.outcome == "failed" and "registry.json is missing" in missing.reason
    odd = gate_outcome(_decision(tmp_path, decision="maybe"))
    assert odd.outcome == "failed" and "decision='maybe'" in odd.reason


# --- what a killed job leaves running ---------------------------------------------------------


def test_the_dead_jobs_process_group_is_reaped(tmp_path):
    from vlmtune.schedule.reaper import group_members, reap_group, record_group

    # a "pipeline child" leading its own group, with a grandchild that outlives it
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(120)', 'vlmtune-worker']); print('up', flush=True); "
              "time.sleep(120)")
    leader = subprocess.Popen([sys.executable, "-c", script, "vlmtune"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert leader.stdout.readline().strip() == "up"
    record_group(tmp_path, leader.pid)
    leader.kill()
    leader.wait()
    (orphan,) = group_members(leader.pid)  # the worker lives on after its parent's SIGKILL
    assert reap_group(tmp_path) == [orphan]
    assert group_members(leader.pid) == [] and not (tmp_path / "pipeline.pgid").exists()
    assert reap_group(tmp_path) == []  # nothing recorded: nothing to do
