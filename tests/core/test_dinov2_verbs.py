"""Every `dino` verb, as a user calls it, on a random DINOv2 ViT-S/14 with 4 register tokens.

The backbone is ``random:dinov2_vits14_reg`` (patch 14, LayerScale, 4 registers, 37×37 position grid). About
half of the calls name it by that string, the other half by a weights FILE written once per module with
``torch.save(load_backbone("random:dinov2_vits14_reg").state_dict(), path)``, so the file-loading path
(architecture, patch size and registers inferred from the tensors) is exercised too. Everything goes through
``dino.cli.main([...])`` and checks the exit code and the files a user gets:

* ``features``: [CLS] (N, 384) and patch grids (N, H/14, W/14, 384), also at sizes that are not multiples of 14;
* ``attention``: per-head figures at the network input's size, the foreground and normalized-cut masks at the
  photo's own size;
* ``seg-eval``: attention and ncut methods on a tiny VOC layout, attention on a tiny DAVIS layout;
* ``search`` index / query / update / whiten / eval, and refusal (exit 2, no traceback) of an index built with
  another architecture, in both directions (no registers vs registers);
* ``copy-detect`` index / find (also ``--verify dino``) / make-benchmark / eval;
* ``video-seg`` on a DAVIS-layout folder and on a video file (masks at the frames' own sizes), ``video-eval``;
* ``knn``, ``linear`` (1 epoch, both input layouts), ``export``, ``info``, ``train`` (ViT-S/14, one step);
* ``demo``: the verb with the server launch replaced, its handlers, and the demo's adapters with the model.

Images are tiny (42 to 120 px) and several sides are not multiples of 14; everything runs on the CPU.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dino import cli
from dino.checkpoint import load_backbone
from dino.data.masks import read_indexed_png, write_indexed_png
from dino.runtime import Runtime
from dino.search.index import ImageIndex

REG = "random:dinov2_vits14_reg"
TINY = "random:vit_tiny/16"
DIM, PATCH, HEADS, REGISTERS = 384, 14, 6, 4
RUNTIME = ["--device", "cpu", "--workers", "0", "--no-progress"]
# Image sizes (width, height): multiples of 14, and not.
SIZES = [(112, 84), (100, 75), (56, 56)]


# ---------------------------------------------------------------------------- module fixtures
@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """One torch thread (see the root conftest): on a busy 2-core machine this file runs 3× faster."""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dinov2-verbs")


@pytest.fixture(scope="module")
def model():
    """The random ViT-S/14-reg4, built once for the tests that take a model."""
    backbone = load_backbone(REG)
    assert (backbone.patch_size, backbone.embed_dim, backbone.num_register_tokens) == (PATCH, DIM, REGISTERS)
    return backbone


@pytest.fixture(scope="module")
def weights_file(work: Path, model) -> str:
    """The same backbone as a backbone-only weights file."""
    path = work / "dinov2_vits14_reg_random.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def _noise(path: Path, width: int, height: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _smooth(path: Path, width: int, height: int, seed: int) -> Path:
    """A photo-like image: coarse colour blobs upsampled smoothly (crops and JPEG keep its look)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def photos(work: Path) -> list[Path]:
    """Three noise photos of the SIZES, in a folder of their own."""
    return [_noise(work / "photos" / f"img{i}.png", w, h, seed=i) for i, (w, h) in enumerate(SIZES)]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for path in sorted(folder.iterdir()):
        with Image.open(path) as image:
            sizes[path.name] = image.size
    return sizes


# ---------------------------------------------------------------------------- features
@pytest.mark.parametrize(
    ("preprocess", "size", "grid"),
    [
        ("knn", None, (16, 16)),  # resize 256, crop 224 = 16 × 14
        ("square", "70", (5, 5)),
        ("square", "60", (4, 4)),  # not a multiple of 14: 60 // 14
    ],
)
def test_features_patch_grid(photos, weights_file, tmp_path, capsys, preprocess, size, grid) -> None:
    out = tmp_path / "patch.npy"
    argv = ["features", str(photos[0].parent), "--out", str(out), "--what", "patch", "--preprocess", preprocess]
    argv += ["--size", size] if size else []
    code, stdout, stderr = _run(capsys, *argv, "--weights", weights_file, *RUNTIME)
    assert code == 0, stderr
    array = np.load(out)
    assert array.shape == (len(photos), *grid, DIM) and array.dtype == np.float32 and np.isfinite(array).all()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["patch_size"] == PATCH and sidecar["embed_dim"] == DIM and sidecar["shape"] == list(array.shape)
    assert sidecar["images"] == [str(p) for p in photos] and sidecar["weights"] == weights_file


def test_features_cls_and_short_side_grid(photos, tmp_path, capsys) -> None:
    out = tmp_path / "cls.npy"
    code, _, stderr = _run(capsys, "features", *map(str, photos), "--out", str(out), "--weights", REG, *RUNTIME)
    assert code == 0, stderr
    assert "randomly initialised weights" in stderr
    cls = np.load(out)
    assert cls.shape == (3, DIM) and np.isfinite(cls).all()
    # Same-size 100×75 photos, short side 70 (aspect kept): 93×70, cropped to 84×70 = a 5×6 grid.
    same = [_noise(tmp_path / "same" / f"{i}.png", 100, 75, seed=10 + i) for i in range(2)]
    out = tmp_path / "short.npy"
    argv = ["features", str(same[0].parent), "--out", str(out), "--what", "patch", "--preprocess", "short-side"]
    code, _, stderr = _run(capsys, *argv, "--size", "70", "--weights", REG, *RUNTIME)
    assert code == 0, stderr
    assert np.load(out).shape == (2, 5, 6, DIM)
    # A size under one patch is a one-line user error naming the 14-pixel patch.
    code, _, stderr = _run(
        capsys, "features", str(same[0]), "--out", str(tmp_path / "x.npy"), "--size", "10", "--weights", REG
    )
    assert code == 2 and "smaller than one 14-pixel patch" in stderr and "Traceback" not in stderr


# ---------------------------------------------------------------------------- attention
def test_attention_figures_and_masks(photos, weights_file, tmp_path, capsys) -> None:
    out = tmp_path / "attention"
    code, stdout, stderr = _run(
        capsys, "attention", str(photos[0].parent), "--out", str(out), "--size", "70", "--weights", weights_file,
        "--ncut", *RUNTIME,
    )  # fmt: skip
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["img0", "img1", "img2"]
    photo_masks = {"ncut-mask.png", "mask.png", "mask-overlay.png"}
    expected = {"img.png", "attn-mean.png", "summary.png", "mask_th0.6_heads.png"} | photo_masks
    expected |= {f"attn-head{j}.png" for j in range(HEADS)} | {f"mask_th0.6_head{j}.png" for j in range(HEADS)}
    for folder, photo in zip(sorted(out.iterdir()), photos, strict=True):
        sizes = _sizes(folder)
        assert set(sizes) == expected
        # The figures are at the network input's size, 70×70 (5×5 patches of 14); the masks at the photo's.
        assert {size for name, size in sizes.items() if name not in photo_masks | {"summary.png"}} == {(70, 70)}
        assert {sizes[name] for name in photo_masks} == {Image.open(photo).size}
        for name in ("ncut-mask.png", "mask.png"):
            assert set(np.unique(read_indexed_png(folder / name))) <= {0, 1}


def test_attention_keep_aspect_on_a_size_that_is_not_a_multiple_of_14(photos, tmp_path, capsys) -> None:
    out = tmp_path / "attention"
    photo = photos[1]  # 100×75
    argv = ["attention", str(photo), "--out", str(out), "--size", "60", "--keep-aspect"]
    code, _, stderr = _run(capsys, *argv, "--weights", REG, *RUNTIME)
    assert code == 0, stderr
    sizes = _sizes(out / "img1")
    assert "ncut-mask.png" not in sizes
    # Short side 60: 80×60, cropped to whole patches: 70×56; the foreground mask is at the photo's 100×75.
    figures = {size for name, size in sizes.items() if name not in ("summary.png", "mask.png", "mask-overlay.png")}
    assert figures == {(70, 56)} and sizes["mask.png"] == sizes["mask-overlay.png"] == (100, 75)


# ---------------------------------------------------------------------------- seg-eval
@pytest.fixture(scope="module")
def voc_root(work: Path) -> Path:
    """Two VOC12-layout images (84×70 and 100×90) with two objects and a void line each."""
    root = work / "VOC2012"
    for folder in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for seed, (name, (width, height)) in enumerate({"2007_000001": (84, 70), "2007_000002": (100, 90)}.items()):
        _noise(root / "JPEGImages" / f"{name}.png", width, height, seed).rename(root / "JPEGImages" / f"{name}.jpg")
        objects = np.zeros((height, width), np.uint8)
        objects[10:40, 10:50], objects[50:62, 20:34], objects[9, 10:50] = 1, 2, 255
        write_indexed_png(root / "SegmentationObject" / f"{name}.png", objects)
        write_indexed_png(
            root / "SegmentationClass" / f"{name}.png", np.where((objects > 0) & (objects < 255), 15, objects)
        )
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n")
    return root


@pytest.fixture(scope="module")
def davis_root(work: Path) -> Path:
    """A DAVIS-2017-layout folder: two 3-frame sequences (98×70, and 90×60 which is not a multiple of 14), two
    objects each."""
    root = work / "DAVIS"
    for sequence, (width, height) in {"seq-a": (98, 70), "seq-b": (90, 60)}.items():
        frames, annotations = root / "JPEGImages" / "480p" / sequence, root / "Annotations" / "480p" / sequence
        frames.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for t in range(3):
            frame = np.full((height, width, 3), 90, np.uint8)
            frame[10:30, 10 + 5 * t : 30 + 5 * t] = (40, 200, 240)
            frame[40:50, 40:60] = (220, 40, 40)
            Image.fromarray(frame).save(frames / f"{t:05d}.jpg")
            labels = np.zeros((height, width), np.uint8)
            labels[10:30, 10 + 5 * t : 30 + 5 * t], labels[40:50, 40:60] = 1, 2
            write_indexed_png(annotations / f"{t:05d}.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("seq-a\nseq-b\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ["attention", "ncut"])
def test_seg_eval_voc(voc_root, weights_file, tmp_path, capsys, method) -> None:
    out = tmp_path / "seg"
    weights = weights_file if method == "ncut" else REG
    argv = ["seg-eval", "--voc", str(voc_root), "--out", str(out), "--size", "70", "--method", method]
    code, stdout, stderr = _run(capsys, *argv, "--weights", weights, *RUNTIME)
    assert code == 0, stderr
    assert "Jaccard" in stdout
    results = json.loads((out / "results.json").read_text())
    assert (results["images"], results["objects"]) == (2, 4) and 0 <= results["jaccard"] <= 1
    protocol = results["protocol"]
    assert (protocol["method"], protocol["patch_size"], protocol["embed_dim"]) == (method, PATCH, DIM)
    assert protocol["num_heads"] == HEADS and protocol["weights"] == weights
    assert (out / "per_image.csv").read_text().startswith("name,jaccard")


@pytest.mark.slow
def test_seg_eval_davis(davis_root, weights_file, tmp_path, capsys) -> None:
    out = tmp_path / "seg"
    argv = ["seg-eval", "--davis", str(davis_root), "--out", str(out), "--size", "56", "--every", "2"]
    code, _, stderr = _run(capsys, *argv, "--weights", weights_file, *RUNTIME)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    # Frames 0 and 2 of each sequence; the foreground (ids > 0) is one object per frame.
    assert (results["images"], results["objects"]) == (4, 4) and 0 <= results["jaccard"] <= 1
    assert results["protocol"]["dataset"] == "davis"


# ---------------------------------------------------------------------------- search
def test_search_index_query_update(photos, weights_file, tmp_path, capsys) -> None:
    folder = tmp_path / "gallery"
    images = [_noise(folder / p.name, *Image.open(p).size, seed=i) for i, p in enumerate(photos)]
    index = tmp_path / "gallery.idx"
    code, stdout, stderr = _run(
        capsys, "search", "index", str(folder), "--out", str(index), "--size", "84", "--weights", weights_file,
        *RUNTIME,
    )  # fmt: skip
    assert code == 0, stderr
    assert f"indexed 3 images ({DIM}-d, Flat)" in stdout
    backbone = json.loads((index / "manifest.json").read_text())["backbone"]
    assert backbone["weights"] == weights_file

    # --weights defaults to the index's own (the file).
    code, stdout, stderr = _run(capsys, "search", "query", str(images[1]), "--index", str(index), "-k", "2", "--json")
    assert code == 0, stderr
    (result,) = json.loads(stdout)
    assert result["hits"][0]["path"] == str(images[1]) and result["hits"][0]["score"] == pytest.approx(1, abs=1e-5)
    assert [hit["rank"] for hit in result["hits"]] == [1, 2]
    sheet = tmp_path / "sheet.png"
    code, stdout, _ = _run(capsys, "search", "query", str(images[0]), "--index", str(index), "--sheet", str(sheet))
    assert code == 0 and stdout.splitlines()[1].split()[:2] == ["1", "1.0000"]
    assert Image.open(sheet).format == "PNG"

    images[0].unlink()
    added = _noise(folder / "new" / "wide.png", 90, 50, seed=7)
    code, stdout, stderr = _run(capsys, "search", "update", str(folder), "--index", str(index), *RUNTIME)
    assert code == 0, stderr
    assert "1 added, 0 updated, 1 removed, 2 unchanged" in stdout
    assert sorted(ImageIndex.load(index).paths) == sorted(map(str, [*images[1:], added]))


def test_search_refuses_an_index_of_another_architecture(photos, tmp_path, capsys) -> None:
    tiny, reg = tmp_path / "tiny.idx", tmp_path / "reg.idx"
    assert (
        _run(capsys, "search", "index", str(photos[0].parent), "--out", str(tiny), "--weights", TINY, *RUNTIME)[0] == 0
    )
    code, _, stderr = _run(capsys, "search", "query", str(photos[0]), "--index", str(tiny), "--weights", REG, *RUNTIME)
    assert code == 2 and "Traceback" not in stderr
    assert "was built with weights 'random:vit_tiny/16'" in stderr
    assert "num_register_tokens: index 0, given 4" in stderr and "patch_size: index 16, given 14" in stderr
    # The other way round: a ViT-S/14 without registers does not fit an index of the reg model.
    assert _run(capsys, "search", "index", str(photos[0].parent), "--out", str(reg), "--weights", REG, *RUNTIME)[0] == 0
    code, _, stderr = _run(
        capsys, "search", "query", str(photos[0]), "--index", str(reg), "--weights", "random:vit_small/14", *RUNTIME
    )
    assert code == 2 and "Traceback" not in stderr and "num_register_tokens: index 4, given 0" in stderr
    # update too.
    code, _, stderr = _run(
        capsys, "search", "update", str(photos[0].parent), "--index", str(tiny), "--weights", REG, *RUNTIME
    )
    assert code == 2 and "Traceback" not in stderr


def test_search_whiten_then_index(weights_file, tmp_path, capsys) -> None:
    for i in range(12):
        _noise(tmp_path / "whitening-set" / f"{i:02d}.png", 48 + 2 * i, 42, seed=100 + i)
    gallery = [_noise(tmp_path / "gallery" / f"{i}.png", 70, 50, seed=200 + i) for i in range(3)]
    whitening = tmp_path / "w.npz"
    argv = ["search", "whiten", str(tmp_path / "whitening-set"), "--out", str(whitening), "--dim", "8"]
    code, stdout, stderr = _run(capsys, *argv, "--weights", weights_file, *RUNTIME)
    assert code == 0, stderr
    assert f"{DIM}-d -> 8-d, fitted on 12 images" in stdout
    index = tmp_path / "w.idx"
    argv = ["search", "index", str(tmp_path / "gallery"), "--out", str(index), "--whitening", str(whitening)]
    code, _, stderr = _run(capsys, *argv, "--weights", weights_file, *RUNTIME)
    assert code == 0, stderr
    assert ImageIndex.load(index).dim == 8
    code, stdout, _ = _run(capsys, "search", "query", str(gallery[2]), "--index", str(index), "-k", "1", "--json")
    assert code == 0 and json.loads(stdout)[0]["hits"][0]["path"] == str(gallery[2])


def test_search_eval_on_a_tiny_revisitop_dataset(tmp_path, capsys) -> None:
    root, name = tmp_path / "revisitop", "mini"
    imlist = [f"db{i}" for i in range(6)]
    qimlist = ["q0", "q1"]
    jpg = root / name / "jpg"
    jpg.mkdir(parents=True)
    # db0-2 and q0 share a colour layout, db3-5 and q1 another; widths 90…118 (not all multiples of 14).
    for i, image_id in enumerate(imlist + qimlist):
        source = _smooth(tmp_path / "src" / f"{image_id}.png", 90 + 4 * i, 64, seed=[0, 0, 0, 1, 1, 1, 0, 1][i])
        Image.open(source).convert("RGB").save(jpg / f"{image_id}.jpg")
    box = [0.0, 0.0, 60.0, 50.0]
    gnd = [
        {"bbx": box, "easy": [0, 1], "hard": [2], "junk": []},
        {"bbx": box, "easy": [3], "hard": [4, 5], "junk": []},
    ]
    with open(root / name / f"gnd_{name}.pkl", "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    out = tmp_path / "results.json"
    argv = ["search", "eval", "--dataset", name, "--root", str(root), "--out", str(out), "--size", "70"]
    code, stdout, stderr = _run(capsys, *argv, "--weights", REG, *RUNTIME)
    assert code == 0, stderr
    results = json.loads(out.read_text())
    assert results["queries"] == 2 and results["database_images"] == 6
    assert all(0 <= results["results"][p]["mAP"] <= 1 for p in ("easy", "medium", "hard"))
    assert ">> mini: mAP" in stdout


# ---------------------------------------------------------------------------- copy-detect
@pytest.fixture(scope="module")
def copy_photos(work: Path) -> Path:
    folder = work / "copy-photos"
    for i, (width, height) in enumerate([(96, 64), (80, 80), (64, 96), (120, 72)]):
        _smooth(folder / f"photo{i}.png", width, height, seed=i)
    return folder


@pytest.fixture(scope="module")
def copy_query(work: Path, copy_photos: Path) -> Path:
    """A recompressed crop of photo0."""
    query = work / "copy-query" / "photo0_copy.jpg"
    query.parent.mkdir()
    Image.open(copy_photos / "photo0.png").convert("RGB").crop((5, 5, 90, 60)).save(query, quality=60)
    return query


@pytest.fixture(scope="module")
def copy_index(work: Path, copy_photos: Path) -> Path:
    index = work / "copy.idx"
    argv = ["copy-detect", "index", str(copy_photos), "--out", str(index), "--size", "70", "--weights", REG]
    assert cli.main(argv + RUNTIME) == 0
    return index


def test_copy_detect_index_and_find(copy_index, copy_query, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert ImageIndex.load(copy_index).dim == 2 * DIM  # [CLS] ⊕ GeM
    out = tmp_path / "copies.json"
    argv = ["copy-detect", "find", str(copy_query), "--index", str(copy_index), "--threshold", "-1"]
    code, stdout, stderr = _run(capsys, *argv, "--out", str(out), *RUNTIME)
    assert code == 0, stderr
    assert "photo0_copy.jpg: 4 likely copies" in stdout
    (result,) = json.loads(out.read_text())["results"]
    assert Path(result["copies"][0]["path"]).name == "photo0.png"
    scores = [copy["score"] for copy in result["copies"]]
    assert scores == sorted(scores, reverse=True)
    # An index of another architecture is refused.
    code, _, stderr = _run(capsys, *argv, "--weights", TINY, *RUNTIME)
    assert code == 2 and "Traceback" not in stderr


@pytest.mark.slow
def test_copy_detect_find_verify_dino(copy_index, copy_query, tmp_path, capsys) -> None:
    """The middle-block patch tokens of the reg model (registers left out) as local features."""
    out = tmp_path / "copies.json"
    argv = ["copy-detect", "find", str(copy_query), "--index", str(copy_index), "--verify", "dino"]
    argv += ["--candidates", "1", "--min-inliers", "0", "--out", str(out)]
    code, stdout, stderr = _run(capsys, *argv, *RUNTIME)
    assert code == 0, stderr
    assert " matches  " in stdout
    result = json.loads(out.read_text())
    assert result["verify"] == "dino"
    (copy,) = result["results"][0]["copies"]
    assert Path(copy["path"]).name == "photo0.png" and copy["inliers"] > 0


def test_copy_detect_make_benchmark_and_eval(copy_photos, weights_file, tmp_path, capsys) -> None:
    bench, distractors = tmp_path / "bench", tmp_path / "distractors"
    make = ["copy-detect", "make-benchmark", "--images", str(copy_photos), "--out", str(bench), "--originals", "2"]
    make += ["--distractors-out", str(distractors), "--strong-per-original", "1", "--no-progress"]
    assert _run(capsys, *make)[0] == 0
    out = tmp_path / "eval.json"
    argv = ["copy-detect", "eval", "--copydays", str(bench), "--distractors", str(distractors), "--size", "50"]
    code, stdout, stderr = _run(capsys, *argv, "--out", str(out), "--weights", weights_file, *RUNTIME)
    assert code == 0, stderr
    assert "copy threshold (max_f1)" in stdout
    result = json.loads(out.read_text())
    blocks = {row["block"]: row for row in result["blocks"]}
    assert len(blocks) == 20 and blocks["original"]["mAP"] == 1.0
    assert all(0 <= row["mAP"] <= 1 for row in result["blocks"])
    assert result["recipe"]["size"] == 50


# ---------------------------------------------------------------------------- video-seg / video-eval
@pytest.mark.slow
def test_video_seg_davis_and_video_eval(davis_root, weights_file, tmp_path, capsys) -> None:
    out = tmp_path / "results"
    argv = ["video-seg", "--davis", str(davis_root), "--sequences", "seq-b", "--out", str(out)]
    code, _, stderr = _run(capsys, *argv, "--weights", weights_file, "--device", "cpu", "--no-progress")
    assert code == 0, stderr
    masks = sorted((out / "seq-b").glob("*.png"))
    assert [m.name for m in masks] == ["00000.png", "00001.png", "00002.png"]
    for mask in masks:
        labels = read_indexed_png(mask)
        assert labels.shape == (60, 90)  # the frame's own size, not a multiple of 14
        assert set(np.unique(labels)) <= {0, 1, 2}
    code, stdout, stderr = _run(
        capsys, "video-eval", "--davis", str(davis_root), "--results", str(out), "--sequences", "seq-b"
    )
    assert code == 0, stderr
    assert "J&F-Mean" in stdout and (out / "global_results-val.csv").is_file()


@pytest.mark.slow
def test_video_seg_on_a_video_file(tmp_path, capsys) -> None:
    height, width = 66, 100  # neither a multiple of 14
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for t in range(4):
        frame = np.full((height, width, 3), 90, np.uint8)
        frame[20:40, 10 + 6 * t : 30 + 6 * t] = (40, 200, 240)
        writer.write(frame)
    writer.release()
    first = np.zeros((height, width), np.uint8)
    first[20:40, 10:30] = 1
    write_indexed_png(tmp_path / "first.png", first)
    out = tmp_path / "out"
    argv = ["video-seg", "--video", str(clip), "--first-mask", str(tmp_path / "first.png"), "--max-frames", "2"]
    code, _, stderr = _run(capsys, *argv, "--out", str(out), "--weights", REG, "--device", "cpu", "--no-progress")
    assert code == 0, stderr
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["00000.png", "00001.png"]  # --max-frames 2 of the 4
    assert all(Image.open(m).size == (width, height) for m in masks)
    overlay = cv2.VideoCapture(str(out / "overlay.mp4"))
    ok, frame = overlay.read()
    assert ok and frame.shape == (height, width, 3) and int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == 2


# ---------------------------------------------------------------------------- knn / linear
@pytest.fixture(scope="module")
def colour_folders(work: Path) -> tuple[Path, Path]:
    """TRAIN and VAL folders, classes red and blue, two 50×40 images each."""
    rng = np.random.default_rng(0)
    roots = []
    for split in ("train", "val"):
        for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            (work / "colours" / split / name).mkdir(parents=True)
            for index in range(2):
                pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (40, 50, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(work / "colours" / split / name / f"{index}.png")
        roots.append(work / "colours" / split)
    return roots[0], roots[1]


@pytest.mark.slow
def test_knn(colour_folders, weights_file, tmp_path, capsys) -> None:
    train, val = colour_folders
    out, cache = tmp_path / "knn.json", tmp_path / "cache"
    argv = ["knn", "--train", str(train), "--val", str(val), "--nb-knn", "1", "3", "--out", str(out)]
    code, stdout, stderr = _run(capsys, *argv, "--cache-dir", str(cache), "--weights", weights_file, *RUNTIME)
    assert code == 0, stderr
    results = json.loads(out.read_text())
    assert [r["k"] for r in results["results"]] == [1, 3] and results["weights"] == weights_file
    assert all(0 <= r["top1"] <= 100 for r in results["results"])
    assert np.load(cache / "train.npy").shape == (4, DIM)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dino", "dinov2"])
def test_linear_one_epoch(colour_folders, weights_file, tmp_path, capsys, layout) -> None:
    train, val = colour_folders
    out = tmp_path / "linear"
    argv = ["linear", "--train", str(train), "--val", str(val), "--epochs", "1", "--lr", "0.5", "--batch-size", "4"]
    argv += ["--output-dir", str(out)]
    if layout == "dinov2":
        argv += ["--linear-input", "dinov2", "--n-last-blocks", "1"]
    code, _, stderr = _run(capsys, *argv, "--weights", weights_file if layout == "dino" else REG, *RUNTIME)
    assert code == 0, stderr
    results = json.loads((out / "linear_results.json").read_text())
    assert len(results["history"]) == 1 and 0 <= results["best_top1"] <= 100
    # dino: [CLS] of the last 4 blocks; dinov2: [CLS] of the last block + mean patch token (registers left out).
    features = 4 * DIM if layout == "dino" else 2 * DIM
    state = torch.load(out / "linear_weights.pth", map_location="cpu")
    state = state.get("state_dict", state)
    assert tuple(state["module.linear.weight"].shape) == (2, features)


# ---------------------------------------------------------------------------- export / info / train
def test_export_file_and_random_string(model, weights_file, photos, tmp_path, capsys) -> None:
    out = tmp_path / "exported.pth"
    code, stdout, stderr = _run(capsys, "export", weights_file, str(out))
    assert code == 0, stderr
    assert "sha256" in stdout
    state = torch.load(out, map_location="cpu")
    assert state["register_tokens"].shape == (1, REGISTERS, DIM) and "blocks.0.ls1.gamma" in state
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, DIM) and state["pos_embed"].dtype == torch.float16
    reloaded = load_backbone(out)
    assert (reloaded.patch_size, reloaded.num_register_tokens) == (PATCH, REGISTERS)
    batch = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch), model(batch), atol=0.05, rtol=0.05)  # fp16 storage
    code, _, stderr = _run(capsys, "export", REG, str(tmp_path / "fp32.pth"), "--dtype", "fp32")
    assert code == 0, stderr
    assert torch.load(tmp_path / "fp32.pth", map_location="cpu")["pos_embed"].dtype == torch.float32


def test_info(capsys) -> None:
    code, stdout, _ = _run(capsys, "info", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["device"] in ("cpu", "cuda", "mps") and "faiss" in report
    code, stdout, _ = _run(capsys, "info")
    assert code == 0 and "torch" in stdout


@pytest.mark.slow
def test_train_a_vit_s14_step_then_use_the_checkpoint(colour_folders, photos, tmp_path, capsys) -> None:
    """`train` has no --weights and its config has no register tokens: one step of a ViT-S/14 (the DINOv2 patch
    size, no registers), then the checkpoint feeds `export` and `features` like any weights."""
    train, _ = colour_folders
    run = tmp_path / "run"
    overrides = [
        "model.arch=vit_small", "model.patch_size=14", "model.out_dim=64", "model.head_hidden_dim=32",
        "model.head_bottleneck_dim=16", "crops.global_crops_size=28", "crops.local_crops_size=14",
        "crops.local_crops_number=2", "optim.epochs=1", "optim.warmup_epochs=0", "optim.batch_size_per_gpu=2",
        "run.num_workers=0", "run.device=cpu", "run.precision=fp32", "run.max_steps=1",
    ]  # fmt: skip
    code, _, stderr = _run(
        capsys, "train", "--data-path", str(train), "--output-dir", str(run), "--no-progress", *overrides
    )
    assert code == 0, stderr
    assert (run / "checkpoint.pth").is_file()
    code, _, stderr = _run(capsys, "export", str(run / "checkpoint.pth"), str(tmp_path / "trained.pth"))
    assert code == 0, stderr
    out = tmp_path / "trained.npy"
    argv = ["features", str(photos[0].parent), "--out", str(out), "--what", "patch", "--preprocess", "square"]
    code, _, stderr = _run(capsys, *argv, "--size", "42", "--weights", str(tmp_path / "trained.pth"), *RUNTIME)
    assert code == 0, stderr
    assert np.load(out).shape == (3, 3, 3, DIM)


# ---------------------------------------------------------------------------- demo (no browser)
@pytest.mark.slow
def test_demo_adapters_with_the_reg_model(model, photos, copy_photos, copy_query) -> None:
    pytest.importorskip("gradio", reason="the demo needs Gradio")
    from demo import adapters

    runtime = Runtime(device="cpu", num_workers=0, progress=False)
    photo = Image.open(photos[1]).convert("RGB")  # 100×75
    views = adapters.attention_views(model, photo, 0.6, 70, True, "cpu")
    # Short side 70, aspect kept: 93×70, cropped to whole patches: 84×70.
    assert views.image.shape == (70, 84, 3)
    assert views.head_maps.shape == views.head_masks.shape == (HEADS, 70, 84)
    assert views.mean_map.shape == (70, 84) and views.head_colors.shape == (HEADS, 3)
    assert views.foreground.shape == views.photo.shape[:2] == (75, 100)  # at the photo's own size

    index = adapters.build_search_index(model, photos, runtime=runtime)
    hits = adapters.search_similar(index, model, Image.open(photos[2]).convert("RGB"), 2, runtime=runtime)
    assert hits[0].path == str(photos[2]) and hits[0].score == pytest.approx(1, abs=1e-5)

    copies = adapters.build_copy_index(model, sorted(copy_photos.iterdir()), runtime=runtime)
    found = adapters.find_copies(copies, model, copy_query, -1.0, runtime=runtime)
    assert Path(found[0].path).name == "photo0.png"
    verdict = adapters.compare_copies(model, copy_query, copy_photos / "photo0.png", 0.5, runtime=runtime)
    assert verdict.is_copy and verdict.matches is None

    height, width = 66, 100
    frames = []
    for t in range(2):
        frame = np.full((height, width, 3), 90, np.uint8)
        frame[20:40, 10 + 6 * t : 30 + 6 * t] = (240, 200, 40)
        frames.append(frame)
    first = np.zeros((height, width), np.uint8)
    first[20:40, 10:30] = 1
    (labels,) = list(adapters.propagate_mask(model, frames, first, "cpu"))
    assert labels.shape == (height, width) and set(np.unique(labels)) <= {0, 1}
    assert adapters.overlay_labels(frames[1], labels).shape == (height, width, 3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
def test_demo_verb_builds_the_page_on_a_reg_index(photos, weights_file, tmp_path, capsys, monkeypatch) -> None:
    """`dino demo --weights FILE --index IDX` up to the server start, then the page's handlers called directly."""
    pytest.importorskip("gradio", reason="the demo needs Gradio")
    import demo.app

    index = tmp_path / "gallery.idx"
    assert (
        cli.main(["search", "index", str(photos[0].parent), "--out", str(index), "--weights", weights_file, *RUNTIME])
        == 0
    )
    pages = []
    monkeypatch.setattr(demo.app, "launch_demo", lambda page, **kwargs: pages.append((page, kwargs)))
    argv = ["demo", "--weights", weights_file, "--index", str(index), "--cache-dir", str(tmp_path / "cache")]
    code, _, stderr = _run(capsys, *argv, "--device", "cpu", "--port", "7999")
    assert code == 0, stderr
    ((page, launch),) = pages
    assert launch["host"] == "127.0.0.1" and launch["port"] == 7999
    handlers = {fn.api_name: fn.fn for fn in page.fns.values()}
    mean_map, cut, heads, masks = handlers["attention"](str(photos[1]), 0.6, 224, True)
    # Each response writes its own files; 100×75, short side 224: 298×224, cropped to 294×224.
    assert Image.open(mean_map).size == (294, 224) and Image.open(cut).size == (100, 75)  # the mask: photo's size
    assert len(heads) == HEADS and len(masks) == HEADS + 1
    results = handlers["search"](str(photos[0]), 2)
    assert results[0][1].endswith(photos[0].name) and results[0][1].startswith("1.000")
