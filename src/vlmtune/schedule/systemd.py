"""The systemd backend: ``vlmtune-<name>.service`` (Type=oneshot) + ``vlmtune-<name>.timer``
(``OnCalendar=`` from the cron expression, ``Persistent=true``), user units by default.

Units are checked with ``systemd-analyze verify`` (where installed) before they are written;
after writing, ``systemctl --user daemon-reload`` and ``enable --now`` are tried, and printed
for the user to run when there is no user session bus (a container, ssh without lingering).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from vlmtune.errors import VlmtuneError
from vlmtune.schedule.entry import ScheduleEntry

MARKER = "X-Vlmtune-Schedule"  # [Unit] key naming the spec: `schedule list` finds units by it


class UnitError(VlmtuneError):
    """``systemd-analyze verify`` rejected the generated units."""


def user_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def service_unit(entry: ScheduleEntry) -> str:
    return "\n".join([
        "[Unit]",
        f"Description=vlmtune retrain {entry.spec.name}",
        f"{MARKER}={entry.spec.name}",
        "",
        "[Service]",
        "Type=oneshot",
        f"WorkingDirectory={entry.workdir}",
        f"ExecStart={' '.join(_exec_quote(a) for a in entry.argv())}",
        "",
    ])


def timer_unit(entry: ScheduleEntry) -> str:
    calendars = [f"OnCalendar={c}" for c in entry.cron.on_calendar()]
    return "\n".join([
        "[Unit]",
        f"Description=vlmtune retrain {entry.spec.name} ({entry.cron.expression})",
        f"{MARKER}={entry.spec.name}",
        "",
        "[Timer]",
        *calendars,
        "Persistent=true",
        f"Unit={entry.unit_name}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])


def units(entry: ScheduleEntry) -> dict[str, str]:
    """File name → content, the service first."""
    return {f"{entry.unit_name}.service": service_unit(entry),
            f"{entry.unit_name}.timer": timer_unit(entry)}


def verify(files: dict[str, str]) -> str | None:
    """Run ``systemd-analyze verify`` on the units (in a scratch folder); raise on a problem.
    Returns None when it ran, else why it was skipped."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return "systemd-analyze is not installed: units not verified"
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for name, text in files.items():
            path = Path(scratch) / name
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        done = subprocess.run([tool, "verify", *paths], capture_output=True, text=True,
                              timeout=60)
    problems = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
    if done.returncode != 0 or problems:
        raise UnitError("systemd-analyze verify rejected the units: " + " | ".join(problems))
    return None


def install(entry: ScheduleEntry, unit_dir: Path) -> list[str]:
    """Verify, write and (where a user bus answers) enable the timer; returns messages."""
    files = units(entry)
    skipped = verify(files)
    messages = [skipped] if skipped else ["systemd: units pass systemd-analyze verify"]
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = unit_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, unit_dir / name)
        messages.append(f"systemd: wrote {unit_dir / name}")
    timer = f"{entry.unit_name}.timer"
    messages.append(_systemctl(["daemon-reload"], ["enable", "--now", timer]))
    return messages


def remove(name: str, unit_dir: Path) -> list[Path]:
    unit = f"vlmtune-{name}"
    paths = [unit_dir / f"{unit}.{kind}" for kind in ("timer", "service")]
    present = [p for p in paths if p.exists()]
    if present:
        _systemctl(["disable", "--now", f"{unit}.timer"], ["daemon-reload"])
    for path in present:
        path.unlink()
    return present


def installed(unit_dir: Path) -> dict[str, Path]:
    """Spec name → its timer file, for every vlmtune timer in ``unit_dir``."""
    found = {}
    for path in sorted(unit_dir.glob("vlmtune-*.timer")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(f"{MARKER}="):
                found[line.split("=", 1)[1].strip()] = path
    return found


def _systemctl(*commands: list[str]) -> str:
    """Run ``systemctl --user`` commands; say what happened or what to run by hand."""
    shown = " && ".join(shlex.join(["systemctl", "--user", *c]) for c in commands)
    tool = shutil.which("systemctl")
    for command in commands:
        if tool is None:
            return f"systemd: systemctl not found; run: {shown}"
        try:
            done = subprocess.run([tool, "--user", *command], capture_output=True, text=True,
                                  timeout=30)
        except subprocess.TimeoutExpired:
            return f"systemd: systemctl timed out; run: {shown}"
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["failed"])[0]
            return f"systemd: systemctl --user unavailable ({why}); run: {shown}"
    return f"systemd: ran {shown}"


def _exec_quote(arg: str) -> str:
    """Quote an ``ExecStart=`` argument the way systemd reads it (``%`` starts a specifier,
    ``$`` a variable)."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;$" for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
