"""`dino search` on a ResNet: the descriptor is GeM (p = 4) over the layer4 grid of the thumbnail, checked against
torchvision on the same weights; index, query, update and eval as a user runs them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.models._utils import IntermediateLayerGetter

from apps.retrieval.revisitop import compute_map, protocol_ground_truth
from dino.checkpoint import load_backbone
from dino.cli import main
from dino.data.transforms import thumbnail_transform
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.search.index import ImageIndex

RESNET = ["--weights", "random:resnet18", "--device", "cpu", "--dtype", "fp32", "--workers", "0", "--no-progress"]


def torchvision_gem(images: list[Image.Image], size: int = 224) -> np.ndarray:
    """L2-normalised GeM (p = 4, clamp 1e-6) over torchvision's layer4 of ``random:resnet18``'s weights, each image
    thumbnailed alone (SPEC §13's preprocessing): the descriptor computed without the project's search code."""
    reference = torchvision.models.resnet18()
    reference.load_state_dict(load_backbone("random:resnet18").state_dict(), strict=False)
    layer4 = IntermediateLayerGetter(reference.eval(), {"layer4": "out"})
    rows = []
    with torch.no_grad():
        for image in images:
            grid = layer4(thumbnail_transform(size)(image).unsqueeze(0))["out"]
            rows.append(grid.clamp(min=1e-6).pow(4).mean(dim=(2, 3)).pow(0.25))
    return F.normalize(torch.cat(rows), dim=-1).numpy()


def test_the_resnet_descriptor_is_gem_over_layer4(shared_photos) -> None:
    model = load_backbone("random:resnet18")
    recipe = DescriptorRecipe.retrieval(backbone=model)
    assert recipe == DescriptorRecipe(pooling="gem", preprocessing="thumbnail", size=224, gem_p=4.0)
    extractor = DescriptorExtractor(model, recipe, runtime=Runtime(dtype="fp32", progress=False))
    descriptors = extractor.extract(shared_photos[:3])
    assert descriptors.shape == (3, 512)
    expected = torchvision_gem([Image.open(path).convert("RGB") for path in shared_photos[:3]])
    np.testing.assert_allclose(descriptors, expected, rtol=1e-5, atol=1e-5)
    # --pooling cls keeps meaning the global embedding: a ResNet's average-pooled feature.
    pooled = DescriptorExtractor(model, DescriptorRecipe.retrieval(pooling="cls"), runtime=extractor.features.runtime)
    with torch.no_grad():
        average = model(thumbnail_transform(224)(Image.open(shared_photos[0]).convert("RGB")).unsqueeze(0))
    np.testing.assert_allclose(pooled.extract(shared_photos[:1]), F.normalize(average, dim=-1).numpy(), atol=1e-5)
    # GeM pools layer4: the layer3 grid (256 channels) would not fit a 512-d descriptor.
    model.grid_layer = "layer3"
    with pytest.raises(ValueError, match=r"resnet18's layer3 grid \(patch size 16\) has 256 channels, not the 512"):
        DescriptorExtractor(model, recipe)


def test_index_query_update_with_a_resnet(shared_photos, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in shared_photos[:5]:
        shutil.copy(photo, folder / photo.name)
    out = tmp_path / "photos.idx"
    assert main(["search", "index", str(folder), "--out", str(out), *RESNET]) == 0
    assert "indexed 5 images (512-d, Flat)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["pooling"] == "gem"
    backbone = manifest["backbone"]
    assert (backbone["weights"], backbone["arch"], backbone["patch_size"]) == ("random:resnet18", "resnet18", 32)

    queries = sorted(folder.iterdir())
    # The index's own backbone (random:resnet18, from the manifest) describes the queries.
    assert main(["search", "query", *map(str, queries), "--index", str(out), "-k", "2", "--json"]) == 0
    for query, result in zip(queries, json.loads(capsys.readouterr().out), strict=True):
        assert result["hits"][0]["path"] == str(query) and result["hits"][0]["score"] == pytest.approx(1, abs=1e-5)
        assert result["hits"][1]["score"] < 1 - 1e-4

    shutil.copy(shared_photos[5], folder / shared_photos[5].name)
    assert main(["search", "update", str(folder), "--index", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert len(ImageIndex.load(out)) == 6
    added = folder / shared_photos[5].name
    assert main(["search", "query", str(added), "--index", str(out), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["hits"][0]["path"] == str(added)


@pytest.mark.slow
def test_eval_with_a_resnet_on_a_revisitop_mini_dataset(mini_revisitop, tmp_path, capsys) -> None:
    root, config = mini_revisitop
    out = tmp_path / "results.json"
    assert main(["search", "eval", "--dataset", "mini", "--root", str(root), "--out", str(out), *RESNET]) == 0
    capsys.readouterr()
    results = json.loads(out.read_text())
    assert results["recipe"]["pooling"] == "gem" and results["database_images"] == 34
    jpg = root / "mini" / "jpg"
    database = torchvision_gem([Image.open(jpg / f"{i}.jpg").convert("RGB") for i in config["imlist"]])
    queries = torchvision_gem([Image.open(jpg / f"{i}.jpg").convert("RGB") for i in config["qimlist"]])
    ranks = np.argsort(-(database @ queries.T), axis=0)
    for protocol in ("medium", "hard"):
        expected = compute_map(ranks, protocol_ground_truth(config["gnd"], protocol))[0]
        assert results["results"][protocol]["mAP"] == pytest.approx(expected, abs=1e-6)
