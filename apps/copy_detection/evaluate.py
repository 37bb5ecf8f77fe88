"""The Copydays copy-detection evaluation (SPEC §12; the reference's ``eval_copy_detection.py``).

Every query block is searched against the originals plus optional distractors with the copy-detection
descriptor ([CLS] ⊕ GeM(p=4) of a 320×320 bicubic resize, :meth:`DescriptorRecipe.copy_detection`), optionally
PCA-whitened with a whitening fitted on a separate image set, L2-normalised, compared by cosine similarity;
each block is scored by the mean Holidays AP over the top 20 (:mod:`apps.copy_detection.metrics`).

The evaluation also reports the similarity threshold that best separates copy pairs from non-copy pairs on the
benchmark (:func:`calibrate_threshold`), which is how the default of ``copy-detect find`` was chosen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from apps.copy_detection.copydays import ORIGINAL_BLOCK, CopydaysLayout, read_copydays
from apps.copy_detection.defaults import DEFAULT_CANDIDATES, TOP_K
from apps.copy_detection.metrics import block_map
from apps.copy_detection.verify import (
    FeatureCache,
    LocalFeatures,
    check_verifier,
    count_inliers,
    make_local_extractor,
)
from dino.checkpoint import model_identity
from dino.data.io import list_images
from dino.models.backbone import Backbone
from dino.runtime import Runtime
from dino.search.descriptors import (
    DescriptorExtractor,
    DescriptorRecipe,
    finalize_descriptors,
    fit_descriptor_whitening,
    load_descriptor_whitening,
)
from dino.search.whitening import Whitening

__all__ = [
    "BlockResult",
    "Calibration",
    "CopydaysDescriptors",
    "CopydaysReport",
    "calibrate_threshold",
    "calibrate_verification",
    "describe_copydays",
    "evaluate_copydays",
    "format_table",
    "load_or_fit_whitening",
    "score_blocks",
    "score_copydays",
    "top_k_neighbours",
]


@dataclass(frozen=True)
class BlockResult:
    """The score of one query block."""

    block: str
    queries: int
    mAP: float


@dataclass(frozen=True)
class Calibration:
    """A similarity threshold for "is a copy" and how well it separates copy from non-copy pairs.

    Attributes:
        threshold: Pairs scoring at least this are called copies.
        criterion: How it was chosen (``max_f1`` or ``precision>=P``).
        precision, recall, f1: Over all (query, database image) pairs of the benchmark at that threshold.
        positives, negatives: Numbers of copy and non-copy pairs.
    """

    threshold: float
    criterion: str
    precision: float
    recall: float
    f1: float
    positives: int
    negatives: int


@dataclass
class CopydaysReport:
    """The result of :func:`evaluate_copydays`; :meth:`as_dict` is the JSON output."""

    benchmark: str
    blocks: list[BlockResult]
    database: dict[str, int]
    whitening: dict[str, Any] | None
    calibration: list[Calibration]
    backbone: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    top_k: int = TOP_K
    verification: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "protocol": f"Copydays (SPEC §12): mean Holidays AP over the top {self.top_k}, per query block",
            "backbone": self.backbone,
            "recipe": self.recipe,
            "database": self.database,
            "whitening": self.whitening,
            "blocks": [vars(block) for block in self.blocks],
            "calibration": [vars(c) for c in self.calibration],
            "verification": self.verification,
        }


def top_k_neighbours(queries: np.ndarray, database: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The reference's ``torch.mm(queries, database.T).topk(k)``: (similarities, database indices), best first."""
    similarity = torch.from_numpy(queries) @ torch.from_numpy(database).T
    scores, indices = similarity.topk(min(k, database.shape[0]), dim=1, largest=True, sorted=True)
    return scores.numpy(), indices.numpy()


def score_blocks(layout: CopydaysLayout, retrieved: np.ndarray) -> list[BlockResult]:
    """Per-block mAP from the (num queries, k) retrieved database indices of ``layout.queries``."""
    results, start = [], 0
    for block in layout.blocks:
        stop = start + len(block)
        results.append(BlockResult(block.name, len(block), block_map(retrieved[start:stop], block.positives)))
        start = stop
    return results


def calibrate_threshold(similarity: np.ndarray, is_copy: np.ndarray, min_precision: float | None = None) -> Calibration:
    """The threshold on pair similarities that best separates copies from non-copies.

    Args:
        similarity: Scores of (query, database image) pairs, any shape.
        is_copy: Same shape; True where the database image is a true copy of the query.
        min_precision: None picks the threshold of maximum F1; a value picks the lowest threshold (highest
            recall) whose precision reaches it.

    Raises:
        ValueError: No copy pairs, or no threshold reaches `min_precision`.
    """
    scores, labels = np.ravel(similarity).astype(np.float64), np.ravel(is_copy).astype(bool)
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError("calibration needs at least one copy pair")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    # Thresholding at scores[i] accepts pairs 0..i (ties included: only the last of each run of equal scores).
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    true_pos = np.cumsum(labels)[last_of_tie]
    accepted = (np.arange(len(scores)) + 1)[last_of_tie]
    thresholds = scores[last_of_tie]
    precision, recall = true_pos / accepted, true_pos / positives
    f1 = np.where(true_pos > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    if min_precision is None:
        best, criterion = int(np.argmax(f1)), "max_f1"
    else:
        reaching = np.flatnonzero(precision >= min_precision)
        if not len(reaching):
            raise ValueError(f"no threshold reaches precision {min_precision}")
        best, criterion = int(reaching[-1]), f"precision>={min_precision:g}"
    return Calibration(
        threshold=float(thresholds[best]),
        criterion=criterion,
        precision=float(precision[best]),
        recall=float(recall[best]),
        f1=float(f1[best]),
        positives=positives,
        negatives=len(scores) - positives,
    )


def load_or_fit_whitening(
    source: str | os.PathLike[str],
    extractor: DescriptorExtractor,
    centered: bool = False,
) -> Whitening:
    """A whitening from a saved ``.npz`` (checked against the backbone and recipe) or fitted on a folder.

    Args:
        source: A file written by :meth:`Whitening.save`, or a folder of images (searched recursively) to fit on,
            disjoint from the benchmark (SPEC §12: the paper uses 20k other YFCC100M images).
        extractor: Computes the raw descriptors (its own whitening, if any, is ignored).
        centered: Fit on the centred covariance instead of the reference's uncentred second moment.
    """
    source = Path(source)
    if source.is_file():
        return load_descriptor_whitening(source, extractor.features.model, extractor.recipe)
    images = list_images(source)
    if len(images) < 2:
        raise ValueError(f"{source}: a whitening set needs at least 2 images, found {len(images)}")
    return fit_descriptor_whitening(extractor, images, centered=centered, source=str(source))


@dataclass(frozen=True)
class CopydaysDescriptors:
    """Raw (unwhitened, unnormalised) descriptors of a benchmark, computed once and scorable many ways.

    Attributes:
        database: (originals + distractors, D): the originals in sorted order, then the distractors.
        queries: (all queries, D) in the order of :attr:`CopydaysLayout.queries`.
        distractors: How many rows of `database` are distractors.
    """

    database: np.ndarray
    queries: np.ndarray
    distractors: int


def describe_copydays(
    layout: CopydaysLayout, extractor: DescriptorExtractor, distractors: Sequence[str | os.PathLike[str]] = ()
) -> CopydaysDescriptors:
    """Raw descriptors of the originals, distractors and every query block."""
    if layout.blocks[0].name != ORIGINAL_BLOCK:
        raise ValueError(f"{layout.root}: the first query block must be the originals, got {layout.blocks[0].name}")
    database = extractor.extract_raw(list(layout.originals) + list(distractors))
    # The `original` block queries the originals themselves: reuse their descriptors.
    queries = database[: len(layout.originals)]
    others = [path for block in layout.blocks[1:] for path in block.images]
    if others:
        queries = np.concatenate([queries, extractor.extract_raw(others)])
    return CopydaysDescriptors(database=database, queries=queries, distractors=len(distractors))


def score_copydays(
    layout: CopydaysLayout,
    descriptors: CopydaysDescriptors,
    whitening: Whitening | None = None,
    top_k: int = TOP_K,
) -> tuple[list[BlockResult], list[Calibration]]:
    """Whiten (optionally) and L2-normalise, search the top `top_k`, score every block and calibrate a threshold.

    Returns:
        The per-block mAPs, and the thresholds separating copy pairs from non-copy pairs (max F1, and precision
        ≥ 0.95 when reachable) over the queries of every block but ``original`` against the whole database.
    """
    database = finalize_descriptors(descriptors.database, whitening)
    queries = finalize_descriptors(descriptors.queries, whitening)
    _, retrieved = top_k_neighbours(queries, database, top_k)
    originals = len(layout.originals)
    similarity = queries[originals:] @ database.T
    return score_blocks(layout, retrieved), _calibrations(similarity, _copy_pairs(layout, database.shape[0]))


def calibrate_verification(
    layout: CopydaysLayout,
    descriptors: CopydaysDescriptors,
    database_images: Sequence[str | os.PathLike[str]],
    local: Callable[[str | os.PathLike[str]], LocalFeatures],
    candidates: int,
    whitening: Whitening | None = None,
    progress: bool = True,
) -> tuple[Calibration, np.ndarray]:
    """The minimum of verified matches that best separates copies from non-copies, deciding as ``find --verify``.

    Every query of every block but ``original`` shortlists its `candidates` most similar database images by the
    descriptor (whitened as the index would be), and the verified matches of each shortlisted pair are counted
    (:func:`apps.copy_detection.verify.count_inliers`). Pairs outside the shortlist score -1, so copies the
    shortlist misses count against recall.

    Args:
        layout, descriptors: The benchmark and its raw descriptors (:func:`describe_copydays`).
        database_images: The database files in the order of ``descriptors.database`` (originals, distractors).
        local: Local features of an image file (:func:`apps.copy_detection.verify.make_local_extractor`).
        candidates: Database images verified per query.
        whitening: The index's whitening, if any.
        progress: Show a progress bar over the queries.

    Returns:
        The max-F1 calibration (its ``threshold`` is the minimum of matches), and the (queries, database) matches.
    """
    if len(database_images) != descriptors.database.shape[0]:
        raise ValueError(f"{len(database_images)} database images for {descriptors.database.shape[0]} descriptors")
    originals = len(layout.originals)
    queries = finalize_descriptors(descriptors.queries[originals:], whitening)
    _, shortlist = top_k_neighbours(queries, finalize_descriptors(descriptors.database, whitening), candidates)
    is_copy = _copy_pairs(layout, len(database_images))
    inliers = np.full(is_copy.shape, -1.0)
    database_features = FeatureCache(local)
    query_images = layout.queries[originals:]
    for row, path in enumerate(tqdm(query_images, desc="verifying", unit="query", disable=not progress)):
        features = local(path)
        for column in map(int, shortlist[row]):
            inliers[row, column] = count_inliers(features, database_features(database_images[column]))
    return calibrate_threshold(inliers, is_copy), inliers


def evaluate_copydays(
    root: str | os.PathLike[str],
    model: Backbone,
    distractors: str | os.PathLike[str] | None = None,
    whitening: str | os.PathLike[str] | Whitening | None = None,
    centered_whitening: bool = False,
    recipe: DescriptorRecipe | None = None,
    top_k: int = TOP_K,
    verify: str | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    runtime: Runtime | None = None,
) -> CopydaysReport:
    """Run the Copydays protocol on a Copydays-layout folder.

    Args:
        root: The benchmark (``original/``, ``strong/``, ``jpegqual/<q>/``, ``crops/<c>/``).
        model: The backbone.
        distractors: A folder of images added to the database (searched recursively).
        whitening: A folder of images to fit the whitening on, a saved whitening file, or a fitted
            :class:`Whitening`; None compares unwhitened descriptors.
        centered_whitening: Fit a centred PCA-whitening instead of the reference's uncentred one.
        recipe: The descriptor; the reference's copy-detection recipe by default.
        top_k: Results scored per query.
        verify: Also calibrate ``find --verify`` with this verifier (``dino``, ``sift``):
            :func:`calibrate_verification` over `candidates` per query.
        candidates: Database images verified per query.
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`), for the descriptors and the ``dino``
            verifier; ``Runtime()`` when None (``copy-detect eval`` passes ``dtype="fp32"``, the reference's).
    """
    if verify is not None:
        check_verifier(verify, model)
    layout = read_copydays(root)
    recipe = recipe or DescriptorRecipe.copy_detection(backbone=model)
    runtime = runtime or Runtime()
    extractor = DescriptorExtractor(model, recipe, runtime=runtime)
    distractor_images = list_images(distractors) if distractors is not None else []
    if distractors is not None and not distractor_images:
        raise ValueError(f"{distractors}: no distractor images found")
    if isinstance(whitening, (str, os.PathLike)):
        whitening = load_or_fit_whitening(whitening, extractor, centered=centered_whitening)
    descriptors = describe_copydays(layout, extractor, distractor_images)
    blocks, calibration = score_copydays(layout, descriptors, whitening, top_k)
    verification = None
    if verify is not None:
        local = make_local_extractor(verify, model, runtime)
        database_images = list(layout.originals) + list(distractor_images)
        verified, _ = calibrate_verification(
            layout, descriptors, database_images, local, candidates, whitening, runtime.progress
        )
        verification = {"verifier": verify, "candidates": candidates, "calibration": vars(verified)}
    return CopydaysReport(
        benchmark=str(root),
        blocks=blocks,
        database={"originals": len(layout.originals), "distractors": len(distractor_images)},
        whitening=_whitening_summary(whitening),
        calibration=calibration,
        backbone=model_identity(model),
        recipe=recipe.as_dict(),
        top_k=top_k,
        verification=verification,
    )


def _copy_pairs(layout: CopydaysLayout, database_size: int) -> np.ndarray:
    """(queries of every block but ``original``, database) booleans: True where the pair is a copy."""
    rows = [positives for block in layout.blocks if block.name != ORIGINAL_BLOCK for positives in block.positives]
    is_copy = np.zeros((len(rows), database_size), dtype=bool)
    for row, positives in enumerate(rows):
        is_copy[row, list(positives)] = True
    return is_copy


def _calibrations(similarity: np.ndarray, is_copy: np.ndarray) -> list[Calibration]:
    calibrations = [calibrate_threshold(similarity, is_copy)]
    try:
        calibrations.append(calibrate_threshold(similarity, is_copy, min_precision=0.95))
    except ValueError:
        pass  # no threshold is that precise: only the max-F1 one is reported
    return calibrations


def _whitening_summary(whitening: Whitening | None) -> dict[str, Any] | None:
    if whitening is None:
        return None
    return {"energy_kept": whitening.energy_kept, "dim": whitening.out_dim, **whitening.metadata}


def format_table(report: CopydaysReport) -> str:
    """A plain-text table: one row per block, then the calibrated thresholds."""
    blocks = report.blocks
    width = max(len(block.block) for block in blocks)
    lines = [f"{'block':<{width}}  queries    mAP"]
    lines += [f"{b.block:<{width}}  {b.queries:>7}  {b.mAP:.3f}" for b in blocks]
    database = report.database
    lines.append(f"database: {database['originals']} originals + {database['distractors']} distractors")
    for c in report.calibration:
        lines.append(
            f"copy threshold ({c.criterion}): {c.threshold:.4f}  precision {c.precision:.3f}  recall {c.recall:.3f}"
            f"  F1 {c.f1:.3f}  ({c.positives} copy / {c.negatives} non-copy pairs)"
        )
    if report.verification is not None:
        v, c = report.verification, report.verification["calibration"]
        lines.append(
            f"verified matches ({v['verifier']}, {v['candidates']} candidates, {c['criterion']}): "
            f"{c['threshold']:.0f}  precision {c['precision']:.3f}  recall {c['recall']:.3f}  F1 {c['f1']:.3f}"
            "  (to pass to 'copy-detect find --verify --min-inliers')"
        )
    return "\n".join(lines)
