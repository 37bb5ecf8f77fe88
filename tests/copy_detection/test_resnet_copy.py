"""`dino copy-detect` on a ResNet: the descriptor is GeM (p = 4) over the layer4 grid of the square resize,
whitened as for a ViT; an exact copy is found, and the ViT-only verifier is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.transforms import InterpolationMode

from dino import cli
from dino.checkpoint import load_backbone
from dino.data.transforms import square_transform
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.search.index import ImageIndex

RUNTIME = ["--device", "cpu", "--dtype", "fp32", "--workers", "0", "--no-progress"]


def test_the_copy_descriptor_of_a_resnet_is_gem_over_layer4(shared_photos) -> None:
    model = load_backbone("random:resnet18")
    recipe = DescriptorRecipe.copy_detection(backbone=model)
    assert (recipe.pooling, recipe.preprocessing, recipe.size, recipe.gem_p) == ("gem", "square", 320, 4.0)
    raw = DescriptorExtractor(model, recipe, runtime=Runtime(dtype="fp32", progress=False)).extract_raw(
        shared_photos[:2]
    )
    reference = torchvision.models.resnet18()
    reference.load_state_dict(model.state_dict(), strict=False)
    layer4 = IntermediateLayerGetter(reference.eval(), {"layer4": "out"})
    resize = square_transform(320, interpolation=InterpolationMode.BICUBIC)
    with torch.no_grad():
        images = torch.stack([resize(Image.open(path).convert("RGB")) for path in shared_photos[:2]])
        grid = layer4(images)["out"]
    assert grid.shape == (2, 512, 10, 10)  # 320 / 32
    expected = grid.clamp(min=1e-6).pow(4).mean(dim=(2, 3)).pow(0.25)  # not normalised before whitening (SPEC §12)
    np.testing.assert_allclose(raw, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_index_and_find_an_exact_copy_with_a_resnet(shared_photos, tmp_path, capsys) -> None:
    collection, whitening, queries = tmp_path / "collection", tmp_path / "whitening", tmp_path / "queries"
    for folder, photos in ((collection, shared_photos[:4]), (whitening, shared_photos[4:])):
        folder.mkdir()
        for photo in photos:
            shutil.copy(photo, folder / photo.name)
    queries.mkdir()
    copy = queries / "copy_of_home.jpg"
    shutil.copy(collection / "home.jpg", copy)
    argv = ["copy-detect", "index", str(collection), "--out", str(tmp_path / "index"), "--weights", "random:resnet18"]
    assert cli.main([*argv, "--whitening", str(whitening), *RUNTIME]) == 0
    assert "4 images" in capsys.readouterr().out
    index = ImageIndex.load(tmp_path / "index")
    assert index.recipe.pooling == "gem" and index.whitening is not None and index.whitening.in_dim == 512

    out = tmp_path / "copies.json"
    find = ["copy-detect", "find", str(copy), "--index", str(tmp_path / "index"), "--threshold", "-1"]
    assert cli.main([*find, "--out", str(out), *RUNTIME]) == 0  # the backbone comes from the index
    capsys.readouterr()
    hits = json.loads(out.read_text())["results"][0]["copies"]
    assert Path(hits[0]["path"]).name == "home.jpg" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(hit["score"] < 1 - 1e-4 for hit in hits[1:])

    assert cli.main([*find, "--verify", "dino", *RUNTIME]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (
        "dino copy-detect: error: --verify dino matches a ViT's middle-block patch tokens, which resnet18 does not "
        "have; with a ResNet use --verify sift (or no verification)"
    )


@pytest.mark.slow
def test_eval_with_a_resnet(photos: Path, tmp_path, capsys) -> None:
    bench, distractors = tmp_path / "bench", tmp_path / "distractors"
    make = ["copy-detect", "make-benchmark", "--images", str(photos), "--out", str(bench), "--originals", "2"]
    make += ["--distractors-out", str(distractors), "--strong-per-original", "1"]
    assert cli.main(make) == 0
    out = tmp_path / "result.json"
    argv = ["copy-detect", "eval", "--copydays", str(bench), "--distractors", str(distractors), "--size", "64"]
    assert cli.main([*argv, "--weights", "random:resnet18", "--out", str(out), *RUNTIME]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["recipe"]["pooling"] == "gem" and result["recipe"]["size"] == 64
    blocks = {row["block"]: row for row in result["blocks"]}
    # The `original` block's queries are the database's originals themselves: each finds itself first.
    assert len(blocks) == 20 and blocks["original"]["mAP"] == 1.0
    assert cli.main([*argv, "--weights", "random:resnet18", "--verify", "dino", *RUNTIME]) == 2
    assert "--verify dino matches a ViT's" in capsys.readouterr().err
