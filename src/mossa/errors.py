"""The user-facing error type.

`MossaError` is raised only for what the user can fix (bad input, unknown names, a missing
model file, no network, a full or read-only disk: `StorageError`). The CLI prints it as one
line on stderr and exits with code 2; anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import difflib


class MossaError(ValueError):
    """Something the user asked for is wrong; the message says where, what, and the fix."""


class StorageError(MossaError):
    """A write failed for lack of space or permission; what was finished before it is kept."""


def unknown_name_error(kind: str, name: str, available: list[str], where: str) -> MossaError:
    """The error for a name no registry knows, closest available names first."""
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listing = ", ".join(available[:12]) + (", ..." if len(available) > 12 else "")
    return MossaError(f"unknown {kind} {name!r} in {where}{hint} (available: {listing})")


__all__ = ["MossaError", "StorageError", "unknown_name_error"]
