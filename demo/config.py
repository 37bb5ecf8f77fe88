"""The demo's defaults and settings, importable without Gradio (``dino --help`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["DemoSettings"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# Uploads above this are refused by the server before any handler runs.
MAX_UPLOAD_SIZE = "50mb"
# Model work is serialised through one queue: on a laptop CPU two forward passes at once only slow both.
DEFAULT_CONCURRENCY = 1
QUEUE_MAX_SIZE = 64
# Videos are cut to this many frames (about 6 s at 8 fps); label propagation costs one forward per frame.
DEFAULT_MAX_VIDEO_FRAMES = 48
# Frames are shrunk to this short side before propagation (the app resizes to 480 anyway) to keep
# decoding and the overlay video light for large uploads.
VIDEO_SHORT_SIDE = 480
OUTPUT_VIDEO_FPS_FALLBACK = 8.0
MAX_VIDEO_FPS = 120.0
# SPEC §10 reference input size and threshold, the Attention tab's defaults.
ATTENTION_SIZE = 480
ATTENTION_THRESHOLD = 0.6
SEARCH_RESULTS = 8
# A colour mask upload with more distinct colours than this is almost certainly a photo or a JPEG.
MAX_MASK_OBJECTS = 20


@dataclass
class DemoSettings:
    """What :func:`build_demo` was given, kept for :func:`launch_demo` and the page text."""

    weights: str
    device: torch.device
    cache_dir: Path
    max_video_frames: int
    concurrency_limit: int
    gallery: list[Path] = field(default_factory=list)
    index_source: str = ""
    copy_threshold: float = float("nan")
    served_folders: list[Path] = field(default_factory=list)
