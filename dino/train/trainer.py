"""DINO pretraining loop (SPEC §3–§7): student and EMA teacher, multi-crop, schedules, precision,
distributed data parallelism, checkpoints with exact resume, and run monitoring. The same loop trains DenseCL
(SPEC §23, ``run.method=densecl``): :func:`setup_training` builds its model instead of the student and teacher, and
:func:`densecl_step` replaces :func:`train_step` and :func:`update_teacher`; data, checkpoints, resume, logging,
``run.max_steps``, stop requests and torchrun are shared.

Laid out as dinov2's ``do_train``: :func:`setup_training` builds the :class:`TrainingState` (data, networks, loss,
optimiser, precision, schedules), :func:`resume_training` restores a checkpoint into it, and the loop runs
:func:`train_step` and :func:`update_teacher` on each batch, while a :class:`CheckpointPolicy` decides when and where
checkpoints are written and a :class:`LoggingPolicy` writes ``metrics.jsonl``, ``log.txt`` and the progress bar.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dino.atomic import atomic_write, remove_stale_temporaries
from dino.data.multicrop import DataAugmentationDINO, MultiCropDataset
from dino.data.samplers import EpochBatchSampler
from dino.data.twoview import MoCoV2Augmentation
from dino.distributed import DistributedContext, all_gather_objects, all_reduce_sum, init_distributed
from dino.layers.dino_head import DINOHead
from dino.models.architectures import ARCHITECTURES, RESNET_ARCHITECTURES
from dino.models.vision_transformer import build_vit
from dino.runtime import autocast_context
from dino.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from dino.train.config import OptimConfig, TrainConfig, config_to_dict, save_config
from dino.train.densecl import densecl_lambda
from dino.train.densecl_recipe import build_densecl, build_densecl_optimizer, check_densecl_batch
from dino.train.loss import DINOLoss
from dino.train.optim import (
    build_optimizer,
    cancel_gradients_last_layer,
    clip_gradients,
    clip_gradients_global,
    get_params_groups,
)
from dino.train.parallel import wrap_dino_networks
from dino.train.schedules import cosine_scheduler, epoch_cosine_scheduler

__all__ = [
    "CheckpointPolicy",
    "LoggingPolicy",
    "LoopPosition",
    "MultiCropWrapper",
    "NonFiniteLossError",
    "Precision",
    "ResumePoint",
    "Schedules",
    "TrainResult",
    "TrainingData",
    "TrainingState",
    "build_data",
    "build_loss",
    "build_networks",
    "build_schedules",
    "densecl_step",
    "resume_training",
    "setup_training",
    "train",
    "train_step",
    "update_teacher",
]

# SPEC §5: the lr is given for a total batch of 256 and scaled linearly.
LR_REFERENCE_BATCH = 256
# A loss within this fraction of ln K means the teacher has collapsed to the uniform distribution (SPEC §3).
COLLAPSE_TOLERANCE = 0.01
METRICS_NAME = "metrics.jsonl"
EPOCH_LOG_NAME = "log.txt"
CONFIG_NAME = "config.yaml"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the optimiser step."""


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops, one backbone pass per run of equal-resolution crops (SPEC §2).

    Output rows are crop-major: ``[crop0 batch | crop1 batch | …]``, shape (n_crops · B, K).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[Tensor] | Tensor) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        sizes = torch.tensor([crop.shape[-1] for crop in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
        start, outputs = 0, []
        for end in ends:
            outputs.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(outputs))


def _backbone(config: TrainConfig, student: bool) -> tuple[nn.Module, int]:
    """A backbone of ``model.arch`` and the width of its output: a ViT (drop path for the student only) or a
    torchvision ResNet with ``fc = Identity`` (SPEC §24; no drop path, no patches)."""
    model = config.model
    if model.arch in RESNET_ARCHITECTURES:
        # Imported here: torchvision costs a second of start-up that a ViT run does not need.
        from dino.models.resnet import ResNetBackbone

        resnet = ResNetBackbone(RESNET_ARCHITECTURES[model.arch])
        return resnet, resnet.embed_dim
    if student:
        vit = build_vit(model.arch, model.patch_size, drop_path_rate=model.drop_path_rate)
    else:
        vit = build_vit(model.arch, model.patch_size)
    return vit, int(ARCHITECTURES[model.arch]["embed_dim"])


def build_networks(config: TrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (drop path, configurable `norm_last_layer`) and teacher (no drop path, normalised last layer,
    frozen), with the teacher initialised from the student (SPEC §6).

    Both are left in training mode, the teacher too, as in the reference (it never calls ``teacher.eval()``): a
    ViT has no dropout or BatchNorm for this to change, while a ResNet teacher normalises with the statistics of
    its batch and keeps its own running statistics, which :func:`update_teacher` does not average.
    """
    model = config.model

    def head(in_dim: int, norm_last_layer: bool) -> DINOHead:
        return DINOHead(
            in_dim,
            model.out_dim,
            use_bn=model.use_bn_in_head,
            norm_last_layer=norm_last_layer,
            nlayers=model.head_nlayers,
            hidden_dim=model.head_hidden_dim,
            bottleneck_dim=model.head_bottleneck_dim,
        )

    backbone, embed_dim = _backbone(config, student=True)
    student = MultiCropWrapper(backbone, head(embed_dim, model.norm_last_layer))
    backbone, embed_dim = _backbone(config, student=False)
    teacher = MultiCropWrapper(backbone, head(embed_dim, True))
    teacher.load_state_dict(student.state_dict())
    for param in teacher.parameters():
        param.requires_grad = False
    return student.train(), teacher.train()


@dataclass
class TrainResult:
    """What :func:`train` leaves behind (the networks are this rank's, after the last step). For DenseCL
    ``student`` is the :class:`~dino.train.densecl.DenseCL` model and ``teacher`` and ``center`` are None."""

    output_dir: Path
    checkpoint: Path | None
    global_step: int
    completed: bool
    teacher: nn.Module | None
    student: nn.Module
    center: Tensor | None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Precision:
    """The training precision (``run.precision``): the autocast dtype (None: fp32) and fp16's GradScaler."""

    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    def autocast(self, device: torch.device) -> Any:
        return autocast_context(device, self.autocast_dtype)


def _precision(name: str, device: torch.device) -> Precision:
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    if name == "fp32":
        return Precision(None, None)
    if name == "bf16":
        return Precision(torch.bfloat16, None)
    if device.type != "cuda":
        raise ValueError("run.precision=fp16 needs a CUDA device (GradScaler); use fp32 or bf16 on CPU")
    return Precision(torch.float16, torch.amp.GradScaler("cuda"))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _fresh_epoch_stats() -> dict[str, float]:
    return {"loss_sum": 0.0, "entropy_sum": 0.0, "steps": 0}


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints after the current step and stops."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        previous = {}
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals stay with the caller
            pass
        try:
            yield self
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)


@dataclass(frozen=True)
class TrainingData:
    """This rank's multi-crop loader and the batch sampler that positions it (epoch, first batch)."""

    sampler: EpochBatchSampler
    loader: DataLoader
    ncrops: int


def build_data(config: TrainConfig, ctx: DistributedContext) -> TrainingData:
    """The multi-crop data set of ``run.data_path`` (augmentations seeded per rank) and its resumable loader; for
    DenseCL the same data set and loader with MoCo-v2's two views (``[view_q, view_k]``) per image."""
    crops_cfg = config.crops
    augmentation: DataAugmentationDINO | MoCoV2Augmentation
    if config.run.method == "densecl":
        augmentation = MoCoV2Augmentation(config.densecl.crop_size, config.densecl.crop_scale)
    else:
        augmentation = DataAugmentationDINO(
            crops_cfg.global_crops_scale,
            crops_cfg.local_crops_scale,
            crops_cfg.local_crops_number,
            crops_cfg.global_crops_size,
            crops_cfg.local_crops_size,
        )
    dataset = MultiCropDataset(
        config.run.data_path,
        augmentation,
        seed=config.run.seed,
        rank=ctx.rank,
    )
    sampler = EpochBatchSampler(
        len(dataset), config.optim.batch_size_per_gpu, ctx.rank, ctx.world_size, seed=config.run.seed
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.run.num_workers,
        pin_memory=ctx.device.type == "cuda",
        # A private generator: creating the loader iterator must not consume the global torch RNG,
        # otherwise a mid-epoch resume would shift the drop-path stream.
        generator=torch.Generator(),
    )
    return TrainingData(sampler, loader, augmentation.ncrops)


def build_loss(config: TrainConfig, ncrops: int, device: torch.device) -> DINOLoss:
    """The DINO loss of the recipe's temperatures and center momentum (SPEC §3), on `device`."""
    loss_cfg = config.loss
    return DINOLoss(
        config.model.out_dim,
        ncrops,
        loss_cfg.warmup_teacher_temp,
        loss_cfg.teacher_temp,
        loss_cfg.warmup_teacher_temp_epochs,
        config.optim.epochs,
        loss_cfg.student_temp,
        loss_cfg.center_momentum,
    ).to(device)


@dataclass(frozen=True)
class Schedules:
    """The per-iteration values of the recipe (SPEC §5), indexed by the global step."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    iterations_per_epoch: int
    total_batch: int

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> None:
        """Set the lr of every parameter group and the weight decay of group 0 (the decayed one) for step `it`."""
        for index, group in enumerate(optimizer.param_groups):
            group["lr"] = float(self.lr[it])
            if index == 0:
                group["weight_decay"] = float(self.weight_decay[it])


def build_schedules(optim_cfg: OptimConfig, iterations_per_epoch: int, world_size: int) -> Schedules:
    """Cosine lr (scaled by the total batch, with warm-up), weight decay and teacher momentum (→ 1)."""
    niter = iterations_per_epoch
    total_batch = optim_cfg.batch_size_per_gpu * world_size
    lr = cosine_scheduler(
        optim_cfg.lr * total_batch / LR_REFERENCE_BATCH,
        optim_cfg.min_lr,
        optim_cfg.epochs,
        niter,
        optim_cfg.warmup_epochs,
    )
    weight_decay = cosine_scheduler(optim_cfg.weight_decay, optim_cfg.weight_decay_end, optim_cfg.epochs, niter)
    momentum = cosine_scheduler(optim_cfg.momentum_teacher, 1.0, optim_cfg.epochs, niter)
    return Schedules(lr, weight_decay, momentum, niter, total_batch)


def build_densecl_schedules(config: TrainConfig, iterations_per_epoch: int, world_size: int) -> Schedules:
    """DenseCL's lr: per-epoch cosine annealing to ``optim.min_lr`` (0 in the reference), scaled by the total
    batch as for DINO (:mod:`dino.train.densecl_recipe`); the weight decay cosine from ``optim.weight_decay`` to
    ``optim.weight_decay_end`` (both 1e-4: constant); the key encoder's momentum, constant ``densecl.momentum``
    (logged only: :class:`~dino.train.densecl.DenseCL` applies it)."""
    optim_cfg, niter = config.optim, iterations_per_epoch
    total_batch = optim_cfg.batch_size_per_gpu * world_size
    base_lr = optim_cfg.lr * total_batch / LR_REFERENCE_BATCH
    lr = epoch_cosine_scheduler(base_lr, optim_cfg.min_lr, optim_cfg.epochs, niter, optim_cfg.warmup_epochs)
    weight_decay = cosine_scheduler(optim_cfg.weight_decay, optim_cfg.weight_decay_end, optim_cfg.epochs, niter)
    momentum = np.full(optim_cfg.epochs * niter, config.densecl.momentum)
    return Schedules(lr, weight_decay, momentum, niter, total_batch)


@dataclass
class TrainingState:
    """Everything one rank trains with, built once by :func:`setup_training`.

    ``student`` is what the forward pass calls (wrapped in DistributedDataParallel under torchrun);
    ``student_module`` is the bare network, whose parameters are clipped, averaged into the teacher and saved.
    ``teacher_forward`` is what the teacher's forward pass calls: ``teacher`` itself, or under torchrun with
    BatchNorm its DDP wrapper (:mod:`dino.train.parallel`).

    DenseCL (``run.method=densecl``): ``student_module`` is the :class:`~dino.train.densecl.DenseCL` model (query
    and key encoders, queues), ``student`` what its forward calls (in DDP under torchrun); there is no ``teacher``
    (the key encoder lives in the model) and no ``dino_loss``.
    """

    config: TrainConfig
    ctx: DistributedContext
    output_dir: Path
    data: TrainingData
    student: nn.Module
    student_module: nn.Module
    teacher: MultiCropWrapper | None
    dino_loss: DINOLoss | None
    optimizer: torch.optim.Optimizer
    precision: Precision
    schedules: Schedules
    teacher_forward: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.teacher_forward is None:
            self.teacher_forward = self.teacher

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    @property
    def total_steps(self) -> int:
        return self.config.optim.epochs * self.schedules.iterations_per_epoch


def setup_training(config: TrainConfig, ctx: DistributedContext, output_dir: Path) -> TrainingState:
    """Data, networks, loss, optimiser, precision and schedules, from the same seed on every rank; the global
    RNGs are then reseeded per rank, for drop path (and DenseCL's key shuffles)."""
    if config.run.method == "densecl":
        check_densecl_batch(config, ctx.world_size)
    _seed_everything(config.run.seed)
    data = build_data(config, ctx)
    precision = _precision(config.run.precision, ctx.device)
    if config.run.method == "densecl":
        state = _setup_densecl(config, ctx, output_dir, data, precision)
    else:
        state = _setup_dino(config, ctx, output_dir, data, precision)
    _seed_everything(config.run.seed + ctx.rank)
    return state


def _setup_dino(
    config: TrainConfig, ctx: DistributedContext, output_dir: Path, data: TrainingData, precision: Precision
) -> TrainingState:
    student, teacher = build_networks(config)
    student_module, teacher = student.to(ctx.device), teacher.to(ctx.device)
    student, teacher_forward = wrap_dino_networks(student_module, teacher, ctx.world_size, ctx.device, ctx.local_rank)
    dino_loss = build_loss(config, data.ncrops, ctx.device)
    optimizer = build_optimizer(get_params_groups(student_module), config.optim.optimizer)
    schedules = build_schedules(config.optim, len(data.sampler), ctx.world_size)
    return TrainingState(
        config,
        ctx,
        output_dir,
        data,
        student,
        student_module,
        teacher,
        dino_loss,
        optimizer,
        precision,
        schedules,
        teacher_forward,
    )


def _setup_densecl(
    config: TrainConfig, ctx: DistributedContext, output_dir: Path, data: TrainingData, precision: Precision
) -> TrainingState:
    """The DenseCL model, in DDP under torchrun without SyncBatchNorm (DenseCL's config uses plain BN and shuffles
    the keys instead). ``broadcast_buffers=False``: the queues are equal on every rank by construction (each
    enqueues the keys of all), and a broadcast of rank 0's buffers would move both queues at every step."""
    model = build_densecl(config).to(ctx.device)
    forward: nn.Module = model
    if ctx.world_size > 1:
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    optimizer = build_densecl_optimizer(model)
    schedules = build_densecl_schedules(config, len(data.sampler), ctx.world_size)
    return TrainingState(config, ctx, output_dir, data, forward, model, None, None, optimizer, precision, schedules)


@dataclass
class ResumePoint:
    """Where a run starts: the epoch and batch of its first step, and what its checkpoint (if any) carried over.

    ``logged_step`` is the step the checkpointed run's ``metrics.jsonl`` rows are numbered against (counted with
    that run's iterations per epoch).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    logged_step: int = 0
    epoch_stats: dict[str, float] = field(default_factory=_fresh_epoch_stats)
    resumed: bool = False


def resume_training(state: TrainingState, resume: bool = True) -> ResumePoint:
    """Restore ``checkpoint.pth`` (networks, optimiser, center, scaler, RNG states) into `state` when `resume` is
    set and it exists; otherwise the start of a fresh run.

    Raises:
        ValueError: The checkpoint was written by another model, head or optimiser.
    """
    path = state.checkpoint_path
    if not (resume and path.exists()):
        return ResumePoint()
    checkpoint = load_training_checkpoint(path, state.config.run.method)
    _load_checkpoint_states(state, checkpoint)
    niter = state.schedules.iterations_per_epoch
    start_epoch = int(checkpoint["epoch"])
    start_batch = int(checkpoint.get("step_in_epoch", 0))
    saved_niter = checkpoint.get("iterations_per_epoch", niter)
    point = ResumePoint(
        epoch=start_epoch,
        step_in_epoch=start_batch,
        logged_step=int(checkpoint.get("global_step", start_epoch * saved_niter + start_batch)),
        epoch_stats=dict(checkpoint.get("epoch_stats", _fresh_epoch_stats())),
        resumed=True,
    )
    rng_states = checkpoint.get("rng_states", [])
    if len(rng_states) == state.ctx.world_size:
        restore_rng_state(rng_states[state.ctx.rank])
    elif state.ctx.is_main:
        warnings.warn(
            f"{path}: saved with {len(rng_states)} processes, resuming with {state.ctx.world_size}; "
            "the run continues but is not bit-identical to an uninterrupted one",
            stacklevel=3,  # the caller of train()
        )
    if saved_niter != niter and state.ctx.is_main:
        warnings.warn(
            f"{path}: {saved_niter} iterations per epoch when saved, {niter} now (different data, "
            "batch size or world size); the schedules are re-indexed (SPEC §7)",
            stacklevel=3,  # the caller of train()
        )
    return point


def _load_checkpoint_states(state: TrainingState, checkpoint: dict[str, Any]) -> None:
    try:
        if state.teacher is None or state.dino_loss is None:  # DenseCL: one model, queues and key encoder included
            state.student_module.load_state_dict(checkpoint["state_dict"])
        else:
            state.student_module.load_state_dict(_strip_prefix(checkpoint["student"], "module."))
            state.teacher.load_state_dict(checkpoint["teacher"])
            state.dino_loss.load_state_dict(checkpoint["dino_loss"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, KeyError, ValueError) as error:
        reason = " ".join(str(error).split())
        reason = reason if len(reason) <= 200 else reason[:200] + " …"
        raise ValueError(
            f"{state.checkpoint_path}: this run cannot resume with the settings given, which build another model, "
            f"head or optimiser ({reason}); resume with the settings of {state.output_dir / CONFIG_NAME}, or start "
            "a new run in another --output-dir"
        ) from None
    if state.precision.scaler is not None and "fp16_scaler" in checkpoint:
        state.precision.scaler.load_state_dict(checkpoint["fp16_scaler"])


@dataclass
class LoopPosition:
    """Where the loop stands: the epoch, the batches of it done, the global step and the epoch's running sums."""

    epoch: int
    step_in_epoch: int
    global_step: int
    epoch_stats: dict[str, float]

    @classmethod
    def at(cls, start: ResumePoint, iterations_per_epoch: int) -> LoopPosition:
        global_step = start.epoch * iterations_per_epoch + start.step_in_epoch
        return cls(start.epoch, start.step_in_epoch, global_step, start.epoch_stats)

    def record_step(self, it: int, loss: float, entropy: float) -> None:
        """Count step `it` (0-based, global) done, with its rank-averaged loss and teacher entropy."""
        self.step_in_epoch += 1
        self.global_step = it + 1
        self.epoch_stats["loss_sum"] += loss
        self.epoch_stats["entropy_sum"] += entropy
        self.epoch_stats["steps"] += 1


def train_step(state: TrainingState, crops: list[Tensor], epoch: int, it: int) -> tuple[float, float]:
    """One optimisation step of the student on a multi-crop batch: the teacher on the two global crops, the student
    on all, the DINO loss, backward, gradient clipping, the frozen last layer of the first epochs, the optimiser step.

    Args:
        epoch: Selects the teacher temperature and whether the last layer is frozen.
        it: The global step (0-based), for the error message.

    Returns:
        The loss and the teacher entropy, averaged over ranks.

    Raises:
        NonFiniteLossError: The loss is NaN or infinite; no gradient was applied.
    """
    device = state.ctx.device
    crops = [crop.to(device, non_blocking=True) for crop in crops]
    with state.precision.autocast(device):
        with torch.no_grad():
            teacher_output = state.teacher_forward(crops[:2])
        student_output = state.student(crops)
        loss = state.dino_loss(student_output, teacher_output, epoch)

    reduced = (
        all_reduce_sum(torch.stack([loss.detach(), state.dino_loss.last_teacher_entropy.detach()]).float())
        / state.ctx.world_size
    )
    mean_loss, mean_entropy = reduced.tolist()
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(_non_finite_message(mean_loss, epoch, it, state.output_dir))

    _optimise(state, loss, frozen_last_layer_epoch=epoch)
    return mean_loss, mean_entropy


def _optimise(state: TrainingState, loss: Tensor, frozen_last_layer_epoch: int | None = None) -> None:
    """Backward, gradient clipping, for DINO the frozen last layer of the first epochs (`frozen_last_layer_epoch`
    is the epoch), and the optimiser step; through the fp16 gradient scaler when there is one (gradients unscaled
    before clipping)."""
    optim_cfg, scaler = state.config.optim, state.precision.scaler
    state.optimizer.zero_grad()
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        if optim_cfg.clip_grad:
            scaler.unscale_(state.optimizer)
    _clip(state.student_module, optim_cfg.clip_grad, optim_cfg.clip_mode)
    if frozen_last_layer_epoch is not None:
        cancel_gradients_last_layer(frozen_last_layer_epoch, state.student_module, optim_cfg.freeze_last_layer)
    if scaler is None:
        state.optimizer.step()
    else:
        scaler.step(state.optimizer)
        scaler.update()


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """The EMA teacher (SPEC §4): ``teacher ← momentum · teacher + (1 − momentum) · student``, parameter by
    parameter (the teacher's BatchNorm statistics, if any, are not averaged, as in the reference)."""
    for param_q, param_k in zip(student.parameters(), teacher.parameters(), strict=True):
        param_k.data.mul_(momentum).add_((1 - momentum) * param_q.detach().data)


def densecl_step(state: TrainingState, views: list[Tensor], it: int) -> dict[str, float]:
    """One DenseCL step (SPEC §23) on a batch of ``[view_q, view_k]``: λ from :func:`densecl_lambda` at the global
    step `it` (0 for the first ``densecl.warmup_iters`` steps), the model's forward (momentum update of the key
    encoder, shuffled keys, both losses, the enqueue), backward and the SGD step (clipped only if
    ``optim.clip_grad`` asks; the reference does not clip).

    Returns:
        ``loss``, ``loss_global``, ``loss_dense`` and ``accuracy`` averaged over ranks, and ``lambda``.

    Raises:
        NonFiniteLossError: The loss is NaN or infinite; no gradient was applied (the forward had already
            moved the key encoder and the queues, which only the last checkpoint, left untouched, knows as before).
    """
    device, section = state.ctx.device, state.config.densecl
    view_q, view_k = (view.to(device, non_blocking=True) for view in views)
    loss_lambda = densecl_lambda(it, section.loss_lambda, section.warmup_iters)
    with state.precision.autocast(device):
        output = state.student(view_q, view_k, loss_lambda)
    figures = torch.stack([output.loss.detach(), output.loss_global, output.loss_dense, output.accuracy]).float()
    loss, loss_global, loss_dense, accuracy = (all_reduce_sum(figures) / state.ctx.world_size).tolist()
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            _non_finite_message(loss, it // state.schedules.iterations_per_epoch, it, state.output_dir)
        )
    _optimise(state, output.loss)
    return {
        "loss": loss,
        "loss_global": loss_global,
        "loss_dense": loss_dense,
        "lambda": loss_lambda,
        "accuracy": accuracy,
    }


class CheckpointPolicy:
    """When and where the run's checkpoints are written.

    ``checkpoint.pth`` is replaced atomically at the end of every epoch, every ``run.checkpoint_every_steps`` steps
    within an epoch, and when the run stops mid-epoch (``run.max_steps``, SIGINT/SIGTERM); every
    ``run.saveckp_freq`` epochs a ``checkpoint{epoch:04}.pth`` copy is kept too. Every rank takes part in a save
    (the RNG states are gathered); rank 0 writes.
    """

    def __init__(self, state: TrainingState) -> None:
        self.path = state.checkpoint_path
        self.every_steps = state.config.run.checkpoint_every_steps
        self.copy_every_epochs = state.config.run.saveckp_freq
        #: The last checkpoint written (or found at the start), for :class:`TrainResult`.
        self.last: Path | None = self.path if self.path.exists() else None

    def due_within_epoch(self, position: LoopPosition, iterations_per_epoch: int) -> bool:
        """Whether ``run.checkpoint_every_steps`` asks for a checkpoint now (the epoch's end saves anyway)."""
        return (
            bool(self.every_steps)
            and position.global_step % self.every_steps == 0
            and position.step_in_epoch < iterations_per_epoch
        )

    def save_within_epoch(self, state: TrainingState, position: LoopPosition) -> None:
        """A checkpoint that resumes after the batches of ``position.epoch`` done so far."""
        self._save(state, position, position.epoch, position.step_in_epoch, None)

    def save_epoch_end(self, state: TrainingState, position: LoopPosition) -> None:
        """A checkpoint that resumes at the next epoch, plus the epoch copy when ``run.saveckp_freq`` says so."""
        completed = position.epoch + 1
        copy = completed if self.copy_every_epochs and completed % self.copy_every_epochs == 0 else None
        self._save(state, position, completed, 0, copy)

    def _save(
        self, state: TrainingState, position: LoopPosition, epoch: int, step_in_epoch: int, epoch_copy: int | None
    ) -> None:
        contents = self.contents(state, position, epoch, step_in_epoch)  # collective: every rank takes part
        if state.ctx.is_main:
            self.last = save_training_checkpoint(contents, state.output_dir, epoch_copy)

    @staticmethod
    def contents(state: TrainingState, position: LoopPosition, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        """The checkpoint's keys (:mod:`dino.train.checkpoint`): resuming at batch `step_in_epoch` of `epoch`."""
        contents: dict[str, Any] = _model_contents(state)
        contents.update(
            {
                "optimizer": state.optimizer.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": position.global_step,
                "iterations_per_epoch": state.schedules.iterations_per_epoch,
                "config": config_to_dict(state.config),
                "epoch_stats": dict(position.epoch_stats),
                "rng_states": all_gather_objects(capture_rng_state()),
            }
        )
        if state.precision.scaler is not None:
            contents["fp16_scaler"] = state.precision.scaler.state_dict()
        return contents


def _model_contents(state: TrainingState) -> dict[str, Any]:
    """The checkpoint's networks: DINO's ``student`` (``module.``-prefixed as the reference's DDP student),
    ``teacher`` and ``dino_loss``; DenseCL's model under ``state_dict`` (so that :func:`dino.checkpoint.load_resnet`
    finds the query backbone, ``encoder_q.0``) with ``method``."""
    if state.teacher is None or state.dino_loss is None:
        return {"state_dict": state.student_module.state_dict(), "method": "densecl"}
    return {
        "student": {f"module.{k}": v for k, v in state.student_module.state_dict().items()},
        "teacher": state.teacher.state_dict(),
        "dino_loss": state.dino_loss.state_dict(),
    }


class LoggingPolicy:
    """What the run reports: on rank 0 a ``metrics.jsonl`` row every ``run.log_every`` steps and at each epoch's
    last step, a ``log.txt`` row per epoch, TensorBoard scalars with ``run.tensorboard``, and the progress bar.
    Every step's row is also kept in :attr:`history` (on every rank).
    """

    def __init__(self, config: TrainConfig, ctx: DistributedContext, output_dir: Path) -> None:
        self.config = config
        self.enabled = ctx.is_main
        self.output_dir = output_dir
        self.metrics_path = output_dir / METRICS_NAME
        self.epoch_log_path = output_dir / EPOCH_LOG_NAME
        self.history: list[dict[str, Any]] = []
        self.writer: Any = None
        self.progress = tqdm(disable=True)  # replaced by :meth:`open`

    def trim(self, logged_step: int, completed_epochs: int) -> None:
        """Cut the logs back to where the run starts: metrics rows up to `logged_step`, epoch rows of the
        `completed_epochs` (both empty for a fresh run)."""
        _keep_log_rows(self.metrics_path, "step", below=logged_step + 1)
        _keep_log_rows(self.epoch_log_path, "epoch", below=completed_epochs)

    def open(self, global_step: int, total_steps: int) -> None:
        """Start TensorBoard (when asked for and installed) and the progress bar at `global_step`."""
        if self.enabled and self.config.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "run.tensorboard=true but the tensorboard package is not installed; skipping", stacklevel=2
                )
        self.progress = tqdm(
            total=total_steps,
            initial=global_step,
            unit="it",
            dynamic_ncols=True,
            disable=not (self.enabled and self.config.run.progress),
        )

    def start_epoch(self, epoch: int) -> None:
        self.progress.set_description(f"epoch {epoch}")

    def step(self, record: dict[str, Any], last_of_epoch: bool) -> None:
        """Report a step done: its row goes to :attr:`history`, and to ``metrics.jsonl`` when it is due."""
        self.progress.update(1)
        self.history.append(record)
        if record["step"] % max(self.config.run.log_every, 1) != 0 and not last_of_epoch:
            return
        if self.enabled:
            _append_row(self.metrics_path, record)
            if self.writer is not None:
                for key, value in record.items():
                    if key not in ("epoch", "step") and isinstance(value, (int, float)):
                        self.writer.add_scalar(f"train/{key}", value, record["step"])
        postfix = {"loss": f"{record['loss']:.3f}"}
        if "teacher_entropy" in record:
            postfix["H"] = f"{record['teacher_entropy']:.2f}"
        if "lambda" in record:
            postfix["λ"] = f"{record['lambda']:.2f}"
        self.progress.set_postfix(**postfix, lr=f"{record['lr']:.2e}")

    def epoch(self, record: dict[str, Any]) -> None:
        if self.enabled:
            _append_row(self.epoch_log_path, record)

    def close(self) -> None:
        self.progress.close()
        if self.writer is not None:
            self.writer.close()


def _append_row(path: Path, record: dict[str, Any]) -> None:
    # An append-only log: a crash loses at most the line being written, and rewriting the file
    # atomically at every step would be quadratic in the run length.
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _non_finite_message(loss: float, epoch: int, step: int, output_dir: Path) -> str:
    checkpoint = output_dir / CHECKPOINT_NAME
    kept = f"the last good checkpoint {checkpoint} is untouched" if checkpoint.exists() else "no checkpoint was written"
    return (
        f"loss is {loss} at epoch {epoch}, global step {step}; training stopped before the optimiser step and {kept}. "
        "Common fixes (SPEC §17.2): run.precision=fp32 (or bf16 instead of fp16), a lower optim.lr, "
        "optim.clip_grad=3.0, loss.teacher_temp <= 0.06 without warm-up."
    )


def _keep_log_rows(path: Path, key: str, below: int) -> None:
    """Keep the JSON lines of `path` whose integer `key` is below `below`, rewriting it atomically if that drops any.

    A killed run leaves the rows it logged after its last checkpoint, which the resumed run logs again, and
    possibly a half-written last line (which the next append would run into); both go.
    """
    if not path.is_file():
        return
    text = path.read_text(errors="replace")
    kept = []
    for line in text.split("\n"):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get(key), int) and row[key] < below:
            kept.append(line + "\n")
    if "".join(kept) != text:
        with atomic_write(path, "w") as handle:
            handle.writelines(kept)


def train(config: TrainConfig, resume: bool = True) -> TrainResult:
    """Run DINO pretraining as described by `config`, alone or as one rank under torchrun.

    Args:
        config: The resolved configuration (see :mod:`dino.train.config`).
        resume: Continue from ``output_dir/checkpoint.pth`` when it exists: ``metrics.jsonl`` and ``log.txt``
            are cut back to the checkpoint's step and completed epochs. Otherwise the run starts afresh and owns
            the folder: the previous ``checkpoint.pth`` is deleted and both logs are emptied.

    Returns:
        A :class:`TrainResult`; ``completed`` is False when the run stopped early (``run.max_steps`` or a
        SIGINT/SIGTERM), in which case a resumable checkpoint was written. ``run.max_steps`` is a global step:
        a checkpoint already at or past it trains nothing and leaves every file of the run as it was.

    Raises:
        NonFiniteLossError: The loss became NaN/inf; the last good checkpoint is left as it was.
        ValueError / FileNotFoundError: Bad config or data.
    """
    config.validate()
    if not config.run.data_path:
        raise ValueError("no training data: set run.data_path (CLI: --data-path FOLDER)")
    ctx = init_distributed(config.run.device)
    output_dir = Path(config.run.output_dir)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
    state = setup_training(config, ctx, output_dir)
    start = resume_training(state, resume)
    position = LoopPosition.at(start, state.schedules.iterations_per_epoch)
    if config.run.max_steps and config.run.max_steps <= position.global_step < state.total_steps:
        if ctx.is_main:
            print(
                f"{state.checkpoint_path} is at step {position.global_step}, at or past run.max_steps="
                f"{config.run.max_steps}: nothing to do; raise run.max_steps or drop it to continue",
                file=sys.stderr,
            )
        return _result(state, position, state.checkpoint_path, [])
    logs = LoggingPolicy(config, ctx, output_dir)
    if ctx.is_main:
        _prepare_output(state, start, logs)
    logs.open(position.global_step, state.total_steps)
    checkpoints = CheckpointPolicy(state)
    with _StopRequest().installed() as stop:
        _train_epochs(state, start, position, checkpoints, logs, stop)
    logs.close()
    return _result(state, position, checkpoints.last, logs.history)


def _prepare_output(state: TrainingState, start: ResumePoint, logs: LoggingPolicy) -> None:
    """Rank 0, once the checkpoint (if any) has loaded: a fresh run takes the folder over, the logs are cut back
    to the start, and the config is written (so that a refused resume leaves the run's config as it was)."""
    if start.resumed:
        print(
            f"resumed from {state.checkpoint_path} at epoch {start.epoch}, batch {start.step_in_epoch}",
            file=sys.stderr,
        )
    else:
        # An old checkpoint left until this run's first save would be resumed by a plain rerun, under this run's logs.
        state.checkpoint_path.unlink(missing_ok=True)
    logs.trim(start.logged_step, start.epoch)
    save_config(state.config, state.output_dir / CONFIG_NAME)


def _train_epochs(
    state: TrainingState,
    start: ResumePoint,
    position: LoopPosition,
    checkpoints: CheckpointPolicy,
    logs: LoggingPolicy,
    stop: _StopRequest,
) -> None:
    """The epochs from `start` on, until the last, ``run.max_steps`` or a stop request; `position` follows."""
    for epoch in range(start.epoch, state.config.optim.epochs):
        first_batch = start.step_in_epoch if epoch == start.epoch else 0
        state.data.sampler.set_epoch(epoch, first_batch)
        if first_batch == 0:
            position.epoch_stats = _fresh_epoch_stats()
        logs.start_epoch(epoch)
        position.epoch, position.step_in_epoch = epoch, state.data.sampler.start_batch
        if _train_epoch(state, position, checkpoints, logs, stop):
            return
        _finish_epoch(state, position, checkpoints, logs)
        if stop.requested or _max_steps_reached(state.config, position.global_step):
            return


def _train_epoch(
    state: TrainingState,
    position: LoopPosition,
    checkpoints: CheckpointPolicy,
    logs: LoggingPolicy,
    stop: _StopRequest,
) -> bool:
    """The remaining batches of ``position.epoch``; True when the run stopped (and checkpointed) mid-epoch."""
    niter = state.schedules.iterations_per_epoch
    tick = time.perf_counter()
    for batch in state.data.loader:
        it = niter * position.epoch + position.step_in_epoch
        state.schedules.apply(state.optimizer, it)
        metrics = _method_step(state, batch, position.epoch, it)
        position.record_step(it, metrics["loss"], metrics.get("teacher_entropy", 0.0))
        if state.ctx.device.type == "cuda":
            torch.cuda.synchronize(state.ctx.device)
        now = time.perf_counter()
        record = _step_record(state, position, it, metrics, now - tick)
        tick = now
        logs.step(record, last_of_epoch=position.step_in_epoch == niter)
        if _stop_now(state, stop, position.global_step) and position.step_in_epoch < niter:
            checkpoints.save_within_epoch(state, position)
            return True
        if checkpoints.due_within_epoch(position, niter):
            checkpoints.save_within_epoch(state, position)
    return False


def _method_step(state: TrainingState, batch: list[Tensor], epoch: int, it: int) -> dict[str, float]:
    """Step `it` of the run's method: DINO's :func:`train_step` and :func:`update_teacher`, or :func:`densecl_step`;
    the step's figures for the metrics row."""
    if state.teacher is None:
        return densecl_step(state, batch, it)
    loss, entropy = train_step(state, batch, epoch, it)
    update_teacher(state.student_module, state.teacher, float(state.schedules.momentum[it]))
    return {"loss": loss, "teacher_entropy": entropy, "kl_teacher_student": loss - entropy}


def _step_record(
    state: TrainingState, position: LoopPosition, it: int, metrics: dict[str, float], seconds: float
) -> dict[str, Any]:
    """A ``metrics.jsonl`` row: the step's figures, the schedules' values and the throughput."""
    schedules = state.schedules
    record: dict[str, Any] = {"epoch": position.epoch, "step": position.global_step, **metrics}
    record.update(
        lr=float(schedules.lr[it]), wd=float(schedules.weight_decay[it]), momentum=float(schedules.momentum[it])
    )
    if state.dino_loss is not None:
        record["teacher_temp"] = float(state.dino_loss.teacher_temp_schedule[position.epoch])
    record["images_per_s"] = schedules.total_batch / max(seconds, 1e-9)
    return record


def _max_steps_reached(config: TrainConfig, global_step: int) -> bool:
    return bool(config.run.max_steps and global_step >= config.run.max_steps)


def _stop_now(state: TrainingState, stop: _StopRequest, global_step: int) -> bool:
    """A stop request or ``run.max_steps``, agreed by all ranks (any rank's request stops them all)."""
    stop_now = stop.requested or _max_steps_reached(state.config, global_step)
    if state.ctx.world_size > 1:
        stop_now = bool(all_reduce_sum(torch.tensor([float(stop_now)], device=state.ctx.device)).item())
    return stop_now


def _finish_epoch(
    state: TrainingState, position: LoopPosition, checkpoints: CheckpointPolicy, logs: LoggingPolicy
) -> None:
    """The epoch's ``log.txt`` row, the collapse check and the epoch-end checkpoint."""
    epoch, stats, niter = position.epoch, position.epoch_stats, state.schedules.iterations_per_epoch
    steps = max(int(stats["steps"]), 1)
    epoch_loss = stats["loss_sum"] / steps
    last = niter * (epoch + 1) - 1
    row: dict[str, Any] = {
        "train_loss": epoch_loss,
        "train_lr": float(state.schedules.lr[last]),
        "train_wd": float(state.schedules.weight_decay[last]),
    }
    if state.dino_loss is not None:
        row["train_teacher_entropy"] = stats["entropy_sum"] / steps
        row["train_kl_teacher_student"] = epoch_loss - stats["entropy_sum"] / steps
    logs.epoch({**row, "epoch": epoch})
    ln_k = state.dino_loss.uniform_loss if state.dino_loss is not None else math.nan
    if state.ctx.is_main and epoch >= 1 and abs(epoch_loss - ln_k) < COLLAPSE_TOLERANCE * ln_k:
        warnings.warn(
            f"epoch {epoch}: mean loss {epoch_loss:.3f} sits at ln K = {ln_k:.3f}: the teacher has collapsed "
            "to the uniform distribution (SPEC §3/§17.1). Try a lower optim.momentum_teacher (0.99), a smaller "
            "model.out_dim, or a different optim.lr / batch size.",
            stacklevel=4,  # the caller of train()
        )
    checkpoints.save_epoch_end(state, position)
    position.epoch_stats = _fresh_epoch_stats()


def _result(
    state: TrainingState, position: LoopPosition, checkpoint: Path | None, history: list[dict[str, Any]]
) -> TrainResult:
    return TrainResult(
        output_dir=state.output_dir,
        checkpoint=checkpoint if state.ctx.is_main else None,
        global_step=position.global_step,
        completed=position.global_step >= state.total_steps,
        teacher=state.teacher,
        student=state.student_module,
        center=state.dino_loss.center.detach().clone() if state.dino_loss is not None else None,
        history=history,
    )


def _clip(model: nn.Module, clip: float, mode: str) -> None:
    if not clip:
        return
    if mode == "global":
        clip_gradients_global(model, clip)
    else:
        clip_gradients(model, clip)


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
