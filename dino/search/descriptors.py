"""Global image descriptors for search and copy detection: one recipe, one extractor (SPEC §12, §13).

A :class:`DescriptorRecipe` fixes everything that decides a descriptor's values (preprocessing, pooling,
multiscale); it is stored in index manifests and whitening files so that vectors computed differently are
never compared. Descriptors are computed raw, optionally whitened, then L2-normalised.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode

from dino.checkpoint import model_identity
from dino.data.transforms import ImageTransform, square_transform, thumbnail_transform
from dino.features import FeatureExtractor, OnError, require_finite
from dino.models.backbone import Backbone, is_resnet
from dino.runtime import Runtime
from dino.search.defaults import COPY_DETECTION_SIZE, POOLINGS, RETRIEVAL_SIZE
from dino.search.pooling import GEM_P, MULTISCALE_SCALES, gem, multiscale
from dino.search.whitening import Whitening

__all__ = [
    "DescriptorExtractor",
    "DescriptorRecipe",
    "describe",
    "finalize_descriptors",
    "fit_descriptor_whitening",
    "l2_normalize",
    "load_descriptor_whitening",
]

Pooling = Literal["cls", "gem", "cls+gem"]
Preprocessing = Literal["thumbnail", "square"]


@dataclass(frozen=True)
class DescriptorRecipe:
    """How a global descriptor is computed from an image.

    A ResNet's average-pooled feature takes the place of [CLS] and its layer4 grid (stride 32) that of the patch
    tokens. Its default descriptor for both retrieval and copy detection is GeM (p = 4) over layer4
    (:meth:`retrieval`, :meth:`copy_detection`): a ResNet has no learned global token, its pooled feature is GeM's
    p = 1 case, and GeM over the last convolutional map is the usual CNN retrieval descriptor (Radenović et al.);
    the reference scripts build their torchvision networks with ``num_classes=0`` and so define none.

    Attributes:
        pooling: ``cls`` ([CLS] after the final norm, the retrieval reference; a ResNet's pooled feature),
            ``gem`` (GeM over the patch tokens; a ResNet's layer4 grid) or ``cls+gem`` (their concatenation, the
            copy-detection reference).
        preprocessing: ``thumbnail`` (fit in size×size keeping the aspect ratio, never enlarge, Lanczos;
            SPEC §13) or ``square`` (size×size ignoring the aspect ratio, bicubic; SPEC §12).
        size: The thumbnail bound or square side, in pixels.
        multiscale: Average over scales 1, 1/√2, 1/2 (SPEC §13 ``--multiscale 1``).
        gem_p: The GeM exponent.
    """

    pooling: Pooling = "cls"
    preprocessing: Preprocessing = "thumbnail"
    size: int = RETRIEVAL_SIZE
    multiscale: bool = False
    gem_p: float = GEM_P

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {POOLINGS}")
        if self.preprocessing not in ("thumbnail", "square"):
            raise ValueError(f"unknown preprocessing {self.preprocessing!r}; choose thumbnail or square")
        if self.size < 1:
            raise ValueError(f"descriptor size must be positive, got {self.size}")

    @classmethod
    def retrieval(
        cls,
        size: int = RETRIEVAL_SIZE,
        multiscale: bool = False,
        backbone: Backbone | None = None,
        pooling: Pooling | None = None,
    ) -> DescriptorRecipe:
        """The reference retrieval descriptor: [CLS] of a thumbnail (SPEC §13); GeM over layer4 for a ResNet
        `backbone`; `pooling` when given."""
        if pooling is None:
            pooling = "gem" if backbone is not None and is_resnet(backbone) else "cls"
        return cls(pooling=pooling, preprocessing="thumbnail", size=size, multiscale=multiscale)

    @classmethod
    def copy_detection(cls, size: int = COPY_DETECTION_SIZE, backbone: Backbone | None = None) -> DescriptorRecipe:
        """The reference copy-detection descriptor: [CLS] ⊕ GeM(p=4) of a size×size resize (SPEC §12); GeM(p=4)
        over layer4 for a ResNet `backbone`."""
        resnet = backbone is not None and is_resnet(backbone)
        return cls(pooling="gem" if resnet else "cls+gem", preprocessing="square", size=size)

    def transform(self) -> ImageTransform:
        """PIL image -> normalised tensor, exactly as the protocol."""
        if self.preprocessing == "square":
            return square_transform(self.size, interpolation=InterpolationMode.BICUBIC)
        return thumbnail_transform(self.size)

    def dim(self, embed_dim: int) -> int:
        """Descriptor length for a backbone of width `embed_dim`."""
        return 2 * embed_dim if self.pooling == "cls+gem" else embed_dim

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DescriptorRecipe:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def describe(model: Backbone, images: Tensor, recipe: DescriptorRecipe) -> Tensor:
    """Raw descriptors (B, recipe.dim(D)) of a normalised image batch, float32; for a ResNet, its pooled feature
    stands for [CLS] and its dense grid for the patch tokens (see :class:`DescriptorRecipe`)."""

    def single_scale(batch: Tensor) -> Tensor:
        if is_resnet(model):
            pooled, grid = model.forward_dense(batch)
            global_feature, dense = pooled.float(), grid.float()
        elif recipe.pooling == "cls":
            return model(batch).float()
        else:
            tokens = model.forward_features(batch).float()
            global_feature, dense = tokens[:, 0], tokens[:, 1:]
        if recipe.pooling == "cls":
            return global_feature
        pooled = gem(dense, recipe.gem_p)
        return pooled if recipe.pooling == "gem" else torch.cat((global_feature, pooled), dim=-1)

    return multiscale(single_scale, images) if recipe.multiscale else single_scale(images)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, float32 (zero rows stay zero)."""
    return F.normalize(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)), dim=-1).numpy()


def finalize_descriptors(raw: np.ndarray, whitening: Whitening | None) -> np.ndarray:
    """Raw descriptors -> the compared vectors: ``P (x − μ)`` when whitened, then L2-normalised (SPEC §12, §13)."""
    return l2_normalize(whitening.apply(raw) if whitening is not None else raw)


class DescriptorExtractor:
    """Computes a recipe's descriptors for many images, streaming, with optional whitening.

    Args:
        model: The backbone.
        recipe: The descriptor recipe.
        whitening: Applied to raw descriptors before the final L2 normalisation.
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None.
        on_error: What an unusable image does: ``raise`` its error, or ``skip`` it (see
            :class:`dino.features.FeatureExtractor`).
    """

    def __init__(
        self,
        model: Backbone,
        recipe: DescriptorRecipe,
        whitening: Whitening | None = None,
        runtime: Runtime | None = None,
        *,
        on_error: OnError = "raise",
    ) -> None:
        raw_dim = recipe.dim(model.embed_dim)
        if is_resnet(model) and model.grid_dim != model.embed_dim and recipe.pooling != "cls":
            raise ValueError(
                f"{model.arch}'s {model.grid_layer} grid (patch size {model.patch_size}) has {model.grid_dim} "
                f"channels, not the {model.embed_dim} of its pooled feature: GeM descriptors pool layer4, leave "
                "--patch-size out"
            )
        if whitening is not None and whitening.in_dim != raw_dim:
            raise ValueError(
                f"the whitening was fitted on {whitening.in_dim}-d descriptors but this backbone and recipe "
                f"give {raw_dim}-d ones"
            )
        self.recipe = recipe
        self.whitening = whitening
        # Every rescaled copy must still hold a patch.
        scale = min(MULTISCALE_SCALES) if recipe.multiscale else 1.0
        min_side = math.ceil(model.patch_size / scale)
        self.features = FeatureExtractor(model, recipe.transform(), runtime, min_side=min_side, on_error=on_error)

    @property
    def dim(self) -> int:
        """Length of the final descriptors."""
        if self.whitening is not None:
            return self.whitening.out_dim
        return self.recipe.dim(self.features.model.embed_dim)

    @torch.inference_mode()
    def iter_raw(
        self, images: Sequence[str | os.PathLike[str] | Image.Image]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """(positions in `images`, raw descriptors) per batch, in the order the batches are computed; images
        skipped by ``on_error="skip"`` are left out (see ``self.features.skipped``)."""
        for tensors, indices in self.features.iter_images(images, desc="descriptors"):
            with self.features.autocast():
                raw = describe(self.features.model, tensors.to(self.features.device), self.recipe)
            yield indices, require_finite(raw.float().cpu(), "descriptors", self.features.autocast_dtype).numpy()

    def finalize(self, raw: np.ndarray) -> np.ndarray:
        """Whiten (if configured) and L2-normalise raw descriptors."""
        return finalize_descriptors(raw, self.whitening)

    def extract_raw(self, images: Sequence[str | os.PathLike[str] | Image.Image]) -> np.ndarray:
        """Raw descriptors of all `images`, (n, recipe.dim(D)), in input order (e.g. to fit a whitening).

        Raises:
            ValueError: An image was skipped (``on_error="skip"``): every row must belong to its image, so this
                refuses rather than return a row of zeros; use :meth:`iter_raw` to skip.
        """
        if not images:
            raise ValueError("no images to describe")
        out = np.zeros((len(images), self.recipe.dim(self.features.model.embed_dim)), dtype=np.float32)
        for indices, raw in self.iter_raw(images):
            out[indices] = raw
        if self.features.skipped:
            raise ValueError(self.features.skipped[0].reason)
        return out

    def extract(self, images: Sequence[str | os.PathLike[str] | Image.Image]) -> np.ndarray:
        """Final descriptors of all `images`, (n, dim), L2-normalised, in input order."""
        return self.finalize(self.extract_raw(images))


def fit_descriptor_whitening(
    extractor: DescriptorExtractor,
    images: Sequence[str | os.PathLike[str] | Image.Image],
    dim: int | None = None,
    centered: bool = False,
    source: str | None = None,
) -> Whitening:
    """Fit a PCA-whitening on the raw descriptors of `images` (a set disjoint from the database).

    Its metadata records what it is valid for, which :func:`load_descriptor_whitening` checks: the backbone
    (:func:`dino.checkpoint.model_identity`) and the recipe, plus the image count, `centered` and, when given,
    `source` (where the images came from, e.g. their folder).
    """
    metadata: dict[str, Any] = {
        "backbone": model_identity(extractor.features.model),
        "recipe": extractor.recipe.as_dict(),
        "images": len(images),
        "centered": centered,
    }
    if source is not None:
        metadata["source"] = source
    return Whitening.fit(extractor.extract_raw(images), dim=dim, centered=centered, metadata=metadata)


def load_descriptor_whitening(path: str | os.PathLike[str], model: Backbone, recipe: DescriptorRecipe) -> Whitening:
    """Load a saved whitening, refusing one fitted on another backbone's or recipe's descriptors.

    Raises:
        ValueError: Naming `path` and what differs.
    """
    whitening = Whitening.load(path)
    fitted = whitening.metadata
    backbone = fitted.get("backbone")
    # Files written before the metadata was shared kept the checksum beside a plain weights name.
    fitted_sha = backbone.get("sha256") if isinstance(backbone, dict) else fitted.get("backbone_sha256")
    if fitted_sha is not None and fitted_sha != model_identity(model)["sha256"]:
        weights = backbone.get("weights") if isinstance(backbone, dict) else backbone
        raise ValueError(
            f"{path}: this whitening was fitted on descriptors of another backbone ({weights!r}); fit one with "
            "these weights (`dino search whiten`, or a folder as --whitening)"
        )
    if "recipe" in fitted and DescriptorRecipe.from_dict(fitted["recipe"]) != recipe:
        raise ValueError(
            f"{path}: this whitening was fitted for descriptor recipe {fitted['recipe']}, not {recipe.as_dict()}"
        )
    return whitening
