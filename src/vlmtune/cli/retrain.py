"""``vlmtune retrain SPEC``: one scheduled retraining job (see ``vlmtune.schedule``).

Exit 0: promoted, not promoted, or skipped (no new data; another job of the spec running);
exit 1: failed after every retry (the champion is untouched); exit 2: an invalid spec.
"""

from __future__ import annotations

import argparse
import sys

from vlmtune.errors import VlmtuneError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vlmtune retrain",
        description="Retrain when the spec's trigger root has new data; gate and promote.")
    parser.add_argument("spec", help="a retrain spec YAML, or a card name in recipes/schedule/")
    args = parser.parse_args(argv)
    from vlmtune.schedule.job import run_job
    from vlmtune.schedule.spec import load_spec

    try:
        spec = load_spec(args.spec)
        outcome = run_job(spec, echo=lambda text: print(text, flush=True))
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2
    return outcome.exit_code
