"""Fixtures of the retrieval tests: one-thread torch, tiny image folders, a revisitop-layout mini dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

# The mini dataset: a query frame of each query sequence; database frames of the same sequence within ±2
# frames are junk (near duplicates), 10-20 frames away are easy positives, over 20 away hard positives;
# frames of other sequences are distractors.
QUERY_SEQUENCES = ("blackswan", "dog")
QUERY_FRAME = 20
POSITIVE_FRAMES = (0, 5, 30, 35, 45, 49)
DISTRACTOR_SEQUENCES = ("car-shadow", "goat", "parkour", "soapbox")
DISTRACTOR_FRAMES = (0, 20, 39)
QUERY_BOX = (100.0, 40.0, 700.0, 440.0)


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every retrieval test runs single-threaded (see the root conftest)."""


def build_mini_revisitop(davis: Path, root: Path, name: str = "mini") -> dict:
    """Write ROOT/<name>/gnd_<name>.pkl and ROOT/<name>/jpg/<id>.jpg (symlinks to DAVIS frames)."""
    frames = davis / "JPEGImages" / "480p"
    jpg = root / name / "jpg"
    jpg.mkdir(parents=True)
    imlist: list[str] = []

    def add(sequence: str, frame: int) -> int:
        image_id = f"{sequence}_{frame:05d}"
        (jpg / f"{image_id}.jpg").symlink_to(frames / sequence / f"{frame:05d}.jpg")
        imlist.append(image_id)
        return len(imlist) - 1

    gnd = []
    for sequence in QUERY_SEQUENCES:
        entry = {"bbx": list(QUERY_BOX), "easy": [], "hard": [], "junk": []}
        for offset in range(-2, 3):
            entry["junk"].append(add(sequence, QUERY_FRAME + offset))
        for frame in POSITIVE_FRAMES:
            distance = abs(frame - QUERY_FRAME)
            entry["easy" if distance <= 20 else "hard"].append(add(sequence, frame))
        gnd.append(entry)
    for sequence in DISTRACTOR_SEQUENCES:
        for frame in DISTRACTOR_FRAMES:
            add(sequence, frame)
    config = {"imlist": imlist, "qimlist": [f"{s}_{QUERY_FRAME:05d}" for s in QUERY_SEQUENCES], "gnd": gnd}
    with open(root / name / f"gnd_{name}.pkl", "wb") as handle:
        pickle.dump(config, handle)
    return config


@pytest.fixture
def mini_revisitop(shared_data: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "revisitop"
    return root, build_mini_revisitop(shared_data / "davis2016-dev", root)
