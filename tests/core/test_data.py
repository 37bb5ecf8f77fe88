"""open_image on odd and corrupt files, folder listing and datasets, protocol transforms."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dino.data import ImageFileDataset, ImageFolderDataset, ImageLoadError, list_images, open_image
from dino.data.masks import MAX_MASK_PIXELS, read_indexed_png, read_label_mask, voc_palette, write_indexed_png
from dino.data.transforms import CropToMultiple, Thumbnail, knn_transform, make_transform

EXIF_ORIENTATION = 0x0112


def test_exif_orientation_is_applied(tmp_path) -> None:
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, displayed rotated 90° clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    opened = open_image(tmp_path / "rotated.jpg")
    assert opened.size == (20, 40) and opened.mode == "RGB"


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 200, (200, 200, 200)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white background
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("LA", (0, 128), (128, 128, 128)),  # black at 50% alpha over white
    ],
)
def test_modes_become_8bit_rgb(tmp_path, mode: str, value, expected) -> None:
    path = tmp_path / ("img.tif" if mode == "CMYK" else "img.png")
    Image.new(mode, (4, 3), value).save(path)
    opened = open_image(path)
    assert opened.mode == "RGB" and opened.size == (4, 3)
    assert opened.getpixel((1, 1)) == pytest.approx(expected, abs=1)


def test_palette_with_transparency(tmp_path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    opened = open_image(tmp_path / "p.png")
    assert opened.getpixel((0, 0)) == (255, 255, 255) and opened.getpixel((1, 0)) == (0, 255, 0)


def test_truncated_and_non_image_files_name_the_file(tmp_path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg: cannot decode image"):
        open_image(tmp_path / "cut.jpg")
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="notes.jpg: not an image file"):
        open_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        open_image(tmp_path / "absent.png")


def _make_tree(root) -> None:
    for name, size in (("cats/a.jpg", 30), ("cats/sub/b.PNG", 40), ("dogs/c.jpeg", 50), ("dogs/.hidden.jpg", 10)):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size)).save(path, format="PNG" if name.lower().endswith("png") else "JPEG")
    (root / "dogs" / "readme.txt").write_text("not an image")


def test_list_images_and_datasets(tmp_path) -> None:
    _make_tree(tmp_path)
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["cats/a.jpg", "cats/sub/b.PNG", "dogs/c.jpeg"]
    assert [p.name for p in list_images(tmp_path / "cats", recursive=False)] == ["a.jpg"]
    assert [p.name for p in list_images(tmp_path, extensions=["png"])] == ["b.PNG"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")

    folder = ImageFolderDataset(tmp_path, transform=knn_transform(resize=32, crop=28))
    assert folder.classes == ["cats", "dogs"] and folder.targets == [0, 0, 1]
    tensor, label = folder[2]
    assert tensor.shape == (3, 28, 28) and label == 1
    flat = ImageFileDataset(tmp_path / "cats")
    assert len(flat) == 2 and flat[1][0].size == (40, 40)


def test_protocol_transforms() -> None:
    image = Image.new("RGB", (640, 480), (124, 116, 104))  # ≈ ImageNet mean -> ≈ 0 after normalising
    knn = knn_transform()(image)
    assert knn.shape == (3, 224, 224) and knn.abs().max() < 0.02
    assert make_transform("square", 480, patch_size=16)(image).shape == (3, 480, 480)
    assert make_transform("short-side", 200, patch_size=16)(image).shape == (3, 192, 256)  # 200x266 cropped to /16
    assert make_transform("thumbnail", 320, patch_size=8)(image).shape == (3, 240, 320)
    assert Thumbnail(1000)(image).size == (640, 480)  # thumbnails never enlarge
    assert CropToMultiple(16)(torch.zeros(3, 37, 50)).shape == (3, 32, 48)
    with pytest.raises(ValueError, match="unknown preprocessing"):
        make_transform("center")


def test_voc_palette_and_indexed_png_round_trip(tmp_path) -> None:
    palette = voc_palette()
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[255].tolist() == [224, 224, 192]  # the VOC void colour
    labels = np.array([[0, 1, 2], [255, 1, 0]], dtype=np.uint8)
    write_indexed_png(tmp_path / "m.png", labels)
    assert np.array_equal(read_indexed_png(tmp_path / "m.png"), labels)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P" and image.getpalette()[3:6] == [128, 0, 0]


def test_unreadable_masks_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="none.png: no such mask file"):
        read_indexed_png(tmp_path / "none.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.png: not an image file"):
        read_indexed_png(tmp_path / "notes.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageLoadError, match="rgb.png: expected an indexed"):
        read_indexed_png(tmp_path / "rgb.png")


def test_label_masks_keep_palette_indices_and_number_flat_colours(tmp_path) -> None:
    indexed = np.array([[0, 3, 3], [0, 0, 7]], dtype=np.uint8)
    write_indexed_png(tmp_path / "davis.png", indexed)
    assert np.array_equal(read_label_mask(tmp_path / "davis.png"), indexed)  # palette indices are object ids
    # Colours are numbered in sorted (R, G, B) order: (0,128,0) < (128,0,0) < (255,255,255); black is 0.
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0], rgb[0, 1], rgb[1, 2] = (255, 255, 255), (128, 0, 0), (0, 128, 0)
    Image.fromarray(rgb).save(tmp_path / "flat.png")
    assert read_label_mask(tmp_path / "flat.png").tolist() == [[3, 2, 0], [0, 0, 1]]
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "flat_rgba.png")
    assert read_label_mask(tmp_path / "flat_rgba.png").tolist() == [[3, 2, 0], [0, 0, 1]]
    # Grey masks: white on black is object 1; levels 0, 3, 7 become 0, 1, 2.
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8), mode="L").save(tmp_path / "white.png")
    assert read_label_mask(tmp_path / "white.png").tolist() == [[0, 1], [1, 0]]
    Image.fromarray(np.array([[0, 3], [7, 3]], np.uint8), mode="L").save(tmp_path / "grey.png")
    labels = read_label_mask(tmp_path / "grey.png")
    assert labels.tolist() == [[0, 1], [2, 1]] and labels.dtype == np.uint8
    Image.fromarray(np.array([[0, 1000], [0, 60000]], np.uint16)).save(tmp_path / "deep.png")
    assert read_label_mask(tmp_path / "deep.png").tolist() == [[0, 1], [0, 2]]  # 16-bit levels are not clipped


def test_label_masks_refuse_photos_empty_masks_and_bombs_in_one_line(tmp_path) -> None:
    def refused(path, error=ValueError, match="", **options) -> str:
        with pytest.raises(error, match=match) as caught:
            read_label_mask(path, **options)
        message = str(caught.value)
        assert "\n" not in message and message.startswith(options.get("display_name", str(path)))
        return message

    noisy = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.jpg")
    refused(tmp_path / "photo.jpg", match="colours; a mask needs one flat colour per object")
    # JPEG compression smears flat colours: two colour blocks become dozens of colours.
    blocks = np.zeros((32, 32, 3), np.uint8)
    blocks[4:14, 4:14], blocks[18:28, 18:28] = (200, 30, 30), (30, 200, 30)
    Image.fromarray(blocks).save(tmp_path / "blocks.jpg", quality=75)
    refused(tmp_path / "blocks.jpg", match="save it as PNG, not JPEG")
    Image.fromarray(blocks).save(tmp_path / "blocks.png")
    assert read_label_mask(tmp_path / "blocks.png").max() == 2
    refused(tmp_path / "blocks.png", match="at most 1 objects", max_objects=1)
    write_indexed_png(tmp_path / "three.png", np.array([[1, 2, 3]], np.uint8))
    refused(tmp_path / "three.png", match="3 palette indices in use; at most 2", max_objects=2)
    write_indexed_png(tmp_path / "empty.png", np.zeros((4, 4), np.uint8))
    refused(tmp_path / "empty.png", match="the mask is empty")
    Image.new("RGB", (4, 4)).save(tmp_path / "black.png")
    refused(tmp_path / "black.png", match="the mask is empty")
    refused(tmp_path / "none.png", FileNotFoundError, "no such mask file")
    (tmp_path / "notes.png").write_text("not an image")
    refused(tmp_path / "notes.png", ImageLoadError, "not an image file")
    (tmp_path / "cut.png").write_bytes((tmp_path / "blocks.png").read_bytes()[:-40])
    refused(tmp_path / "cut.png", ImageLoadError, "cannot decode the mask")
    refused(tmp_path / "notes.png", ImageLoadError, "upload.png: not an image file", display_name="upload.png")

    # Headers alone: a 7000x7000 mask is over the cap; 20000x20000 is over PIL's decompression-bomb limit.
    def png_header(width: int, height: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")

    assert 7000 * 7000 > MAX_MASK_PIXELS
    (tmp_path / "big.png").write_bytes(png_header(7000, 7000))
    refused(tmp_path / "big.png", ImageLoadError, "7000x7000 pixels, more than a mask may have")
    (tmp_path / "bomb.png").write_bytes(png_header(20000, 20000))
    assert 20000 * 20000 > 2 * Image.MAX_IMAGE_PIXELS  # PIL raises DecompressionBombError when opening it
    refused(tmp_path / "bomb.png", ImageLoadError, "too many pixels for a mask")
    with pytest.raises(ValueError, match="max_objects must lie in 1..255"):
        read_label_mask(tmp_path / "blocks.png", max_objects=256)
