"""Label propagation on a ResNet's dense grid: the grid's cells play the patches, its stride the patch size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apps.video_seg.pipeline import patch_features, segment_frames
from apps.video_seg.preprocess import FramePreprocessing, bgr_to_tensor, target_size
from dino.cli import main
from dino.cli.arguments import apply_grid_layer
from dino.models.resnet import ResNetBackbone

SEQUENCE = "blackswan"
FRAMES = 3


@pytest.fixture
def davis_first_frames(shared_data: Path, tmp_path: Path) -> Path:
    """A DAVIS-layout folder with the first frames (and all their annotations) of one real 854×480 sequence."""
    source = shared_data / "davis2016-dev"
    if not (source / "JPEGImages" / "480p" / SEQUENCE).is_dir():
        pytest.skip(f"{source} has no {SEQUENCE}")
    root = tmp_path / "davis"
    for kind in ("JPEGImages", "Annotations"):
        folder = root / kind / "480p" / SEQUENCE
        folder.mkdir(parents=True)
        for path in sorted((source / kind / "480p" / SEQUENCE).iterdir())[:FRAMES]:
            (folder / path.name).symlink_to(path)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{SEQUENCE}\n")
    return root


@pytest.mark.parametrize("stride", [16, 32])
def test_davis_frames_are_whole_grid_cells(stride: int) -> None:
    # The reference's rule (short side 480, long side floored to a multiple of 64) already gives whole cells.
    rule = FramePreprocessing().for_patch(stride)
    assert rule == FramePreprocessing()
    height, width = target_size(480, 854, rule.short_side, rule.multiple)
    assert (height, width) == (480, 832) and height % stride == 0 and width % stride == 0


@pytest.mark.parametrize(("layer", "grid"), [("layer3", (4, 6)), ("layer4", (2, 3))])
def test_patch_features_are_the_chosen_grid_in_row_major_order(layer: str, grid: tuple[int, int]) -> None:
    model = ResNetBackbone(18).eval()
    model.grid_layer = layer
    frame = torch.randn(3, 64, 96)
    features = patch_features(model, frame)
    expected = getattr(model.forward_features(frame[None]), layer)[0]  # (C, h, w)
    assert features.shape == (grid[0] * grid[1], model.grid_dim)
    torch.testing.assert_close(features, expected.permute(1, 2, 0).reshape(-1, model.grid_dim))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_a_repeated_frame_gets_its_labels_back_on_either_grid(layer: str) -> None:
    model = ResNetBackbone(18).eval()
    model.grid_layer = layer
    frame = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    rule = FramePreprocessing(short_side=64)
    assert tuple(bgr_to_tensor(frame, rule).shape) == (3, 64, 128)
    first = np.zeros((64, 128), dtype=np.uint8)
    first[:, 64:] = 1  # whole cells of both grids
    (labels,) = segment_frames([frame, frame], first, model, preprocessing=rule)
    # Each cell's own feature is its best match; the bilinear upsampling blurs the border by up to one cell.
    assert labels.shape == (64, 128)
    assert (labels[:, : 64 - model.patch_size] == 0).all() and (labels[:, 64 + model.patch_size :] == 1).all()


@pytest.mark.slow
def test_video_seg_on_a_resnet18_file_writes_davis_pngs_and_names_its_grid(
    resnet18_file: Path, davis_first_frames: Path, tmp_path: Path
) -> None:
    for layer, stride, grid_dim in (("layer3", 16, 256), ("layer4", 32, 512)):
        out = tmp_path / layer
        argv = ["video-seg", "--davis", str(davis_first_frames), "--weights", str(resnet18_file), "--out", str(out)]
        default = layer == "layer3"  # the default for a ResNet
        assert main([*argv, "--no-progress", *([] if default else ["--grid-layer", layer])]) == 0
        frames = sorted((out / SEQUENCE).glob("*.png"))
        assert [path.stem for path in frames] == [f"{i:05d}" for i in range(FRAMES)]
        for path in frames:
            with Image.open(path) as png:
                assert png.mode == "P" and png.size == (854, 480)
        settings = json.loads((out / "video_seg.json").read_text())["settings"]
        assert settings["patch_size"] == stride and settings["embed_dim"] == 512
        assert settings["backbone"] == {
            "arch": "resnet18",
            "grid_layer": layer,
            "grid_stride": stride,
            "grid_dim": grid_dim,
        }


def test_grid_layer_is_refused_for_a_vit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["video-seg", "--video", "x.mp4", "--first-mask", "m.png", "--out", str(tmp_path / "out")]
    assert main([*argv, "--weights", "random:vit_tiny/16", "--grid-layer", "layer3"]) == 2
    assert "--grid-layer layer3 chooses a ResNet's grid; a ViT has one" in capsys.readouterr().err


def test_the_dense_apps_take_layer3_unless_grid_layer_or_patch_size_say_otherwise() -> None:
    model = ResNetBackbone(18)
    apply_grid_layer(model, None)
    assert (model.grid_layer, model.patch_size) == ("layer3", 16)
    apply_grid_layer(model, "layer4")
    assert (model.grid_layer, model.patch_size) == ("layer4", 32)
    apply_grid_layer(model, None, patch_size=32)  # --patch-size 32 loaded layer4: kept
    assert model.grid_layer == "layer4"
    with pytest.raises(ValueError, match="--grid-layer layer3 and --patch-size 32 \\(layer4\\) disagree"):
        apply_grid_layer(model, "layer3", patch_size=32)
