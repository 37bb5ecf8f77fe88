"""The model card's k-NN sequence-identity task, built from DAVIS frames (class = sequence).

Not a protocol of the library: bench/model_card.py, bench/ship_default_model.py, bench/train_proof_data.py,
bench/bf16_accuracy.py and the shipped model's k-NN check (tests/core/test_default_weights.py) build it, and
``dino knn`` or :func:`dino.eval.knn.run_knn` scores it. Imported from the bench scripts' folder
(``from davis_knn_task import write_davis_knn_task``).
"""

from __future__ import annotations

import os
from pathlib import Path

from dino.data.davis import davis_frames, davis_sequences

__all__ = ["write_davis_knn_task"]


def write_davis_knn_task(
    davis_root: str | os.PathLike[str], out: str | os.PathLike[str], every: int = 1
) -> tuple[int, int]:
    """A k-NN task from DAVIS frames (the model card's sequence-identity task): class = sequence; the first half
    of each sequence's frames (every `every`-th) is the bank ``out/train/<seq>/``, the second half the queries
    ``out/val/<seq>/``, as symbolic links. Sequences are those of ``ImageSets/2017/val.txt``.

    Returns:
        (bank size, query count).
    """
    bank = queries = 0
    for sequence in davis_sequences(davis_root, split="val", year="2017"):
        frames = davis_frames(davis_root, sequence)
        half = len(frames) // 2
        for split, chosen in (("train", frames[:half:every]), ("val", frames[half::every])):
            folder = Path(out) / split / sequence
            folder.mkdir(parents=True, exist_ok=True)
            for frame in chosen:
                link = folder / frame.name
                if not link.exists():
                    os.symlink(frame.resolve(), link)
            if split == "train":
                bank += len(chosen)
            else:
                queries += len(chosen)
    return bank, queries
