"""Geometric verification of copy candidates: local-feature matches that agree on one affine transform.

A global descriptor scores a whole image, so a copy that shares only part of its content with the original (an
object photographed inside another scene, a spliced region) scores like an unrelated image. Verification looks at
local features instead, as spatial verification does in classic copy detection: the features of both images are
matched by mutual nearest neighbour, and RANSAC counts the largest set of matches that one affine map of the query
onto the candidate explains. Unrelated images give a few dozen chance inliers; copies give from tens to thousands.
``copy-detect find --verify`` uses this count as the copy score.

Two kinds of local features (:data:`apps.copy_detection.defaults.VERIFIERS`):

- ``dino``: the backbone's patch tokens at several scales, from a middle block rather than the last one: deeper
  tokens describe *what* a patch shows and match every patch of a similar texture, middle-block tokens still
  describe its local appearance (Amir et al., "Deep ViT Features as Dense Visual Descriptors", 2021, find the
  same for DINO ViTs). Only as good as the backbone.
- ``sift``: OpenCV's SIFT keypoints with RootSIFT descriptors (Arandjelović and Zisserman, CVPR 2012), invariant
  to rotation and scale by construction, independent of the backbone.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from apps.copy_detection.defaults import VERIFIERS
from dino.data.io import open_image
from dino.data.transforms import normalize
from dino.models.backbone import Backbone, is_resnet
from dino.runtime import Runtime, autocast_context

__all__ = [
    "DEFAULT_SIDES",
    "DEFAULT_TOLERANCE",
    "FeatureCache",
    "LocalFeatures",
    "PatchTokenExtractor",
    "SiftFeatureExtractor",
    "affine_inliers",
    "check_verifier",
    "count_inliers",
    "make_local_extractor",
    "mutual_nearest_neighbours",
]


# Longer image sides the tokens are computed at: a copy may show the content 3x larger or smaller.
DEFAULT_SIDES = (320, 640, 960)
# A match is an inlier when the affine map puts it within this fraction of the candidate's longer side.
DEFAULT_TOLERANCE = 0.06
RANSAC_ITERATIONS = 1000
# SIFT: keypoints kept per image (strongest first), and the longer side images are shrunk to before detection.
SIFT_KEYPOINTS = 2000
SIFT_MAX_SIDE = 1024


@dataclass(frozen=True)
class LocalFeatures:
    """The local features of one image: patch tokens at several scales, or keypoints.

    Attributes:
        descriptors: (N, D) L2-normalised descriptors, float16.
        positions: (N, 2) patch centres or keypoints as (x, y) in the original image's pixels, float32.
        size: The original image's (width, height).
    """

    descriptors: np.ndarray
    positions: np.ndarray
    size: tuple[int, int]


class PatchTokenExtractor:
    """Middle-block patch tokens of an image at several scales (aspect ratio kept).

    Args:
        model: The backbone.
        sides: Longer sides (pixels) the image is resized to, rounded to whole patches.
        block: The block whose tokens are used (1-based); the middle one by default.
        runtime: Its device and dtype (autocast) serve here; one image at a time, so its batch size, workers and
            progress do not apply. ``Runtime()`` when None.
    """

    def __init__(
        self,
        model: Backbone,
        sides: Sequence[int] = DEFAULT_SIDES,
        block: int | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        check_verifier("dino", model)
        if not sides or min(sides) < model.patch_size:
            raise ValueError(f"sides must be at least one patch ({model.patch_size} px), got {list(sides)}")
        runtime = runtime or Runtime()
        self.device = runtime.torch_device()
        self.model = model.eval().to(self.device)
        self.sides = tuple(sides)
        self.block = block if block is not None else (len(model.blocks) + 1) // 2
        self.autocast_dtype = runtime.autocast_dtype(self.device)
        self._to_tensor = normalize()

    @torch.inference_mode()
    def __call__(self, image: str | os.PathLike[str] | Image.Image) -> LocalFeatures:
        if not isinstance(image, Image.Image):
            image = open_image(image)
        width, height = image.size
        patch = self.model.patch_size
        descriptors, positions = [], []
        for side in self.sides:
            scale = side / max(width, height)
            columns = max(1, round(width * scale / patch))
            rows = max(1, round(height * scale / patch))
            resized = image.resize((columns * patch, rows * patch), Image.Resampling.BICUBIC)
            batch = self._to_tensor(resized).unsqueeze(0).to(self.device)
            with autocast_context(self.device, self.autocast_dtype):
                tokens = self.model.forward_to_block(batch, self.block)[0, 1:]
            descriptors.append(F.normalize(tokens.float(), dim=-1).cpu().numpy().astype(np.float16))
            ys, xs = np.mgrid[0:rows, 0:columns]
            positions.append(
                np.stack(((xs.ravel() + 0.5) * width / columns, (ys.ravel() + 0.5) * height / rows), axis=1)
            )
        return LocalFeatures(np.concatenate(descriptors), np.concatenate(positions).astype(np.float32), (width, height))


class SiftFeatureExtractor:
    """SIFT keypoints with RootSIFT descriptors (square root of the L1-normalised SIFT vector, so unit L2).

    Args:
        keypoints: Strongest keypoints kept per image.
        max_side: Images with a longer side above this are shrunk to it first (positions are mapped back).
    """

    def __init__(self, keypoints: int = SIFT_KEYPOINTS, max_side: int = SIFT_MAX_SIDE) -> None:
        self.sift = cv2.SIFT_create(nfeatures=keypoints)
        self.max_side = max_side

    def __call__(self, image: str | os.PathLike[str] | Image.Image) -> LocalFeatures:
        if not isinstance(image, Image.Image):
            image = open_image(image)
        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height))
        gray = image.convert("L")
        if scale < 1:
            gray = gray.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)
        keypoints, sift = self.sift.detectAndCompute(np.asarray(gray), None)
        if sift is None:  # a blank image has no keypoints
            sift = np.zeros((0, 128), dtype=np.float32)
        root_sift = np.sqrt(sift / np.maximum(sift.sum(axis=1, keepdims=True), 1e-12))
        positions = np.array([point.pt for point in keypoints], dtype=np.float32).reshape(-1, 2) / scale
        return LocalFeatures(root_sift.astype(np.float16), positions, (width, height))


def check_verifier(kind: str, model: Backbone) -> None:
    """Refuse, before any work, a verifier `model` cannot serve: ``dino`` matches a ViT's middle-block patch tokens,
    which a ResNet does not have (its blocks are stages of another width and stride)."""
    if kind == "dino" and is_resnet(model):
        raise ValueError(
            f"--verify dino matches a ViT's middle-block patch tokens, which {model.arch} does not have; with a "
            "ResNet use --verify sift (or no verification)"
        )


def make_local_extractor(
    kind: str, model: Backbone, runtime: Runtime | None = None
) -> PatchTokenExtractor | SiftFeatureExtractor:
    """The local-feature extractor of a verifier in :data:`VERIFIERS`.

    `model` and the device and dtype of `runtime` (``Runtime()`` when None) serve ``dino``; its other options
    (batch size, workers, progress) do not apply to one image at a time and are ignored.
    """
    if kind == "dino":
        return PatchTokenExtractor(model, runtime=runtime)
    if kind == "sift":
        return SiftFeatureExtractor()
    raise ValueError(f"unknown verifier {kind!r}; choose one of {', '.join(VERIFIERS)}")


class FeatureCache:
    """Local features of image files, each computed once and kept for the `capacity` most recently used files
    (a ViT-T's multi-scale tokens take about 1.6 MB per image)."""

    def __init__(self, extractor: Callable[[str | os.PathLike[str]], LocalFeatures], capacity: int = 256) -> None:
        self.extractor = extractor
        self.capacity = capacity
        self._features: OrderedDict[str, LocalFeatures] = OrderedDict()

    def __call__(self, path: str | os.PathLike[str]) -> LocalFeatures:
        key = str(path)
        if key not in self._features:
            self._features[key] = self.extractor(path)
            if len(self._features) > self.capacity:
                self._features.popitem(last=False)
        self._features.move_to_end(key)
        return self._features[key]


def mutual_nearest_neighbours(a: np.ndarray, b: np.ndarray, max_entries: int = 2**26) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) where b[j] is a[i]'s most similar row and a[i] is b[j]'s (cosine of unit rows).

    The similarity matrix is computed in blocks of rows of `a` holding at most `max_entries` entries (256 MB in
    float32 by default), so that tens of thousands of tokens (a ViT/8 at large sides) fit in memory. Ties go to
    the first index.
    """
    queries, keys = torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))
    best_in_b = torch.empty(len(a), dtype=torch.long)
    best_for_b = torch.full((len(b),), -torch.inf)
    best_in_a = torch.zeros(len(b), dtype=torch.long)
    step = max(1, max_entries // max(1, len(b)))
    for start in range(0, len(a), step):
        similarity = queries[start : start + step] @ keys.T
        best_in_b[start : start + step] = similarity.argmax(dim=1)
        block_best, block_argmax = similarity.max(dim=0)
        better = block_best > best_for_b  # strictly: an earlier block keeps its tie
        best_for_b[better] = block_best[better]
        best_in_a[better] = block_argmax[better] + start
    rows = np.flatnonzero(best_in_a.numpy()[best_in_b.numpy()] == np.arange(len(a)))
    return rows, best_in_b.numpy()[rows]


def affine_inliers(
    source: np.ndarray,
    target: np.ndarray,
    tolerance: float,
    iterations: int = RANSAC_ITERATIONS,
    seed: int = 0,
) -> np.ndarray:
    """RANSAC: the largest set of correspondences one affine map explains, as a boolean mask.

    Args:
        source, target: (n, 2) matched points.
        tolerance: A correspondence is an inlier when the map puts its source point within this distance of its
            target point.
        iterations: Random minimal samples (3 correspondences each) tried.
        seed: Seed of the sampling, so that the result is reproducible.

    Returns:
        (n,) mask of the inliers of the best sample (all False when fewer than 3 correspondences or every sample
        is degenerate, i.e. three nearly collinear source points).
    """
    count = len(source)
    best = np.zeros(count, dtype=bool)
    if count < 3:
        return best
    rng = np.random.default_rng(seed)
    homogeneous = np.concatenate((source, np.ones((count, 1))), axis=1).astype(np.float64)
    target = target.astype(np.float64)
    chunk = max(1, 4_000_000 // count)  # bounds the (samples, n, 2) predictions to ~64 MB
    for start in range(0, iterations, chunk):
        samples = rng.integers(0, count, size=(min(chunk, iterations - start), 3))
        basis = homogeneous[samples]
        # Twice the triangle's area: below tolerance² the three points barely span the plane.
        keep = np.abs(np.linalg.det(basis)) > tolerance**2
        if not keep.any():
            continue
        maps = np.linalg.solve(basis[keep], target[samples[keep]])
        errors = np.linalg.norm(homogeneous @ maps - target, axis=-1)
        inliers = errors < tolerance
        winner = int(inliers.sum(axis=1).argmax())
        if inliers[winner].sum() > best.sum():
            best = inliers[winner]
    return best


def count_inliers(query: LocalFeatures, candidate: LocalFeatures, tolerance: float = DEFAULT_TOLERANCE) -> int:
    """Patch matches between two images that one affine map of the query onto the candidate explains.

    Args:
        query, candidate: Local features of the two images.
        tolerance: Inlier distance as a fraction of the candidate's longer side.
    """
    if not len(query.descriptors) or not len(candidate.descriptors):
        return 0
    rows, columns = mutual_nearest_neighbours(query.descriptors, candidate.descriptors)
    pixels = tolerance * max(candidate.size)
    return int(affine_inliers(query.positions[rows], candidate.positions[columns], pixels).sum())
