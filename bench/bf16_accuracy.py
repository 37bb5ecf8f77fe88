"""What bf16 autocast costs in accuracy: the default backbone's figures under fp32 and bf16, on the same data.

``--dtype auto`` is bf16 autocast where the hardware computes bf16 natively (CUDA, CPUs with AVX512-BF16, AMX or
Arm BF16) and fp32 elsewhere, so this bench forces ``bf16`` against ``fp32``. On a CPU without native bf16 the
arithmetic is emulated (several times slower) but rounds the same way: the accuracy figures hold, the timings
do not. Every measure runs both precisions on the same inputs:

1. feature cosine of [CLS] and of the patch tokens (k-NN preprocessing: resize 256, crop 224) on the shared
   photos (``images/**``) and on the DAVIS frames of the k-NN task;
2. k-NN sequence identity (docs/MODEL_CARD.md: bank = first half of each DAVIS sequence's frames, queries = the
   second half, T = 0.07, k = 10 and 20) and how many predictions change;
3. Jaccard of ``seg-eval --method diffusion`` (the default) on every `--seg-every`-th DAVIS frame, and the IoU of
   the fp32 and bf16 masks of each frame; the fp32 figure is checked against the ``dino seg-eval`` verb itself;
4. J&F of ``dino video-seg`` + ``dino video-eval`` on `--video-sequences`, and the fraction of identical mask
   pixels (propagated frames; the first frame is the copied ground truth);
5. copy-detection mAP on the benchmark generated from the project's photos, as ``bench/copy_detection_real_check.py``
   builds it (seed 0, 20 originals, 10 whitening photos, the other 13 distractors), three whitening modes, and
   the cosine of the raw descriptors.

Everything runs on one CPU thread (``torch.set_num_threads(1)``; run under ``OMP_NUM_THREADS=1`` so that NumPy's
BLAS also keeps to one). Each step writes ``WORK/<step>.json`` and is skipped when it exists, so a rerun resumes.

    OMP_NUM_THREADS=1 python bench/bf16_accuracy.py --work bf16_work --results bench/results/bf16_accuracy.json
    OMP_NUM_THREADS=1 python bench/bf16_accuracy.py --work bf16_quick --quick --weights random:vit_tiny/16

``--quick`` runs every step on a few inputs (2 DAVIS sequences cut to 4 frames, 6 photos, a 2-original copy
benchmark) as a smoke test; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from copy_detection_real_check import SPLIT, collect_photos
from davis_knn_task import write_davis_knn_task
from torch import Tensor

from apps.copy_detection.copydays import STRONG_BLOCK, read_copydays
from apps.copy_detection.evaluate import CopydaysDescriptors, describe_copydays, score_copydays
from apps.copy_detection.generate import make_benchmark
from apps.segmentation.diffusion import resized_size
from apps.segmentation.evaluate import predict_masks
from apps.segmentation.inference import ImageAttention, iter_attention
from apps.segmentation.jaccard import best_mask_jaccard
from apps.segmentation.masks import REFERENCE_IMAGE_SIZE
from apps.segmentation.voc import SegmentationSample, davis_samples, read_labels
from dino.atomic import atomic_output_path, atomic_write_json, remove_stale_temporaries
from dino.checkpoint import load_backbone, model_identity
from dino.cli import main as dino
from dino.data.datasets import ImageFolderDataset
from dino.data.davis import davis_annotations, davis_frames, davis_sequences
from dino.data.io import list_images, open_image
from dino.data.masks import read_indexed_png
from dino.data.transforms import knn_transform
from dino.eval.knn import DEFAULT_TEMPERATURE, knn_classifier
from dino.features import FeatureExtractor
from dino.models.vision_transformer import VisionTransformer
from dino.runtime import Runtime, cpu_has_native_bf16
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.search.whitening import Whitening

DTYPES = ("fp32", "bf16")
KNN_KS = (10, 20)
VIDEO_SEQUENCES = ("car-shadow", "motocross-jump")  # the two shortest davis2016-dev sequences (40 frames each)
SEG_EVERY = 20
QUICK = {"sequences": 2, "frames": 4, "photos": 6, "seg_every": 2, "copy_originals": 2, "copy_whitening": 2}


def cosine_stats(reference: Tensor, other: Tensor) -> dict[str, float | int]:
    """Mean, minimum and 1st percentile of the row-wise cosine between two (N, D) tensors."""
    cosine = F.cosine_similarity(reference.double(), other.double(), dim=-1).flatten()
    return {
        "mean": cosine.mean().item(),
        "min": cosine.min().item(),
        "p1": torch.quantile(cosine, 0.01).item(),
        "vectors": cosine.numel(),
    }


def knn_predictions(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """The class each query gets from :func:`dino.eval.knn.knn_classifier`'s weighted vote (its top-1); k is
    capped at the bank's size, as there."""
    k = min(k, len(bank))
    similarity, neighbours = (queries @ bank.t()).topk(k, largest=True, sorted=True)
    votes = torch.zeros(len(queries), num_classes, dtype=similarity.dtype)
    votes.scatter_add_(1, bank_labels[neighbours], similarity.div(temperature).exp())
    return votes.argmax(1)


def paired_features(
    model: VisionTransformer, paths: Sequence[Path], batch_size: int
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """([CLS] by dtype, patch tokens by dtype) of each batch of `paths`, both dtypes on the same preprocessed
    batch (k-NN preprocessing)."""
    extractors = {
        dtype: FeatureExtractor(
            model, knn_transform(), Runtime(device="cpu", dtype=dtype, batch_size=batch_size, progress=False)
        )
        for dtype in DTYPES
    }
    for tensors, _ in extractors["fp32"].iter_images(paths):
        batches = {dtype: extractor.forward(tensors, patch_tokens=True) for dtype, extractor in extractors.items()}
        yield (
            {dtype: batch.cls for dtype, batch in batches.items()},
            {dtype: batch.patch_tokens.flatten(0, 2) for dtype, batch in batches.items()},  # type: ignore[union-attr]
        )


def features_and_knn(model: VisionTransformer, davis: Path, photos: Sequence[Path], work: Path) -> dict[str, Any]:
    """Feature cosine on the photos and the k-NN frames, and k-NN sequence identity under both dtypes."""
    task = work / "knn_task"
    if not task.exists():
        write_davis_knn_task(davis, task)
    bank_set, query_set = ImageFolderDataset(task / "train"), ImageFolderDataset(task / "val")
    if bank_set.classes != query_set.classes:
        raise ValueError(f"{task}: the bank and the queries have different sequences")
    groups = {"photos": list(photos), "davis_knn_frames": bank_set.paths + query_set.paths}
    saved = work / "features.pt"  # the slow part (bf16 is emulated on most CPUs), kept for a rerun
    if saved.is_file():
        cls, cosine = torch.load(saved)
    else:
        cls, cosine = {}, {}
        for group, paths in groups.items():
            batches = list(paired_features(model, paths, batch_size=8))
            cls[group] = {dtype: torch.cat([batch[0][dtype] for batch in batches]) for dtype in DTYPES}
            patches = {dtype: torch.cat([batch[1][dtype] for batch in batches]) for dtype in DTYPES}
            cosine[group] = {
                "images": len(paths),
                "cls": cosine_stats(cls[group]["fp32"], cls[group]["bf16"]),
                "patch_tokens": cosine_stats(patches["fp32"], patches["bf16"]),
            }
        with atomic_output_path(saved) as temporary:
            torch.save((cls, cosine), temporary)
    bank_labels, query_labels = torch.tensor(bank_set.targets), torch.tensor(query_set.targets)
    num_classes, bank_size = len(bank_set.classes), len(bank_set.paths)
    knn: dict[str, Any] = {"bank": bank_size, "queries": len(query_set.paths)}
    predictions: dict[int, dict[str, Tensor]] = {k: {} for k in KNN_KS}
    for dtype in DTYPES:
        features = F.normalize(cls["davis_knn_frames"][dtype], dim=1)
        bank, queries = features[:bank_size], features[bank_size:]
        for k in KNN_KS:
            result = knn_classifier(bank, bank_labels, queries, query_labels, k, DEFAULT_TEMPERATURE, num_classes)
            predicted = knn_predictions(bank, bank_labels, queries, k, DEFAULT_TEMPERATURE, num_classes)
            top1 = int((predicted == query_labels).sum()) * 100.0 / len(query_labels)  # as knn_classifier counts
            if abs(top1 - result.top1) > 1e-9:
                raise RuntimeError(f"{k}-NN: the vote's top-1 {top1} differs from knn_classifier's {result.top1}")
            predictions[k][dtype] = predicted
            knn.setdefault(f"{k}-NN", {})[dtype] = {"top1": result.top1, "top5": result.top5}
    for k in KNN_KS:
        knn[f"{k}-NN"]["predictions_changed"] = int((predictions[k]["fp32"] != predictions[k]["bf16"]).sum())
    return {"cosine": cosine, "knn": knn}


def _diffusion_masks(item: ImageAttention, sample: SegmentationSample, patch_size: int) -> np.ndarray:
    """The default foreground mask at the photo's size, as ``seg-eval --method diffusion`` makes it."""
    photo = open_image(sample.image)
    resized = resized_size((photo.height, photo.width), REFERENCE_IMAGE_SIZE, keep_aspect=True)
    return predict_masks(item, patch_size, "diffusion", photo=photo, resized=resized)


def segmentation(model: VisionTransformer, davis: Path, every: int, weights: str, work: Path) -> dict[str, Any]:
    """seg-eval's diffusion Jaccard under both dtypes and the IoU between their masks, frame by frame."""
    saved = work / "segmentation_masks.json"  # the slow part, kept for a rerun
    if saved.is_file():
        result = json.loads(saved.read_text())
    else:
        result = _paired_masks(model, davis_samples(davis, "val", every))
        result["every"] = every
        atomic_write_json(saved, result)
    # The verb itself on the same frames, fp32: the loop above should reproduce it.
    out = work / "seg_eval_fp32"
    if not (out / "results.json").is_file():
        argv = ["seg-eval", "--davis", str(davis), "--every", str(every), "--method", "diffusion"]
        options = ["--weights", weights, "--device", "cpu", "--dtype", "fp32", "--workers", "0", "--batch-size", "1"]
        if dino([*argv, *options, "--out", str(out), "--no-progress"]) != 0:
            raise RuntimeError("seg-eval failed")
    result["fp32"]["seg_eval_verb_jaccard"] = json.loads((out / "results.json").read_text())["jaccard"]
    return result


def _paired_masks(model: VisionTransformer, samples: Sequence[SegmentationSample]) -> dict[str, Any]:
    """Each frame's diffusion mask under both dtypes: their Jaccards against the labels and their IoU."""
    streams = {
        dtype: iter_attention(
            model,
            [s.image for s in samples],
            REFERENCE_IMAGE_SIZE,
            True,
            Runtime(device="cpu", dtype=dtype, batch_size=1, progress=False),
        )
        for dtype in DTYPES
    }
    jaccards: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
    agreement = []
    for items in zip(*streams.values(), strict=True):
        by_dtype = dict(zip(DTYPES, items, strict=True))
        sample = samples[by_dtype["fp32"].index]
        labels = read_labels(sample)
        masks = {dtype: _diffusion_masks(item, sample, model.patch_size) for dtype, item in by_dtype.items()}
        for dtype, mask in masks.items():
            jaccards[dtype].append(best_mask_jaccard(mask, labels).mean)
        union = np.logical_or(masks["fp32"], masks["bf16"]).sum()
        agreement.append(1.0 if union == 0 else np.logical_and(masks["fp32"], masks["bf16"]).sum() / union)
    scored = [row for row, value in enumerate(jaccards["fp32"]) if not np.isnan(value)]
    result: dict[str, Any] = {"frames": len(samples), "scored_frames": len(scored)}
    for dtype in DTYPES:
        result[dtype] = {"jaccard": float(np.mean([jaccards[dtype][row] for row in scored]))}
    result["mask_iou_fp32_vs_bf16"] = {"mean": float(np.mean(agreement)), "min": float(np.min(agreement))}
    result["frames_with_identical_masks"] = int(sum(value == 1.0 for value in agreement))
    return result


def video(davis: Path, sequences: Sequence[str], weights: str, work: Path) -> dict[str, Any]:
    """J&F of label propagation under both backbone dtypes, and how many mask pixels agree."""
    result: dict[str, Any] = {"sequences": list(sequences)}
    outputs = {dtype: work / f"video_{dtype}" for dtype in DTYPES}
    for dtype, out in outputs.items():
        argv = ["video-seg", "--davis", str(davis), "--sequences", *sequences, "--weights", weights]
        if dino([*argv, "--out", str(out), "--device", "cpu", "--dtype", dtype, "--no-progress"]) != 0:
            raise RuntimeError(f"video-seg --dtype {dtype} failed")
        if not (out / "global_results-val.csv").is_file():
            if dino(["video-eval", "--davis", str(davis), "--results", str(out)]) != 0:
                raise RuntimeError(f"video-eval of {out} failed")
        with open(out / "global_results-val.csv") as handle:
            row = next(csv.DictReader(handle))
        with open(out / "per-sequence_results-val.csv") as handle:
            per_sequence = {r["Sequence"]: float(r["J-Mean"]) for r in csv.DictReader(handle)}
        result[dtype] = {key: float(row[key]) for key in ("J&F-Mean", "J-Mean", "F-Mean")}
        result[dtype]["J by sequence"] = per_sequence
    identical = total = 0
    for sequence in sequences:
        frames = sorted((outputs["fp32"] / sequence).glob("*.png"))[1:]  # the first frame is the ground truth
        for frame in frames:
            same = read_indexed_png(frame) == read_indexed_png(outputs["bf16"] / sequence / frame.name)
            identical, total = identical + int(same.sum()), total + same.size
    result["identical_pixels"] = identical / total
    result["propagated_frames"] = sum(len(list((outputs["fp32"] / s).glob("*.png"))) - 1 for s in sequences)
    return result


def copy_detection(model: VisionTransformer, photos: Sequence[Path], split: dict[str, int], work: Path) -> dict:
    """Copy-detection mAP per block and whitening under both dtypes, and the cosine of the raw descriptors."""
    bench, distractors, whitening_dir = work / "copy" / "bench", work / "copy" / "distractors", work / "copy" / "white"
    if not bench.exists():  # as bench/copy_detection_real_check.py builds it
        (work / "copy").mkdir(parents=True, exist_ok=True)
        make_benchmark(
            photos,
            bench,
            seed=0,
            originals=split["originals"],
            distractors_out=distractors,
            whitening_out=whitening_dir,
            whitening_count=split["whitening"],
            max_side=1024,
            progress=False,
        )
    layout = read_copydays(bench)
    descriptors: dict[str, CopydaysDescriptors] = {}
    whitening_raw: dict[str, np.ndarray] = {}
    for dtype in DTYPES:
        runtime = Runtime(device="cpu", dtype=dtype, batch_size=16, num_workers=0, progress=False)
        extractor = DescriptorExtractor(model, DescriptorRecipe.copy_detection(), runtime=runtime)
        descriptors[dtype] = describe_copydays(layout, extractor, list_images(distractors))
        whitening_raw[dtype] = extractor.extract_raw(list_images(whitening_dir))
    result: dict[str, Any] = {
        "database": {"originals": len(layout.originals), "distractors": descriptors["fp32"].distractors},
        "queries": len(layout.queries),
        "whitening_images": len(whitening_raw["fp32"]),
    }

    def all_raw(dtype: str) -> Tensor:
        d = descriptors[dtype]
        # The first len(originals) queries are the originals' own descriptors: count them once.
        rows = [d.database, d.queries[len(layout.originals) :], whitening_raw[dtype]]
        return torch.from_numpy(np.concatenate(rows))

    result["descriptor_cosine"] = {"raw": cosine_stats(all_raw("fp32"), all_raw("bf16"))}
    reference_whitening = Whitening.fit(whitening_raw["fp32"])
    result["descriptor_cosine"]["reference-whitened, fp32 whitening"] = cosine_stats(
        torch.from_numpy(reference_whitening.apply(all_raw("fp32").numpy())),
        torch.from_numpy(reference_whitening.apply(all_raw("bf16").numpy())),
    )
    for dtype in DTYPES:
        runs = {}
        for name, fit in (
            ("none", None),
            ("uncentred (reference)", lambda raw: Whitening.fit(raw)),
            ("centred", lambda raw: Whitening.fit(raw, centered=True)),
        ):
            whitening = None if fit is None else fit(whitening_raw[dtype])
            blocks, _ = score_copydays(layout, descriptors[dtype], whitening)
            runs[name] = {block.block: block.mAP for block in blocks}
        result[dtype] = {"strong mAP": {name: blocks[STRONG_BLOCK] for name, blocks in runs.items()}, "mAP": runs}
    return result


def quick_davis(davis: Path, out: Path) -> Path:
    """A DAVIS folder of symbolic links: the first sequences of the split, each cut to its first frames."""
    sequences = davis_sequences(davis)[: QUICK["sequences"]]
    for sequence in sequences:
        for kind, files in (
            ("JPEGImages", davis_frames(davis, sequence)),
            ("Annotations", davis_annotations(davis, sequence)),
        ):
            folder = out / kind / "480p" / sequence
            folder.mkdir(parents=True, exist_ok=True)
            for path in files[: QUICK["frames"]]:
                if not (folder / path.name).exists():
                    os.symlink(path.resolve(), folder / path.name)
    (out / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{s}\n" for s in sequences))
    return out


def _step(name: str, work: Path, run: Callable[[], dict], seconds: dict[str, float]) -> dict:
    """`run`'s result, read from ``WORK/<name>.json`` when an earlier run finished it."""
    saved = work / f"{name}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    start = time.time()
    result = run()
    seconds[name] = round(time.time() - start, 1)
    result["seconds"] = seconds[name]
    atomic_write_json(saved, result)
    print(name, json.dumps(result), flush=True)
    return result


def _environment() -> dict[str, Any]:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_has_native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default")
    parser.add_argument("--work", type=Path, required=True, help="folder of intermediate outputs (resumable)")
    parser.add_argument("--results", type=Path, help="also write the summary here (e.g. bench/results/…json)")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("DINO_DATA_DIR", "../shared/data"))
    parser.add_argument("--seg-every", type=int, default=SEG_EVERY, help="score every N-th DAVIS frame")
    parser.add_argument("--video-sequences", nargs="+", default=list(VIDEO_SEQUENCES))
    parser.add_argument("--skip", nargs="*", default=[], choices=["features", "segmentation", "video", "copy"])
    parser.add_argument("--quick", action="store_true", help="a smoke run on a few inputs; figures mean nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(args.work)
    davis = args.data_dir / "davis2016-dev"
    photos = list_images(args.data_dir / "images", required=True)
    copy_photos, split = collect_photos(args.data_dir), SPLIT
    seg_every, sequences = args.seg_every, args.video_sequences
    if args.quick:
        davis = quick_davis(davis, args.work / "davis_quick")
        photos, copy_photos = photos[: QUICK["photos"]], copy_photos[: QUICK["photos"]]
        split = {"originals": QUICK["copy_originals"], "whitening": QUICK["copy_whitening"]}
        seg_every, sequences = QUICK["seg_every"], davis_sequences(davis)
    model = load_backbone(args.weights)
    seconds: dict[str, float] = {}
    steps = {
        "features": lambda: features_and_knn(model, davis, photos, args.work),
        "segmentation": lambda: segmentation(model, davis, seg_every, args.weights, args.work),
        "video": lambda: video(davis, sequences, args.weights, args.work),
        "copy": lambda: copy_detection(model, copy_photos, split, args.work),
    }
    summary: dict[str, Any] = {
        "weights": args.weights,
        "backbone": model_identity(model),
        "quick": args.quick,
        "environment": _environment(),
    }
    for name, run in steps.items():
        if name not in args.skip:
            summary[name] = _step(name, args.work, run, seconds)
    atomic_write_json(args.work / "summary.json", summary)
    if args.results:
        atomic_write_json(args.results, summary)


if __name__ == "__main__":
    main()
