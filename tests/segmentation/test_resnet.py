"""Segmentation with a ResNet: no attention (refused in one line), normalized-cut masks on its dense grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apps.segmentation.evaluate import evaluate_masks
from apps.segmentation.inference import ImageGrid, iter_attention, iter_grids
from apps.segmentation.ncut import ncut_foreground, ncut_foreground_features
from apps.segmentation.visualize import photo_ncut_views
from apps.segmentation.voc import voc_samples
from dino.cli import main
from dino.models.resnet import ResNetBackbone
from dino.runtime import Runtime

CPU = Runtime(device="cpu", progress=False, batch_size=2)


def resnet18(layer: str = "layer3") -> ResNetBackbone:
    model = ResNetBackbone(18).eval()
    model.grid_layer = layer
    return model


def test_the_cut_of_keys_is_the_cut_of_their_concatenated_heads() -> None:
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 1 + 4 * 5, 6, generator=generator)
    keys[:, 1:][:, 7:13] += 3.0  # a block of similar patches
    features = keys[:, 1:].permute(1, 0, 2).reshape(20, 18)
    np.testing.assert_array_equal(ncut_foreground(keys, (4, 5)), ncut_foreground_features(features, (4, 5)))


def test_a_grid_gives_its_cells_row_major_to_the_cut() -> None:
    grid = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    item = ImageGrid(0, torch.zeros(3, 32, 48), grid)
    assert item.grid == (2, 3)
    torch.testing.assert_close(item.cut_features()[4], grid[1, 1])
    with pytest.raises(ValueError, match="the features hold 6 cells but the grid is 3×3"):
        ncut_foreground_features(item.cut_features(), (3, 3))


def test_attention_of_a_resnet_is_refused_before_any_image_is_read() -> None:
    with pytest.raises(ValueError, match=r"^ResNet-18 has no self-attention, so it has no \[CLS\] attention maps"):
        next(iter_attention(resnet18(), ["no-such-image.png"]))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_ncut_on_a_resnet_grid_gives_a_mask_of_the_photo_size(layer: str) -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8))
    views = photo_ncut_views(resnet18(layer), photo, size=64, device="cpu")
    stride = 16 if layer == "layer3" else 32
    # 64 × 92 after the short-side resize, cropped to whole cells.
    assert views.grid == (64 // stride, 92 // stride)
    assert views.mask.shape == (90, 130) and views.mask.dtype == bool
    assert views.overlay().shape == (90, 130, 3)


def test_dino_attention_refuses_a_resnet_in_one_line(
    resnet18_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(photo)
    for extra, hint in (([], "use --ncut for"), (["--ncut", "--mask"], "use --ncut --no-mask for")):
        assert (
            main(["attention", str(photo), "--out", str(tmp_path / "out"), "--weights", str(resnet18_file), *extra])
            == 2
        )
        error = capsys.readouterr().err.strip()
        assert error.startswith("dino attention: error: ResNet-18 has no self-attention") and "\n" not in error
        assert hint in error and "dino seg-eval --method ncut" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dino_attention_ncut_with_a_resnet_writes_the_mask_at_the_photo_size(
    shared_data: Path, resnet18_file: Path, tmp_path: Path
) -> None:
    photo = shared_data / "images" / "imageio" / "kodim03.png"
    argv = ["attention", str(photo), "--out", str(tmp_path), "--weights", str(resnet18_file), "--ncut", "--no-progress"]
    assert main(argv) == 0
    folder = tmp_path / "kodim03"
    assert sorted(path.name for path in folder.iterdir()) == ["img.png", "ncut-mask.png", "ncut-overlay.png"]
    with (
        Image.open(photo) as original,
        Image.open(folder / "ncut-mask.png") as mask,
        Image.open(folder / "img.png") as img,
    ):
        assert mask.mode == "P" and mask.size == original.size
        assert set(np.unique(np.asarray(mask))) <= {0, 1}
        assert img.size == (480, 480)  # the reference's square input: 30×30 cells of layer3


def test_seg_eval_scores_ncut_masks_of_a_resnet_and_refuses_the_attention_methods(
    voc_root: Path, voc_size: int, resnet18_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["seg-eval", "--voc", str(voc_root), "--size", str(voc_size), "--weights", str(resnet18_file)]
    for method in ("diffusion", "attention"):
        assert main([*argv, "--out", str(tmp_path / method), "--method", method]) == 2
        error = capsys.readouterr().err
        assert f"--method {method} needs them: use --method ncut" in error
    assert main([*argv, "--out", str(tmp_path / "ncut"), "--method", "ncut", "--no-progress"]) == 0
    protocol = json.loads((tmp_path / "ncut" / "results.json").read_text())["protocol"]
    assert protocol["method"] == "ncut" and protocol["patch_size"] == 16 and "num_heads" not in protocol
    assert (protocol["arch"], protocol["grid_layer"], protocol["grid_stride"], protocol["grid_dim"]) == (
        "resnet18",
        "layer3",
        16,
        256,
    )


def test_evaluate_masks_with_a_resnet_runs_on_its_grid(voc_root: Path, voc_size: int) -> None:
    samples = voc_samples(voc_root, "val", "object")
    result = evaluate_masks(resnet18("layer4"), samples, method="ncut", size=voc_size, runtime=CPU)
    assert result.images == 2 and result.protocol["grid_layer"] == "layer4"
    grids = [item.grid for item in iter_grids(resnet18("layer4"), [s.image for s in samples], voc_size, True, CPU)]
    assert grids == [(2, 2), (2, 2)]
