"""`dino search index` killed with SIGKILL at random points loses nothing, and its rerun gives the index an
uninterrupted run gives (#19)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dino.cli import main
from dino.search.index import ImageIndex, partial_results_path

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = 30
# One image per batch and a flush after each: every described image is one chunk file of the partial results.
ARGUMENTS = ["--weights", "random:vit_tiny/16", "--no-progress", "--workers", "0", "--batch-size", "1"]
ARGUMENTS += ["--checkpoint-every", "1"]
TIMEOUT_S = 240


def _described(out: Path) -> set[str]:
    """The image paths in the chunk files of the partial results."""
    paths: set[str] = set()
    for chunk in partial_results_path(out).glob("chunk-*.npz"):
        with np.load(chunk) as data:
            paths.update(map(str, data["paths"]))
    return paths


def _run_and_kill(command: list[str], out: Path, after_chunks: int, delay_s: float) -> bool:
    """Run `command` and SIGKILL it `delay_s` after the partial results hold `after_chunks` chunks; whether it was
    killed (False: it finished first)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT_S
    partial = partial_results_path(out)
    while process.poll() is None:
        if partial.is_dir() and len(list(partial.glob("chunk-*.npz"))) >= after_chunks:
            time.sleep(delay_s)
            process.kill()
            process.wait()
            return process.returncode == -9
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{command} ran past {TIMEOUT_S} s")
        time.sleep(0.002)
    assert process.returncode == 0, process.stderr.read().decode()[-2000:]
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_an_uninterrupted_build(tmp_path, make_images, capsys) -> None:
    folder = tmp_path / "photos"
    make_images(folder, IMAGES)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # skipped by every run alike
    reference_out = tmp_path / "reference" / "idx"
    assert main(["search", "index", str(folder), "--out", str(reference_out), *ARGUMENTS]) == 0
    capsys.readouterr()

    out = tmp_path / "runs" / "idx"
    command = [sys.executable, "-m", "dino.cli", "search", "index", str(folder), "--out", str(out), *ARGUMENTS]
    rng = random.Random(19)
    first, second = sorted(rng.sample(range(1, IMAGES), 2))
    # Two kills while describing, one after the last image was described (building, saving or cleaning up).
    kills = [(first, rng.uniform(0, 0.05)), (second, rng.uniform(0, 0.05)), (IMAGES, rng.uniform(0, 0.02))]
    described: set[str] = set()
    for after_chunks, delay_s in kills:
        killed = _run_and_kill(command, out, after_chunks, delay_s)
        now = _described(out)
        if killed and not out.exists():
            assert now >= described and len(now) >= after_chunks  # nothing described before was lost
        described = now
    assert _run_and_kill(command, out, after_chunks=IMAGES + 1, delay_s=0) is False  # the rerun completes

    resumed, reference = ImageIndex.load(out), ImageIndex.load(reference_out)
    assert resumed.manifest["files"] == reference.manifest["files"]
    assert resumed.skipped == reference.skipped and list(resumed.skipped) == [str(folder / "broken.jpg")]
    for field in ("backbone", "recipe", "whitening", "dim", "factory"):
        assert resumed.manifest[field] == reference.manifest[field]
    np.testing.assert_allclose(resumed.vectors(), reference.vectors(), rtol=0, atol=1e-6)
    # Nothing left beside it: no partial results, staging folders, temporaries or set-aside copies.
    assert sorted(p.name for p in out.parent.iterdir()) == ["idx"]
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["checksums"].keys() == {"index.faiss"}
