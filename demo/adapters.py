"""The demo's only link to the apps: one adapter per tab, each a thin call into an app's public functions.

Nothing here computes a mask, a descriptor or a label itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from apps.copy_detection import find as copy_find
from apps.copy_detection.find import CopyHit
from apps.segmentation.diffusion import MAX_REFINE_PIXELS
from apps.segmentation.figures import HEATMAP_CMAP, MEAN_CMAP
from apps.segmentation.visualize import AttentionViews, NcutViews, photo_attention_views, photo_ncut_views
from apps.video_seg import pipeline
from apps.video_seg.video import overlay, read_video_frames
from dino.features import DEFAULT_MAX_TOKENS, OnError
from dino.models.backbone import is_resnet
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorRecipe
from dino.search.index import Hit, ImageIndex, build_index, search_images

if TYPE_CHECKING:
    from dino.models.backbone import Backbone

__all__ = [
    "CopyVerdict",
    "attention_colormaps",
    "attention_max_photo_pixels",
    "attention_views",
    "build_copy_index",
    "build_search_index",
    "compare_copies",
    "copy_min_matches",
    "copy_threshold",
    "copy_verifier",
    "find_copies",
    "has_attention",
    "ncut_views",
    "open_search_index",
    "overlay_labels",
    "propagate_mask",
    "read_video",
    "search_similar",
]


# ---------------------------------------------------------------------------- (a) attention
def attention_views(
    model: Backbone,
    image: Image.Image,
    threshold: float,
    size: int,
    better_mask: bool = True,
    device: str = "auto",
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
) -> AttentionViews:
    """The `dino attention` views of one photo (:func:`apps.segmentation.visualize.photo_attention_views`).

    Args:
        model: The backbone.
        image: An RGB photo.
        threshold: Fraction of each head's attention mass the masks keep.
        size: Short side of the network input (the aspect ratio is kept so overlays fit the photo).
        better_mask: Also compute the foreground mask at the photo's size.
        device: Where the forward pass runs.
        max_tokens: Most patch tokens the network input may make (a larger one raises
            :class:`dino.features.TokenBudgetError` before any resizing); None for no limit.

    Raises:
        TokenBudgetError: The photo at `size` makes more than `max_tokens` patch tokens.
    """
    return photo_attention_views(model, image, threshold, size, better_mask, device, max_tokens)


def has_attention(model: Backbone) -> bool:
    """Whether `model` has the self-attention the Attention tab draws (a ViT); a ResNet has not."""
    return not is_resnet(model)


def ncut_views(
    model: Backbone,
    image: Image.Image,
    size: int,
    device: str = "auto",
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
) -> NcutViews:
    """The normalized-cut foreground of one photo at its size (:func:`apps.segmentation.visualize.photo_ncut_views`):
    what the Attention tab shows for a ResNet, cut on its dense grid (``grid_layer``).

    Raises:
        TokenBudgetError: The photo at `size` makes more grid cells than `max_tokens`.
    """
    return photo_ncut_views(model, image, size, device, max_tokens)


def attention_max_photo_pixels() -> int:
    """The most pixels at which the segmentation app refines the foreground mask (larger photos are refined at this
    size and the mask enlarged)."""
    return MAX_REFINE_PIXELS


def attention_colormaps() -> tuple[str, str]:
    """The colormaps ``dino attention`` uses for (per-head heatmaps, the mean map)."""
    return HEATMAP_CMAP, MEAN_CMAP


# ---------------------------------------------------------------------------- (b) search
def build_search_index(
    model: Backbone,
    images: Sequence[str | os.PathLike[str]],
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> ImageIndex:
    """An in-memory retrieval index (SPEC §13 reference descriptor) of `images`, via dino.search.index; `on_error`
    ``skip`` leaves unusable images out (listed in the index's ``skipped``)."""
    return build_index(images, model, DescriptorRecipe.retrieval(backbone=model), on_error=on_error, runtime=runtime)


def open_search_index(path: str | os.PathLike[str], model: Backbone) -> ImageIndex:
    """An index saved by ``dino index`` (or :func:`dino.search.index.build_index`), checked against `model`."""
    index = ImageIndex.load(path)
    index.check_compatible(model)
    return index


def search_similar(
    index: ImageIndex, model: Backbone, query: Image.Image, k: int, runtime: Runtime | None = None
) -> list[Hit]:
    """The `k` indexed images most similar to `query`, best first."""
    return search_images(index, [query], model, k=k, runtime=runtime)[0]


# ---------------------------------------------------------------------------- (c) copy check
@dataclass(frozen=True)
class CopyVerdict:
    """Cosine similarity of two copy-detection descriptors and the app's calibrated threshold, and, when the pair
    was verified, its geometrically verified local matches and the app's calibrated minimum of them."""

    similarity: float
    threshold: float
    matches: int | None = None
    min_matches: int | None = None

    @property
    def is_copy(self) -> bool:
        """The copy-detection app's rule: enough verified matches when verified, else the similarity threshold."""
        if self.matches is not None and self.min_matches is not None:
            return self.matches >= self.min_matches
        return self.similarity >= self.threshold


def copy_threshold(model: Backbone) -> float:
    """The copy-detection app's threshold on the cosine similarity for `model` (max-F1 on its benchmark)."""
    return float(copy_find.calibration_for(model).threshold)


def build_copy_index(
    model: Backbone,
    images: Sequence[str | os.PathLike[str]],
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> ImageIndex:
    """An in-memory index of `images` under the copy-detection descriptor (SPEC §12), by the copy app; `on_error`
    ``skip`` leaves unusable images out (listed in the index's ``skipped``)."""
    return copy_find.build_copy_index(images, model, on_error=on_error, runtime=runtime)


def find_copies(
    index: ImageIndex,
    model: Backbone,
    query: str | os.PathLike[str],
    threshold: float,
    runtime: Runtime | None = None,
) -> list[CopyHit]:
    """The indexed images the copy app calls copies of `query` at `threshold`, best first."""
    candidates = min(copy_find.DEFAULT_CANDIDATES, len(index))
    return copy_find.find_copies([query], index, model, threshold=threshold, candidates=candidates, runtime=runtime)[0]


def compare_copies(
    model: Backbone,
    first: str | os.PathLike[str],
    second: str | os.PathLike[str],
    threshold: float,
    verify: str | None = None,
    runtime: Runtime | None = None,
) -> CopyVerdict:
    """Similarity of two image files under the copy-detection descriptor, and the verdict.

    The copy app compares a query with indexed images, so `second` is indexed alone and `first` queried
    against it with no threshold, which returns their similarity (and verified matches) whatever they are.

    Args:
        model: The backbone.
        first: The image asked about (the query).
        second: The image it may copy (indexed alone).
        threshold: The similarity a copy reaches, without verification.
        verify: A verifier of the copy app (``dino``, ``sift``): the verdict is then its calibrated minimum of
            verified matches.
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None.
    """
    index = copy_find.build_copy_index([second], model, runtime=runtime)
    (hit,) = copy_find.find_copies(
        [first],
        index,
        model,
        threshold=-np.inf,
        candidates=1,
        include_self=True,
        verify=verify,
        min_inliers=0,
        runtime=runtime,
    )[0]
    minimum = copy_min_matches(model, verify) if verify else None
    return CopyVerdict(hit.score, threshold, hit.inliers, minimum)


def copy_min_matches(model: Backbone, verifier: str) -> int:
    """The copy app's calibrated minimum of verified matches for a copy, for `model` and `verifier`."""
    return int(copy_find.calibrated_min_inliers(model, verifier))


def copy_verifier(model: Backbone) -> str:
    """The copy app's verifier for `model` (the best on its benchmark; what ``copy-detect find --verify`` uses)."""
    return str(copy_find.calibration_for(model).verifier)


# ---------------------------------------------------------------------------- (d) video
def propagate_mask(
    model: Backbone,
    frames_bgr: Iterable[np.ndarray],
    first_labels: np.ndarray,
    device: torch.device | str = "cpu",
    on_frame: Callable[[int], None] | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    name: str = "the video",
) -> Iterator[np.ndarray]:
    """Label maps of frames 1, 2, … propagated from `first_labels` (apps.video_seg, reference options).

    Args:
        model: The backbone, on `device`.
        frames_bgr: OpenCV BGR frames, the annotated one first.
        first_labels: (H, W) labels of the first frame, 0 = background.
        device: Where features and affinities are computed.
        on_frame: Called with the number of frames done after each one, for a progress bar.
        max_tokens: Most patch tokens a frame resized for propagation may make (None: no limit).
        name: What a refusal calls the video.

    Raises:
        TokenBudgetError: The resized frames would make more than `max_tokens` patch tokens (checked on the first).
    """
    device = torch.device(device)
    # The demo applies the model, it does not report protocol numbers: bf16 where the hardware has it.
    autocast = Runtime().autocast_dtype(device)
    frames = pipeline.segment_frames(
        frames_bgr, first_labels, model, device=device, autocast=autocast, max_tokens=max_tokens, name=name
    )
    for done, labels in enumerate(frames, start=1):
        if on_frame is not None:
            on_frame(done)
        yield labels


def read_video(path: str | os.PathLike[str], max_frames: int) -> Iterator[np.ndarray]:
    """The first `max_frames` BGR frames of a video file, as the video app decodes them."""
    return read_video_frames(path, max_frames)


def overlay_labels(frame_bgr: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A BGR frame with its objects painted in the DAVIS palette, as ``dino video-seg`` draws its overlay."""
    return overlay(frame_bgr, labels)
