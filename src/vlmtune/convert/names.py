"""Match module names as a loaded model sees them to tensor names as a directory stores them.

transformers 5 saves some multimodal models under legacy names (``language_model.model.…``
for ``model.language_model.…``, ``model.layers.…`` for Qwen2-VL's
``model.language_model.layers.…``) and renames them while loading. A peft adapter names
modules the loaded way; a streamed merge reads the stored names. Both are reduced to a
canonical form — the leading run of ``model`` / ``language_model`` components dropped — and
matched on it; an exact match always wins, and an ambiguous canonical form is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

from vlmtune.errors import CheckpointError

_WRAPPERS = {"model", "language_model"}


def canonical(name: str) -> str:
    parts = name.split(".")
    i = 0
    while i < len(parts) - 1 and parts[i] in _WRAPPERS:
        i += 1
    return ".".join(parts[i:])


class StoredNames:
    """Resolve a loaded-model parameter name to the stored tensor name."""

    def __init__(self, stored: Iterable[str]) -> None:
        self.stored = set(stored)
        self.by_canonical: dict[str, list[str]] = {}
        for name in self.stored:
            self.by_canonical.setdefault(canonical(name), []).append(name)

    def resolve(self, name: str) -> str:
        if name in self.stored:
            return name
        found = self.by_canonical.get(canonical(name), [])
        if len(found) != 1:
            what = "no stored tensor" if not found else f"several stored tensors {found}"
            raise CheckpointError(f"the adapter's {name!r} matches {what} in the base weights; "
                                  "is the adapter from this base model?")
        return found[0]
