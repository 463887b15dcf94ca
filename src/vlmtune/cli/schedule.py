"""``vlmtune schedule install|list|remove|history``: run ``vlmtune retrain SPEC`` on a
schedule with cron, systemd timers or a Kubernetes CronJob.

    vlmtune schedule install nightly --cron "0 3 * * *" --backend cron
    vlmtune schedule install nightly --cron "0 3 * * *" --backend systemd --dry-run
    vlmtune schedule install nightly --cron "0 3 * * *" --backend kubernetes \\
        --image registry.example.org/vlmtune:1 --namespace ml --volume data:foodie-pvc:/data
    vlmtune schedule list
    vlmtune schedule remove nightly [--backend cron]
    vlmtune schedule history nightly
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmtune.errors import VlmtuneError

BACKENDS = ("cron", "systemd", "kubernetes")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmtune schedule", description="Run `vlmtune retrain SPEC` on a schedule: cron, "
        "systemd timers or a Kubernetes CronJob; list, remove, and show a spec's history.")
    sub = parser.add_subparsers(dest="action", required=True)
    install = sub.add_parser("install", help="install a schedule for a retrain spec")
    install.add_argument("spec", help="a retrain spec YAML, or a card name in recipes/schedule/")
    install.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * *"')
    install.add_argument("--backend", choices=BACKENDS, default="cron")
    install.add_argument("--dry-run", action="store_true",
                         help="print what would be written, change nothing")
    install.add_argument("--unit-dir", type=Path,
                         help="systemd: unit folder (default ~/.config/systemd/user)")
    install.add_argument("--image", default="", help="kubernetes: the container image")
    install.add_argument("--namespace", default="default", help="kubernetes: namespace")
    install.add_argument("--volume", action="append", default=[], metavar="NAME:CLAIM:MOUNT",
                         help="kubernetes: mount a PersistentVolumeClaim (repeatable)")
    install.add_argument("--executable", help="kubernetes: the vlmtune script in the image "
                         "(default: this environment's)")
    install.add_argument("--output", type=Path, help="kubernetes: the manifest file "
                         "(default ~/.config/vlmtune/kubernetes/vlmtune-<name>.yaml)")
    install.set_defaults(handler=_install)
    listing = sub.add_parser("list", help="every installed schedule, with its backend")
    listing.add_argument("--unit-dir", type=Path)
    listing.set_defaults(handler=_list)
    remove = sub.add_parser("remove", help="remove a spec's schedule(s)")
    remove.add_argument("spec", help="the spec (file, card or name)")
    remove.add_argument("--backend", choices=BACKENDS, help="only this backend (default: all)")
    remove.add_argument("--unit-dir", type=Path)
    remove.set_defaults(handler=_remove)
    history = sub.add_parser("history", help="the spec's job history")
    history.add_argument("spec", help="a retrain spec YAML, or a card name")
    history.set_defaults(handler=_history)
    return parser


def _install(args: argparse.Namespace) -> int:
    from vlmtune.schedule import crontab, kubernetes, systemd
    from vlmtune.schedule.cron import parse_cron
    from vlmtune.schedule.entry import ScheduleEntry
    from vlmtune.schedule.spec import load_spec

    cron = parse_cron(args.cron)
    entry = ScheduleEntry(load_spec(args.spec), cron, Path.cwd())
    if args.backend == "cron":
        if args.dry_run:
            print(crontab.cron_line(entry))
            return 0
        print(crontab.install(entry))
    elif args.backend == "systemd":
        unit_dir = args.unit_dir or systemd.user_unit_dir()
        if args.dry_run:
            for name, text in systemd.units(entry).items():
                print(f"# {unit_dir / name}\n{text}")
            return 0
        for message in systemd.install(entry, unit_dir):
            print(message)
    else:
        pod = kubernetes.PodOptions(args.image, args.namespace,
                                    tuple(kubernetes.parse_volume(v) for v in args.volume),
                                    args.executable)
        if args.dry_run:
            print(kubernetes.render(entry, pod), end="")
            return 0
        path = args.output or (kubernetes.manifest_dir()
                               / f"{kubernetes.resource_name(entry.spec.name)}.yaml")
        print(kubernetes.install(entry, pod, path))
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    rows = _installed(args.unit_dir)
    if not rows:
        print("no vlmtune schedules installed")
        return 0
    table = Table(title="vlmtune schedules")
    for column in ("spec", "backend", "schedule", "where"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)
    return 0


def _installed(unit_dir: Path | None) -> list[tuple[str, str, str, str]]:
    """(spec, backend, schedule, where) for every installed schedule."""
    from vlmtune.schedule import crontab, kubernetes, systemd

    rows = []
    for name, line in crontab.installed().items():
        fields = line.split()
        when = fields[0] if fields[0].startswith("@") else " ".join(fields[:5])
        rows.append((name, "cron", when, "crontab"))
    for name, path in systemd.installed(unit_dir or systemd.user_unit_dir()).items():
        calendars = [x.split("=", 1)[1] for x in path.read_text().splitlines()
                     if x.startswith("OnCalendar=")]
        rows.append((name, "systemd", "; ".join(calendars), str(path)))
    for name, path in kubernetes.installed(kubernetes.manifest_dir()).items():
        import yaml

        schedule = yaml.safe_load(path.read_text())["spec"]["schedule"]
        rows.append((name, "kubernetes", schedule, str(path)))
    return rows


def _remove(args: argparse.Namespace) -> int:
    from vlmtune.schedule import crontab, kubernetes, systemd

    name = _spec_name(args.spec)
    backends = [args.backend] if args.backend else list(BACKENDS)
    removed = []
    wants_cron = "cron" in backends and (args.backend == "cron" or crontab.installed())
    if wants_cron and crontab.remove(name):
        removed.append("cron: removed the crontab line")
    if "systemd" in backends:
        for path in systemd.remove(name, args.unit_dir or systemd.user_unit_dir()):
            removed.append(f"systemd: removed {path}")
    if "kubernetes" in backends:
        path = kubernetes.installed(kubernetes.manifest_dir()).get(name)
        if path is not None:
            path.unlink()
            removed.append(f"kubernetes: removed {path} (the cluster's CronJob stays: "
                           f"kubectl delete cronjob {kubernetes.resource_name(name)})")
    for message in removed:
        print(message)
    if not removed:
        print(f"no schedule of {name} installed"
              + (f" with --backend {args.backend}" if args.backend else ""))
    return 0


def _history(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from vlmtune.schedule.spec import load_spec
    from vlmtune.schedule.state import ScheduleState

    spec = load_spec(args.spec)
    history = ScheduleState.load(spec.state_dir).history
    if not history:
        print(f"{spec.name}: no jobs yet ({spec.state_dir})")
        return 0
    table = Table(title=f"retrain history: {spec.name}")
    columns = ("start", "end", "outcome", "attempts", "run_id", "data_fingerprint", "reason")
    for column in columns:
        table.add_column(column, overflow="fold")
    for job in history:
        table.add_row(*("" if job.get(c) is None else str(job[c]) for c in columns))
    Console(width=220).print(table)
    return 0


def _spec_name(spec: str) -> str:
    """The spec's name (a file or card), or ``spec`` itself when none is found by that name:
    a schedule can be removed after its spec file is gone."""
    from vlmtune.schedule.spec import load_spec

    try:
        return load_spec(spec).name
    except VlmtuneError:
        return spec
