"""The demo's defaults and settings, importable without Gradio (``dino --help`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from dino.runtime import Runtime

__all__ = ["DemoSettings"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# Uploads above this are refused by the server before any handler runs.
MAX_UPLOAD_SIZE = "50mb"
# Each tab's model work goes through a queue of its own (one forward pass at a time per tab by default: on a
# laptop CPU more only slow each other), so that a long video or a large photo never holds up a quick search.
DEFAULT_CONCURRENCY = 1
QUEUE_MAX_SIZE = 64
# The queues, by endpoint (Copy check's two buttons share one: both use the copy-detection descriptor).
CONCURRENCY_GROUPS = {
    "attention": "attention",
    "search": "search",
    "copy_check": "copy",
    "copy_search": "copy",
    "video": "video",
}
# `--port 0` asks for the first free port from Gradio's first (7860), as `launch(server_port=None)` picks it.
ANY_FREE_PORT = 0
# Patch tokens one network input may make in the demo, below the core's 8192 (dino.features.DEFAULT_MAX_TOKENS):
# attention costs grow with the square of the tokens, and the demo serves several users on one machine. 6400 holds
# a square photo at the largest input size (640) with patch 8 (80×80) and the paper's 854×480 video frames with
# patch 8 (106×60); a 10000×20 strip makes about 100,000 at the smallest size (224), and is refused before any
# resizing.
DEMO_MAX_TOKENS = 6400
# Uploaded images with more pixels than this are refused from their header, before decoding (an 8000×6000 photo,
# 48 MP, takes about a second to decode; PIL's own bomb guard lets up to 179 MP through).
MAX_PHOTO_PIXELS = 50_000_000
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
# Side of the square sample pictures under each upload (the page carries them inline, as small JPEGs).
SAMPLE_THUMBNAIL_SIDE = 64


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
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def runtime(self) -> Runtime:
        """How every tab runs the backbone: on :attr:`device`, ``auto`` precision (the demo applies the model, it
        reports no protocol numbers), decoding in the serving process, no progress bars, the demo's token budget."""
        from dino.runtime import Runtime  # torch: the settings are read by `dino --help`, which must not load it

        return Runtime(device=str(self.device), num_workers=0, progress=False, max_tokens=DEMO_MAX_TOKENS)
