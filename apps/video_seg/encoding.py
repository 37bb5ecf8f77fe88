"""The overlay video: H.264 (yuv420p, MP4 with the index first) through PyAV, which browsers play; OpenCV's
MPEG-4 Part 2 (``mp4v``) with a warning where PyAV or its H.264 encoder is missing.

Colours are converted with OpenCV's BT.601 limited-range ``BGR2YUV_I420`` (exact rounding; FFmpeg's default
swscale path shifts flat grey 90 to 86–89 on the way back) and the stream is tagged BT.601 (SMPTE 170M,
limited range), so that players decode it with the same matrix instead of guessing BT.709 for HD sizes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

__all__ = ["FALLBACK_CODEC", "H264_ENCODERS", "VideoWriter", "h264_encoder"]

# PyAV's wheels ship FFmpeg with libx264; libopenh264 is the BSD-licensed encoder some builds carry instead.
H264_ENCODERS = ("libx264", "libopenh264")
# x264's constant-quality factor: 18 is visually lossless (the mask PNGs are the exact output, this is a preview).
X264_CRF = 18
FALLBACK_CODEC = "mp4v"
# FFmpeg's AVCOL_SPC/PRI/TRC_SMPTE170M (BT.601 525) and AVCOL_RANGE_MPEG (limited range): what OpenCV's I420
# conversion computes.
_SMPTE170M = 6
_LIMITED_RANGE = 1


def h264_encoder() -> str | None:
    """The first of :data:`H264_ENCODERS` that PyAV's FFmpeg can encode with here; None without PyAV or one."""
    try:
        import av
    except ImportError:
        return None
    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name
    return None


class VideoWriter:
    """Writes BGR uint8 frames (H, W, 3), all of one size, to an MP4 file; use it as a context manager.

    Attributes:
        codec: ``"h264"`` or :data:`FALLBACK_CODEC`.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, width: int, height: int) -> None:
        self.path = Path(path)
        self.size = (width, height)
        self._count = 0
        encoder = h264_encoder()
        if encoder is not None:
            self._open_h264(encoder, fps)
            return
        reason = (
            "PyAV is not installed" if importlib.util.find_spec("av") is None else "PyAV's FFmpeg has no H.264 encoder"
        )
        print(
            f"warning: {reason} (pip install av); {self.path.name} is MPEG-4 Part 2 ({FALLBACK_CODEC}), which "
            "browsers may not play",
            file=sys.stderr,
        )
        self.codec = FALLBACK_CODEC
        self._opencv = cv2.VideoWriter(os.fspath(self.path), cv2.VideoWriter_fourcc(*FALLBACK_CODEC), fps, self.size)
        if not self._opencv.isOpened():
            raise RuntimeError(f"OpenCV cannot write {FALLBACK_CODEC} video to {self.path}")

    def _open_h264(self, encoder: str, fps: float) -> None:
        import av

        self.codec = "h264"
        self._rate = Fraction(fps).limit_denominator(1001)  # 29.97002997 → 30000/1001
        # faststart moves the index before the frames, so browsers start playing before the whole file arrives.
        self._container = av.open(os.fspath(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream(encoder, rate=self._rate)
        # yuv420p halves the chroma resolution: both sides must be even (odd frames get their last row/column
        # repeated).
        width, height = self.size
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        if encoder == "libx264":
            self._stream.options = {"crf": str(X264_CRF)}
        context = self._stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = _SMPTE170M
        context.color_range = _LIMITED_RANGE

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR frame of the writer's size."""
        if frame.shape != (self.size[1], self.size[0], 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: got a frame of shape {frame.shape} {frame.dtype}, expected "
                f"{self.size[1]}x{self.size[0]}x3 uint8"
            )
        if self.codec != "h264":
            self._opencv.write(frame)
            return
        import av

        height, width = frame.shape[:2]
        even = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        picture = av.VideoFrame.from_ndarray(cv2.cvtColor(even, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        picture.pts, picture.time_base = self._count, 1 / self._rate
        self._container.mux(self._stream.encode(picture))
        self._count += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        if self.codec != "h264":
            self._opencv.release()
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
