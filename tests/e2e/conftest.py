"""End-to-end tests run the real CLI. Cases that need the real checkpoints read them from
IMGCOMPRESS_SHARED (the ../shared folder) and are skipped without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    value = os.environ.get("IMGCOMPRESS_SHARED")
    if not value:
        pytest.skip("IMGCOMPRESS_SHARED is not set: this case needs the real checkpoints in ../shared")
    path = Path(value)
    if not (path / "checkpoints").is_dir():
        pytest.skip(f"IMGCOMPRESS_SHARED={value} has no checkpoints/ folder")
    return path
