"""Finding copies: index a collection with the copy-detection descriptor, then ask which images copy a query.

The index is the core's FAISS index (:mod:`dino.search.index`) built with :meth:`DescriptorRecipe.copy_detection` and,
optionally, a whitening stored inside it; a query's likely copies are its nearest indexed images whose cosine
similarity reaches a threshold.

How the thresholds were calibrated (docs/copy_detection.md, "Calibrating the copy threshold"): a benchmark was
generated from the 43 photos of the project's real check (``bench/copy_detection_real_check.py``: ``make-benchmark
--seed 0 --max-side 1024``, 20 originals, 10 whitening photos, 13 distractors), every query of every block but
``original`` was compared with every database image (420 copy pairs, 13,440 non-copy pairs), and the threshold
maximising F1 between copy and non-copy pairs was taken, unwhitened (the setting ``copy-detect index`` uses by
default); ``copy-detect eval`` reports the same ``calibration`` for any backbone and benchmark. Similarities have
another scale for every backbone, so ``CALIBRATIONS`` (:mod:`apps.copy_detection.defaults`) holds one per offline
backbone, chosen by the weights the index was built with; for other weights run ``copy-detect eval`` on a benchmark
made from photos like yours and pass its ``max_f1`` threshold as ``--threshold``.

With verification (:mod:`apps.copy_detection.verify`) a candidate is a copy when enough of its local-feature
matches with the query agree on one affine map. The minimum of matches was calibrated on the same benchmark the
same way, with find's shortlist of 10 candidates per query (``bench/copy_detection_real_check.py
--calibrate-verify KIND``), per backbone and verifier (``CALIBRATIONS`` (:mod:`apps.copy_detection.defaults`)).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from tqdm.auto import tqdm

from apps.copy_detection.defaults import CALIBRATIONS, DEFAULT_CALIBRATION, DEFAULT_CANDIDATES, CopyCalibration
from apps.copy_detection.evaluate import load_or_fit_whitening
from apps.copy_detection.verify import (
    FeatureCache,
    LocalFeatures,
    check_verifier,
    count_inliers,
    make_local_extractor,
)
from dino.data.io import list_images
from dino.features import OnError
from dino.models.backbone import Backbone
from dino.runtime import Runtime
from dino.search.descriptors import COPY_DETECTION_SIZE, DescriptorExtractor, DescriptorRecipe
from dino.search.index import ImageIndex, IndexMismatchError, build_index, search_images
from dino.search.whitening import Whitening

__all__ = [
    "CopyHit",
    "build_copy_index",
    "calibrated_min_inliers",
    "calibration_for",
    "find_copies",
]


def calibration_for(model: Backbone) -> CopyCalibration:
    """The thresholds calibrated for `model`'s weights, or the default backbone's when it has none."""
    weights = model.provenance.source if model.provenance is not None else ""
    return CALIBRATIONS.get(weights, DEFAULT_CALIBRATION)


def calibrated_min_inliers(model: Backbone, verify: str) -> int:
    """The calibrated minimum of verified matches for `model` and the verifier `verify`.

    Raises:
        ValueError: That verifier was not calibrated for these weights (the message says how to do it).
    """
    check_verifier(verify, model)
    calibration = calibration_for(model)
    if verify not in calibration.min_inliers:
        raise ValueError(
            f"--verify {verify} has no calibrated minimum of matches for these weights (calibrated: "
            f"{', '.join(calibration.min_inliers)}); pass --min-inliers N, e.g. the max_f1 count that "
            f"'copy-detect eval --verify {verify}' prints for them"
        )
    return calibration.min_inliers[verify]


class CopyHit(NamedTuple):
    """A likely copy: the indexed image, its cosine similarity to the query, its rank among the candidates by
    that similarity (0 = best), and its verified local matches (None without verification)."""

    path: str
    score: float
    rank: int
    inliers: int | None = None


def build_copy_index(
    images: Sequence[str | os.PathLike[str]],
    model: Backbone,
    out: str | os.PathLike[str] | None = None,
    whitening: str | os.PathLike[str] | Whitening | None = None,
    centered_whitening: bool = False,
    factory: str = "Flat",
    size: int = COPY_DETECTION_SIZE,
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> ImageIndex:
    """Index image files and folders (searched recursively) with the copy-detection descriptor.

    Args:
        images: Files and folders to index.
        model: The backbone.
        out: Where to save the index (atomically); not saved when None.
        whitening: A folder of images to fit a whitening on, a saved whitening file, or a fitted one. Fitting
            stops at an unusable image of that folder whatever `on_error` says: the whitening set is chosen.
        centered_whitening: Fit a centred PCA-whitening instead of the reference's uncentred one.
        factory: The FAISS index_factory string (``Flat`` is exact).
        size: Side of the square the images are resized to.
        on_error: An unusable image of the collection: ``raise`` its error, or ``skip`` it, leaving it out of the
            index and listing it in :attr:`ImageIndex.skipped` (see :func:`dino.search.index.build_index`).
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None.
    """
    paths = list_images(images, required=True)
    recipe = DescriptorRecipe.copy_detection(size, backbone=model)
    if isinstance(whitening, (str, os.PathLike)):
        extractor = DescriptorExtractor(model, recipe, runtime=runtime)
        whitening = load_or_fit_whitening(whitening, extractor, centered=centered_whitening)
    return build_index(
        paths, model, recipe, whitening=whitening, factory=factory, out=out, on_error=on_error, runtime=runtime
    )


def find_copies(
    queries: Sequence[str | os.PathLike[str] | Image.Image],
    index: ImageIndex,
    model: Backbone,
    threshold: float | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    include_self: bool = False,
    verify: str | None = None,
    min_inliers: int | None = None,
    runtime: Runtime | None = None,
) -> list[list[CopyHit]]:
    """The indexed images that are likely copies of each query, best first.

    Without verification a candidate is a copy when its cosine similarity reaches `threshold`. With it
    (:mod:`apps.copy_detection.verify`), every candidate's local-feature matches with the query are counted and
    the candidate is a copy when at least `min_inliers` of them agree on one affine map; `threshold` is not used,
    and the hits are ordered by that count. Verification reads the candidate images from their indexed paths.

    Args:
        queries: Image files or PIL images.
        index: An index built with the copy-detection recipe (:func:`build_copy_index`).
        model: The backbone the index was built with (checked).
        threshold: Minimum cosine similarity of a copy, without verification; the one calibrated for `model`
            when None (:func:`calibration_for`).
        candidates: Nearest indexed images examined per query.
        include_self: Keep a hit that is the query file itself (same resolved path).
        verify: Decide by verified matches of these local features (``dino`` patch tokens or ``sift``) instead
            of the global similarity.
        min_inliers: Minimum verified matches of a copy; the one calibrated for `model` and the verifier when None.
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`), for the queries' descriptors and the
            ``dino`` verifier; ``Runtime()`` when None.

    Returns:
        Per query, its copies.

    Raises:
        IndexMismatchError: `index` was not built with the copy-detection descriptor.
        FileNotFoundError: With verification, a candidate's indexed file no longer exists.
    """
    if not queries:
        raise ValueError("no query images")
    recipe = index.recipe
    if recipe != DescriptorRecipe.copy_detection(recipe.size, backbone=model):
        raise IndexMismatchError(
            f"{index.path or 'this index'}: built with another descriptor ({recipe.pooling} pooling, "
            f"{recipe.preprocessing} preprocessing) than copy detection's, for which the thresholds are calibrated; "
            "index the collection with 'dino copy-detect index'"
        )
    runtime = runtime or Runtime()
    local = make_local_extractor(verify, model, runtime) if verify is not None else None
    indexed = FeatureCache(_indexed_file_reader(local)) if local is not None else None
    if threshold is None:
        threshold = calibration_for(model).threshold
    if verify is not None and min_inliers is None:
        min_inliers = calibrated_min_inliers(model, verify)
    results = search_images(index, queries, model, k=min(candidates, len(index)), runtime=runtime)
    copies = []
    progress = runtime.progress and local is not None
    for query, hits in zip(queries, tqdm(results, desc="verifying", unit="query", disable=not progress), strict=True):
        own_path = None if isinstance(query, Image.Image) or include_self else Path(query).resolve()
        hits = [hit for hit in hits if Path(hit.path).resolve() != own_path]
        if local is None:
            copies.append([CopyHit(*hit) for hit in hits if hit.score >= threshold])
            continue
        query_features = local(query)
        verified = [CopyHit(*hit, inliers=count_inliers(query_features, indexed(hit.path))) for hit in hits]
        copies.append(sorted((h for h in verified if h.inliers >= min_inliers), key=lambda h: (-h.inliers, h.rank)))
    return copies


def _indexed_file_reader(local: Callable[[str], LocalFeatures]) -> Callable[[str], LocalFeatures]:
    """`local` for indexed files, with an error that says what to do when one has gone."""

    def read(path: str) -> LocalFeatures:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: indexed image not found; verification reads the indexed files (rebuild the index "
                "with 'copy-detect index', or run without verification)"
            )
        return local(path)

    return read
