"""``video-seg --video`` outputs: the H.264 overlay (and its mp4v fallback) and a browser playing it, the progress
total, frames that change size mid-stream and what --overwrite may replace. The propagation is stubbed where it
is not the point."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

import apps.video_seg.video as video
from apps.video_seg.encoding import VideoWriter, h264_encoder
from dino.data.masks import read_indexed_png, write_indexed_png


def _overlays(size: tuple[int, int], count: int = 5) -> list[np.ndarray]:
    """Overlay frames as segment_video writes them: grey, a yellow block, the object tinted red."""
    height, width = size
    frames = []
    for t in range(count):
        frame = np.full((height, width, 3), 90, np.uint8)
        frame[30:60, 20 + 8 * t : 50 + 8 * t] = (40, 200, 240)
        labels = np.zeros((height, width), np.uint8)
        labels[28:62, 18 + 8 * t : 52 + 8 * t] = 1
        frames.append(video.overlay(frame, labels))
    return frames


def _decoded(path) -> tuple[object, list[np.ndarray]]:
    """The stream and its frames in BGR, through BT.601 limited range as the stream is tagged."""
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    frames = [cv2.cvtColor(f.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2BGR_I420) for f in container.decode(stream)]
    container.close()
    return stream, frames


@pytest.mark.skipif(h264_encoder() is None, reason="PyAV with an H.264 encoder (libx264/libopenh264) is not installed")
def test_overlay_is_h264_yuv420p_with_the_index_first_and_close_to_the_frames(tmp_path) -> None:
    frames = _overlays((96, 128))
    with VideoWriter(tmp_path / "overlay.mp4", 30000 / 1001, 128, 96) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.codec == "h264"
    stream, decoded = _decoded(tmp_path / "overlay.mp4")
    context = stream.codec_context
    assert (context.name, context.pix_fmt, stream.width, stream.height) == ("h264", "yuv420p", 128, 96)
    assert stream.average_rate == Fraction(30000, 1001) and len(decoded) == len(frames)
    # faststart: the index (moov) precedes the frames (mdat), so browsers play while downloading.
    data = (tmp_path / "overlay.mp4").read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    # Lossy but close: crf 18 and an exact colour conversion give ~0.1 grey levels of mean error here (FFmpeg's
    # default conversion shifted flat grey by up to 4 levels, 2.6 on average); chroma edges cost a few levels.
    errors = np.abs(np.stack(decoded).astype(int) - np.stack(frames))
    assert errors.mean() < 1 and np.percentile(errors, 99) <= 4


@pytest.mark.skipif(h264_encoder() is None, reason="PyAV with an H.264 encoder (libx264/libopenh264) is not installed")
def test_odd_sized_frames_are_padded_to_even_for_yuv420p(tmp_path) -> None:
    frames = [np.full((21, 37, 3), 90, np.uint8) for _ in range(3)]
    for frame in frames:
        frame[:, -1] = (0, 0, 250)  # the last column is repeated into the padding
    with VideoWriter(tmp_path / "odd.mp4", 10, 37, 21) as writer:
        for frame in frames:
            writer.write(frame)
    stream, decoded = _decoded(tmp_path / "odd.mp4")
    assert (stream.width, stream.height) == (38, 22)
    assert np.abs(decoded[0][:20, :30].astype(int) - 90).max() <= 1  # flat grey stays grey
    assert decoded[0][10, 37, 2] > 200  # the red column, repeated


def test_without_an_h264_encoder_the_overlay_is_mp4v_with_a_one_line_warning(tmp_path, monkeypatch, capsys) -> None:
    import apps.video_seg.encoding as encoding

    monkeypatch.setattr(encoding, "h264_encoder", lambda: None)
    frames = _overlays((96, 128), 3)
    with VideoWriter(tmp_path / "overlay.mp4", 10, 128, 96) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.codec == "mp4v"
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("warning: ")
    assert "overlay.mp4 is MPEG-4 Part 2 (mp4v), which browsers may not play" in warning
    capture = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    assert fourcc in ("mp4v", "FMP4") and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3  # MPEG-4 Part 2
    capture.release()


def _copy_first_mask(frames, first_labels, *args, **kwargs):
    """A stand-in propagation: every frame gets the first frame's labels (consumes the frames as the real one)."""
    iterator = iter(frames)
    next(iterator)
    for _ in iterator:
        yield first_labels


@pytest.fixture
def stub_propagation(monkeypatch):
    monkeypatch.setattr(video, "segment_frames", _copy_first_mask)


def test_progress_total_is_the_containers_frame_count_capped_by_max_frames(
    tmp_path, make_clip, monkeypatch, stub_propagation
) -> None:
    clip = tmp_path / "clip.mp4"
    write_indexed_png(tmp_path / "first.png", make_clip(clip, frames=4))
    assert video.video_properties(clip) == (10.0, 4)
    bars = []

    def recording_tqdm(iterable, **options):
        bars.append(options)
        return iterable

    monkeypatch.setattr(video, "tqdm", recording_tqdm)
    for index, max_frames in enumerate((None, 2, 9)):
        result = video.segment_video(clip, tmp_path / "first.png", tmp_path / f"o{index}", None, max_frames=max_frames)
        assert result.frames == min(4, max_frames or 4)
    # The bar counts frames with the first (copied, not propagated) one already done.
    assert [(bar["total"], bar["initial"]) for bar in bars] == [(4, 1), (2, 1), (4, 1)]
    monkeypatch.setattr(video, "video_properties", lambda path: (25.0, None))  # a container that does not say
    video.segment_video(clip, tmp_path / "first.png", tmp_path / "o3", None)
    assert bars[-1]["total"] is None


def test_a_frame_size_change_mid_stream_fails_leaving_nothing(tmp_path, make_clip, monkeypatch, stub_propagation):
    clip = tmp_path / "clip.mp4"
    write_indexed_png(tmp_path / "first.png", make_clip(clip))

    def resized_midway(path, max_frames=None):
        yield from (
            np.zeros((96, 128, 3), np.uint8),
            np.zeros((96, 128, 3), np.uint8),
            np.zeros((96, 112, 3), np.uint8),
        )

    monkeypatch.setattr(video, "read_video_frames", resized_midway)
    with pytest.raises(ValueError) as caught:
        video.segment_video(clip, tmp_path / "first.png", tmp_path / "out", None)
    assert str(caught.value) == (
        f"{clip}: frame 2 is 112x96 but the first frame is 128x96; the decoder changed the frame size mid-stream "
        "(re-encode it at one size)"
    )
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone too


def test_overwrite_replaces_an_earlier_output_but_not_a_folder_holding_more(
    tmp_path, make_clip, stub_propagation
) -> None:
    clip = tmp_path / "clip.mp4"
    first = make_clip(clip)
    write_indexed_png(tmp_path / "first.png", first)
    out = tmp_path / "out"
    video.segment_video(clip, tmp_path / "first.png", out, None)
    write_indexed_png(out / "masks" / "00007.png", first)  # a stale frame of a longer earlier video
    with pytest.raises(FileExistsError, match="folder is not empty; pass --overwrite"):
        video.segment_video(clip, tmp_path / "first.png", out, None)
    video.segment_video(clip, tmp_path / "first.png", out, None, overwrite=True)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert np.array_equal(read_indexed_png(out / "masks" / "00002.png"), first)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds more than a --video output \(notes.txt\); choose another"):
        video.segment_video(clip, tmp_path / "first.png", out, None, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


CHROMIUM = Path(os.environ.get("DINO_CHROMIUM", "/usr/bin/chromium"))
# Resolves to [event, width, height, seconds played] once the browser has loaded (or refused) the video.
_PLAY = """async (source) => {
    const video = document.createElement("video");
    video.muted = true;
    video.src = source;
    const event = await new Promise((done) => {
        video.onloadeddata = () => done("loaded");
        video.onerror = () => done("error");
        setTimeout(() => done("timeout"), 20000);
    });
    if (event !== "loaded") return [event, 0, 0, 0];
    await video.play();
    await new Promise((done) => setTimeout(done, 500));
    return [event, video.videoWidth, video.videoHeight, video.currentTime];
}"""


@pytest.mark.skipif(h264_encoder() is None, reason="PyAV with an H.264 encoder (libx264/libopenh264) is not installed")
@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (set DINO_CHROMIUM)")
def test_a_browser_plays_the_h264_overlay_and_not_the_mp4v_fallback(tmp_path, monkeypatch) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
    import apps.video_seg.encoding as encoding

    frames = _overlays((96, 128), 10)
    for name in ("h264.mp4", "mp4v.mp4"):
        if name == "mp4v.mp4":
            monkeypatch.setattr(encoding, "h264_encoder", lambda: None)
        with VideoWriter(tmp_path / name, 10, 128, 96) as writer:
            for frame in frames:
                writer.write(frame)
    (tmp_path / "index.html").write_text("<!doctype html><title>overlay</title>")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto((tmp_path / "index.html").as_uri())
            played = page.evaluate(_PLAY, "h264.mp4")
            refused = page.evaluate(_PLAY, "mp4v.mp4")
        finally:
            browser.close()
    assert played[:3] == ["loaded", 128, 96] and played[3] > 0
    assert refused[0] == "error"  # why the overlay is H.264: browsers do not decode MPEG-4 Part 2


def test_an_earlier_output_set_aside_by_a_killed_overwrite_is_restored_or_removed(
    tmp_path, make_clip, stub_propagation
) -> None:
    clip = tmp_path / "clip.mp4"
    write_indexed_png(tmp_path / "first.png", make_clip(clip))
    out = tmp_path / "out"
    video.segment_video(clip, tmp_path / "first.png", out, None)
    # Killed between atomic_output_dir's two renames: the earlier output is aside and `out` is gone.
    out.rename(tmp_path / ".out.old-1234abcd")
    with pytest.raises(FileExistsError, match="folder is not empty; pass --overwrite"):
        video.segment_video(clip, tmp_path / "first.png", out, None)
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4"]  # put back, not lost
    # Killed after them, while deleting the set-aside copy: it is removed once the new output is in place.
    (tmp_path / ".out.old-5678abcd" / "masks").mkdir(parents=True)
    video.segment_video(clip, tmp_path / "first.png", out, None, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "first.png", "out"]
