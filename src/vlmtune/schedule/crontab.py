"""The cron backend: one crontab line per spec, tagged ``# vlmtune:<name>``.

Installing replaces the spec's tagged line (idempotent) and keeps every other line; removing
deletes it. The crontab is read with ``crontab -l`` and written with ``crontab -``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

from vlmtune.errors import VlmtuneError
from vlmtune.schedule.entry import ScheduleEntry

TAG = "# vlmtune:"


class CrontabError(VlmtuneError):
    """``crontab`` is missing or refused the new table."""


def cron_line(entry: ScheduleEntry) -> str:
    """``<cron> cd <workdir> && <vlmtune> retrain <spec> >> <state_dir>/cron.log 2>&1 # tag``
    (``%`` escaped: cron turns it into a newline)."""
    log = entry.spec.state_dir / "cron.log"
    command = (f"cd {shlex.quote(str(entry.workdir))} && {entry.shell_command()} "
               f">> {shlex.quote(str(log))} 2>&1")
    return f"{entry.cron.expression} {command.replace('%', chr(92) + '%')} {TAG}{entry.spec.name}"


def install(entry: ScheduleEntry) -> str:
    """Install (or replace) the spec's line; returns what happened, in words."""
    line = cron_line(entry)
    lines = read_crontab()
    kept = [x for x in lines if not _is_tagged(x, entry.spec.name)]
    if line in lines and len(kept) == len(lines) - 1:
        return f"cron: {entry.spec.name} already installed unchanged"
    entry.spec.state_dir.mkdir(parents=True, exist_ok=True)  # the job's log goes there
    write_crontab([*kept, line])
    return f"cron: installed {entry.spec.name} ({entry.cron.expression})"


def remove(name: str) -> bool:
    lines = read_crontab()
    kept = [x for x in lines if not _is_tagged(x, name)]
    if len(kept) == len(lines):
        return False
    write_crontab(kept)
    return True


def installed() -> dict[str, str]:
    """Spec name → its crontab line, for every tagged line (empty without ``crontab``)."""
    if shutil.which("crontab") is None:
        return {}
    return {x.rsplit(TAG, 1)[1].strip(): x for x in read_crontab() if TAG in x}


def read_crontab() -> list[str]:
    done = subprocess.run([_crontab(), "-l"], capture_output=True, text=True)
    if done.returncode != 0:
        if "no crontab" in done.stderr.lower():
            return []
        raise CrontabError(f"crontab -l failed: {done.stderr.strip()}")
    return done.stdout.splitlines()


def write_crontab(lines: list[str]) -> None:
    text = "".join(f"{x}\n" for x in lines)
    done = subprocess.run([_crontab(), "-"], input=text, capture_output=True, text=True)
    if done.returncode != 0:
        raise CrontabError(f"crontab refused the new table: {done.stderr.strip()}")


def _is_tagged(line: str, name: str) -> bool:
    return line.rstrip().endswith(f"{TAG}{name}")


def _crontab() -> str:
    path = shutil.which("crontab")
    if path is None:
        raise CrontabError("crontab is not installed (Debian/Ubuntu: apt-get install cron); "
                           "or use --backend systemd")
    return path
