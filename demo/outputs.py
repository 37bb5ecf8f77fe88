"""Files that the demo's responses hand to Gradio: a new folder per response, files written once and never again.

Gradio saves images returned as arrays under a hash of their bytes, writing the file in place each time: two
users given the same picture at once (the same search, the same sample photo) share one path, and a response
being written truncates the file that another client is downloading (truncated downloads; the server's h11
"Too much data for declared Content-Length"). Files the handler writes inside Gradio's cache are served as they
are, so each response writes its own, atomically, into a folder nobody else uses. Gradio deletes them with its
other temporary files (the page's ``delete_cache``: a day after they were written, and when the server stops).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dino.atomic import atomic_output_path

__all__ = ["ResponseFiles", "response_cache"]

FOLDER_PREFIX = "dino-demo-"
# Gradio's own format for output images: small, and decoded by every current browser.
IMAGE_FORMAT = "webp"


def response_cache() -> Path:
    """Gradio's cache folder (``$GRADIO_TEMP_DIR`` or the system's temporary folder's ``gradio``), created."""
    import gradio as gr

    folder = Path(gr.utils.get_upload_folder())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ResponseFiles:
    """A fresh folder in Gradio's cache for one response's files.

    Args:
        cache: Where the folder is made; :func:`response_cache` when omitted.
    """

    def __init__(self, cache: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=cache if cache is not None else response_cache()))
        self._names: set[str] = set()

    def path(self, name: str) -> Path:
        """A new file name in the folder (for writers that take a path); a name is given out only once.

        Raises:
            ValueError: `name` was already given out for this response.
        """
        if name in self._names or Path(name).name != name:
            raise ValueError(f"{name!r}: not a new plain file name in this response")
        self._names.add(name)
        return self.folder / name

    def image(self, picture: np.ndarray | Image.Image, name: str) -> str:
        """`picture` (uint8 array or PIL image) saved as ``name.webp``, atomically; its path."""
        target = self.path(f"{name}.{IMAGE_FORMAT}")
        image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))
        with atomic_output_path(target) as temporary:
            image.save(temporary, format=IMAGE_FORMAT.upper())
        return str(target)
