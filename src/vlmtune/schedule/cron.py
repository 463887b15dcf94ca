"""Cron expressions: validated field by field, and converted to systemd ``OnCalendar=``.

Five fields (minute hour day-of-month month day-of-week), each ``*`` or a comma list of
``N``, ``A-B`` (names for months and weekdays too), with an optional ``/STEP``; or one of the
macros ``@hourly @daily @midnight @weekly @monthly @yearly @annually``. As in cron, when both
day fields are restricted a day matching either runs the job (systemd: two ``OnCalendar=``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmtune.errors import ConfigError

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
RANGES = {"minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31), "month": (1, 12),
          "day-of-week": (0, 7)}
NAMES = {
    "month": {n: i + 1 for i, n in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))},
    "day-of-week": {n: i for i, n in enumerate(
        ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
          "@annually": "0 0 1 1 *"}
SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


@dataclass(frozen=True)
class CronSchedule:
    expression: str  # as given (macros kept: cron and Kubernetes read them)
    fields: dict[str, tuple[int, ...]]  # field -> the values it allows, sorted
    restricted: dict[str, bool]  # field -> not "*"

    def on_calendar(self) -> list[str]:
        """The systemd ``OnCalendar=`` value(s) that fire at the same times."""
        minute = _values(self.fields["minute"], "02d", (0, 59))
        hour = _values(self.fields["hour"], "02d", (0, 23))
        month = _values(self.fields["month"], "02d", (1, 12))
        dom = _values(self.fields["day-of-month"], "02d", (1, 31))
        dow = ",".join(SYSTEMD_DAYS[d] for d in self.fields["day-of-week"])

        def line(days: str | None, day_of_month: str) -> str:
            stamp = f"*-{month}-{day_of_month} {hour}:{minute}:00"
            return f"{days} {stamp}" if days else stamp

        dom_set, dow_set = self.restricted["day-of-month"], self.restricted["day-of-week"]
        if dom_set and dow_set:  # cron: either day field matching runs the job
            return [line(None, dom), line(dow, "*")]
        return [line(dow if dow_set else None, dom)]


def parse_cron(expression: str) -> CronSchedule:
    """Validate ``expression``; the error names the field, its text and the allowed range."""
    text = expression.strip()
    expanded = MACROS.get(text.lower(), text)
    if text.startswith("@") and text.lower() not in MACROS:
        raise ConfigError(f"--cron {expression!r}: unknown macro (allowed: "
                          f"{', '.join(MACROS)})")
    parts = expanded.split()
    if len(parts) != len(FIELDS):
        raise ConfigError(f"--cron {expression!r}: a cron expression has 5 fields ("
                          f"{' '.join(FIELDS)}), this one has {len(parts)}")
    fields, restricted = {}, {}
    for name, part in zip(FIELDS, parts, strict=True):
        values = _parse_field(name, part, expression)
        if name == "day-of-week":
            values = {0 if v == 7 else v for v in values}
        fields[name] = tuple(sorted(values))
        restricted[name] = not part.startswith("*")
    return CronSchedule(text, fields, restricted)


def _parse_field(name: str, part: str, expression: str) -> set[int]:
    low, high = RANGES[name]

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"--cron {expression!r}: {name} field {part!r} {problem} "
                           f"(allowed {low}-{high}{_names_hint(name)})")

    values: set[int] = set()
    for item in part.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise fail(f"has an invalid step {step_text!r}")
            step = int(step_text)
        if base == "*":
            start, end = low, high if name != "day-of-week" else 6
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _number(name, first, fail), _number(name, last, fail)
            if start > end:
                raise fail(f"has a backwards range {base!r}")
        else:
            start = _number(name, base, fail)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return values


def _number(name: str, text: str, fail) -> int:
    low, high = RANGES[name]
    value = NAMES.get(name, {}).get(text.lower()) if not text.isdigit() else int(text)
    if value is None:
        raise fail(f"has {text!r}, not a number")
    if not low <= value <= high:
        raise fail(f"has {value}, out of range")
    return value


def _names_hint(name: str) -> str:
    names = NAMES.get(name)
    return f", or {'-'.join((next(iter(names)), list(names)[-1]))}" if names else ""


def _values(values: tuple[int, ...], fmt: str, full: tuple[int, int]) -> str:
    if values == tuple(range(full[0], full[1] + 1)):
        return "*"
    return ",".join(format(v, fmt) for v in values)
