"""DINO pretraining loop (SPEC §3–§7): student and EMA teacher, multi-crop, schedules, precision,
distributed data parallelism, checkpoints with exact resume, and run monitoring.
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
from dino.distributed import DistributedContext, all_gather_objects, all_reduce_sum, init_distributed
from dino.layers.dino_head import DINOHead
from dino.models.architectures import ARCHITECTURES
from dino.models.vision_transformer import build_vit
from dino.runtime import autocast_context
from dino.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from dino.train.config import TrainConfig, config_to_dict, save_config
from dino.train.loss import DINOLoss
from dino.train.optim import (
    build_optimizer,
    cancel_gradients_last_layer,
    clip_gradients,
    clip_gradients_global,
    get_params_groups,
)
from dino.train.schedules import cosine_scheduler

__all__ = ["MultiCropWrapper", "NonFiniteLossError", "TrainResult", "build_networks", "train"]

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


def build_networks(config: TrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (drop path, configurable `norm_last_layer`) and teacher (no drop path, normalised last layer,
    frozen), with the teacher initialised from the student (SPEC §6)."""
    model = config.model

    def head(norm_last_layer: bool) -> DINOHead:
        return DINOHead(
            int(ARCHITECTURES[model.arch]["embed_dim"]),
            model.out_dim,
            use_bn=model.use_bn_in_head,
            norm_last_layer=norm_last_layer,
            nlayers=model.head_nlayers,
            hidden_dim=model.head_hidden_dim,
            bottleneck_dim=model.head_bottleneck_dim,
        )

    student = MultiCropWrapper(
        build_vit(model.arch, model.patch_size, drop_path_rate=model.drop_path_rate), head(model.norm_last_layer)
    )
    teacher = MultiCropWrapper(build_vit(model.arch, model.patch_size), head(True))
    teacher.load_state_dict(student.state_dict())
    for param in teacher.parameters():
        param.requires_grad = False
    return student, teacher


@dataclass
class TrainResult:
    """What :func:`train` leaves behind (the networks are this rank's, after the last step)."""

    output_dir: Path
    checkpoint: Path | None
    global_step: int
    completed: bool
    teacher: nn.Module
    student: nn.Module
    center: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Precision:
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    def autocast(self, device: torch.device) -> Any:
        return autocast_context(device, self.autocast_dtype)


def _precision(name: str, device: torch.device) -> _Precision:
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    if name == "fp32":
        return _Precision(None, None)
    if name == "bf16":
        return _Precision(torch.bfloat16, None)
    if device.type != "cuda":
        raise ValueError("run.precision=fp16 needs a CUDA device (GradScaler); use fp32 or bf16 on CPU")
    return _Precision(torch.float16, torch.amp.GradScaler("cuda"))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints after the current step and stops."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self.requested = True

        previous = {}
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals stay with the caller
            pass
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)


class _Monitor:
    """Rank-0 logging: JSON lines per logged step and per epoch, optional TensorBoard."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext, output_dir: Path) -> None:
        self.enabled = ctx.is_main
        self.metrics_path = output_dir / METRICS_NAME
        self.epoch_log_path = output_dir / EPOCH_LOG_NAME
        self.writer = None
        if self.enabled and config.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "run.tensorboard=true but the tensorboard package is not installed; skipping", stacklevel=2
                )

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        # An append-only log: a crash loses at most the line being written, and rewriting the file
        # atomically at every step would be quadratic in the run length.
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append(self.metrics_path, record)
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._append(self.epoch_log_path, record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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

    # Identical initialisation on every rank, then per-rank streams for drop path.
    _seed_everything(config.run.seed)
    crops_cfg, optim_cfg, loss_cfg = config.crops, config.optim, config.loss
    augmentation = DataAugmentationDINO(
        crops_cfg.global_crops_scale,
        crops_cfg.local_crops_scale,
        crops_cfg.local_crops_number,
        crops_cfg.global_crops_size,
        crops_cfg.local_crops_size,
    )
    dataset = MultiCropDataset(config.run.data_path, augmentation, seed=config.run.seed, rank=ctx.rank)
    sampler = EpochBatchSampler(
        len(dataset), optim_cfg.batch_size_per_gpu, ctx.rank, ctx.world_size, seed=config.run.seed
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

    student, teacher = build_networks(config)
    student, teacher = student.to(ctx.device), teacher.to(ctx.device)
    student_module = student
    if ctx.world_size > 1:
        student = DistributedDataParallel(student, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        student_module = student.module
    dino_loss = DINOLoss(
        config.model.out_dim,
        augmentation.ncrops,
        loss_cfg.warmup_teacher_temp,
        loss_cfg.teacher_temp,
        loss_cfg.warmup_teacher_temp_epochs,
        optim_cfg.epochs,
        loss_cfg.student_temp,
        loss_cfg.center_momentum,
    ).to(ctx.device)
    optimizer = build_optimizer(get_params_groups(student_module), optim_cfg.optimizer)
    precision = _precision(config.run.precision, ctx.device)

    niter = len(sampler)
    total_batch = optim_cfg.batch_size_per_gpu * ctx.world_size
    lr_schedule = cosine_scheduler(
        optim_cfg.lr * total_batch / LR_REFERENCE_BATCH,
        optim_cfg.min_lr,
        optim_cfg.epochs,
        niter,
        optim_cfg.warmup_epochs,
    )
    wd_schedule = cosine_scheduler(optim_cfg.weight_decay, optim_cfg.weight_decay_end, optim_cfg.epochs, niter)
    momentum_schedule = cosine_scheduler(optim_cfg.momentum_teacher, 1.0, optim_cfg.epochs, niter)
    _seed_everything(config.run.seed + ctx.rank)

    start_epoch, start_batch, logged_step = 0, 0, 0
    epoch_stats = {"loss_sum": 0.0, "entropy_sum": 0.0, "steps": 0}
    checkpoint_path = output_dir / CHECKPOINT_NAME
    resumed = resume and checkpoint_path.exists()
    if resumed:
        checkpoint = load_training_checkpoint(checkpoint_path)
        try:
            student_module.load_state_dict(_strip_prefix(checkpoint["student"], "module."))
            teacher.load_state_dict(checkpoint["teacher"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            dino_loss.load_state_dict(checkpoint["dino_loss"])
        except (RuntimeError, KeyError, ValueError) as error:
            reason = " ".join(str(error).split())
            reason = reason if len(reason) <= 200 else reason[:200] + " …"
            raise ValueError(
                f"{checkpoint_path}: this run cannot resume with the settings given, which build another model, "
                f"head or optimiser ({reason}); resume with the settings of {output_dir / CONFIG_NAME}, or start a "
                "new run in another --output-dir"
            ) from None
        if precision.scaler is not None and "fp16_scaler" in checkpoint:
            precision.scaler.load_state_dict(checkpoint["fp16_scaler"])
        start_epoch = int(checkpoint["epoch"])
        start_batch = int(checkpoint.get("step_in_epoch", 0))
        saved_niter = checkpoint.get("iterations_per_epoch", niter)
        # The step the killed run's metrics rows are numbered against (its own iterations per epoch).
        logged_step = int(checkpoint.get("global_step", start_epoch * saved_niter + start_batch))
        epoch_stats = dict(checkpoint.get("epoch_stats", epoch_stats))
        rng_states = checkpoint.get("rng_states", [])
        if len(rng_states) == ctx.world_size:
            restore_rng_state(rng_states[ctx.rank])
        elif ctx.is_main:
            warnings.warn(
                f"{checkpoint_path}: saved with {len(rng_states)} processes, resuming with {ctx.world_size}; "
                "the run continues but is not bit-identical to an uninterrupted one",
                stacklevel=2,
            )
        if saved_niter != niter and ctx.is_main:
            warnings.warn(
                f"{checkpoint_path}: {saved_niter} iterations per epoch when saved, {niter} now (different data, "
                "batch size or world size); the schedules are re-indexed (SPEC §7)",
                stacklevel=2,
            )
    global_step = start_epoch * niter + start_batch
    total_steps = optim_cfg.epochs * niter
    if config.run.max_steps and config.run.max_steps <= global_step < total_steps:
        if ctx.is_main:
            print(
                f"{checkpoint_path} is at step {global_step}, at or past run.max_steps={config.run.max_steps}: "
                "nothing to do; raise run.max_steps or drop it to continue",
                file=sys.stderr,
            )
        return TrainResult(
            output_dir=output_dir,
            checkpoint=checkpoint_path if ctx.is_main else None,
            global_step=global_step,
            completed=False,
            teacher=teacher,
            student=student_module,
            center=dino_loss.center.detach().clone(),
        )
    if ctx.is_main:
        if resumed:
            print(f"resumed from {checkpoint_path} at epoch {start_epoch}, batch {start_batch}", file=sys.stderr)
        else:
            # A fresh run owns the folder: an old checkpoint left until this run's first save would be resumed by
            # a plain rerun, under this run's logs.
            checkpoint_path.unlink(missing_ok=True)
        _keep_log_rows(output_dir / METRICS_NAME, "step", below=logged_step + 1)
        _keep_log_rows(output_dir / EPOCH_LOG_NAME, "epoch", below=start_epoch)
        # Written once the checkpoint (if any) has loaded, so that a refused resume leaves the run's config as it was.
        save_config(config, output_dir / CONFIG_NAME)

    monitor = _Monitor(config, ctx, output_dir)
    stop = _StopRequest()
    history: list[dict[str, Any]] = []
    last_checkpoint: Path | None = checkpoint_path if checkpoint_path.exists() else None
    ln_k = dino_loss.uniform_loss

    def checkpoint_state(epoch: int, step_in_epoch: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "student": {f"module.{k}": v for k, v in student_module.state_dict().items()},
            "teacher": teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "iterations_per_epoch": niter,
            "dino_loss": dino_loss.state_dict(),
            "config": config_to_dict(config),
            "epoch_stats": dict(epoch_stats),
            "rng_states": all_gather_objects(capture_rng_state()),
        }
        if precision.scaler is not None:
            state["fp16_scaler"] = precision.scaler.state_dict()
        return state

    def save(epoch: int, step_in_epoch: int, epoch_copy: int | None = None) -> Path | None:
        state = checkpoint_state(epoch, step_in_epoch)  # collective: every rank takes part
        if not ctx.is_main:
            return None
        return save_training_checkpoint(state, output_dir, epoch_copy)

    progress = tqdm(
        total=total_steps,
        initial=global_step,
        unit="it",
        dynamic_ncols=True,
        disable=not (ctx.is_main and config.run.progress),
    )
    stopped = False
    with stop.installed():
        for epoch in range(start_epoch, optim_cfg.epochs):
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            if epoch != start_epoch or start_batch == 0:
                epoch_stats = {"loss_sum": 0.0, "entropy_sum": 0.0, "steps": 0}
            progress.set_description(f"epoch {epoch}")
            step_in_epoch = sampler.start_batch
            tick = time.perf_counter()
            for crops in loader:
                it = niter * epoch + step_in_epoch
                for index, group in enumerate(optimizer.param_groups):
                    group["lr"] = float(lr_schedule[it])
                    if index == 0:
                        group["weight_decay"] = float(wd_schedule[it])
                crops = [crop.to(ctx.device, non_blocking=True) for crop in crops]
                with precision.autocast(ctx.device):
                    with torch.no_grad():
                        teacher_output = teacher(crops[:2])
                    student_output = student(crops)
                    loss = dino_loss(student_output, teacher_output, epoch)

                reduced = (
                    all_reduce_sum(torch.stack([loss.detach(), dino_loss.last_teacher_entropy.detach()]).float())
                    / ctx.world_size
                )
                mean_loss, mean_entropy = reduced.tolist()
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(_non_finite_message(mean_loss, epoch, it, output_dir))

                optimizer.zero_grad()
                if precision.scaler is None:
                    loss.backward()
                    _clip(student_module, optim_cfg.clip_grad, optim_cfg.clip_mode)
                    cancel_gradients_last_layer(epoch, student_module, optim_cfg.freeze_last_layer)
                    optimizer.step()
                else:
                    precision.scaler.scale(loss).backward()
                    if optim_cfg.clip_grad:
                        precision.scaler.unscale_(optimizer)
                    _clip(student_module, optim_cfg.clip_grad, optim_cfg.clip_mode)
                    cancel_gradients_last_layer(epoch, student_module, optim_cfg.freeze_last_layer)
                    precision.scaler.step(optimizer)
                    precision.scaler.update()

                momentum = float(momentum_schedule[it])
                with torch.no_grad():
                    for param_q, param_k in zip(student_module.parameters(), teacher.parameters(), strict=True):
                        param_k.data.mul_(momentum).add_((1 - momentum) * param_q.detach().data)

                step_in_epoch += 1
                global_step = it + 1
                epoch_stats["loss_sum"] += mean_loss
                epoch_stats["entropy_sum"] += mean_entropy
                epoch_stats["steps"] += 1
                progress.update(1)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                now = time.perf_counter()
                record = {
                    "epoch": epoch,
                    "step": global_step,
                    "loss": mean_loss,
                    "teacher_entropy": mean_entropy,
                    "kl_teacher_student": mean_loss - mean_entropy,
                    "lr": float(lr_schedule[it]),
                    "wd": float(wd_schedule[it]),
                    "momentum": momentum,
                    "teacher_temp": float(dino_loss.teacher_temp_schedule[epoch]),
                    "images_per_s": total_batch / max(now - tick, 1e-9),
                }
                tick = now
                history.append(record)
                if global_step % max(config.run.log_every, 1) == 0 or step_in_epoch == niter:
                    monitor.step(record)
                    progress.set_postfix(loss=f"{mean_loss:.3f}", H=f"{mean_entropy:.2f}", lr=f"{record['lr']:.2e}")

                stop_now = stop.requested or (config.run.max_steps and global_step >= config.run.max_steps)
                if ctx.world_size > 1:
                    stop_now = bool(all_reduce_sum(torch.tensor([float(stop_now)], device=ctx.device)).item())
                if stop_now and step_in_epoch < niter:
                    last_checkpoint = save(epoch, step_in_epoch) or last_checkpoint
                    stopped = True
                    break
                if config.run.checkpoint_every_steps and global_step % config.run.checkpoint_every_steps == 0:
                    if step_in_epoch < niter:
                        last_checkpoint = save(epoch, step_in_epoch) or last_checkpoint
            if stopped:
                break

            steps = max(int(epoch_stats["steps"]), 1)
            epoch_loss = epoch_stats["loss_sum"] / steps
            monitor.epoch(
                {
                    "train_loss": epoch_loss,
                    "train_lr": float(lr_schedule[niter * (epoch + 1) - 1]),
                    "train_wd": float(wd_schedule[niter * (epoch + 1) - 1]),
                    "train_teacher_entropy": epoch_stats["entropy_sum"] / steps,
                    "train_kl_teacher_student": epoch_loss - epoch_stats["entropy_sum"] / steps,
                    "epoch": epoch,
                }
            )
            if ctx.is_main and epoch >= 1 and abs(epoch_loss - ln_k) < COLLAPSE_TOLERANCE * ln_k:
                warnings.warn(
                    f"epoch {epoch}: mean loss {epoch_loss:.3f} sits at ln K = {ln_k:.3f}: the teacher has collapsed "
                    "to the uniform distribution (SPEC §3/§17.1). Try a lower optim.momentum_teacher (0.99), a smaller "
                    "model.out_dim, or a different optim.lr / batch size.",
                    stacklevel=2,
                )
            copy = epoch + 1 if config.run.saveckp_freq and (epoch + 1) % config.run.saveckp_freq == 0 else None
            last_checkpoint = save(epoch + 1, 0, copy) or last_checkpoint
            epoch_stats = {"loss_sum": 0.0, "entropy_sum": 0.0, "steps": 0}
            if stop.requested or (config.run.max_steps and global_step >= config.run.max_steps):
                break
    progress.close()
    monitor.close()
    return TrainResult(
        output_dir=output_dir,
        checkpoint=last_checkpoint if ctx.is_main else None,
        global_step=global_step,
        completed=global_step >= total_steps,
        teacher=teacher,
        student=student_module,
        center=dino_loss.center.detach().clone(),
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
