"""Issue 25: a newcomer's first hour. Splits that cannot leak, defaults that fit the run, one
vocabulary across commands, results others can read, and near-miss names that suggest the right
one. Each test failed against the code before its fix."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssamba.cli import main
from ssamba.fileio import atomic_write_json, atomic_write_text, staged_folder


def one_error_line(err: str, *needles: str) -> str:
    """The single ``error: ...`` line of ``err``; it names every needle."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------- item 4: the umask
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writers_and_staged_folders_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "a.txt", "x")
        js = atomic_write_json(tmp_path / "sub" / "b.json", {"a": 1})
        with staged_folder(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    assert mode(text) == mode(js) == 0o666 & ~umask
    assert mode(tmp_path / "model") == 0o777 & ~umask
    assert mode(tmp_path / "model" / "w.bin") == 0o666 & ~umask
