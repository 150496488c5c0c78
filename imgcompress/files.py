"""Atomic file writes: a temp file beside the target, then a rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The permissions a plain ``open`` gives a new file here (0666 less the umask)."""
    return 0o666 & ~_umask()


def temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file in ``path``'s folder, with the permissions a plain ``open`` would give
    (mkstemp makes files 0600), for writing and then `os.replace`-ing onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = temp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
