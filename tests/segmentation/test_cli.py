"""`dino attention` and `dino seg-eval` write their files; bad input gives a clean error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from apps.segmentation.cli import register  # noqa: F401  (import error here beats a skipped verb)
from apps.segmentation.inference import iter_attention
from apps.segmentation.visualize import output_folders
from dino import cli
from dino.checkpoint import load_backbone
from dino.data.masks import read_indexed_png
from dino.runtime import Runtime

RUNTIME = ["--weights", "random:vit_tiny/16", "--device", "cpu", "--workers", "0", "--no-progress"]


@pytest.mark.slow
def test_attention_writes_figures_and_masks(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in [("a.png", (80, 60)), ("b.jpg", (64, 64))]:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "out"
    argv = ["attention", str(images), "--out", str(out), "--size", "64", "--threshold", "0.5", "--ncut"]
    assert cli.main([*argv, *RUNTIME]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    files = {p.name for p in (out / "a").iterdir()}
    heads = 3  # vit_tiny
    expected = {"img.png", "attn-mean.png", "summary.png", "mask.png", "mask-overlay.png", "ncut-mask.png"}
    expected |= {"mask_th0.5_heads.png"}
    expected |= {f"attn-head{j}.png" for j in range(heads)} | {f"mask_th0.5_head{j}.png" for j in range(heads)}
    assert files == expected
    assert Image.open(out / "a" / "attn-head0.png").size == (64, 64)  # square 64, upsampled ×16 from 4×4
    assert Image.open(out / "a" / "mask_th0.5_head1.png").size == (64, 64)
    # The masks are at the photo's own size (80×60), not the network input's.
    for name in ("mask.png", "ncut-mask.png"):
        mask = read_indexed_png(out / "a" / name)
        assert mask.shape == (60, 80) and set(np.unique(mask)) <= {0, 1}


@pytest.mark.slow
def test_attention_without_ncut_and_keep_aspect(tmp_path) -> None:
    image = tmp_path / "wide.png"
    Image.new("RGB", (96, 48), (200, 10, 10)).save(image)
    out = tmp_path / "out"
    options = ["--size", "32", "--keep-aspect", "--no-mask"]
    assert cli.main(["attention", str(image), "--out", str(out), *options, *RUNTIME]) == 0
    assert not (out / "wide" / "ncut-mask.png").exists() and not (out / "wide" / "mask.png").exists()
    assert Image.open(out / "wide" / "img.png").size == (64, 32)


@pytest.mark.slow
def test_seg_eval_cli(voc_root, voc_size, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    options = ["--size", str(voc_size), "--method", "attention", "--heads", "merged", "--void", "ignore"]
    options += ["--masks", "class", "--no-keep-aspect", "--resolution", "input"]
    code = cli.main(["seg-eval", "--voc", str(voc_root), "--out", str(out), *options, *RUNTIME])
    assert code == 0
    assert "Jaccard" in capsys.readouterr().out
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert protocol["heads"] == "merged" and protocol["void"] == "ignore" and protocol["masks"] == "class"
    assert (out / "per_image.csv").read_text().startswith("name,jaccard")


def test_seg_eval_missing_folder_is_a_clean_error(tmp_path, capsys) -> None:
    assert cli.main(["seg-eval", "--voc", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), *RUNTIME]) == 2
    assert "no VOC segmentation split list" in capsys.readouterr().err


def test_repeated_image_stems_get_distinct_folders(tmp_path) -> None:
    paths = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.png", tmp_path / "y.jpg"]
    assert [f.name for f in output_folders(paths, tmp_path / "out")] == ["x", "x-1", "y"]


def test_attention_progress_counts_each_image_when_it_is_done(tmp_path, monkeypatch) -> None:
    import apps.segmentation.inference as inference

    counts: list[int] = []

    class RecordingBar:
        def __init__(self, total: int, **kwargs) -> None:
            self.total, self.n = total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def update(self, count: int) -> None:
            self.n += count
            counts.append(self.n)

    monkeypatch.setattr(inference, "tqdm", RecordingBar)
    photos = [Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)) for i in range(3)]
    model = load_backbone("random:vit_tiny/16")
    seen = []
    for item in iter_attention(model, photos, size=32, runtime=Runtime(device="cpu", batch_size=3)):
        seen.append((item.index, list(counts)))  # the bar, while the caller holds this image
    # One batch of three, yet the bar moves image by image: each is counted once its caller is done with it.
    assert seen == [(0, []), (1, [1]), (2, [1, 2])] and counts == [1, 2, 3]
