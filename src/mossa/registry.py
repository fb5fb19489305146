"""Strict name registries (peft style): plain dicts filled by one checked register call each.

Shared by the stages that register things by name (models, task sources); it touches nothing else.
"""

from __future__ import annotations

import re
from typing import TypeVar

T = TypeVar("T")


def register_unique(table: dict[str, T], name: str, entry: T, *, kind: str, pattern: str, allowed: str) -> T:
    """Add `entry` under `name`, refusing a name that does not match `pattern` or is taken.

    Raises
    ------
    ValueError
        A programmer error (registration happens at import time), naming the rule broken.
    """
    if not re.fullmatch(pattern, name):
        raise ValueError(f"{kind} name {name!r} must be {allowed}")
    if name in table:
        raise ValueError(f"{kind} {name!r} is registered already")
    table[name] = entry
    return entry
