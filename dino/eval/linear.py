"""Linear probing of a frozen backbone (SPEC §9): concatenated [CLS] tokens of the last blocks (optionally
interleaved with the average-pooled patch tokens; or DINOv2's input, SPEC §21: the [CLS] tokens followed by the
mean patch token of the last block), a single Linear trained with SGD + cosine schedule on augmented crops, best
validation top-1 over epochs reported. A ResNet's input is its 2048-d average-pooled feature (SPEC §9, §24), as the
reference's ``eval_linear.py`` feeds ``model(x)`` for a torchvision network."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms as T
from tqdm.auto import tqdm

from dino.checkpoint import atomic_torch_save
from dino.data.datasets import ImageFolderDataset
from dino.data.transforms import knn_transform, normalize
from dino.eval.defaults import BASE_LR, LINEAR_INPUTS, N_LAST_BLOCKS, LinearInput
from dino.models.backbone import Backbone, is_resnet
from dino.runtime import Runtime, autocast_context

__all__ = [
    "LINEAR_INPUTS",
    "LINEAR_RUNTIME",
    "LinearClassifier",
    "LinearInput",
    "LinearResult",
    "linear_features",
    "run_linear",
]

# SPEC §9.
LR_REFERENCE_BATCH = 256
SGD_MOMENTUM = 0.9
INIT_STD = 0.01
TRAIN_CROP = 224
# A protocol evaluation runs in fp32, the reference's precision; batch 128 and 2 workers as ``dino linear``.
LINEAR_RUNTIME = Runtime(dtype="fp32", batch_size=128, num_workers=2)


class LinearClassifier(nn.Module):
    """One Linear layer, weights ~ N(0, 0.01²), zero bias (the reference's ``LinearClassifier``)."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_labels)
        self.linear.weight.data.normal_(mean=0.0, std=INIT_STD)
        self.linear.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.view(x.size(0), -1))


def linear_features(
    model: Backbone, images: Tensor, n_last_blocks: int, avgpool: bool, layout: LinearInput = "dino"
) -> Tensor:
    """[CLS] of the last `n_last_blocks` blocks (each after the final norm), concatenated.

    ``dino``: with `avgpool` the mean patch token of the last block is stacked on a new last axis and flattened,
    giving the reference's interleaved layout (SPEC §15.5). ``dinov2``: the mean patch token (registers
    excluded) is appended after the [CLS] tokens, whatever `avgpool` says (DINOv2's ``create_linear_input``).
    A ResNet gives its pooled feature, whatever the other arguments say (:func:`run_linear` refuses those that
    would mean something else).
    """
    if is_resnet(model):
        return model(images)
    intermediate = model.get_intermediate_layers(images, n_last_blocks)
    output = torch.cat([x[:, 0] for x in intermediate], dim=-1)
    if layout == "dinov2":
        return torch.cat((output, intermediate[-1][:, 1:].mean(dim=1)), dim=-1)
    if avgpool:
        output = torch.cat((output.unsqueeze(-1), torch.mean(intermediate[-1][:, 1:], dim=1).unsqueeze(-1)), dim=-1)
        output = output.reshape(output.shape[0], -1)
    return output


@dataclass
class LinearResult:
    """Best and last validation accuracy (percent), and the accuracy per epoch."""

    best_top1: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class _FrozenBackbone:
    """The frozen backbone on its device, in the runtime's precision, and the linear input it makes."""

    model: Backbone
    device: torch.device
    autocast_dtype: torch.dtype | None
    n_last_blocks: int
    avgpool: bool
    layout: LinearInput

    def autocast(self) -> AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    def features(self, images: Tensor) -> Tensor:
        """:func:`linear_features` of `images` (already on the device); call under ``no_grad`` and :meth:`autocast`."""
        return linear_features(self.model, images, self.n_last_blocks, self.avgpool, self.layout)


def _check_settings(
    model: Backbone, epochs: int, n_last_blocks: int | None, avgpool: bool, linear_input: LinearInput
) -> int:
    """The number of last blocks to use (0 for a ResNet), after refusing settings that do not fit `model`."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if linear_input not in LINEAR_INPUTS:
        raise ValueError(f"linear_input must be one of {LINEAR_INPUTS}, got {linear_input!r}")
    if is_resnet(model):
        asked = [
            option
            for option, given in (
                ("n_last_blocks (--n-last-blocks)", n_last_blocks is not None),
                ("avgpool (--avgpool-patchtokens)", avgpool),
                ("linear_input dinov2 (--linear-input dinov2)", linear_input == "dinov2"),
            )
            if given
        ]
        if asked:
            raise ValueError(
                f"{', '.join(asked)}: ViT options; a {model.arch}'s linear input is its {model.embed_dim}-d "
                "average-pooled feature (SPEC §24), which has no blocks' [CLS] or patch tokens to choose"
            )
        return 0
    n_last_blocks = N_LAST_BLOCKS if n_last_blocks is None else n_last_blocks
    if not 1 <= n_last_blocks <= len(model.blocks):
        raise ValueError(
            f"n_last_blocks must lie in 1..{len(model.blocks)} (the backbone's depth), got {n_last_blocks}"
        )
    if linear_input == "dino" and avgpool and n_last_blocks != 1:
        raise ValueError(
            f"the mean patch token (avgpool) is appended to one [CLS] only, as in the reference: use n_last_blocks "
            f"1 with it, not {n_last_blocks}"
        )
    return n_last_blocks


def _loaders(
    train_folder: str | os.PathLike[str], val_folder: str | os.PathLike[str], runtime: Runtime
) -> tuple[DataLoader, DataLoader, int]:
    """Augmented, shuffled training crops and centre-cropped validation images (SPEC §9), and the class count."""
    train_transform = T.Compose([T.RandomResizedCrop(TRAIN_CROP), T.RandomHorizontalFlip(), normalize()])
    train_set = ImageFolderDataset(train_folder, train_transform)
    val_set = ImageFolderDataset(val_folder, knn_transform())
    if train_set.classes != val_set.classes:
        raise ValueError(f"{train_folder} and {val_folder} have different class subfolders")
    batch_size, num_workers = runtime.batch_size, runtime.num_workers
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=False)
    val_loader = DataLoader(val_set, batch_size=batch_size, num_workers=num_workers)
    return train_loader, val_loader, len(train_set.classes)


def _train_epoch(
    backbone: _FrozenBackbone, classifier: LinearClassifier, optimizer: torch.optim.Optimizer, loader: DataLoader
) -> float:
    """One pass over the training crops; returns the loss of the last batch."""
    classifier.train()
    for images, labels in loader:
        images, labels = images.to(backbone.device), labels.to(backbone.device)
        with torch.no_grad(), backbone.autocast():
            features = backbone.features(images).float()
        loss = nn.functional.cross_entropy(classifier(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def _accuracy(backbone: _FrozenBackbone, classifier: LinearClassifier, loader: DataLoader) -> tuple[float, float]:
    """Top-1 and top-5 validation accuracy in percent (top-5 capped at the number of classes)."""
    correct1 = correct5 = total = 0
    classifier.eval()
    for images, labels in loader:
        images, labels = images.to(backbone.device), labels.to(backbone.device)
        with torch.no_grad(), backbone.autocast():
            logits = classifier(backbone.features(images).float())
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        total += labels.numel()
    return 100.0 * correct1 / total, 100.0 * correct5 / total


def _save_classifier(classifier: LinearClassifier, epoch: int, top1: float, output_dir: str | os.PathLike[str]) -> None:
    """``linear_weights.pth`` in the released layout (``{'state_dict': {'module.linear.weight', …}}``)."""
    state = {f"module.{k}": v.cpu() for k, v in classifier.state_dict().items()}
    atomic_torch_save({"state_dict": state, "epoch": epoch, "best_acc": top1}, Path(output_dir) / "linear_weights.pth")


def run_linear(
    model: Backbone,
    train_folder: str | os.PathLike[str],
    val_folder: str | os.PathLike[str],
    epochs: int = 100,
    lr: float = BASE_LR,
    n_last_blocks: int | None = None,
    avgpool: bool = False,
    linear_input: LinearInput = "dino",
    output_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    runtime: Runtime | None = None,
) -> LinearResult:
    """Train a linear classifier on a frozen backbone and report the best validation top-1 (SPEC §9).

    `lr` is for a batch of 256 and scaled linearly to ``runtime.batch_size``. With `output_dir`, the best classifier
    is saved as ``linear_weights.pth`` in the released layout (``{'state_dict': {'module.linear.weight', …}}``).
    `linear_input` ``dinov2`` feeds [CLS] of the last `n_last_blocks` blocks ⊕ the last block's mean patch token
    (DINOv2's linear input, any n); ``dino`` is the reference's (see :func:`linear_features`). `runtime` (device,
    precision, batch size, workers, progress) defaults to :data:`LINEAR_RUNTIME`: fp32, the reference's precision.
    `n_last_blocks` None means the reference's 4 for a ViT. A ResNet's input is its average-pooled feature
    (SPEC §24), and it takes none of `n_last_blocks`, `avgpool` or ``linear_input="dinov2"``.

    Raises:
        ValueError: `epochs` < 1, `n_last_blocks` outside 1..depth, or `avgpool` with `n_last_blocks` ≠ 1 (the
            reference's layout interleaves one [CLS] with the mean patch token; ViT-B uses n = 1 with it); a ViT
            option given with a ResNet.
    """
    runtime = LINEAR_RUNTIME if runtime is None else runtime
    n_last_blocks = _check_settings(model, epochs, n_last_blocks, avgpool, linear_input)
    torch.manual_seed(seed)
    device = runtime.torch_device()
    model = model.eval().to(device)
    for param in model.parameters():
        param.requires_grad = False
    train_loader, val_loader, num_classes = _loaders(train_folder, val_folder, runtime)
    width = 1 if is_resnet(model) else n_last_blocks + int(avgpool or linear_input == "dinov2")
    dim = model.embed_dim * width
    classifier = LinearClassifier(dim, num_classes).to(device)
    optimizer = torch.optim.SGD(
        classifier.parameters(), lr * runtime.batch_size / LR_REFERENCE_BATCH, momentum=SGD_MOMENTUM, weight_decay=0
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=0)
    backbone = _FrozenBackbone(model, device, runtime.autocast_dtype(device), n_last_blocks, avgpool, linear_input)

    result = LinearResult(best_top1=-1.0, best_epoch=-1)
    for epoch in tqdm(range(epochs), desc="linear", disable=not runtime.progress):
        loss = _train_epoch(backbone, classifier, optimizer, train_loader)
        scheduler.step()
        top1, top5 = _accuracy(backbone, classifier, val_loader)
        result.history.append({"epoch": epoch, "top1": top1, "top5": top5, "loss": loss})
        if top1 > result.best_top1:
            result.best_top1, result.best_epoch = top1, epoch
            if output_dir is not None:
                _save_classifier(classifier, epoch, top1, output_dir)
    return result
