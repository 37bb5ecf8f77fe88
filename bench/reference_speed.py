"""Side-by-side speed of the project and the reference algorithms, in one process, alternating (issue #20).

Each workload runs the reference's algorithm, re-expressed faithfully and small, and the project's code path on
the same real images, with the same weights:

- ``knn``, k-NN features at 224²: eval_knn's loop (image list, Resize 256 bicubic + CenterCrop 224,
  DataLoader, ``model(samples)``) against ``FeatureExtractor(...).extract(paths)``;
- ``attention``, attention masks at 480²: visualize_attention.py per image (get_last_selfattention, the
  cumulative-mass threshold per head, nearest upsampling of masks and maps) against ``iter_attention`` +
  ``threshold_attention`` + ``upsample_nearest`` (``dino attention`` without its figures);
- ``davis``, DAVIS propagation at 480p: eval_video_segmentation.py (bench/video_seg_reference.py) against
  ``apps.video_seg.segment_frames``, with each of ``--video-weights`` (ViT-S/16 and ViT-S/8);
- ``copy``, copy-detection descriptors at 320²: eval_copy_detection's [CLS] ⊕ GeM(p=4) of the normalised patch
  tokens of a 320² bicubic resize against ``DescriptorExtractor(model, DescriptorRecipe.copy_detection())``.

The reference ViT is bench/reference_vit.py (explicit attention in every block), loaded with the project model's
state dict; before any timing both are run on random inputs and must give the same tokens and attention (to 1e-4
of their magnitude), or the bench stops. Each workload runs once on a small part of its input to warm up, then
`--repeats` rounds of reference and project, the order swapped every round; the table gives the medians and the
ratio reference / project, and how far their outputs agree. The reference always runs in fp32; the project in
what ``--dtype`` resolves to on this machine (``auto``: bf16 only on CPUs that compute it natively, see
``dino.runtime.autocast_dtype``), printed with the results.

The DAVIS reference builds its (h·w)² neighbourhood mask with a quadruple Python loop once per video; it is
built once here, timed on its own (``mask build``) and given to every reference round, so the DAVIS ratio
leaves it out (the reference would pay it once per sequence; ``ratio with mask`` adds it).

Photos come from ``<data>/images`` (files with an EXIF rotation are left out: the reference ignores the tag and
the project applies it, so their pixels would differ; so are images above 4 Mpixel, which would time the JPEG
decoder) followed by frames of ``<data>/davis2016-dev``; the data folder is ``--data``, else ``$DINO_DATA_DIR``,
else ``../shared/data`` beside the repository.

    python bench/reference_speed.py --markdown
    python bench/reference_speed.py --only davis --video-weights random:vit_small/8 --frames 4 --repeats 2
    python bench/reference_speed.py --quick     # seconds: tiny ViTs and inputs (tests/bench runs it)
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from apps.segmentation.inference import iter_attention
from apps.segmentation.masks import DEFAULT_THRESHOLD, threshold_attention, upsample_nearest
from apps.video_seg.davis import read_bgr_frames
from apps.video_seg.pipeline import segment_frames
from apps.video_seg.preprocess import FramePreprocessing
from apps.video_seg.propagation import NEIGHBOURHOOD_RADIUS, PropagationConfig
from dino.atomic import atomic_write_json
from dino.checkpoint import load_backbone
from dino.cli import USER_ERRORS
from dino.data.davis import davis_annotations, davis_frames, davis_sequences
from dino.data.masks import read_indexed_png
from dino.data.transforms import IMAGENET_MEAN, IMAGENET_STD, knn_transform
from dino.features import FeatureExtractor
from dino.models.vision_transformer import VisionTransformer
from dino.runtime import Runtime, autocast_dtype, cpu_has_native_bf16
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORKLOADS = ("knn", "attention", "davis", "copy")
GOAL = 2.5  # issue #20: at least 2.5× the reference on each workload
# Tokens and attention of the two ViTs may differ by float summation order only.
PROJECTION_TOLERANCE = 1e-4
MAX_PHOTO_PIXELS = 4_000_000
EXIF_ORIENTATION = 0x0112
DAVIS_FRAME_STRIDE = 5  # frames of each sequence taken as photos: every 5th
# The apps' own defaults: `dino attention` batches 8 images, eval_copy_detection 16, eval_knn's is 128 per GPU.
ATTENTION_BATCH = 8


@dataclass(frozen=True)
class Sizes:
    """Input sizes: the reference protocols' by default, tiny ones for --quick."""

    knn_resize: int = 256
    knn_crop: int = 224
    attention: int = 480
    copy: int = 320
    video_short_side: int = 480


QUICK_SIZES = Sizes(knn_resize=73, knn_crop=64, attention=96, copy=64, video_short_side=128)


class ProjectionMismatchError(ValueError):
    """The reference ViT and the project's do not compute the same tokens: timing them would compare nothing."""


@dataclass
class Workload:
    """One side-by-side comparison: two callables computing the same outputs from the same inputs."""

    name: str
    model: str
    items: int
    unit: str
    reference: Callable[[], Any]
    project: Callable[[], Any]
    warm_up: Callable[[], None]
    agreement: Callable[[Any, Any], dict[str, float]]
    reference_once_s: float = 0.0  # a one-off cost of the reference left out of its rounds (the DAVIS mask)


@dataclass
class Result:
    workload: str
    model: str
    items: int
    unit: str
    precision: str
    reference_s: list[float]
    project_s: list[float]
    agreement: dict[str, float]
    reference_once_s: float = 0.0
    ratio: float = field(init=False)
    ratio_with_once: float = field(init=False)

    def __post_init__(self) -> None:
        reference, project = statistics.median(self.reference_s), statistics.median(self.project_s)
        self.ratio = reference / project
        self.ratio_with_once = (reference + self.reference_once_s) / project


# ---------------------------------------------------------------------------- inputs
def default_data_dir() -> Path:
    return Path(os.environ.get("DINO_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def photo_paths(data: Path, count: int) -> list[Path]:
    """`count` real photos: those of ``images/`` usable by both sides, then every 5th DAVIS frame, cycled."""
    candidates = sorted(path for path in (data / "images").rglob("*") if path.is_file())
    photos = []
    for path in candidates:
        with Image.open(path) as image:
            if image.width * image.height <= MAX_PHOTO_PIXELS and image.getexif().get(EXIF_ORIENTATION, 1) == 1:
                photos.append(path)
    davis = data / "davis2016-dev"
    if davis.is_dir():
        for sequence in davis_sequences(davis):
            photos.extend(davis_frames(davis, sequence)[::DAVIS_FRAME_STRIDE])
    if not photos:
        raise FileNotFoundError(f"{data}: no photos under images/ or davis2016-dev/")
    return [photos[index % len(photos)] for index in range(count)]


class ReferenceImageList(Dataset):
    """torchvision ImageFolder's loading (open, ``convert('RGB')``, transform), returning the index as eval_knn's
    ReturnIndexDataset and eval_copy_detection's ImgListDataset do."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[index], "rb") as handle:
            image = Image.open(handle).convert("RGB")
        return self.transform(image), index


def _normalize() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


# ---------------------------------------------------------------------------- the reference algorithms
@torch.no_grad()
def reference_knn_features(model, paths, sizes: Sizes, batch_size: int, workers: int) -> torch.Tensor:
    """eval_knn.py's extraction (``interpolation=3`` is bicubic)."""
    transform = T.Compose(
        [T.Resize(sizes.knn_resize, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(sizes.knn_crop)]
        + _normalize()
    )
    dataset = ReferenceImageList(paths, transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=False)
    features = None
    for samples, index in loader:
        feats = model(samples).clone()
        if features is None:
            features = torch.zeros(len(dataset), feats.shape[-1])
        features.index_copy_(0, index, feats)
    return features


@torch.no_grad()
def reference_attention_masks(model, paths, size: int, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """visualize_attention.py for each image: (upsampled per-head maps, upsampled per-head masks)."""
    patch = model.patch_size
    transform = T.Compose([T.Resize((size, size))] + _normalize())
    outputs = []
    for path in paths:
        with open(path, "rb") as handle:
            img = transform(Image.open(handle).convert("RGB"))
        w, h = img.shape[1] - img.shape[1] % patch, img.shape[2] - img.shape[2] % patch
        img = img[:, :w, :h].unsqueeze(0)
        w_featmap, h_featmap = img.shape[-2] // patch, img.shape[-1] // patch
        attentions = model.get_last_selfattention(img)
        nh = attentions.shape[1]
        attentions = attentions[0, :, 0, 1:].reshape(nh, -1)
        val, idx = torch.sort(attentions)
        val /= torch.sum(val, dim=1, keepdim=True)
        cumval = torch.cumsum(val, dim=1)
        th_attn = cumval > (1 - threshold)
        idx2 = torch.argsort(idx)
        for head in range(nh):
            th_attn[head] = th_attn[head][idx2[head]]
        th_attn = th_attn.reshape(nh, w_featmap, h_featmap).float()
        th_attn = F.interpolate(th_attn.unsqueeze(0), scale_factor=patch, mode="nearest")[0].cpu().numpy()
        attentions = attentions.reshape(nh, w_featmap, h_featmap)
        attentions = F.interpolate(attentions.unsqueeze(0), scale_factor=patch, mode="nearest")[0].cpu().numpy()
        outputs.append((attentions, th_attn))
    return outputs


@torch.no_grad()
def reference_copy_descriptors(model, paths, size: int, batch_size: int, workers: int) -> torch.Tensor:
    """eval_copy_detection.py's descriptors before whitening: [CLS] ⊕ GeM(p=4) of the normalised patch tokens."""
    patch = model.patch_size
    transform = T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BICUBIC)] + _normalize())
    dataset = ReferenceImageList(paths, transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=False)
    features = None
    for samples, index in loader:
        feats = model.get_intermediate_layers(samples, n=1)[0].clone()
        cls_output_token = feats[:, 0, :]
        b, h, w, d = len(samples), int(samples.shape[-2] / patch), int(samples.shape[-1] / patch), feats.shape[-1]
        feats = feats[:, 1:, :].reshape(b, h, w, d)
        feats = feats.clamp(min=1e-6).permute(0, 3, 1, 2)
        feats = F.avg_pool2d(feats.pow(4), (h, w)).pow(1.0 / 4).reshape(b, -1)
        feats = torch.cat((cls_output_token, feats), dim=1)
        if features is None:
            features = torch.zeros(len(dataset), feats.shape[-1])
        features.index_copy_(0, index, feats)
    return features


def load_sibling(name: str) -> ModuleType:
    """A module of bench/ by file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def video_reference(short_side: int) -> ModuleType:
    """bench/video_seg_reference.py; below 480 its frames and masks are read at `short_side` (--quick only)."""
    module = load_sibling("video_seg_reference")
    if short_side != 480:
        module.read_frame = functools.partial(module.read_frame, scale_size=short_side)
        module.read_seg = functools.partial(module.read_seg, scale_size=short_side)
    return module


# ---------------------------------------------------------------------------- agreement
def relative_difference(reference: Any, project: Any) -> float:
    """max |reference − project| / max |reference|."""
    reference, project = np.asarray(reference, dtype=np.float64), np.asarray(project, dtype=np.float64)
    return float(np.abs(reference - project).max() / max(np.abs(reference).max(), 1e-12))


def check_same_projection(project: VisionTransformer, reference: torch.nn.Module) -> float:
    """Largest relative difference of tokens and attention between the two ViTs in fp32, on a square input of
    the training size and a non-square one (which resamples the positions).

    Raises:
        ProjectionMismatchError: Above :data:`PROJECTION_TOLERANCE`.
    """
    patch = project.patch_size
    side = project.img_size // patch * patch
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for height, width in ((side, side), (7 * patch, 5 * patch)):
            x = torch.randn(1, 3, height, width, generator=generator)
            worst = max(
                worst,
                relative_difference(reference.get_intermediate_layers(x)[0], project.get_intermediate_layers(x)[0]),
                relative_difference(reference.get_last_selfattention(x), project.get_last_selfattention(x)),
            )
    if worst > PROJECTION_TOLERANCE:
        raise ProjectionMismatchError(
            f"the reference ViT and the project's differ by {worst:.2e} of their magnitude "
            f"(tolerance {PROJECTION_TOLERANCE:g}): the comparison would be meaningless"
        )
    return worst


def feature_agreement(reference: Any, project: Any) -> dict[str, float]:
    return {"max_rel_diff": relative_difference(reference, project)}


def attention_agreement(reference: list, project: list) -> dict[str, float]:
    maps = max(relative_difference(r[0], p[0]) for r, p in zip(reference, project, strict=True))
    equal = np.mean([np.mean(r[1].astype(bool) == p[1]) for r, p in zip(reference, project, strict=True)])
    return {"maps_max_rel_diff": maps, "mask_pixels_equal": float(equal)}


def mask_agreement(reference: list[np.ndarray], project: list[np.ndarray]) -> dict[str, float]:
    equal = [float(np.mean(r == p)) for r, p in zip(reference, project, strict=True)]
    return {"pixels_equal": float(np.mean(equal)), "frames_identical": float(np.mean([e == 1.0 for e in equal]))}


# ---------------------------------------------------------------------------- workloads
def model_label(model: VisionTransformer, weights: str) -> str:
    width = {192: "T", 384: "S", 768: "B", 1024: "L"}.get(model.embed_dim, f"D{model.embed_dim}")
    label = f"ViT-{width}/{model.patch_size}"
    return label if weights.startswith("random") else f"{label} ({weights})"


def knn_workload(model, reference, label, paths, args, sizes: Sizes) -> Workload:
    def project(images=paths) -> torch.Tensor:
        extractor = FeatureExtractor(
            model,
            knn_transform(sizes.knn_resize, sizes.knn_crop),
            runtime=Runtime(
                device="cpu", dtype=args.dtype, batch_size=args.batch_size, num_workers=args.workers, progress=False
            ),
        )
        return extractor.extract(images).cls

    def warm_up() -> None:
        reference_knn_features(reference, paths[: args.batch_size], sizes, args.batch_size, args.workers)
        project(paths[: args.batch_size])

    return Workload(
        f"k-NN features {sizes.knn_crop}²",
        label,
        len(paths),
        "images",
        lambda: reference_knn_features(reference, paths, sizes, args.batch_size, args.workers),
        project,
        warm_up,
        feature_agreement,
    )


def attention_workload(model, reference, label, paths, args, sizes: Sizes) -> Workload:
    patch = model.patch_size

    def project(images=paths) -> list[tuple[np.ndarray, np.ndarray]]:
        outputs: list[Any] = [None] * len(images)
        for item in iter_attention(
            model,
            images,
            size=sizes.attention,
            keep_aspect=False,
            runtime=Runtime(
                device="cpu",
                dtype=args.dtype,
                batch_size=args.attention_batch,
                num_workers=args.workers,
                progress=False,
            ),
        ):
            heatmaps = upsample_nearest(item.maps, patch).numpy()
            masks = upsample_nearest(threshold_attention(item.maps, DEFAULT_THRESHOLD), patch).numpy()
            outputs[item.index] = (heatmaps, masks)
        return outputs

    def warm_up() -> None:
        reference_attention_masks(reference, paths[:1], sizes.attention, DEFAULT_THRESHOLD)
        project(paths[:1])

    return Workload(
        f"attention masks {sizes.attention}²",
        label,
        len(paths),
        "images",
        lambda: reference_attention_masks(reference, paths, sizes.attention, DEFAULT_THRESHOLD),
        project,
        warm_up,
        attention_agreement,
    )


def copy_workload(model, reference, label, paths, args, sizes: Sizes) -> Workload:
    def project(images=paths) -> np.ndarray:
        extractor = DescriptorExtractor(
            model,
            DescriptorRecipe.copy_detection(sizes.copy),
            runtime=Runtime(
                device="cpu", dtype=args.dtype, batch_size=args.batch_size, num_workers=args.workers, progress=False
            ),
        )
        return extractor.extract_raw(images)

    def warm_up() -> None:
        reference_copy_descriptors(reference, paths[: args.batch_size], sizes.copy, args.batch_size, args.workers)
        project(paths[: args.batch_size])

    return Workload(
        f"copy-detection descriptors {sizes.copy}²",
        label,
        len(paths),
        "images",
        lambda: reference_copy_descriptors(reference, paths, sizes.copy, args.batch_size, args.workers),
        project,
        warm_up,
        feature_agreement,
    )


def davis_workload(model, reference, label, davis: Path, args, sizes: Sizes) -> Workload:
    port = video_reference(sizes.video_short_side)
    sequences = davis_sequences(davis)
    if args.sequence not in sequences:
        raise ValueError(f"{davis}: no sequence {args.sequence!r}; it has {', '.join(sequences)}")
    frames = davis_frames(davis, args.sequence)[: args.frames]
    if len(frames) < 2:
        raise ValueError(
            f"--frames must be at least 2 (the annotated frame and one to propagate to), got {args.frames}"
        )
    annotation = davis_annotations(davis, args.sequence)[0]
    preprocessing = FramePreprocessing(short_side=sizes.video_short_side)
    autocast = autocast_dtype(torch.device("cpu"), args.dtype)

    # The reference's neighbourhood mask, built its way (once per video), timed on its own.
    grid_h, grid_w = (side // model.patch_size for side in port.read_frame(frames[0])[0].shape[1:])
    start = time.perf_counter()
    mask = port.restrict_neighborhood(grid_h, grid_w, NEIGHBOURHOOD_RADIUS)[None]
    mask_seconds = time.perf_counter() - start

    def run_reference(paths=frames) -> list[np.ndarray]:
        labels, _ = port.segment_sequence(reference, paths, annotation, mask_neighborhood=mask)
        return labels[1:]

    def run_project(paths=frames) -> list[np.ndarray]:
        first = read_indexed_png(annotation)
        return list(
            segment_frames(read_bgr_frames(paths), first, model, PropagationConfig(), preprocessing, "cpu", autocast)
        )

    def warm_up() -> None:
        run_reference(frames[:2])
        run_project(frames[:2])

    return Workload(
        f"DAVIS propagation {sizes.video_short_side}p ({args.sequence})",
        label,
        len(frames) - 1,
        "frames",
        run_reference,
        run_project,
        warm_up,
        mask_agreement,
        reference_once_s=mask_seconds,
    )


# ---------------------------------------------------------------------------- running
def run_workload(workload: Workload, repeats: int, precision: str, log: Callable[[str], None]) -> Result:
    """Warm up, then `repeats` rounds of both sides, the reference first in even rounds and second in odd ones."""
    log(f"{workload.name}, {workload.model}: warming up")
    workload.warm_up()
    times: dict[str, list[float]] = {"reference": [], "project": []}
    outputs: dict[str, Any] = {}
    for round_index in range(repeats):
        order = ("reference", "project") if round_index % 2 == 0 else ("project", "reference")
        for side in order:
            start = time.perf_counter()
            output = getattr(workload, side)()
            times[side].append(time.perf_counter() - start)
            outputs.setdefault(side, output)
        log(
            f"  round {round_index + 1}: reference {times['reference'][-1]:.2f} s, project {times['project'][-1]:.2f} s"
        )
    return Result(
        workload.name,
        workload.model,
        workload.items,
        workload.unit,
        precision,
        times["reference"],
        times["project"],
        workload.agreement(outputs["reference"], outputs["project"]),
        workload.reference_once_s,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the shared data folder (default: $DINO_DATA_DIR, ../shared/data)")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="workloads to run")
    parser.add_argument("--weights", default=None, help="backbone of knn, attention, copy (random:vit_small/16)")
    parser.add_argument(
        "--video-weights", nargs="+", default=None, help="DAVIS backbones (random:vit_small/16 random:vit_small/8)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="the project's precision (auto: bf16 on CPUs with native bf16, fp32 otherwise); the reference is fp32",
    )
    parser.add_argument("--images", type=int, default=None, help="photos for knn and copy (64)")
    parser.add_argument("--attention-images", type=int, default=None, help="photos for attention (16)")
    parser.add_argument("--batch-size", type=int, default=None, help="knn and copy batch, both sides (16)")
    parser.add_argument(
        "--attention-batch", type=int, default=None, help=f"the project's attention batch ({ATTENTION_BATCH})"
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides")
    parser.add_argument("--sequence", default="blackswan", help="DAVIS sequence")
    parser.add_argument("--frames", type=int, default=None, help="DAVIS frames, the annotated one included (8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per workload (3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny ViTs, inputs and counts: a smoke run in seconds")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    quick = args.quick
    arch = "vit_tiny" if quick else "vit_small"
    defaults: dict[str, Any] = {
        "weights": f"random:{arch}/16",
        "video_weights": [f"random:{arch}/{patch}" for patch in (16, 8)],
        "images": 2 if quick else 64,
        "attention_images": 2 if quick else 16,
        "batch_size": 2 if quick else 16,
        "attention_batch": 2 if quick else ATTENTION_BATCH,
        "frames": 3 if quick else 8,
        "repeats": 2 if quick else 3,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("images", "attention_images", "batch_size", "attention_batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.data = args.data or default_data_dir()
    return args


@dataclass
class BenchReport:
    machine: dict[str, Any]
    results: list[Result]
    skipped: list[str]


def machine_description(precision: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_bf16": cpu_has_native_bf16(),
        "project_precision": precision,
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }


def run_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> BenchReport:
    """Every workload of `args.only`, in one process; bad options or inputs raise one of ``dino.cli.USER_ERRORS``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise FileNotFoundError(f"{args.data}: no data folder (give --data or set DINO_DATA_DIR)")
    sizes = QUICK_SIZES if args.quick else Sizes()
    dtype = autocast_dtype(torch.device("cpu"), args.dtype)
    precision = "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")
    machine = machine_description(precision)
    log(f"project precision: {precision} (--dtype {args.dtype}; native bf16: {machine['native_bf16']}); reference fp32")
    reference_vit = load_sibling("reference_vit")
    results, skipped = [], []

    def backbone(weights: str) -> tuple[VisionTransformer, torch.nn.Module, str]:
        model = load_backbone(weights).eval()
        reference = reference_vit.from_project(model)
        worst = check_same_projection(model, reference)
        log(f"{weights}: reference and project ViTs agree to {worst:.1e} of their magnitude (fp32)")
        return model, reference, model_label(model, weights)

    photo_workloads = [name for name in ("knn", "attention", "copy") if name in args.only]
    if photo_workloads:
        model, reference, label = backbone(args.weights)
        photos = photo_paths(args.data, max(args.images, args.attention_images))
        builders = {"knn": knn_workload, "attention": attention_workload, "copy": copy_workload}
        for name in photo_workloads:
            count = args.attention_images if name == "attention" else args.images
            workload = builders[name](model, reference, label, photos[:count], args, sizes)
            results.append(run_workload(workload, args.repeats, precision, log))
    if "davis" in args.only:
        davis = args.data / "davis2016-dev"
        if not davis.is_dir():
            skipped.append(f"davis: {davis} not found")
        for weights in args.video_weights if davis.is_dir() else []:
            model, reference, label = backbone(weights)
            workload = davis_workload(model, reference, label, davis, args, sizes)
            log(f"DAVIS {label}: the reference's neighbourhood mask took {workload.reference_once_s:.2f} s")
            results.append(run_workload(workload, args.repeats, precision, log))
    machine["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return BenchReport(machine, results, skipped)


def print_report(report: BenchReport, markdown: bool) -> None:
    machine = report.machine
    print(
        f"\n{machine['cpu']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, "
        f"native bf16: {machine['native_bf16']}, project precision: {machine['project_precision']}, "
        f"load average {machine['load_average_start']:.1f} -> {machine['load_average_end']:.1f}"
    )
    header = ["workload", "model", "items", "reference s", "project s", "ratio", f"≥ {GOAL}×", "agreement"]
    rows = []
    for result in report.results:
        ratio = f"{result.ratio:.2f}"
        if result.reference_once_s:
            ratio += f" ({result.ratio_with_once:.2f} with the {result.reference_once_s:.1f} s mask build)"
        agreement = ", ".join(f"{key} {value:.6g}" for key, value in result.agreement.items())
        rows.append(
            [
                result.workload,
                result.model,
                f"{result.items} {result.unit}",
                f"{statistics.median(result.reference_s):.3f}",
                f"{statistics.median(result.project_s):.3f}",
                ratio,
                "yes" if result.ratio >= GOAL else "no",
                agreement,
            ]
        )
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in rows:
            print("  ".join(f"{name}: {cell}" for name, cell in zip(header, row, strict=True)))
    for reason in report.skipped:
        print(f"skipped {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_bench(args, log=lambda line: print(line, file=sys.stderr))
    except USER_ERRORS as error:
        print(f"reference_speed: error: {error}", file=sys.stderr)
        return 2
    print_report(report, args.markdown)
    if args.json:
        # Paths as the repository sees them: the results file must not name folders of the machine it ran on.
        data = os.path.relpath(args.data, REPO_ROOT) if args.data else None
        options = {key: value for key, value in vars(args).items() if key != "json"} | {"data": data}
        atomic_write_json(args.json, {"args": options, **asdict(report)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
