"""vlmtune: one-command fine-tuning workflows for vision-language models."""

__version__ = "0.1.0"
