"""The real checkpoints: tests that need them take the ``shared_dir`` fixture, which reads
IMGCOMPRESS_SHARED (the ../shared folder; a relative path is taken from where pytest starts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    value = os.environ.get("IMGCOMPRESS_SHARED")
    if not value:
        pytest.skip("IMGCOMPRESS_SHARED is not set: this case needs the real checkpoints in ../shared")
    path = Path(value).resolve()  # absolute: some code under test changes the working directory
    if not (path / "checkpoints").is_dir():
        pytest.fail(f"IMGCOMPRESS_SHARED={value} has no checkpoints/ folder; point it at ../shared")
    return path
