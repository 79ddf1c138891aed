"""A table of named entries of one kind (attention kinds, feed-forward kinds), each registered once.

Config validation lists a registry's names (with did-you-mean), the accounting and the model look entries
up by name, and a test can add a toy entry and remove it again. A name registered twice is a programming
error, not a silent override.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from common.validation import one_of

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    def __init__(self, what: str, field: str):
        self.what = what  # "attention kind": how an entry is named in errors
        self.field = field  # "model.attention": the config field whose values are the names
        self._entries: dict[str, Entry] = {}

    def register(self, entry: Entry) -> Entry:
        """Add an entry under its `name` attribute; returns it, so it can decorate or assign."""
        name = entry.name
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> Entry:
        """The entry, or a ValueError whose text is the config field's one-line problem."""
        if name not in self._entries:
            raise ValueError(one_of(self.field, name, self.names())[0])
        return self._entries[name]

    def lookup(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def items(self) -> Iterator[tuple[str, Entry]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
