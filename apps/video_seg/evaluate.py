"""DAVIS semi-supervised evaluation of a results folder, with davis2017-evaluation's semantics (SPEC §11).

Per sequence: the ground truth's objects are 1..max(first annotation); the first and last frames are not
evaluated; result PNGs are index maps, an object id above the ground truth's count is an error and a
missing id counts as an empty mask. J and F are computed per object per frame, summarised per object
(mean / recall / decay), and the global J-Mean and F-Mean are means over **objects**, not sequences.

Unlike the official script, results are always recomputed: it reuses existing CSVs if it finds them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from apps.video_seg.davis import recorded_sequences
from apps.video_seg.metrics import Statistics, boundary_f_measure, statistics
from dino.atomic import atomic_write
from dino.data.davis import davis_annotations, davis_sequences
from dino.data.masks import mask_iou, read_indexed_png

__all__ = ["Evaluation", "ObjectScores", "evaluate_davis", "evaluate_sequence", "format_table", "write_csvs"]

VOID_LABEL = 255
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectScores:
    """J and F of one object of one sequence: per evaluated frame and summarised."""

    sequence: str
    object_id: int
    j_per_frame: np.ndarray
    f_per_frame: np.ndarray

    @property
    def name(self) -> str:
        """``<sequence>_<id>``, the row name of the official per-sequence CSV."""
        return f"{self.sequence}_{self.object_id}"

    @property
    def j(self) -> Statistics:
        return statistics(self.j_per_frame)

    @property
    def f(self) -> Statistics:
        return statistics(self.f_per_frame)


@dataclass(frozen=True)
class Evaluation:
    """Scores of every object of every evaluated sequence, with the official global summary."""

    objects: list[ObjectScores]

    def global_scores(self) -> dict[str, float]:
        """The seven numbers of ``global_results-<set>.csv`` (fractions in [0, 1])."""
        j = [o.j for o in self.objects]
        f = [o.f for o in self.objects]
        j_mean = float(np.mean([s.mean for s in j]))
        f_mean = float(np.mean([s.mean for s in f]))
        values = (
            (j_mean + f_mean) / 2,
            j_mean,
            float(np.mean([s.recall for s in j])),
            float(np.mean([s.decay for s in j])),
            f_mean,
            float(np.mean([s.recall for s in f])),
            float(np.mean([s.decay for s in f])),
        )
        return dict(zip(GLOBAL_COLUMNS, values, strict=True))


def _object_masks(labels: np.ndarray, count: int) -> np.ndarray:
    """(count, frames, H, W) booleans: one mask per object id 1..count."""
    return labels[None] == np.arange(1, count + 1)[:, None, None, None]


def evaluate_sequence(
    annotations: Sequence[Path], results: str | os.PathLike[str], sequence: str
) -> list[ObjectScores]:
    """J and F of one sequence's results (``<results>/<frame>.png``) against its annotations.

    Raises:
        FileNotFoundError: A result PNG is missing (the message names it).
        ValueError: A result has another size than its annotation, or more objects than the ground truth.
    """
    results = Path(results)
    if len(annotations) < 3:
        raise ValueError(f"{sequence}: {len(annotations)} annotated frames; the first and last are not evaluated")
    first = read_indexed_png(annotations[0])
    num_objects = int(np.max(np.where(first == VOID_LABEL, 0, first)))
    evaluated = annotations[1:-1]
    truth = np.stack([read_indexed_png(path) for path in evaluated])
    truth[truth == VOID_LABEL] = 0
    predictions = []
    for path in evaluated:
        result_path = results / f"{path.stem}.png"
        if not result_path.is_file():
            raise FileNotFoundError(f"{result_path}: missing result for {sequence} frame {path.stem}")
        prediction = read_indexed_png(result_path)
        if prediction.shape != truth.shape[1:]:
            raise ValueError(
                f"{result_path}: size {prediction.shape[::-1]} differs from the annotation's "
                f"{truth.shape[:0:-1]} (w, h)"
            )
        predictions.append(prediction)
    predictions = np.stack(predictions)
    if int(predictions.max()) > num_objects:
        raise ValueError(
            f"{results}: object id {int(predictions.max())} in the results but {sequence} has {num_objects} objects"
        )
    true_masks = _object_masks(truth, num_objects)
    predicted_masks = _object_masks(predictions, num_objects)
    scores = []
    for index in range(num_objects):
        j = np.array([mask_iou(t, p) for t, p in zip(true_masks[index], predicted_masks[index], strict=True)])
        f = np.array([boundary_f_measure(t, p) for t, p in zip(true_masks[index], predicted_masks[index], strict=True)])
        scores.append(ObjectScores(sequence, index + 1, j, f))
    return scores


def evaluate_davis(
    root: str | os.PathLike[str],
    results: str | os.PathLike[str],
    sequences: Sequence[str] | None = None,
    split: str = "val",
    progress: bool = True,
) -> Evaluation:
    """Evaluate ``<results>/<sequence>/<frame>.png`` on DAVIS sequences: `sequences`; by default those the
    ``video-seg --davis`` run into `results` was asked for (its ``video_seg.json``), else those of
    ``ImageSets/2017/<split>.txt``.

    Raises:
        ValueError: The run did not finish some of its sequences, or nothing to evaluate.
        FileNotFoundError: A sequence has no results folder, or a result PNG is missing (the message names it).
    """
    results = Path(results)
    listing = None  # where the names came from, when that was the split's list rather than the user or the run
    if sequences:
        names = list(sequences)
    elif (names := recorded_sequences(results)) is None:
        listing = f"ImageSets/2017/{split}.txt"
        names = davis_sequences(root, split)
    for name in names:
        if not (results / name).is_dir():
            hint = f" (listed in {listing}; pass --sequences to evaluate only the sequences you ran)" if listing else ""
            raise FileNotFoundError(f"{results / name}: no results for sequence {name}{hint}")
    objects: list[ObjectScores] = []
    for name in tqdm(names, desc="J&F", unit="sequence", disable=not progress):
        objects.extend(evaluate_sequence(davis_annotations(root, name), results / name, name))
    if not objects:
        raise ValueError(f"{root}: the evaluated sequences hold no annotated objects")
    return Evaluation(objects)


def _csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    buffer.write(",".join(header) + "\n")
    for row in rows:
        buffer.write(",".join(value if isinstance(value, str) else f"{value:.3f}" for value in row) + "\n")
    return buffer.getvalue()


def write_csvs(evaluation: Evaluation, results: str | os.PathLike[str], split: str = "val") -> list[Path]:
    """Write the official ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``, atomically."""
    results = Path(results)
    scores = evaluation.global_scores()
    files = {
        results / f"global_results-{split}.csv": _csv(GLOBAL_COLUMNS, [list(scores.values())]),
        results / f"per-sequence_results-{split}.csv": _csv(
            ("Sequence", "J-Mean", "F-Mean"), [(o.name, o.j.mean, o.f.mean) for o in evaluation.objects]
        ),
    }
    for path, text in files.items():
        with atomic_write(path, "w") as handle:
            handle.write(text)
    return list(files)


def format_table(evaluation: Evaluation) -> str:
    """The global summary and the per-object table, as the official script prints them."""
    scores = evaluation.global_scores()
    lines = ["Global results:", "  ".join(f"{name:>8}" for name in GLOBAL_COLUMNS)]
    lines.append("  ".join(f"{value:>8.3f}" for value in scores.values()))
    width = max(len("Sequence"), *(len(o.name) for o in evaluation.objects))
    lines += ["", "Per-sequence results:", f"{'Sequence':<{width}}  {'J-Mean':>8}  {'F-Mean':>8}"]
    lines += [f"{o.name:<{width}}  {o.j.mean:>8.3f}  {o.f.mean:>8.3f}" for o in evaluation.objects]
    return "\n".join(lines)
