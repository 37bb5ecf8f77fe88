"""The Revisited Oxford/Paris evaluation of `eval_image_retrieval.py` (SPEC §13).

Database and query images are described with a :class:`~dino.search.descriptors.DescriptorRecipe` (the reference:
[CLS] of a thumbnail, no whitening), ranked exhaustively by cosine similarity (``db @ qᵀ``, then argsort), and
scored with revisitop's mAP and mP@{1, 5, 10} in the Easy, Medium and Hard setups.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from PIL import Image

from apps.retrieval.revisitop import KAPPAS, PROTOCOLS, RevisitopDataset, evaluate_protocols, load_dataset
from dino.checkpoint import model_identity
from dino.data.io import open_image
from dino.models.backbone import Backbone
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.search.whitening import Whitening

__all__ = ["evaluate_retrieval", "format_results", "query_images", "rank_database"]


def query_images(dataset: RevisitopDataset, crop: bool = False) -> list[str | os.PathLike[str] | Image.Image]:
    """The query images: whole, as the reference (SPEC §13 quirk), or cropped to their ``bbx`` as revisitop."""
    if not crop:
        return list(dataset.queries)
    return [
        open_image(path).crop(tuple(entry["bbx"])) for path, entry in zip(dataset.queries, dataset.gnd, strict=True)
    ]


def rank_database(database: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Database indices by decreasing cosine similarity, one column per query: (n_db, n_queries), as revisitop.

    Both arguments are L2-normalised descriptors; ties keep database order.
    """
    similarity = database @ queries.T
    return np.argsort(-similarity, axis=0, kind="stable")


def evaluate_retrieval(
    root: str | os.PathLike[str],
    dataset_name: str,
    model: Backbone,
    recipe: DescriptorRecipe | None = None,
    whitening: Whitening | None = None,
    crop_queries: bool = False,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Run the protocol on ``ROOT/<dataset_name>`` (revisitop layout).

    Args:
        root: The folder holding ``<dataset_name>/gnd_<dataset_name>.pkl`` and ``<dataset_name>/jpg/``.
        dataset_name: ``roxford5k``, ``rparis6k`` or another dataset in the same layout.
        model: The backbone.
        recipe: The descriptor; :meth:`DescriptorRecipe.retrieval` (the reference) by default.
        whitening: Applied to database and query descriptors (not in the reference).
        crop_queries: Crop queries to their bounding box (standard revisitop; the reference does not).
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None (``dino search eval``
            passes ``dtype="fp32"`` and a batch of 1, the reference's).

    Returns:
        A JSON-serialisable dict: the setup and, per protocol, ``mAP``, ``mP@k`` (fractions) and per-query ``AP``.
    """
    recipe = recipe or DescriptorRecipe.retrieval(backbone=model)
    dataset = load_dataset(root, dataset_name)
    start = time.perf_counter()
    extractor = DescriptorExtractor(model, recipe, whitening, runtime)
    database = extractor.extract(dataset.database)
    queries = extractor.extract(query_images(dataset, crop_queries))
    ranks = rank_database(database, queries)
    return {
        "dataset": dataset.name,
        "root": str(root),
        "database_images": len(dataset.imlist),
        "queries": len(dataset.qimlist),
        "backbone": model_identity(model),
        "recipe": recipe.as_dict(),
        "whitening": whitening.metadata if whitening is not None else None,
        "crop_queries": crop_queries,
        "ranking": "exhaustive cosine similarity (db @ q^T, argsort)",
        "kappas": list(KAPPAS),
        "results": evaluate_protocols(ranks, dataset.gnd, KAPPAS),
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_results(results: dict[str, Any]) -> str:
    """A table of mAP and mP@k in percent, then the reference script's summary lines."""
    name, scores = results["dataset"], results["results"]
    header = f"{'':8}{'mAP':>8}" + "".join(f"{'mP@' + str(k):>8}" for k in results["kappas"])
    lines = [f"{name}: {results['queries']} queries, {results['database_images']} database images", header]
    for protocol in PROTOCOLS:
        row = scores[protocol]
        values = [row["mAP"], *row["mP@k"].values()]
        lines.append(f"{protocol.capitalize():8}" + "".join(f"{100 * value:8.2f}" for value in values))
    # The summary lines of revisitop / cirtorch's compute_map_and_print (percent, 2 decimals).
    maps = ", ".join(f"{p[0].upper()}: {100 * scores[p]['mAP']:.2f}" for p in PROTOCOLS)
    precisions = ", ".join(
        f"{p[0].upper()}: {np.around(100 * np.array(list(scores[p]['mP@k'].values())), 2)}" for p in PROTOCOLS
    )
    lines.append(f">> {name}: mAP {maps}")
    lines.append(f">> {name}: mP@k{list(results['kappas'])} {precisions}")
    return "\n".join(lines)
