"""Griffe extension: a class's special methods are not part of its documented API.

Griffe counts ``__post_init__`` or ``__reduce__`` as public, so the API reference would list
them on every dataclass. They are left out of the documented model here (the code is not
touched), except ``__call__`` (calling an object is its API) and ``__init__`` (merged into
the class's own entry). Marking them private would not do: a class rendered where a package
re-exports it is an alias, whose members griffe rebuilds with their visibility unset.
"""

from __future__ import annotations

from typing import Any

import griffe

SHOWN = frozenset({"__init__", "__call__"})


class HideSpecialMembers(griffe.Extension):
    """Drop the special members of every class from the docs, but ``__init__`` and ``__call__``."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        """Remove the class's dunder members once they are loaded."""
        special = [
            name
            for name in cls.members
            if name.startswith("__") and name.endswith("__") and name not in SHOWN
        ]
        for name in special:
            cls.del_member(name)
