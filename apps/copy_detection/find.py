"""Finding copies: index a collection with the copy-detection descriptor, then ask which images copy a query.

The index is the core's FAISS index (:mod:`dino.index`) built with :meth:`DescriptorRecipe.copy_detection` and,
optionally, a whitening stored inside it; a query's likely copies are its nearest indexed images whose cosine
similarity reaches a threshold.

How :data:`DEFAULT_THRESHOLD` was calibrated (docs/copy_detection.md, "Calibrating the copy threshold"): a
benchmark was generated from the 43 photos of the project's real check (``bench/copy_detection_real_check.py``:
``make-benchmark --seed 0 --max-side 1024``, 20 originals, 10 whitening photos, 13 distractors), every query of
every block but ``original`` was compared with every database image (420 copy pairs, 13,440 non-copy pairs), and
the threshold maximising F1 between copy and non-copy pairs was taken; ``copy-detect eval`` reports the same
``calibration`` for any backbone and benchmark. The constant is that of the shipped ``default`` weights
(docs/MODEL_CARD.md; they never trained on that benchmark's originals or distractors), unwhitened, the setting
``copy-detect index`` uses by default. Other weights have other similarity scales: run ``copy-detect eval`` on a
benchmark made from photos like yours and pass its ``max_f1`` threshold as ``--threshold``.

With verification (:mod:`apps.copy_detection.verify`) a candidate is a copy when enough of its local-feature
matches with the query agree on one affine map. :data:`DEFAULT_MIN_INLIERS` was calibrated on the same benchmark
the same way, with find's shortlist of 10 candidates per query (``bench/copy_detection_real_check.py
--calibrate-verify KIND``): ``dino`` patch tokens of the default weights, 42 matches, P 0.857, R 0.914; ``sift``,
50 matches, P 0.851, R 0.845; the similarity threshold gives P 0.928, R 0.707 (docs/copy_detection.md,
"Verified copies").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image
from tqdm.auto import tqdm

from apps.copy_detection.evaluate import load_or_fit_whitening
from apps.copy_detection.verify import (
    DEFAULT_CANDIDATES,
    FeatureCache,
    LocalFeatures,
    count_inliers,
    make_local_extractor,
)
from dino.data.io import list_images
from dino.descriptors import COPY_DETECTION_SIZE, DescriptorExtractor, DescriptorRecipe
from dino.index import ImageIndex, IndexMismatchError, build_index, search_images
from dino.models.vision_transformer import VisionTransformer
from dino.whitening import Whitening

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_MIN_INLIERS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_VERIFIER",
    "CopyHit",
    "build_copy_index",
    "find_copies",
]

# The max-F1 copy/non-copy threshold of the `default` weights, unwhitened, on the real-check benchmark (0.9846:
# precision 0.928, recall 0.707 over 420 copy and 13,440 non-copy pairs); see the module docstring.
DEFAULT_THRESHOLD = 0.985
# With verification, per verifier, the max-F1 number of verified matches on the same benchmark (`dino`: with the
# `default` weights' patch tokens).
DEFAULT_MIN_INLIERS = {"dino": 42, "sift": 50}
# The verifier of `find --verify` without a value: the one with the best F1 on that benchmark.
DEFAULT_VERIFIER = "dino"


class CopyHit(NamedTuple):
    """A likely copy: the indexed image, its cosine similarity to the query, its rank among the candidates by
    that similarity (0 = best), and its verified local matches (None without verification)."""

    path: str
    score: float
    rank: int
    inliers: int | None = None


def build_copy_index(
    images: Sequence[str | os.PathLike[str]],
    model: VisionTransformer,
    out: str | os.PathLike[str] | None = None,
    whitening: str | os.PathLike[str] | Whitening | None = None,
    centered_whitening: bool = False,
    factory: str = "Flat",
    size: int = COPY_DETECTION_SIZE,
    **extractor_options: Any,
) -> ImageIndex:
    """Index image files and folders (searched recursively) with the copy-detection descriptor.

    Args:
        images: Files and folders to index.
        model: The backbone.
        out: Where to save the index (atomically); not saved when None.
        whitening: A folder of images to fit a whitening on, a saved whitening file, or a fitted one.
        centered_whitening: Fit a centred PCA-whitening instead of the reference's uncentred one.
        factory: The FAISS index_factory string (``Flat`` is exact).
        size: Side of the square the images are resized to.
        **extractor_options: ``device``, ``dtype``, ``batch_size``, ``num_workers``, ``progress``.
    """
    paths = list_images(images, required=True)
    recipe = DescriptorRecipe.copy_detection(size)
    if isinstance(whitening, (str, os.PathLike)):
        extractor = DescriptorExtractor(model, recipe, **extractor_options)
        whitening = load_or_fit_whitening(whitening, extractor, centered=centered_whitening)
    return build_index(paths, model, recipe, whitening=whitening, factory=factory, out=out, **extractor_options)


def find_copies(
    queries: Sequence[str | os.PathLike[str] | Image.Image],
    index: ImageIndex,
    model: VisionTransformer,
    threshold: float = DEFAULT_THRESHOLD,
    candidates: int = DEFAULT_CANDIDATES,
    include_self: bool = False,
    verify: str | None = None,
    min_inliers: int | None = None,
    **extractor_options: Any,
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
        threshold: Minimum cosine similarity of a copy, without verification.
        candidates: Nearest indexed images examined per query.
        include_self: Keep a hit that is the query file itself (same resolved path).
        verify: Decide by verified matches of these local features (``dino`` patch tokens or ``sift``) instead
            of the global similarity.
        min_inliers: Minimum verified matches of a copy; :data:`DEFAULT_MIN_INLIERS` of the verifier when None.
        **extractor_options: ``device``, ``dtype``, ``batch_size``, ``num_workers``, ``progress``.

    Returns:
        Per query, its copies.

    Raises:
        IndexMismatchError: `index` was not built with the copy-detection descriptor.
        FileNotFoundError: With verification, a candidate's indexed file no longer exists.
    """
    if not queries:
        raise ValueError("no query images")
    recipe = index.recipe
    if recipe != DescriptorRecipe.copy_detection(recipe.size):
        raise IndexMismatchError(
            f"{index.path or 'this index'}: built with another descriptor ({recipe.pooling} pooling, "
            f"{recipe.preprocessing} preprocessing) than copy detection's, for which the thresholds are calibrated; "
            "index the collection with 'dino copy-detect index'"
        )
    local = make_local_extractor(verify, model, **extractor_options) if verify is not None else None
    indexed = FeatureCache(_indexed_file_reader(local)) if local is not None else None
    if verify is not None and min_inliers is None:
        min_inliers = DEFAULT_MIN_INLIERS[verify]
    results = search_images(index, queries, model, k=min(candidates, len(index)), **extractor_options)
    copies = []
    progress = extractor_options.get("progress", True) and local is not None
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
