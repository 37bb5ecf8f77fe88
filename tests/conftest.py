"""Shared fixtures: the location of the read-only shared data, and small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's ResNet-18, randomly initialised (seed 0), saved as a plain torchvision state dict: a ResNet
    weights file as users bring them (no trained ResNet is available offline)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


def write_images(folder: Path, count: int, seed: int = 0, start: int = 0) -> list[Path]:
    """Small random PNGs of two sizes (so thumbnails give several same-size batches), named 000.png, 001.png, …"""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (32 + 16 * (i % 2), 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def make_images():
    """The :func:`write_images` factory."""
    return write_images


@pytest.fixture
def single_thread():
    """Tiny inputs: one thread avoids OpenMP spin costs on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Real photos of the shared data that the ResNet verbs' tests run on (all about 512 px, distinct scenes).
SHARED_PHOTOS = ("fruits.jpg", "baboon.jpg", "home.jpg", "orange.jpg", "messi5.jpg", "butterfly.jpg")


@pytest.fixture
def shared_photos(shared_data: Path) -> list[Path]:
    """A few real photos (`SHARED_PHOTOS`) from ``images/opencv`` of the shared data; skips when it is absent."""
    paths = [shared_data / "images" / "opencv" / name for name in SHARED_PHOTOS]
    if not all(path.is_file() for path in paths):
        pytest.skip("the shared photos (images/opencv) are not there")
    return paths
