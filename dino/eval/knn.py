"""Weighted k-NN classification on frozen, L2-normalised [CLS] features (SPEC §8)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dino.atomic import atomic_output_path, atomic_write_json
from dino.checksums import state_dict_sha256
from dino.data.datasets import ImageFolderDataset
from dino.data.transforms import knn_transform
from dino.distributed import all_gather_objects, get_rank, get_world_size, is_main_process
from dino.eval.defaults import DEFAULT_KS, DEFAULT_TEMPERATURE
from dino.features import FeatureExtractor
from dino.models.backbone import Backbone
from dino.runtime import Runtime

__all__ = ["KNNResult", "extract_folder_features", "knn_classifier", "run_knn"]

NUM_CHUNKS = 100
TOP5 = 5


@dataclass
class KNNResult:
    """Top-1 / top-5 accuracy (percent) for one k."""

    k: int
    top1: float
    top5: float


def knn_classifier(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
) -> KNNResult:
    """The reference's weighted vote: top-k cosine neighbours, each weighted ``exp(sim / T)``.

    Features must already be L2-normalised. The test set is processed in 100 chunks (at least one image
    each, which fixes the reference's division by zero for fewer than 100 queries).
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    bank = train_features.t()
    top1 = top5 = 0.0
    total = test_labels.shape[0]
    chunk = max(total // NUM_CHUNKS, 1)
    for start in range(0, total, chunk):
        features = test_features[start : start + chunk]
        targets = test_labels[start : start + chunk]
        batch = targets.shape[0]
        similarity = features @ bank
        distances, indices = similarity.topk(k, largest=True, sorted=True)
        neighbours = torch.gather(train_labels.view(1, -1).expand(batch, -1), 1, indices)
        one_hot = torch.zeros(batch * k, num_classes, device=bank.device)
        one_hot.scatter_(1, neighbours.view(-1, 1), 1)
        weights = distances.clone().div_(temperature).exp_()
        probs = torch.sum(one_hot.view(batch, -1, num_classes) * weights.view(batch, -1, 1), 1)
        _, predictions = probs.sort(1, True)
        correct = predictions.eq(targets.view(-1, 1))
        top1 += correct.narrow(1, 0, 1).sum().item()
        top5 += correct.narrow(1, 0, min(TOP5, k, num_classes)).sum().item()
    return KNNResult(k=k, top1=top1 * 100.0 / total, top5=top5 * 100.0 / total)


def extract_folder_features(
    model: Backbone,
    folder: str | os.PathLike[str],
    cache: str | os.PathLike[str] | None = None,
    runtime: Runtime | None = None,
) -> tuple[Tensor, Tensor, list[str]]:
    """L2-normalised [CLS] features and labels of a class-subfolder folder, with the k-NN preprocessing.

    Under torchrun (an initialised process group) the extraction is split across ranks. With `cache`,
    features are read from ``<cache>.npy`` / labels from ``<cache>.labels.npy`` when ``<cache>.json`` says they
    were computed by these weights from these files (paths, sizes, modification times), and otherwise computed
    and written there (atomically, the fingerprint last). `runtime` says how the backbone runs (``Runtime()`` when
    None; ``dino knn`` passes ``dtype="fp32"``, the reference's precision).
    """
    dataset = ImageFolderDataset(folder)
    if cache is not None:
        feature_file, label_file, key_file = (Path(f"{cache}{suffix}") for suffix in (".npy", ".labels.npy", ".json"))
        fingerprint = _cache_fingerprint(model, dataset.paths)
        if feature_file.is_file() and label_file.is_file():
            if key_file.is_file() and json.loads(key_file.read_text()) == fingerprint:
                return torch.from_numpy(np.load(feature_file)), torch.from_numpy(np.load(label_file)), dataset.classes
            print(f"note: {feature_file} holds features of other images or weights; recomputing", file=sys.stderr)
    features = F.normalize(_extract_sharded(model, dataset.paths, runtime), dim=1, p=2)
    labels = torch.tensor(dataset.targets, dtype=torch.long)
    if cache is not None and is_main_process():
        # The old fingerprint goes first: an interrupted rewrite must not leave it vouching for new arrays.
        key_file.unlink(missing_ok=True)
        for path, array in ((feature_file, features.numpy()), (label_file, labels.numpy())):
            with atomic_output_path(path) as temporary, open(temporary, "wb") as handle:
                np.save(handle, array)
        atomic_write_json(key_file, fingerprint)
    return features, labels, dataset.classes


def _cache_fingerprint(model: Backbone, paths: Sequence[Path]) -> dict[str, str]:
    """What cached features depend on: the weights, and each file's path, size and modification time."""
    files = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        files.update(f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return {"backbone_sha256": state_dict_sha256(model), "files_sha256": files.hexdigest()}


def _extract_sharded(model: Backbone, paths: list[Path], runtime: Runtime | None) -> Tensor:
    """[CLS] features of `paths`; under torchrun each rank extracts every world_size-th image and the
    shards are all-gathered, so every rank ends with the full, ordered bank (SPEC §8)."""
    rank, world_size = get_rank(), get_world_size()
    shard = paths[rank::world_size]
    extractor = FeatureExtractor(model, knn_transform(), runtime)
    local = extractor.extract(shard).cls if shard else torch.zeros(0, model.embed_dim)
    features = torch.empty(len(paths), model.embed_dim)
    for index, part in enumerate(all_gather_objects(local)):
        features[index::world_size] = part
    return features


def run_knn(
    model: Backbone,
    train_folder: str | os.PathLike[str],
    val_folder: str | os.PathLike[str],
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    cache_dir: str | os.PathLike[str] | None = None,
    runtime: Runtime | None = None,
) -> list[KNNResult]:
    """k-NN accuracy of `model` with `train_folder` as the bank and `val_folder` as queries (same classes).

    A k above the bank's size is capped to it, and each resulting k is reported once. `runtime` says how the
    backbone runs (``Runtime()`` when None; ``dino knn`` passes ``dtype="fp32"``, the reference's precision).
    """
    caches = (None, None) if cache_dir is None else (Path(cache_dir) / "train", Path(cache_dir) / "val")
    train_features, train_labels, train_classes = extract_folder_features(model, train_folder, caches[0], runtime)
    val_features, val_labels, val_classes = extract_folder_features(model, val_folder, caches[1], runtime)
    if train_classes != val_classes:
        raise ValueError(f"{train_folder} and {val_folder} have different class subfolders")
    return [
        knn_classifier(train_features, train_labels, val_features, val_labels, k, temperature, len(train_classes))
        for k in dict.fromkeys(min(k, len(train_labels)) for k in ks)
    ]
