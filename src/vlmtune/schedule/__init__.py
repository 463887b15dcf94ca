"""Scheduled retraining: ``vlmtune retrain SPEC`` (one idempotent job) and the cron / systemd /
Kubernetes entries that run it (``vlmtune schedule …``).

Everything up to the "no new data" decision imports only the standard library and PyYAML, so
a scheduled no-op answers in well under a second; the pipeline itself runs in a subprocess.
"""
