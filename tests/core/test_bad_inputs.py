"""Bad inputs to the core: bounded work, one-line errors that name the file, skipping in bulk jobs (#19)."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dino import cli
from dino.checkpoint import load_backbone
from dino.data.io import ImageLoadError, open_image
from dino.data.transforms import make_transform, planned_size
from dino.features import (
    DEFAULT_MAX_TOKENS,
    FeatureExtractor,
    NonFiniteOutputError,
    TokenBudgetError,
    check_token_budget,
)
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe


def bomb_png(path, width: int = 30000, height: int = 30000):
    """A valid 1×1 PNG whose header claims width×height pixels: PIL's decompression-bomb guard refuses it at
    open, without decoding anything (the file is 70 bytes)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts after signature (8) + length + type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def folder(tmp_path):
    """Two good photos and four bad files: corrupt, a decompression bomb, too small, and a 10000×20 strip."""
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / name)
    (images / "b_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bomb_png(images / "d_bomb.png")
    Image.new("RGB", (4, 4)).save(images / "e_icon.png")
    Image.new("RGB", (10000, 20), "white").save(images / "f_strip.png")
    return images


def test_planned_size_is_what_the_transform_makes() -> None:
    rng = np.random.default_rng(1)
    for _ in range(40):
        width, height = (int(v) for v in rng.integers(1, 700, 2))
        photo = Image.new("RGB", (width, height))
        for name in ("knn", "square", "short-side", "thumbnail"):
            for size in (None, 37, 224):
                transform = make_transform(name, size, 14)
                assert planned_size(transform, width, height) == tuple(transform(photo).shape[-2:])
    assert planned_size(T.Compose([T.RandomRotation(10), T.ToTensor()]), 10, 10) is None


def test_token_budget_message_and_arithmetic() -> None:
    check_token_budget("x.png", (100, 100), (224, 224), 16, max_tokens=196)  # 14×14 = 196: allowed
    with pytest.raises(TokenBudgetError, match=r"x\.png: 100×100 pixels become 240×224 .* 210 patch tokens"):
        check_token_budget("x.png", (100, 100), (224, 240), 16, max_tokens=196)
    check_token_budget("x.png", (100, 100), (10**5, 10**5), 16, max_tokens=None)


def test_a_long_strip_is_refused_before_it_is_resized(tmp_path, monkeypatch) -> None:
    strip = tmp_path / "wide.png"
    Image.new("RGB", (10000, 20)).save(strip)  # a short side of 224 would make it 112000×224: 98,000 tokens
    model = load_backbone("random:vit_tiny/16")

    def no_resize(self, image):
        raise AssertionError("the strip was resized before the budget refused it")

    monkeypatch.setattr(T.Resize, "forward", no_resize)
    extractor = FeatureExtractor(model, make_transform("short-side", 224, 16), Runtime(device="cpu", progress=False))
    with pytest.raises(TokenBudgetError, match=r"wide\.png: 10000×20 pixels become 112000×224 .*98,000 patch"):
        extractor.extract([strip])
    # The attention verb (keep-aspect, --size 224) refuses it in one line too.
    code = cli.main(["attention", str(strip), "--out", str(tmp_path / "out"), "--keep-aspect", "--size", "224",
                     "--weights", "random:vit_tiny/16", "--no-progress", "--workers", "0"])  # fmt: skip
    assert code == 2 and not (tmp_path / "out" / "wide").exists()


def test_the_budget_holds_the_reference_protocols() -> None:
    # DAVIS frames at patch 8 (short side 480, 854 long): the largest input a reference protocol makes.
    assert (480 // 8) * (854 // 8) <= DEFAULT_MAX_TOKENS


def test_decompression_bomb_is_a_one_line_error(tmp_path) -> None:
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageLoadError, match=r"bomb\.png: too many pixels to decode safely"):
        open_image(bomb)


def test_bad_images_in_decoding_workers_are_one_line_errors(folder, tmp_path, capsys) -> None:
    out = tmp_path / "feats.npy"
    args = ["features", str(folder / "d_bomb.png"), str(folder / "a.png"), "--out", str(out), "--on-error", "fail",
            "--weights", "random:vit_tiny/16", "--no-progress", "--workers", "2"]  # fmt: skip
    assert cli.main(args) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert printed[0].startswith("note: using randomly initialised weights") and len(printed) == 2
    assert printed[1].startswith("dino features: error: ") and "d_bomb.png: too many pixels" in printed[1]
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_features_skips_bad_images_by_default_and_lists_them(folder, tmp_path, capsys) -> None:
    out = tmp_path / "feats.npy"
    args = ["features", str(folder), "--out", str(out), "--weights", "random:vit_tiny/16", "--no-progress",
            "--workers", "2", "--preprocess", "short-side", "--size", "224"]  # fmt: skip
    assert cli.main(args) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    # The 4×4 icon is enlarged to a short side of 224, so it is usable here.
    assert [p.rsplit("/", 1)[1] for p in sidecar["images"]] == ["a.png", "c.png", "e_icon.png"]
    assert np.load(out).shape == (3, 192)
    reasons = {entry["path"].rsplit("/", 1)[1]: entry["reason"] for entry in sidecar["skipped"]}
    assert sorted(reasons) == ["b_corrupt.jpg", "d_bomb.png", "f_strip.png"]
    assert "cannot decode" in reasons["b_corrupt.jpg"] and "too many pixels" in reasons["d_bomb.png"]
    assert "98,000 patch tokens" in reasons["f_strip.png"]
    printed = capsys.readouterr().err
    assert "skipped 3 of 6 images" in printed and str(out.with_suffix(".json")) in printed
    # Skipped rows do not shift the others: each row is its own image's feature.
    alone = tmp_path / "alone.npy"
    assert cli.main(["features", str(folder / "c.png"), "--out", str(alone), *args[4:]]) == 0
    np.testing.assert_allclose(np.load(out)[1], np.load(alone)[0], atol=1e-5)


def test_all_images_skipped_is_an_error(folder, tmp_path) -> None:
    model = load_backbone("random:vit_tiny/16")
    extractor = FeatureExtractor(
        model, make_transform("thumbnail", 224), Runtime(device="cpu", progress=False), on_error="skip"
    )
    with pytest.raises(ValueError, match=r"none of the 2 images could be used; the first: .*b_corrupt\.jpg"):
        extractor.extract([folder / "b_corrupt.jpg", folder / "e_icon.png"])
    assert [image.name.rsplit("/", 1)[1] for image in extractor.skipped] == ["b_corrupt.jpg", "e_icon.png"]
    assert "e_icon.png: too small, 4×4 pixels" in extractor.skipped[1].reason


def test_descriptor_rows_never_silently_go_missing(folder) -> None:
    model = load_backbone("random:vit_tiny/16")
    extractor = DescriptorExtractor(model, DescriptorRecipe.retrieval(), runtime=Runtime(device="cpu", progress=False))
    extractor.features.on_error = "skip"
    indices = [i for i, _ in extractor.iter_raw([folder / "a.png", folder / "b_corrupt.jpg", folder / "c.png"])]
    assert sorted(i for batch in indices for i in batch) == [0, 2]
    with pytest.raises(ValueError, match="b_corrupt.jpg"):
        extractor.extract([folder / "a.png", folder / "b_corrupt.jpg"])


def test_non_finite_outputs_are_refused(folder) -> None:
    model = load_backbone("random:vit_tiny/16")
    with torch.no_grad():
        model.norm.weight.fill_(3e38)  # finite weights whose outputs overflow to ±inf
    # fp32 explicitly: "auto" is bf16 on CPUs with native bf16, and the message names the precision
    extractor = FeatureExtractor(model, runtime=Runtime(device="cpu", dtype="fp32", progress=False))
    with pytest.raises(NonFiniteOutputError, match="features hold NaN or infinite values in fp32"):
        extractor.extract([folder / "a.png"])
    descriptors = DescriptorExtractor(
        model, DescriptorRecipe.copy_detection(64), runtime=Runtime(device="cpu", progress=False)
    )
    with pytest.raises(NonFiniteOutputError, match="descriptors"):
        descriptors.extract([folder / "a.png"])


X86_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
X86_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
X86_AMX = "processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(X86_AVX2, False), (X86_BF16, True), (X86_AMX, True), (ARM_BF16, True), ("", False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool) -> None:
    from dino.runtime import cpuinfo_has_native_bf16

    assert cpuinfo_has_native_bf16(cpuinfo) is native


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch) -> None:
    from dino.runtime import autocast_dtype, cpu_has_native_bf16

    cpu = torch.device("cpu")
    for forced, expected in (("1", torch.bfloat16), ("0", None)):
        monkeypatch.setenv("DINO_CPU_BF16", forced)
        cpu_has_native_bf16.cache_clear()
        assert autocast_dtype(cpu, "auto") is expected
        assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cpu, "bf16") is torch.bfloat16
    cpu_has_native_bf16.cache_clear()
    assert autocast_dtype(torch.device("mps"), "auto") is None


def test_outputs_never_replace_their_inputs(folder, tmp_path, capsys) -> None:
    tiny = ["--weights", "random:vit_tiny/16", "--no-progress", "--workers", "0"]
    photo = folder / "a.png"
    before = photo.read_bytes()
    assert cli.main(["features", str(photo), str(folder / "c.png"), "--out", str(photo), *tiny]) == 2  # not .npy
    disguised = tmp_path / "photo.npy"  # a PNG named .npy, given as a file: an input all the same
    disguised.write_bytes(before)
    assert cli.main(["features", str(disguised), "--out", str(disguised), *tiny]) == 2
    assert "photo.npy: is also an input; writing there would destroy it" in capsys.readouterr().err
    weights = tmp_path / "w.pth"
    assert cli.main(["export", "random:vit_tiny/16", str(weights)]) == 0
    saved = weights.read_bytes()
    assert cli.main(["export", str(weights), str(weights)]) == 2
    assert "w.pth: is also an input; writing there would destroy it" in capsys.readouterr().err
    assert weights.read_bytes() == saved and photo.read_bytes() == before and disguised.read_bytes() == before
