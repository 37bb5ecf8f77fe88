"""`dino search` as a user runs it: index, query (table, JSON, contact sheet), update, whiten, eval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.retrieval.revisitop import compute_map, protocol_ground_truth
from dino.checkpoint import load_backbone, model_identity
from dino.cli import main
from dino.runtime import Runtime
from dino.search.descriptors import (
    DescriptorExtractor,
    DescriptorRecipe,
    fit_descriptor_whitening,
    load_descriptor_whitening,
)
from dino.search.index import ImageIndex
from dino.search.whitening import Whitening

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--weights", "random:vit_tiny/16", "--no-progress", "--workers", "0"]
QUIET = Runtime(progress=False, num_workers=0)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_index_query_update_as_a_user(tmp_path, capsys, make_images) -> None:
    write_images = make_images
    folder = tmp_path / "photos"
    images = write_images(folder, 5)
    out = tmp_path / "photos.idx"
    code, stdout, _ = _run(capsys, "search", "index", str(folder), "--out", str(out), *TINY)
    assert code == 0 and "indexed 5 images (192-d, Flat)" in stdout

    # --weights defaults to the weights recorded in the index.
    code, stdout, _ = _run(capsys, "search", "query", str(images[3]), "--index", str(out), "-k", "3", "--json")
    assert code == 0
    (result,) = json.loads(stdout)
    assert [hit["rank"] for hit in result["hits"]] == [1, 2, 3]
    assert result["hits"][0]["path"] == str(images[3]) and result["hits"][0]["score"] == pytest.approx(1, abs=1e-5)
    scores = [hit["score"] for hit in result["hits"]]
    assert scores == sorted(scores, reverse=True)

    sheet = tmp_path / "sheet.png"
    code, stdout, _ = _run(
        capsys, "search", "query", str(images[0]), str(images[1]), "--index", str(out), "-k", "4", "--sheet", str(sheet)
    )
    assert code == 0 and stdout.splitlines()[0] == str(images[0])
    assert stdout.splitlines()[1].split()[:2] == ["1", "1.0000"]
    with Image.open(sheet) as png:
        assert png.format == "PNG" and png.size == (5 * (160 + 12), 2 * (160 + 34 + 12))  # 1 + 4 columns, 2 rows
    query_bytes = images[0].read_bytes()  # a sheet written over a query would destroy it
    code, _, stderr = _run(capsys, "search", "query", str(images[0]), "--index", str(out), "--sheet", str(images[0]))
    assert code == 2 and "is also an input" in stderr and images[0].read_bytes() == query_bytes

    # A folder of queries: each image finds itself first.
    code, stdout, _ = _run(capsys, "search", "query", str(folder), "--index", str(out), "-k", "1", "--json")
    assert code == 0 and [r["hits"][0]["path"] for r in json.loads(stdout)] == [str(p) for p in images]

    images[0].unlink()
    added = write_images(folder / "new", 2, seed=3)
    code, stdout, _ = _run(capsys, "search", "update", str(folder), "--index", str(out), *TINY)
    assert code == 0 and "2 added, 0 updated, 1 removed, 4 unchanged" in stdout
    assert sorted(ImageIndex.load(out).paths) == sorted(map(str, [*images[1:], *added]))


def test_mismatched_and_corrupt_indexes_fail_cleanly(tmp_path, capsys, make_images) -> None:
    images = make_images(tmp_path / "photos", 3)
    out = tmp_path / "idx"
    assert _run(capsys, "search", "index", str(tmp_path / "photos"), "--out", str(out), *TINY)[0] == 0
    code, _, stderr = _run(
        capsys, "search", "query", str(images[0]), "--index", str(out), "--weights", "random:vit_small/16"
    )
    assert code == 2 and "was built with weights 'random:vit_tiny/16'" in stderr and "Traceback" not in stderr
    assert "backbone embed_dim: index 192, given 384" in stderr

    (out / "index.faiss").write_bytes(b"garbage")
    code, _, stderr = _run(capsys, "search", "query", str(images[0]), "--index", str(out), *TINY)
    assert code == 2 and f"{out}/index.faiss: its sha256 differs from the one manifest.json recorded" in stderr
    assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = _run(capsys, "search", "query", str(images[0]), "--index", str(tmp_path / "photos"), *TINY)
    assert code == 2 and "not a dino image index" in stderr


def test_unusable_images_are_skipped_listed_and_retried(tmp_path, capsys, make_images) -> None:
    """One bad file used to abort the whole 'search index' / 'search update' run."""
    folder = tmp_path / "photos"
    images = make_images(folder, 3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "idx"
    code, stdout, stderr = _run(capsys, "search", "index", str(folder), "--out", str(out), *TINY)
    assert code == 0 and "indexed 3 images" in stdout
    assert f"skipped 2 of 5 images, listed in {out}/manifest.json:" in stderr
    assert f"  {folder}/broken.jpg: cannot decode image" in stderr and "Traceback" not in stderr
    assert sorted(ImageIndex.load(out).skipped) == [str(folder / "broken.jpg"), str(folder / "empty.png")]

    code, _, stderr = _run(capsys, "search", "index", str(folder), "--out", str(tmp_path / "strict"), "--on-error",
                           "fail", *TINY)  # fmt: skip
    assert code == 2 and stderr.strip().splitlines()[-1].startswith("dino search: error: ")
    assert "broken.jpg: cannot decode image" in stderr and not (tmp_path / "strict").exists()

    shutil.copy(images[0], folder / "broken.jpg")  # repaired: the next update tries it again
    code, stdout, stderr = _run(capsys, "search", "update", str(folder), "--index", str(out), *TINY)
    assert code == 0 and "1 added, 0 updated, 0 removed, 3 unchanged, 1 skipped" in stdout
    assert f"skipped 1 of 5 images, listed in {out}/manifest.json:" in stderr
    assert ImageIndex.load(out).skipped.keys() == {str(folder / "empty.png")}
    (folder / "empty.png").unlink()  # gone: no longer listed, and the index is rewritten to say so
    code, stdout, stderr = _run(capsys, "search", "update", str(folder), "--index", str(out), *TINY)
    assert code == 0 and stdout.strip().endswith("0 added, 0 updated, 0 removed, 4 unchanged")
    assert "skipped" not in stderr
    assert ImageIndex.load(out).skipped == {}


@pytest.mark.parametrize("verb", ["index", "query", "update", "whiten", "eval"])
def test_help_renders(verb, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["search", verb, "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0 and text.startswith(f"usage: dino search {verb}")
    assert "%%" not in text and "%(" not in text  # no doubled or unexpanded format specifiers


def test_whiten_then_index_with_whitening(tmp_path, capsys, make_images) -> None:
    make_images(tmp_path / "whitening-set", 30, seed=7)
    images = make_images(tmp_path / "photos", 4)
    whitening = tmp_path / "w.npz"
    argv_whiten_gem = [
        "search", "whiten", str(tmp_path / "whitening-set"), "--out", str(whitening), "--pooling", "gem", "--dim", "16",
        *TINY,
    ]  # fmt: skip
    code, stdout, stderr = _run(capsys, *argv_whiten_gem)
    assert code == 0 and "192-d -> 16-d, fitted on 30 images" in stdout and "cannot estimate" not in stderr
    _, _, stderr = _run(capsys, "search", "whiten", str(tmp_path / "whitening-set"), "--out", str(whitening), *TINY)
    assert "30 images cannot estimate 192 directions" in stderr
    assert _run(capsys, *argv_whiten_gem)[0] == 0  # back to the gem/16-d whitening used below
    out = tmp_path / "idx"
    argv = ["search", "index", str(tmp_path / "photos"), "--out", str(out), "--whitening", str(whitening), *TINY]
    code, _, stderr = _run(capsys, *argv)  # fitted for gem pooling, asked for the default cls
    assert code == 2 and "fitted for descriptor recipe" in stderr
    assert _run(capsys, *argv, "--pooling", "gem")[0] == 0
    index = ImageIndex.load(out)
    assert index.dim == 16 and index.manifest["whitening"] is not None and index.recipe.pooling == "gem"
    code, stdout, _ = _run(capsys, "search", "query", str(images[2]), "--index", str(out), "-k", "1", "--json")
    assert json.loads(stdout)[0]["hits"][0]["path"] == str(images[2])


def test_a_whitening_fitted_by_either_app_serves_both(tmp_path, make_images) -> None:
    """One metadata layout for fitted whitenings (dino.search.descriptors); the older copy-detection one still reads."""
    images = make_images(tmp_path / "set", 6)
    model, other = load_backbone("random:vit_tiny/16"), load_backbone("random:vit_tiny/8")
    recipe = DescriptorRecipe.copy_detection(64)
    fitted = fit_descriptor_whitening(DescriptorExtractor(model, recipe, runtime=QUIET), images, source="set")
    fitted.save(tmp_path / "w.npz")
    assert load_descriptor_whitening(tmp_path / "w.npz", model, recipe).metadata["source"] == "set"
    with pytest.raises(ValueError, match="w.npz: this whitening was fitted on descriptors of another backbone"):
        load_descriptor_whitening(tmp_path / "w.npz", other, recipe)
    with pytest.raises(ValueError, match="w.npz: this whitening was fitted for descriptor recipe"):
        load_descriptor_whitening(tmp_path / "w.npz", model, DescriptorRecipe.retrieval())
    legacy = Whitening.fit(
        np.random.default_rng(0).normal(size=(8, 384)),
        metadata={"backbone": "random", "backbone_sha256": model_identity(model)["sha256"], "recipe": recipe.as_dict()},
    )
    legacy.save(tmp_path / "legacy.npz")
    assert load_descriptor_whitening(tmp_path / "legacy.npz", model, recipe).in_dim == 384
    with pytest.raises(ValueError, match="another backbone \\('random'\\)"):
        load_descriptor_whitening(tmp_path / "legacy.npz", other, recipe)


def _independent_medium_map(root: Path, config: dict, crop: bool) -> tuple[float, float]:
    """Medium and hard mAP from DescriptorExtractor + numpy + compute_map, without the eval module."""
    model = load_backbone("random:vit_tiny/16")
    extractor = DescriptorExtractor(model, DescriptorRecipe.retrieval(), runtime=QUIET)
    jpg = root / "mini" / "jpg"
    database = extractor.extract([jpg / f"{i}.jpg" for i in config["imlist"]])
    queries = [Image.open(jpg / f"{i}.jpg").convert("RGB") for i in config["qimlist"]]
    if crop:
        queries = [image.crop(tuple(g["bbx"])) for image, g in zip(queries, config["gnd"], strict=True)]
    sim = database @ extractor.extract(queries).T
    ranks = np.argsort(-sim, axis=0)
    return tuple(compute_map(ranks, protocol_ground_truth(config["gnd"], p))[0] for p in ("medium", "hard"))


@pytest.mark.slow
def test_eval_on_a_revisitop_mini_dataset(mini_revisitop, tmp_path, capsys) -> None:
    root, config = mini_revisitop
    out = tmp_path / "results.json"
    code, stdout, _ = _run(capsys, "search", "eval", "--dataset", "mini", "--root", str(root), "--out", str(out), *TINY)
    assert code == 0
    results = json.loads(out.read_text())
    assert results["queries"] == 2 and results["database_images"] == len(config["imlist"]) == 34
    assert results["recipe"] == DescriptorRecipe.retrieval().as_dict() and results["crop_queries"] is False
    medium, hard = _independent_medium_map(root, config, crop=False)
    assert results["results"]["medium"]["mAP"] == pytest.approx(medium, abs=1e-9)
    assert results["results"]["hard"]["mAP"] == pytest.approx(hard, abs=1e-9)
    # Even random weights rank frames of the query's own video well above the 4 distractor videos.
    positives, database = 6, 34 - 5
    assert medium > 2 * positives / database
    assert f">> mini: mAP E: {100 * results['results']['easy']['mAP']:.2f}, M: {100 * medium:.2f}" in stdout
    assert all(0 <= v <= 1 for p in ("easy", "medium", "hard") for v in results["results"][p]["mP@k"].values())

    code, _, _ = _run(
        capsys, "search", "eval", "--dataset", "mini", "--root", str(root), "--out", str(out), "--crop-queries", *TINY
    )
    cropped = json.loads(out.read_text())
    assert cropped["crop_queries"] is True
    assert cropped["results"]["medium"]["mAP"] == pytest.approx(_independent_medium_map(root, config, crop=True)[0])


def test_eval_without_data_explains_the_layout(tmp_path, capsys) -> None:
    code, _, stderr = _run(capsys, "search", "eval", "--dataset", "roxford5k", "--root", str(tmp_path), *TINY)
    assert code == 2 and "gnd_roxford5k.pkl: no such file; expected the revisitop layout" in stderr


@pytest.mark.slow
def test_torchrun_shards_merge_into_one_index(tmp_path, make_images) -> None:
    images = make_images(tmp_path / "photos", 7)
    out = tmp_path / "sharded.idx"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "dino.cli",
        "search",
        "index",
        str(tmp_path / "photos"),
        "--out",
        str(out),
        *TINY,
        "--batch-size",
        "2",
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("indexed 7 images") == 1  # only rank 0 writes the index
    sharded = ImageIndex.load(out)
    assert sharded.paths == [str(p) for p in images]
    reference = DescriptorExtractor(load_backbone("random:vit_tiny/16"), DescriptorRecipe.retrieval(), runtime=QUIET)
    np.testing.assert_allclose(sharded.vectors(), reference.extract(images), atol=1e-5)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    shutil.rmtree(out)
