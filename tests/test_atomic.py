"""The one atomic file writer: whole new content or the old file untouched, and no temporary file left behind."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cxrcore.atomic import atomic_write


def test_atomic_write_replaces_and_keeps_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "table.csv"
    assert atomic_write(path, lambda stream: stream.write("a,b\n1,2\n")) == path  # creates the parent folder
    assert path.read_text() == "a,b\n1,2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    def half_then_fail(stream) -> None:
        stream.write("half a new")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "a,b\n1,2\n"  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]  # no temporary file left

    atomic_write(path, lambda stream: stream.write(b"\x00\x01"), binary=True)
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]
