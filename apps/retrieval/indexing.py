"""Folder-level search workflows: index a folder (optionally sharded under ``torchrun``), update it, fit a whitening.

Each function is what one ``dino search`` verb calls, usable the same way from Python.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import torch.distributed as dist

from dino.data.io import list_images
from dino.distributed import init_distributed
from dino.features import OnError
from dino.models.backbone import Backbone
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe, fit_descriptor_whitening
from dino.search.index import ImageIndex, UpdateReport, build_index, describe_shard, update_index
from dino.search.whitening import Whitening

__all__ = ["fit_whitening", "index_folders", "update_folders"]

PathInput = str | os.PathLike[str]


def index_folders(
    inputs: Sequence[PathInput],
    out: PathInput,
    model: Backbone,
    recipe: DescriptorRecipe | None = None,
    whitening: Whitening | None = None,
    factory: str = "Flat",
    recursive: bool = True,
    checkpoint_every: int = 20,
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> ImageIndex | None:
    """Index every image under `inputs` into the folder `out`.

    Interrupted runs resume from the descriptors already computed. Under ``torchrun`` with several processes
    each rank describes a contiguous shard (on GPU ``LOCAL_RANK`` when CUDA is available), then rank 0 merges
    the shards into one index; `out` must then be on a filesystem all ranks share. With ``on_error="skip"``
    unusable images are left out and listed in :attr:`ImageIndex.skipped`. `runtime` says how the backbone runs
    (``Runtime()`` when None); under ``torchrun`` its device is the rank's.

    Returns:
        The index (None on ranks other than 0).
    """
    recipe = recipe or DescriptorRecipe.retrieval(backbone=model)
    images = list_images(inputs, recursive, required=True)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return build_index(images, model, recipe, whitening, factory, out, checkpoint_every, on_error, runtime)
    runtime = runtime or Runtime()
    context = init_distributed(runtime.device)
    runtime = replace(runtime, device=str(context.device))
    try:
        describe_shard(
            images, model, recipe, out, context.rank, context.world_size, whitening, checkpoint_every, on_error,
            runtime,
        )  # fmt: skip
        dist.barrier()
        index = None
        if context.is_main:
            index = build_index(images, model, recipe, whitening, factory, out, checkpoint_every, on_error, runtime)
        dist.barrier()
        return index
    finally:
        dist.destroy_process_group()


def update_folders(
    index: ImageIndex | PathInput,
    inputs: Sequence[PathInput],
    model: Backbone,
    recursive: bool = True,
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> UpdateReport:
    """Bring a saved index (an :class:`ImageIndex` or its folder) in line with the images now under `inputs`,
    and save it where it was loaded from when what it lists changed (its files, or the ones it skipped)."""
    if not isinstance(index, ImageIndex):
        index = ImageIndex.load(index)
    listed = (index.manifest["files"], index.skipped)
    report = update_index(index, list_images(inputs, recursive, required=True), model, on_error, runtime)
    if (index.manifest["files"], index.skipped) != listed:
        index.save(index.path)
    return report


def fit_whitening(
    inputs: Sequence[PathInput],
    out: PathInput,
    model: Backbone,
    recipe: DescriptorRecipe | None = None,
    dim: int | None = None,
    centered: bool = False,
    recursive: bool = True,
    runtime: Runtime | None = None,
) -> Whitening:
    """Fit a PCA-whitening on the raw descriptors of the images under `inputs` (a set disjoint from the
    database) and save it to `out`; its metadata records the backbone and recipe it is valid for."""
    extractor = DescriptorExtractor(model, recipe or DescriptorRecipe.retrieval(backbone=model), runtime=runtime)
    whitening = fit_descriptor_whitening(
        extractor, list_images(inputs, recursive, required=True), dim=dim, centered=centered
    )
    whitening.save(out)
    return whitening
