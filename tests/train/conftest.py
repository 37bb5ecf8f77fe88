"""Fixtures for training tests: a folder of small synthetic images and a tiny, fast config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino.train.config import TrainConfig, load_config


def write_images(folder: Path, count: int, size: int = 48, seed: int = 0) -> Path:
    """`count` random-texture RGB images of varied colours; deterministic."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        base = rng.integers(0, 256, size=3)
        noise = rng.integers(-40, 40, size=(size, size, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:03d}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images", 16)


def tiny_overrides(data: Path, output: Path, **overrides: str) -> list[str]:
    """The `key=value` settings of :func:`tiny_config`, as `dino train` takes them."""
    items = {
        "model.arch": "vit_tiny",
        "model.out_dim": "64",
        "model.head_hidden_dim": "32",
        "model.head_bottleneck_dim": "16",
        "crops.global_crops_size": "32",
        "crops.local_crops_size": "16",
        "crops.local_crops_number": "2",
        "optim.epochs": "3",
        "optim.warmup_epochs": "1",
        "optim.batch_size_per_gpu": "4",
        "run.num_workers": "0",
        "run.device": "cpu",
        "run.precision": "fp32",
        "run.progress": "false",
        "run.log_every": "1",
        "run.data_path": f"[{data}]",
        "run.output_dir": str(output),
    }
    items.update(overrides)
    return [f"{key}={value}" for key, value in items.items()]


def tiny_config(data: Path, output: Path, **overrides: str) -> TrainConfig:
    """A ViT-tiny/16 on 32-px global and 16-px local crops with a 64-prototype head: a step takes ~0.1 s."""
    return load_config(overrides=tiny_overrides(data, output, **overrides))


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def make_argv():
    """`dino train` arguments for the run of :func:`tiny_config`."""

    def argv(data: Path, output: Path, **overrides: str) -> list[str]:
        return ["train", *tiny_overrides(data, output, **overrides)]

    return argv


__all__ = ["TrainConfig", "tiny_config", "tiny_overrides", "write_images"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Training steps on a shared 2-core machine are far faster with one intra-op thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
