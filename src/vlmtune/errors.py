"""The errors vlmtune raises on purpose; the CLI prints them without a traceback."""

from __future__ import annotations


class VlmtuneError(Exception):
    """Base class: a problem the user can fix from the message alone."""


class ConfigError(VlmtuneError):
    """A config value is invalid; the message names the key."""


class DataError(VlmtuneError):
    """A dataset record or file is invalid.

    ``reason`` is a stable code (``missing_image``, ``bad_json`` ...); ``file`` and ``line``
    locate the record (line is 1-based, or the record's index in a JSON array).
    """

    def __init__(self, message: str, *, reason: str = "invalid", file: str | None = None,
                 line: int | None = None, hint: str | None = None) -> None:
        self.reason, self.file, self.line, self.hint = reason, file, line, hint
        where = f"{file}:{line}: " if file and line is not None else (f"{file}: " if file else "")
        text = f"{where}[{reason}] {message}"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class CheckpointError(VlmtuneError):
    """A checkpoint is missing, incomplete or does not match the run."""


class StageError(VlmtuneError):
    """A pipeline stage cannot run (its inputs are missing, or it failed)."""
