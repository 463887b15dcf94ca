"""``vlmtune app RUN_OR_MODEL [--port 7860] [--host 127.0.0.1]``: the web page.

    vlmtune app outputs/demo/3fa2c1d0e9          # then open http://127.0.0.1:7860

A photo and a question; the base and the tuned answers side by side, streamed; the run's
headline metrics and a link to its MLflow run. Needs the ``app`` extra (``make app``).
"""

from __future__ import annotations

import os
import sys

from vlmtune.cli.chat import parser
from vlmtune.errors import VlmtuneError


def main(argv: list[str]) -> int:
    p = parser("vlmtune app", "web page: base and tuned answers side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("vlmtune: error: vlmtune app needs Gradio: pip install -e '.[app]' (or make app)",
              file=sys.stderr)
        return 2
    from vlmtune.app.session import resolve_target
    from vlmtune.app.web import serve

    try:
        target = resolve_target(args.target, args.tracking_uri, args.device)
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2
    print(f"vlmtune app: http://{args.host}:{args.port}", flush=True)
    serve(target, host=args.host, port=args.port, max_new_tokens=args.max_new_tokens,
          temperature=args.temperature)
    return 0
