"""Conformance tests need the real checkpoints: point IMGCOMPRESS_SHARED at ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    value = os.environ.get("IMGCOMPRESS_SHARED")
    if not value:
        pytest.skip("IMGCOMPRESS_SHARED is not set: conformance tests need ../shared")
    path = Path(value)
    if not (path / "checkpoints").is_dir():
        pytest.fail(f"IMGCOMPRESS_SHARED={value} has no checkpoints/ folder; point it at ../shared")
    return path
