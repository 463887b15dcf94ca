"""The Kubernetes backend: a ``batch/v1`` ``CronJob`` manifest written to a file for
``kubectl apply -f``.

``concurrencyPolicy: Forbid`` (the spec's own lock also holds across pods only on a shared
state volume), ``startingDeadlineSeconds`` (a missed run starts late, within the deadline),
history limits, ``restartPolicy: OnFailure``. The container runs ``vlmtune retrain SPEC``
with the paths as given: the image (or a mounted volume) must hold them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlmtune.errors import ConfigError
from vlmtune.schedule.entry import ScheduleEntry

STARTING_DEADLINE_S = 3600
SUCCESSFUL_HISTORY, FAILED_HISTORY = 3, 1
LABEL = "vlmtune.schedule"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Volume:
    name: str
    claim: str
    mount: str


@dataclass(frozen=True)
class PodOptions:
    image: str
    namespace: str = "default"
    volumes: tuple[Volume, ...] = ()
    executable: str | None = None  # the vlmtune script inside the image (default: ours)


def parse_volume(text: str) -> Volume:
    """``NAME:CLAIM:MOUNT`` (a PersistentVolumeClaim mounted at an absolute path)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(parts) or not parts[2].startswith("/"):
        raise ConfigError(f"--volume {text!r}: expected NAME:CLAIM:MOUNT, e.g. "
                          "data:foodie-pvc:/data (MOUNT an absolute path)")
    for label, value in zip(("volume name", "claim name"), parts[:2], strict=True):
        if not DNS_LABEL.match(value):
            raise ConfigError(f"--volume {text!r}: the {label} {value!r} must be lower-case "
                              "letters, digits and '-'")
    return Volume(*parts)


def resource_name(spec_name: str) -> str:
    """``vlmtune-<name>`` as a DNS label of at most 52 characters (a CronJob's limit)."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"vlmtune-{spec_name}".lower()).strip("-")
    if len(name) > 52:
        raise ConfigError(f"name={spec_name!r}: too long for a CronJob name (vlmtune-<name> "
                          "must be at most 52 characters)")
    return name


def cronjob(entry: ScheduleEntry, pod: PodOptions) -> dict:
    """The CronJob manifest as a mapping."""
    if not pod.image:
        raise ConfigError("--image is required for --backend kubernetes")
    name = resource_name(entry.spec.name)
    container = {
        "name": "retrain",
        "image": pod.image,
        "command": entry.argv(pod.executable),
        "workingDir": str(entry.workdir),
    }
    if pod.volumes:
        container["volumeMounts"] = [{"name": v.name, "mountPath": v.mount} for v in pod.volumes]
    pod_spec: dict = {"restartPolicy": "OnFailure", "containers": [container]}
    if pod.volumes:
        pod_spec["volumes"] = [{"name": v.name, "persistentVolumeClaim": {"claimName": v.claim}}
                               for v in pod.volumes]
    labels = {"app.kubernetes.io/managed-by": "vlmtune", LABEL: entry.spec.name}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            "schedule": entry.cron.expression,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_S,
            "successfulJobsHistoryLimit": SUCCESSFUL_HISTORY,
            "failedJobsHistoryLimit": FAILED_HISTORY,
            "jobTemplate": {"spec": {"template": {"metadata": {"labels": dict(labels)},
                                                  "spec": pod_spec}}},
        },
    }


def render(entry: ScheduleEntry, pod: PodOptions) -> str:
    import yaml

    return yaml.safe_dump(cronjob(entry, pod), sort_keys=False)


def manifest_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vlmtune" / "kubernetes"


def install(entry: ScheduleEntry, pod: PodOptions, path: Path) -> str:
    text = render(entry, pod)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return f"kubernetes: wrote {path}; apply it with: kubectl apply -f {path}"


def installed(folder: Path) -> dict[str, Path]:
    """Spec name → manifest, for the manifests ``schedule install`` wrote into ``folder``."""
    import yaml

    found = {}
    for path in sorted(folder.glob("vlmtune-*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        name = doc.get("metadata", {}).get("labels", {}).get(LABEL)
        if name:
            found[name] = path
    return found
