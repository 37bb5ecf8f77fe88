"""Shared fixtures: the location of the read-only shared data, and small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """`$DINO_DATA_DIR`, else `../shared/data` beside the repository; None when absent."""
    candidate = Path(os.environ.get("DINO_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    return candidate if candidate.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is not there (a user's fresh clone)."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared data folder not found (set DINO_DATA_DIR or place it at ../shared/data)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
