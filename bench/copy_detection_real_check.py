"""Copy detection on real photos: a Copydays-layout benchmark from the project's photos, scored three ways.

The photos are the shared data's ``images/`` (OpenCV and imageio samples), the colour photos shipped in
scikit-image and the two in scikit-learn. ``make-benchmark`` (seed 0) splits them into originals, a disjoint
whitening set and distractors; the descriptors are computed once per backbone and scored unwhitened, with the
reference's uncentred whitening and with centred whitening. Results go to ``WORK/results_<weights>.json`` and a
markdown table on stdout (recorded in docs/copy_detection.md).

    python bench/copy_detection_real_check.py --work copy_real --weights random:vit_small/16

With ``--find``, the photos are also indexed as one collection and the real near-duplicate pairs of the OpenCV
samples are searched with ``copy-detect find``'s logic (``--find --verify KIND``: with geometric verification by
``dino`` patch tokens or ``sift``). With ``--calibrate-verify KIND``, after a run, ``find --verify KIND``'s inlier
threshold is calibrated on the benchmark (``WORK/verify_calibration_<kind>_<weights>.json``).

    python bench/copy_detection_real_check.py --work copy_real --weights default --calibrate-verify sift
    python bench/copy_detection_real_check.py --work copy_real --weights default --find --verify sift
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from apps.copy_detection.copydays import STRONG_BLOCK, CopydaysLayout, read_copydays
from apps.copy_detection.defaults import VERIFIERS
from apps.copy_detection.evaluate import (
    CopydaysDescriptors,
    describe_copydays,
    finalize_descriptors,
    score_copydays,
    top_k_neighbours,
)
from apps.copy_detection.metrics import holidays_ap, positive_ranks
from dino.atomic import atomic_write, atomic_write_json
from dino.checkpoint import load_backbone, model_identity
from dino.data.io import list_images
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.search.whitening import Whitening

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
)
# The real near-duplicate pairs among the OpenCV samples: (query, the copy it should find).
REAL_PAIRS = (
    ("ela_modified.jpg", "ela_original.jpg"),
    ("box.png", "box_in_scene.png"),
    ("ela_original.jpg", "ela_modified.jpg"),
    ("box_in_scene.png", "box.png"),
)
SPLIT = {"originals": 20, "whitening": 10}  # the other 13 photos are distractors


def collect_photos(data_dir: Path) -> list[Path]:
    """The shared photos plus the colour photos of scikit-image and scikit-learn, as files on disk."""
    import skimage.data
    import sklearn.datasets

    skimage_dir = Path(skimage.data.__file__).parent
    sklearn_photos = sklearn.datasets.load_sample_images().filenames
    return (
        list_images(data_dir / "images")
        + [skimage_dir / name for name in SKIMAGE_PHOTOS]
        + [Path(p) for p in sklearn_photos]
    )


def run_eval(work: Path, weights: str, runtime: Runtime) -> dict:
    from apps.copy_detection.generate import make_benchmark

    bench, distractors, whitening_dir = work / "bench", work / "distractors", work / "whitening"
    if not bench.exists():
        photos = collect_photos(Path(os.environ.get("DINO_DATA_DIR", "../shared/data")))
        make_benchmark(
            photos,
            bench,
            seed=0,
            originals=SPLIT["originals"],
            distractors_out=distractors,
            whitening_out=whitening_dir,
            whitening_count=SPLIT["whitening"],
            max_side=1024,
        )
    layout = read_copydays(bench)
    model = load_backbone(weights)
    extractor = DescriptorExtractor(model, DescriptorRecipe.copy_detection(), runtime=runtime)
    cache = work / f"descriptors_{_slug(weights)}.npz"
    start = time.time()
    if cache.is_file():  # raw descriptors of an earlier run: rescoring takes seconds
        with np.load(cache) as saved:
            descriptors = CopydaysDescriptors(saved["database"], saved["queries"], int(saved["distractors"]))
            whitening_raw = saved["whitening"]
    else:
        descriptors = describe_copydays(layout, extractor, list_images(distractors))
        whitening_raw = extractor.extract_raw(list_images(whitening_dir))
        with atomic_write(cache, "wb") as handle:
            np.savez(
                handle,
                database=descriptors.database,
                queries=descriptors.queries,
                distractors=descriptors.distractors,
                whitening=whitening_raw,
            )
    seconds = time.time() - start
    manifest = json.loads((bench / "benchmark.json").read_text())
    results = {
        "weights": weights,
        "backbone": model_identity(model),
        "describe_seconds": round(seconds, 1),
        "database": {"originals": len(layout.originals), "distractors": descriptors.distractors},
        "whitening_images": len(whitening_raw),
        "runs": {},
    }
    for name, whitening in (
        ("none", None),
        ("uncentred (reference)", Whitening.fit(whitening_raw)),
        ("centred", Whitening.fit(whitening_raw, centered=True)),
    ):
        blocks, calibration = score_copydays(layout, descriptors, whitening)
        results["runs"][name] = {
            "blocks": [vars(b) for b in blocks],
            "calibration": [vars(c) for c in calibration],
            "strong_by_edit": strong_map_by_edit(layout, descriptors, whitening, manifest),
        }
    atomic_write_json(work / f"results_{_slug(weights)}.json", results)
    runs = results["runs"]
    print(f"| block | queries | {' | '.join(f'mAP, whitening {n}' for n in runs)} |")
    print("|---|---|" + "---|" * len(runs))
    for row, block in enumerate(runs["none"]["blocks"]):
        cells = " | ".join(f"{run['blocks'][row]['mAP']:.3f}" for run in runs.values())
        print(f"| {block['block']} | {block['queries']} | {cells} |")
    for name, run in runs.items():
        for c in run["calibration"]:
            print(
                f"whitening {name}: {c['criterion']} threshold {c['threshold']:.4f} P {c['precision']:.3f} "
                f"R {c['recall']:.3f} F1 {c['f1']:.3f} ({c['positives']}/{c['negatives']})"
            )
    for name, run in runs.items():
        print(
            f"whitening {name}: strong mAP by edit "
            + ", ".join(f"{k} {v:.3f}" for k, v in run["strong_by_edit"].items())
        )
    print(
        f"descriptors of {len(layout.queries) + len(layout.originals) + descriptors.distractors} + "
        f"{len(whitening_raw)} images in {seconds:.0f} s"
    )
    return results


def strong_map_by_edit(
    layout: CopydaysLayout, descriptors: CopydaysDescriptors, whitening: Whitening | None, manifest: dict
) -> dict[str, float]:
    """Mean AP of the strong queries whose copy used each edit (every copy combines two edits)."""
    database = finalize_descriptors(descriptors.database, whitening)
    queries = finalize_descriptors(descriptors.queries, whitening)
    _, retrieved = top_k_neighbours(queries, database)
    start = sum(len(block) for block in layout.blocks[: [b.name for b in layout.blocks].index(STRONG_BLOCK)])
    block = layout.block(STRONG_BLOCK)
    by_edit: dict[str, list[float]] = defaultdict(list)
    for row, (path, positives) in enumerate(zip(block.images, block.positives, strict=True)):
        ap = holidays_ap(positive_ranks(retrieved[start + row], positives), len(positives))
        for edit in manifest["strong"][path.name]["edits"]:
            by_edit[edit].append(ap)
    return {edit: float(np.mean(aps)) for edit, aps in sorted(by_edit.items())}


def _slug(weights: str) -> str:
    return weights.replace(":", "_").replace("/", "_")


def run_find(work: Path, weights: str, threshold: float | None, verify: str | None, runtime: Runtime) -> None:
    """Index the photos as one collection and look up the real near-duplicate pairs as ``find`` does.

    Without verification the 5 most similar images are listed and a pair is a copy at `threshold` (find's
    default when None); with it, find's default shortlist is verified and a pair is a copy at the verifier's
    ``DEFAULT_MIN_INLIERS`` matches (or `threshold`, read as a match count).
    """
    from apps.copy_detection.find import (
        DEFAULT_CANDIDATES,
        DEFAULT_MIN_INLIERS,
        DEFAULT_THRESHOLD,
        build_copy_index,
        find_copies,
    )

    if threshold is None:
        threshold = DEFAULT_MIN_INLIERS[verify] if verify else DEFAULT_THRESHOLD
    photos = collect_photos(Path(os.environ.get("DINO_DATA_DIR", "../shared/data")))
    model = load_backbone(weights)
    index = build_copy_index(photos, model, out=work / "collection_index", runtime=runtime)
    by_name = {p.name: p for p in photos}
    queries = [by_name[query] for query, _ in REAL_PAIRS]
    if verify:
        top = find_copies(
            queries, index, model, verify=verify, min_inliers=0, candidates=DEFAULT_CANDIDATES, runtime=runtime
        )
    else:
        top = find_copies(queries, index, model, threshold=-1.0, candidates=5, runtime=runtime)
    report = []
    for (query, expected), hits in zip(REAL_PAIRS, top, strict=True):
        names = [Path(h.path).name for h in hits]
        rank = names.index(expected) if expected in names else None
        decisive = (lambda hit: hit.inliers) if verify else (lambda hit: hit.score)
        value = decisive(hits[rank]) if rank is not None else None
        report.append(
            {
                "query": query,
                "expected": expected,
                "rank": rank,
                "score": hits[rank].score if rank is not None else None,
                "inliers": value if verify else None,
                "is_copy_at_threshold": value is not None and value >= threshold,
                "top": [(Path(h.path).name, round(h.score, 4), h.inliers) for h in hits],
            }
        )
        print(
            f"{query} -> {expected}: rank {rank}, {'inliers' if verify else 'score'} {value}, copy at "
            f"{threshold:g}: {report[-1]['is_copy_at_threshold']}; top {report[-1]['top']}"
        )
    name = f"find_{f'verify_{verify}_' if verify else ''}{_slug(weights)}.json"
    atomic_write_json(work / name, {"threshold": threshold, "verify": verify, "pairs": report})


def run_verify_calibration(work: Path, weights: str, verifier: str, candidates: int, runtime: Runtime) -> dict:
    """Calibrate ``find --verify``'s minimum of matches on the benchmark written by :func:`run_eval`.

    The unwhitened descriptors of that run shortlist the candidates
    (:func:`apps.copy_detection.evaluate.calibrate_verification`, what ``copy-detect eval --verify`` runs); the
    inlier counts go to ``WORK/verify_inliers_<verifier>_<weights>.npy`` for further analysis.
    """
    from apps.copy_detection.evaluate import _copy_pairs, calibrate_verification
    from apps.copy_detection.verify import make_local_extractor

    layout = read_copydays(work / "bench")
    with np.load(work / f"descriptors_{_slug(weights)}.npz") as saved:
        descriptors = CopydaysDescriptors(saved["database"], saved["queries"], int(saved["distractors"]))
    database_images = list(layout.originals) + list_images(work / "distractors")
    local = make_local_extractor(verifier, load_backbone(weights), runtime)
    start = time.time()
    calibration, inliers = calibrate_verification(layout, descriptors, database_images, local, candidates)
    is_copy = _copy_pairs(layout, len(database_images))
    shortlisted = inliers >= 0
    result = {
        "weights": weights,
        "verifier": verifier,
        "candidates": candidates,
        "seconds": round(time.time() - start, 1),
        "calibration": vars(calibration),
        "shortlisted_copy_pairs": int((is_copy & shortlisted).sum()),
        "copy_inliers_quantiles_5_50_95": np.quantile(inliers[is_copy & shortlisted], [0.05, 0.5, 0.95]).tolist(),
        "non_copy_inliers_quantiles_50_95_99_max": np.quantile(
            inliers[~is_copy & shortlisted], [0.5, 0.95, 0.99, 1.0]
        ).tolist(),
    }
    np.save(work / f"verify_inliers_{verifier}_{_slug(weights)}.npy", inliers)
    atomic_write_json(work / f"verify_calibration_{verifier}_{_slug(weights)}.json", result)
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--weights", default="random:vit_small/16")
    parser.add_argument("--find", action="store_true", help="run only the near-duplicate check (needs FAISS)")
    parser.add_argument("--threshold", type=float, help="copy threshold for --find (default: find's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--calibrate-verify", choices=VERIFIERS, help="calibrate find --verify's inlier threshold (after a run)"
    )
    parser.add_argument("--candidates", type=int, default=10, help="shortlist verified per query")
    parser.add_argument("--verify", choices=VERIFIERS, help="with --find, decide by verified local-feature matches")
    args = parser.parse_args()
    runtime = Runtime(device="cpu", batch_size=args.batch_size, num_workers=1, progress=False)
    if args.calibrate_verify:
        run_verify_calibration(args.work, args.weights, args.calibrate_verify, args.candidates, runtime)
    elif args.find:
        run_find(args.work, args.weights, args.threshold, args.verify, runtime)
    else:
        print(json.dumps(run_eval(args.work, args.weights, runtime)["database"]))


if __name__ == "__main__":
    main()
