"""Where mossa keeps what outlives a study: converted model weights and downloaded data sets.

Shared by the rooms that cache (models: GGUF conversions; tasks: hub data sets); it imports no
other room.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$MOSSA_CACHE`, else the user's cache dir for mossa."""
    env = os.environ.get("MOSSA_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mossa"))


__all__ = ["cache_root"]
