"""``kill -9`` during ``video-seg`` loses nothing: re-running the same command gives the uninterrupted result.

Each test runs the command in a subprocess, kills it with SIGKILL at a point seen from the outside (a sequence
finished and the next one half-written; half the frames of a video), re-runs it in this process and compares
the masks with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dino.cli import main
from dino.data.masks import read_indexed_png

WEIGHTS = ["--weights", "random:vit_tiny/16", "--device", "cpu", "--no-progress"]
KILL_TIMEOUT_S = 300


def _kill_when(args: list[str], ready: Callable[[], bool]) -> None:
    """Run ``dino ARGS`` in a subprocess and SIGKILL it as soon as `ready()`; fails if it ends first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dino.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(
                    f"dino {args[0]} ended (exit {process.returncode}) before the kill:\n{process.stdout.read()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"dino {args[0]} did not reach the kill point in {KILL_TIMEOUT_S} s")
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: read_indexed_png(path) for path in sorted(folder.glob("*.png"))}


def _staging(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.startswith(".") and path.name.endswith(".tmp")]


@pytest.mark.slow
def test_kill_9_during_davis_resumes_to_the_same_masks(tmp_path, make_davis, capsys) -> None:
    root = make_davis(tmp_path / "davis", {"a": 3, "b": 3})
    expected = tmp_path / "uninterrupted"
    assert main(["video-seg", "--davis", str(root), "--out", str(expected)] + WEIGHTS) == 0
    out = tmp_path / "results"
    command = ["video-seg", "--davis", str(root), "--out", str(out)] + WEIGHTS

    def b_half_written() -> bool:
        manifest = out / "video_seg.json"
        if not manifest.is_file() or "a" not in json.loads(manifest.read_text())["sequences"]:
            return False
        return any(len(list(folder.glob("*.png"))) >= 2 for folder in _staging(out))

    _kill_when(command, b_half_written)
    # Sequence a is complete, b is not there at all (only the dead writer's staging folder).
    assert _masks(out / "a").keys() == _masks(expected / "a").keys() and not (out / "b").exists()
    assert len(_staging(out)) == 1
    capsys.readouterr()
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 2
    assert "the run did not finish b" in capsys.readouterr().err

    assert main(command) == 0
    assert "a: already done, skipped" in capsys.readouterr().out
    assert not _staging(out)
    for name in ("a", "b"):
        ours, reference = _masks(out / name), _masks(expected / name)
        assert ours.keys() == reference.keys()
        assert all(np.array_equal(ours[frame], reference[frame]) for frame in reference)
    assert main(["video-eval", "--davis", str(root), "--results", str(out)]) == 0


@pytest.mark.slow
def test_kill_9_during_video_leaves_nothing_and_reruns_to_the_same_masks(tmp_path, make_clip) -> None:
    from dino.data.masks import write_indexed_png

    clip = tmp_path / "clip.mp4"
    write_indexed_png(tmp_path / "first.png", make_clip(clip, frames=4))
    source = ["video-seg", "--video", str(clip), "--first-mask", str(tmp_path / "first.png")]
    expected = tmp_path / "uninterrupted"
    assert main(source + ["--out", str(expected)] + WEIGHTS) == 0
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "out"
    command = source + ["--out", str(out)] + WEIGHTS

    def half_done() -> bool:
        return any(len(list((folder / "masks").glob("*.png"))) >= 2 for folder in _staging(runs))

    _kill_when(command, half_done)
    assert not out.exists()  # no half-written results folder: only the dead writer's staging folder beside it
    assert len(_staging(runs)) == 1

    assert main(command) == 0
    assert [path.name for path in runs.iterdir()] == ["out"]  # the staging folder was removed
    ours, reference = _masks(out / "masks"), _masks(expected / "masks")
    assert list(ours) == [f"{index:05d}.png" for index in range(4)] and ours.keys() == reference.keys()
    assert all(np.array_equal(ours[frame], reference[frame]) for frame in reference)
    assert (out / "overlay.mp4").stat().st_size > 0
