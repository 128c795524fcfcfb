"""One atomic file writer: a file is either whole (old or new content) or absent, never half-written."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], *, binary: bool = False) -> Path:
    """Call write(stream) on a temporary file next to `path`, then os.replace it into place (mode 0o644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"newline": ""})) as stream:
            write(stream)
        os.chmod(tmp, 0o644)  # mkstemp makes 0o600 files, unfriendly for user-visible outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
