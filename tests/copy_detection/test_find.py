"""copy-detect index and find on a tiny collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from apps.copy_detection.find import build_copy_index, find_copies
from dino import cli
from dino.checkpoint import load_backbone
from dino.data.io import ImageLoadError, list_images
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorRecipe
from dino.search.index import ImageIndex, IndexMismatchError, build_index

OPTIONS = Runtime(device="cpu", num_workers=0, progress=False)


@pytest.fixture
def copies(photos: Path, tmp_path: Path) -> list[Path]:
    """A JPEG re-encode and a 10 % crop of photo0, outside the indexed folder."""
    folder = tmp_path / "queries"
    folder.mkdir()
    original = Image.open(photos / "photo0.jpg")
    original.save(folder / "photo0_q40.jpg", quality=40)
    original.crop((3, 2, 93, 62)).save(folder / "photo0_crop.png")
    return [folder / "photo0_q40.jpg", folder / "photo0_crop.png"]


@pytest.mark.slow
def test_find_on_a_tiny_index(photos: Path, copies: list[Path], tmp_path: Path) -> None:
    model = load_backbone("random:vit_tiny/16")
    index = build_copy_index([photos], model, out=tmp_path / "index", size=64, runtime=OPTIONS)
    assert len(index) == 5 and index.recipe.pooling == "cls+gem" and index.recipe.size == 64

    found = find_copies(copies, index, model, threshold=-1.0, runtime=OPTIONS)
    for hits in found:
        assert Path(hits[0].path).name == "photo0.jpg"
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    # The threshold keeps exactly the hits that reach it.
    cut = found[0][1].score
    kept = find_copies(copies[:1], index, model, threshold=cut, runtime=OPTIONS)[0]
    assert [hit.path for hit in kept] == [hit.path for hit in found[0] if hit.score >= cut]
    assert find_copies(copies[:1], index, model, threshold=1.01, runtime=OPTIONS) == [[]]

    # An indexed query does not report itself, unless asked to.
    own = photos / "photo0.jpg"
    assert all(
        Path(hit.path).name != "photo0.jpg" for hit in find_copies([own], index, model, -1.0, runtime=OPTIONS)[0]
    )
    itself = find_copies([own], index, model, threshold=-1.0, include_self=True, runtime=OPTIONS)[0][0]
    assert Path(itself.path).name == "photo0.jpg" and itself.score == pytest.approx(1.0, abs=1e-5)

    # The backbone recorded in the index is loaded back; another backbone is refused.
    reloaded = ImageIndex.load(tmp_path / "index")
    assert reloaded.load_backbone().embed_dim == model.embed_dim
    with pytest.raises(IndexMismatchError):
        find_copies(copies, reloaded, load_backbone("random:vit_small/16"), runtime=OPTIONS)
    # A retrieval index (another descriptor, for which the copy thresholds mean nothing) is refused.
    search_index = build_index(list_images(photos), model, DescriptorRecipe.retrieval(64), runtime=OPTIONS)
    with pytest.raises(IndexMismatchError, match="another descriptor .*'dino copy-detect index'"):
        find_copies(copies, search_index, model, runtime=OPTIONS)


@pytest.mark.slow
def test_index_and_find_cli(photos: Path, copies: list[Path], tmp_path: Path, capsys) -> None:
    runtime = ["--device", "cpu", "--workers", "0", "--no-progress"]
    whitening = tmp_path / "whitening"
    whitening.mkdir()
    for name in ("photo1.png", "photo2.jpg", "photo3.png"):
        (whitening / name).write_bytes((photos / name).read_bytes())
    argv = ["copy-detect", "index", str(photos), "--out", str(tmp_path / "index"), "--size", "64"]
    argv += ["--weights", "random:vit_tiny/16", "--whitening", str(whitening)]
    assert cli.main(argv + runtime) == 0
    assert "5 images" in capsys.readouterr().out
    assert ImageIndex.load(tmp_path / "index").whitening is not None

    out = tmp_path / "copies.json"
    argv = ["copy-detect", "find", *map(str, copies), "--index", str(tmp_path / "index"), "--threshold", "-1"]
    assert cli.main(argv + ["--out", str(out)] + runtime) == 0  # the backbone comes from the index
    printed = capsys.readouterr().out
    assert "photo0_q40.jpg: " in printed and "photo0.jpg" in printed
    result = json.loads(out.read_text())
    assert result["threshold"] == -1.0
    assert [Path(r["copies"][0]["path"]).name for r in result["results"]] == ["photo0.jpg", "photo0.jpg"]
    query_bytes = copies[0].read_bytes()  # results written over a query would destroy it
    assert cli.main(argv + ["--out", str(copies[0])] + runtime) == 2
    assert "is also an input" in capsys.readouterr().err and copies[0].read_bytes() == query_bytes
    assert cli.main(["copy-detect", "find", str(copies[0]), "--index", str(tmp_path / "missing")] + runtime) == 2
    capsys.readouterr()
    for bad in ("nan", "inf", "1.5"):  # nan used to print "0 likely copies" and exit 0
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv + ["--threshold", bad] + runtime)
        assert exit_info.value.code == 2 and "[-1, 1]" in capsys.readouterr().err


def test_index_skips_unusable_images(photos: Path, tmp_path: Path, capsys) -> None:
    """One bad file used to abort 'copy-detect index'; skipped images must not stay in the index as zero rows."""
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    model = load_backbone("random:vit_tiny/16")
    index = build_copy_index([photos], model, size=32, on_error="skip", runtime=OPTIONS)
    assert sorted(Path(p).name for p in index.paths) == [f"photo{i}{'.png' if i % 2 else '.jpg'}" for i in range(5)]
    assert sorted(Path(p).name for p in index.skipped) == ["broken.jpg", "empty.png"]
    with pytest.raises(ImageLoadError, match=r"broken\.jpg: cannot decode image"):
        build_copy_index([photos], model, size=32, runtime=OPTIONS)  # on_error="raise" by default

    out = tmp_path / "index"
    argv = ["copy-detect", "index", str(photos), "--out", str(out), "--size", "32", "--weights", "random:vit_tiny/16"]
    argv += ["--device", "cpu", "--workers", "0", "--no-progress"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "5 images" in captured.out
    assert f"skipped 2 of 7 images, listed in {out}/manifest.json:" in captured.err
    assert ImageIndex.load(out).skipped == index.skipped
    assert cli.main([*argv[:4], str(tmp_path / "strict"), *argv[5:], "--on-error", "fail"]) == 2
    assert "broken.jpg: cannot decode image" in capsys.readouterr().err and not (tmp_path / "strict").exists()


@pytest.mark.parametrize("verb", ["eval", "make-benchmark", "index", "find"])
def test_help_renders(verb: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["copy-detect", verb, "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0 and text.startswith(f"usage: dino copy-detect {verb}")
    assert "%%" not in text and "%(" not in text
