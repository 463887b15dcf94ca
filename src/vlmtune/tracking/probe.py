"""Is the tracking server there? Asked before any work, in a few seconds, without mlflow.

Importing mlflow alone takes seconds; this module uses the standard library only, so the CLI
can ask right after composing the recipe.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from vlmtune.errors import ConfigError

# MLflow's own HTTP client retries 7 times with exponential backoff (minutes); a server that
# goes away mid-run fails within seconds instead. The user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """ConfigError naming ``tracking.uri`` unless an ``http(s)://`` tracking server answers
    within ``timeout_s`` (any HTTP answer counts; other URI schemes are not probed)."""
    if not uri.startswith(("http://", "https://")):
        return
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    probe = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there (auth and routing are MLflow's to report)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"tracking.uri={uri!r} is not reachable ({reason}; probed {probe} for "
            f"{timeout_s:g} s); start the server, or use tracking.uri=sqlite:///mlflow.db or "
            "tracking=disabled") from None
