"""The CLI on a synthetic mp4 clip and on a DAVIS-layout folder: outputs, refusal to overwrite, resuming."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dino.cli import main
from dino.data.masks import read_indexed_png, write_indexed_png

WEIGHTS = ["--weights", "random:vit_tiny/16", "--device", "cpu", "--no-progress"]


def _write_clip(path, frames: int = 3, size=(96, 128)) -> np.ndarray:
    """A grey clip with a bright square moving right; returns the first frame's mask."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size[1], size[0]))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for t in range(frames):
        frame = np.full((*size, 3), 90, np.uint8)
        frame[30:60, 20 + 8 * t : 50 + 8 * t] = (40, 200, 240)
        writer.write(frame)
    writer.release()
    mask = np.zeros(size, np.uint8)
    mask[30:60, 20:50] = 1
    return mask


@pytest.mark.slow
def test_video_cli_writes_masks_and_an_overlay_video(tmp_path) -> None:
    clip = tmp_path / "clip.mp4"
    write_indexed_png(tmp_path / "first.png", _write_clip(clip))
    out = tmp_path / "out"
    args = ["video-seg", "--video", str(clip), "--first-mask", str(tmp_path / "first.png"), "--out", str(out)]
    assert main(args + WEIGHTS) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["00000.png", "00001.png", "00002.png"]
    assert read_indexed_png(masks[1]).shape == (96, 128)
    overlay = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    ok, frame = overlay.read()
    assert ok and frame.shape == (96, 128, 3)
    # A non-empty output folder is refused without --overwrite.
    assert main(args + WEIGHTS) == 2


def test_video_cli_errors_are_clear(tmp_path, capsys) -> None:
    assert main(["video-seg", "--out", str(tmp_path / "o")] + WEIGHTS) == 2
    assert "exactly one of --davis" in capsys.readouterr().err
    write_indexed_png(tmp_path / "first.png", np.zeros((4, 4), np.uint8))
    args = ["video-seg", "--video", str(tmp_path / "none.mp4"), "--first-mask", str(tmp_path / "first.png")]
    assert main(args + ["--out", str(tmp_path / "o")] + WEIGHTS) == 2
    assert "none.mp4: no such video file" in capsys.readouterr().err


def test_davis_inputs_are_checked_before_anything_is_written(tmp_path, capsys) -> None:
    root = tmp_path / "davis"
    (root / "JPEGImages" / "480p" / "seq").mkdir(parents=True)
    cv2.imwrite(str(root / "JPEGImages" / "480p" / "seq" / "00000.jpg"), np.zeros((32, 32, 3), np.uint8))
    write_indexed_png(root / "Annotations" / "480p" / "seq" / "00000.png", np.zeros((32, 32), np.uint8))
    args = ["video-seg", "--davis", str(root), "--sequences", "seq", "nosuch", "--out", str(tmp_path / "o")]
    assert main(args + WEIGHTS) == 2
    assert "nosuch: no .jpg files" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "weights.txt").write_text("not a mask")
    args = ["video-seg", "--video", str(tmp_path / "clip.mp4"), "--first-mask", str(tmp_path / "weights.txt")]
    _write_clip(tmp_path / "clip.mp4")
    assert main(args + ["--out", str(tmp_path / "v")] + WEIGHTS) == 2
    assert "weights.txt: not an image file" in capsys.readouterr().err


def test_a_run_resumes_with_the_same_weights_however_they_are_named(tmp_path, monkeypatch) -> None:
    from apps.video_seg.davis import _same_settings

    monkeypatch.chdir(tmp_path)
    current = {"weights": str(tmp_path / "run.pth"), "backbone_sha256": "abc", "patch_size": 16}
    assert _same_settings(current | {"weights": "elsewhere/run.pth"}, current)  # same checksum
    assert not _same_settings(current | {"backbone_sha256": "def"}, current)
    # Runs recorded before the checksum: the path as typed then, resolved from here.
    legacy = {"weights": "run.pth", "patch_size": 16}
    assert _same_settings(legacy, current)
    assert not _same_settings(legacy | {"weights": "other.pth"}, current)
    assert not _same_settings(legacy | {"patch_size": 8}, current)


@pytest.mark.slow
def test_davis_cli_resumes_and_refuses_foreign_folders(shared_data, tmp_path, capsys) -> None:
    davis = shared_data / "davis2016-dev"
    # A 4-frame copy of one sequence keeps this fast.
    root = tmp_path / "davis"
    for kind, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        target = root / kind / "480p" / "car-shadow"
        target.mkdir(parents=True)
        for path in sorted((davis / kind / "480p" / "car-shadow").glob(f"*{suffix}"))[:4]:
            (target / path.name).write_bytes(path.read_bytes())
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("car-shadow\n")
    out = tmp_path / "results"
    assert main(["video-seg", "--davis", str(root), "--out", str(out)] + WEIGHTS) == 0
    assert len(list((out / "car-shadow").glob("*.png"))) == 4
    assert main(["video-seg", "--davis", str(root), "--out", str(out)] + WEIGHTS) == 0
    assert "already done, skipped" in capsys.readouterr().out
    # Other settings into the same folder: refused.
    assert main(["video-seg", "--davis", str(root), "--out", str(out), "--topk", "3"] + WEIGHTS) == 2
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 0
    assert (out / "global_results-val.csv").is_file() and (out / "per-sequence_results-val.csv").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["video-seg", "--davis", str(root), "--out", str(foreign)] + WEIGHTS) == 2
