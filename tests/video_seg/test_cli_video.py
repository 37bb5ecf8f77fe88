"""The CLI on a synthetic mp4 clip and on a DAVIS-layout folder: outputs, refusal to overwrite, resuming,
frames of another size, and which sequences video-eval evaluates."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from apps.video_seg.encoding import h264_encoder
from dino.cli import main
from dino.data.masks import read_indexed_png, write_indexed_png

WEIGHTS = ["--weights", "random:vit_tiny/16", "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_video_cli_writes_masks_and_an_overlay_video(tmp_path, make_clip, capsys) -> None:
    clip = tmp_path / "clip.mp4"
    # A flat-colour RGB mask (as the demo accepts), not only palette PNGs: red on black is object 1.
    first = make_clip(clip)
    Image.fromarray(np.stack([first * 255, first * 0, first * 0], axis=-1)).save(tmp_path / "first.png")
    out = tmp_path / "out"
    args = ["video-seg", "--video", str(clip), "--first-mask", str(tmp_path / "first.png"), "--out", str(out)]
    assert main(args + WEIGHTS) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["00000.png", "00001.png", "00002.png"]
    assert np.array_equal(read_indexed_png(masks[0]), first)
    assert read_indexed_png(masks[1]).shape == (96, 128)
    overlay = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    ok, frame = overlay.read()
    assert ok and frame.shape == (96, 128, 3)
    codec = "h264" if h264_encoder() else "mp4v"
    assert capsys.readouterr().out.rstrip().endswith(f"overlay {out / 'overlay.mp4'} ({codec})")
    # A non-empty output folder is refused without --overwrite; with it, an earlier output is replaced.
    assert main(args + WEIGHTS) == 2
    assert "folder is not empty; pass --overwrite" in capsys.readouterr().err
    assert main(args + WEIGHTS + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_video_cli_errors_are_clear(tmp_path, capsys) -> None:
    assert main(["video-seg", "--out", str(tmp_path / "o")] + WEIGHTS) == 2
    assert "exactly one of --davis" in capsys.readouterr().err
    write_indexed_png(tmp_path / "first.png", np.eye(4, dtype=np.uint8))
    args = ["video-seg", "--video", str(tmp_path / "none.mp4"), "--first-mask", str(tmp_path / "first.png")]
    assert main(args + ["--out", str(tmp_path / "o")] + WEIGHTS) == 2
    assert "none.mp4: no such video file" in capsys.readouterr().err


def test_davis_inputs_are_checked_before_anything_is_written(tmp_path, capsys, make_clip) -> None:
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
    make_clip(tmp_path / "clip.mp4")
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


@pytest.mark.parametrize("odd", ["b/00000", "b/00002"])
def test_a_frame_of_another_size_is_refused_up_front_naming_it(tmp_path, capsys, make_davis, odd: str) -> None:
    # A landscape sequence with one 96x48 frame: its patch grid differs (it crashed with a tensor size mismatch
    # after writing the frames before it); sequence a, listed first, is fine but nothing is written for it either.
    root = make_davis(tmp_path / "davis", {"a": 3, "b": 4}, odd={odd: (48, 96)})
    out = tmp_path / "o"
    assert main(["video-seg", "--davis", str(root), "--out", str(out)] + WEIGHTS) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # one line
    assert error.startswith("dino video-seg: error: ")
    if odd == "b/00002":
        assert error.endswith(
            "b/00002.jpg: frame is 96x48 but 00000.jpg, the sequence's first frame, is 64x48; every "
            "frame of a sequence must have one size"
        )
    else:  # The odd first frame is the reference: the next frame differs from it.
        assert "b/00001.jpg: frame is 64x48 but 00000.jpg, the sequence's first frame, is 96x48" in error
    assert not out.exists()


def test_a_first_annotation_of_another_size_is_refused(tmp_path, capsys, make_davis) -> None:
    root = make_davis(tmp_path / "davis", {"a": 3})
    write_indexed_png(root / "Annotations" / "480p" / "a" / "00000.png", np.ones((48, 60), np.uint8))
    assert main(["video-seg", "--davis", str(root), "--out", str(tmp_path / "o")] + WEIGHTS) == 2
    assert "a/00000.png: mask is 60x48 but the first frame 00000.jpg is 64x48" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_sequence_without_its_first_annotation_is_refused(tmp_path, capsys, make_davis) -> None:
    # The first annotated frame would otherwise give its labels to frame 0, a silently wrong start.
    root = make_davis(tmp_path / "davis", {"a": 3})
    (root / "Annotations" / "480p" / "a" / "00000.png").unlink()
    write_indexed_png(root / "Annotations" / "480p" / "a" / "00001.png", np.ones((48, 64), np.uint8))
    assert main(["video-seg", "--davis", str(root), "--out", str(tmp_path / "o")] + WEIGHTS) == 2
    assert "a/00000.png: no annotation of the sequence's first frame 00000.jpg" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_decoded_frames_of_another_size_name_the_file(tmp_path, make_davis) -> None:
    from apps.video_seg.davis import read_bgr_frames

    # The check while decoding backs up the one on the headers (which OpenCV's decoding could disagree with).
    root = make_davis(tmp_path / "davis", {"a": 3}, odd={"a/00001": (40, 64)})
    frames = read_bgr_frames(sorted((root / "JPEGImages" / "480p" / "a").glob("*.jpg")))
    assert next(frames).shape == (48, 64, 3)
    with pytest.raises(
        ValueError,
        match=r"a/00001.jpg: frame is 64x40 but 00000.jpg, the sequence's first frame, "
        r"is 64x48",
    ):
        next(frames)


def test_video_eval_evaluates_the_sequences_the_run_was_asked_for(tmp_path, make_davis, capsys, monkeypatch) -> None:
    import apps.video_seg.davis as davis
    from apps.video_seg.preprocess import FramePreprocessing
    from dino.checkpoint import load_backbone

    root = make_davis(tmp_path / "davis", {"a": 3, "b": 3, "c": 3})
    out = tmp_path / "o"
    model = load_backbone("random:vit_tiny/16")
    small = FramePreprocessing(short_side=32, multiple=16)  # a 2x2 patch grid keeps this fast
    davis.segment_davis(root, out, model, sequences=["c", "a"], preprocessing=small, progress=False)
    # Not all of val.txt (a, b, c): the run's record (c, a), in its order.
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 0
    rows = (out / "per-sequence_results-val.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["c_1", "a_1"]

    # A sequence that fails half-way leaves no folder behind, and the run's record says it is unfinished.
    def fails_after_one_frame(*args, **kwargs):
        labels = original(*args, **kwargs)
        yield next(labels)
        raise RuntimeError("stopped")

    original = davis.segment_frames
    monkeypatch.setattr(davis, "segment_frames", fails_after_one_frame)
    with pytest.raises(RuntimeError, match="stopped"):
        davis.segment_davis(root, out, model, sequences=["b"], preprocessing=small, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a", "c"]  # no b, no staging folder
    capsys.readouterr()
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 2
    assert "video_seg.json: the run did not finish b; re-run the same dino video-seg command" in capsys.readouterr().err
    assert main(["video-eval", "--davis", str(root), "--results", str(out), "--sequences", "a"]) == 0
    monkeypatch.setattr(davis, "segment_frames", original)
    done = davis.segment_davis(root, out, model, sequences=["b"], preprocessing=small, progress=False)
    assert [(r.name, r.skipped, r.frames) for r in done] == [("b", False, 3)]
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 0
    rows = (out / "per-sequence_results-val.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["c_1", "a_1", "b_1"]

    # A finished sequence with a frame gone is still an error naming the file.
    (out / "a" / "00001.png").unlink()
    capsys.readouterr()
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 2
    assert "a/00001.png: missing result for a frame 00001" in capsys.readouterr().err
    # Without a run record, val.txt is evaluated; a sequence never run is named with the way out.
    (out / "video_seg.json").unlink()
    for name in ("b", "a"):
        for path in (out / name).iterdir():
            path.unlink()
        (out / name).rmdir()
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 2
    assert (
        f"{out / 'a'}: no results for sequence a (listed in ImageSets/2017/val.txt; pass --sequences to evaluate "
        "only the sequences you ran)" in capsys.readouterr().err
    )
    assert main(["video-eval", "--davis", str(root), "--results", str(out), "--sequences", "c"]) == 0
