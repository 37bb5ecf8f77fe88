"""Image search on the shared photos' same-scene pairs: where does each photo's partner rank?

Every photo of ``images/opencv`` and ``images/imageio`` (35) is described with the search app's default recipe
(``DescriptorRecipe.retrieval()``: [CLS] of a 224-px thumbnail, L2-normalised) and compared with all others by
cosine similarity. For the pairs graf1/graf3, leuvenA/leuvenB, aloeL/aloeR, rubberwhale1/rubberwhale2, aero1/aero3,
basketball1/basketball2, box/box_in_scene and ela_original/ela_modified, the table gives, in both directions, the
partner's rank among the 34 other photos (1 = top hit), its similarity and the top hit when it is not the partner.

    python bench/photo_pairs.py --weights default --out pairs_default.json
    python bench/photo_pairs.py --weights dino_vitt16_cpu --out pairs_vitt.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from dino.atomic import atomic_write_json
from dino.checkpoint import load_backbone, model_identity
from dino.data.io import list_images
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe

PAIRS = (
    ("graf1", "graf3"),
    ("leuvenA", "leuvenB"),
    ("aloeL", "aloeR"),
    ("rubberwhale1", "rubberwhale2"),
    ("aero1", "aero3"),
    ("basketball1", "basketball2"),
    ("box", "box_in_scene"),
    ("ela_original", "ela_modified"),
)


def pair_ranks(weights: str, data_dir: Path) -> dict:
    paths = sorted(list_images([data_dir / "images" / "opencv", data_dir / "images" / "imageio"], required=True))
    names = [Path(p).stem for p in paths]
    model = load_backbone(weights)
    extractor = DescriptorExtractor(
        model, DescriptorRecipe.retrieval(), runtime=Runtime(device="cpu", num_workers=0, progress=False)
    )
    descriptors = extractor.extract(paths)
    similarity = descriptors @ descriptors.T
    np.fill_diagonal(similarity, -np.inf)
    rows = []
    for first, second in PAIRS:
        for query, partner in ((first, second), (second, first)):
            row = similarity[names.index(query)]
            order = np.argsort(-row)
            rank = int(np.where(order == names.index(partner))[0][0]) + 1
            rows.append(
                {
                    "query": query,
                    "partner": partner,
                    "rank": rank,
                    "similarity": round(float(row[names.index(partner)]), 4),
                    "top_hit": names[order[0]],
                    "top_similarity": round(float(row[order[0]]), 4),
                }
            )
    ranks = [row["rank"] for row in rows]
    return {
        "backbone": model_identity(model),
        "photos": len(paths),
        "pairs": rows,
        "top1": round(100 * sum(rank == 1 for rank in ranks) / len(ranks), 1),
        "mean_rank": round(float(np.mean(ranks)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("DINO_DATA_DIR", "../shared/data"))
    parser.add_argument("--out", type=Path, help="write the table as JSON")
    args = parser.parse_args()
    result = pair_ranks(args.weights, args.data_dir)
    for row in result["pairs"]:
        top = "" if row["rank"] == 1 else f"   top hit {row['top_hit']} {row['top_similarity']:.4f}"
        print(f"{row['query']:>14} -> {row['partner']:<14} rank {row['rank']:>2}  {row['similarity']:.4f}{top}")
    print(f"{result['backbone']['weights']}: partner first {result['top1']} %, mean rank {result['mean_rank']}")
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
