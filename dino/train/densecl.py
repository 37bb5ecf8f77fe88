"""DenseCL (Wang et al., CVPR 2021; SPEC §23): MoCo-v2 with a second, dense contrastive loss.

A port of ``openselfsup/models/densecl.py`` (``DenseCL.forward_train``), ``openselfsup/models/necks.py``
(``DenseCLNeck``), ``openselfsup/models/heads/contrastive_head.py`` (``ContrastiveHead``) and
``openselfsup/hooks/densecl_warmup_hook.py`` of WXinlong/DenseCL, in the reference's order: query forward,
momentum update of the key encoder, shuffled key forward, global and dense InfoNCE, then both queues enqueue
the keys of every process. :class:`DenseCL`'s state dict has the reference's training-checkpoint keys
(``encoder_q.0.*`` backbone, ``encoder_q.1.*`` neck, ``encoder_k.*``, the ``backbone.*`` alias of
``encoder_q.0``, ``queue``, ``queue_ptr``, ``queue2``, ``queue2_ptr``).

Deliberate differences from the reference:

- Single process: the reference's shuffle BN needs DDP. Here one process shuffles the key batch too and runs
  each encoder's BatchNorm over ``bn_splits`` sub-batches, as ``bn_splits`` GPUs would (MoCo's SplitBatchNorm
  idea), so BN statistics cannot tell a query's positive key apart (see :class:`DenseCL`).
- The logits are computed in fp32 whatever the autocast dtype of the encoders (SPEC §15, modern pitfalls 4).
- The pooled dense projection of the query view (the reference's ``q2``) is computed and never used, as there.
- An enqueue whose global batch does not divide ``queue_len`` raises ``ValueError`` naming both numbers
  (the reference asserts).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.distributed import all_gather_cat, broadcast_, get_rank, get_world_size
from dino.models.resnet import ResNetBackbone

__all__ = [
    "DenseCL",
    "DenseCLNeck",
    "DenseCLOutput",
    "NeckOutput",
    "batch_shuffle",
    "batch_unshuffle",
    "contrastive_loss",
    "dense_correspondence",
    "densecl_lambda",
    "enqueue",
    "gather_matches",
    "init_neck_weights",
]

# SPEC §23 defaults.
LOSS_LAMBDA = 0.5
WARMUP_ITERS = 1000


class NeckOutput(NamedTuple):
    """The three outputs of :class:`DenseCLNeck` (unnormalised).

    Attributes:
        global_: (N, out) projection of the average-pooled grid (MoCo-v2's head).
        grid: (N, out, H·W) 1×1-conv projection of every grid location.
        pooled_dense: (N, out) average of ``grid`` over the locations (the reference's ``k2``, ``queue2``'s keys).
    """

    global_: Tensor
    grid: Tensor
    pooled_dense: Tensor


def init_neck_weights(module: nn.Module) -> None:
    """OpenSelfSup's ``_init_weights(module, init_linear='kaiming')`` of ``necks.py``.

    Every ``nn.Linear`` gets mmcv's ``kaiming_init(m, mode='fan_in', nonlinearity='relu')`` (normal
    distribution, bias 0). The reference's loop tests ``isinstance(m, nn.Linear)`` only, so the 1×1 convolutions of
    the dense branch keep PyTorch's default initialisation; we keep that quirk so that a run starts from the
    reference's distribution. (Norm layers would get weight 1, bias 0; this neck has none.)
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class DenseCLNeck(nn.Module):
    """OpenSelfSup's ``DenseCLNeck`` without its optional grid pooling (``num_grid=None``, the paper's setting).

    Global branch ``avgpool -> mlp`` (Linear-ReLU-Linear), dense branch ``mlp2`` (Conv1×1-ReLU-Conv1×1) on the
    grid and ``avgpool2`` of its output. Attribute names are the reference's, so that the state dict's keys are.
    """

    def __init__(self, in_channels: int, hid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hid_channels), nn.ReLU(inplace=True), nn.Linear(hid_channels, out_channels)
        )
        self.mlp2 = nn.Sequential(
            nn.Conv2d(in_channels, hid_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(hid_channels, out_channels, 1)
        )
        self.avgpool2 = nn.AdaptiveAvgPool2d((1, 1))
        init_neck_weights(self)

    def forward(self, x: Tensor) -> NeckOutput:
        """Project a (N, C, H, W) backbone grid (layer4)."""
        pooled = self.mlp(torch.flatten(self.avgpool(x), 1))
        dense = self.mlp2(x)
        pooled_dense = torch.flatten(self.avgpool2(dense), 1)
        return NeckOutput(pooled, torch.flatten(dense, 2), pooled_dense)


class DenseCLOutput(NamedTuple):
    """One training forward of :class:`DenseCL`.

    Attributes:
        loss: ``(1 − λ)·loss_global + λ·loss_dense``, the one to back-propagate.
        loss_global: The global InfoNCE (detached).
        loss_dense: The dense InfoNCE over all N·S² query locations (detached).
        accuracy: Fraction of queries whose positive key beats every queue entry (detached; a cheap health figure).
    """

    loss: Tensor
    loss_global: Tensor
    loss_dense: Tensor
    accuracy: Tensor


class _Projections(NamedTuple):
    """L2-normalised (fp32) outputs of one encoder: global (N, D), grid (N, D, S²), pooled dense (N, D), and
    the backbone's layer4 grid (N, C, S²) that the correspondence uses."""

    global_: Tensor
    grid: Tensor
    pooled_dense: Tensor
    backbone_grid: Tensor


def contrastive_loss(l_pos: Tensor, l_neg: Tensor, temperature: float) -> Tensor:
    """InfoNCE as OpenSelfSup's ``ContrastiveHead``: cross-entropy of ``cat([l_pos, l_neg]) / T`` with label 0.

    Args:
        l_pos: (M, 1) positive logits.
        l_neg: (M, K) negative logits.
        temperature: T (0.2 for DenseCL).

    Returns:
        The mean over the M rows.
    """
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def dense_correspondence(q_b: Tensor, k_b: Tensor) -> Tensor:
    """For each query location, the key location whose backbone feature is most similar.

    Args:
        q_b: (N, C, S²) query-view backbone features, L2-normalised along C.
        k_b: (N, C, S²) key-view backbone features, L2-normalised along C.

    Returns:
        (N, S²) long indices into the key view's locations: ``argmax_j q_b[:, :, i] · k_b[:, :, j]`` (the
        reference's ``backbone_sim_matrix.max(dim=2)[1]``).
    """
    similarity = torch.bmm(q_b.transpose(1, 2), k_b)
    return similarity.argmax(dim=2)


def gather_matches(k_grid: Tensor, indices: Tensor) -> Tensor:
    """``k_grid`` (N, D, S²) re-ordered so that column i holds the key location matched to query location i."""
    return torch.gather(k_grid, 2, indices.unsqueeze(1).expand(-1, k_grid.shape[1], -1))


@torch.no_grad()
def enqueue(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
    """MoCo's ``_dequeue_and_enqueue`` on already gathered keys: write ``keys`` (B, D) as columns
    ``ptr … ptr + B − 1`` of ``queue`` (D, L) and advance ``ptr`` (a (1,) long tensor) by B, modulo L.

    Raises:
        ValueError: B does not divide L (the reference asserts it, so a batch never straddles the end).
    """
    batch, queue_len = keys.shape[0], queue.shape[1]
    if queue_len % batch != 0:
        raise ValueError(
            f"DenseCL's queue_len {queue_len} is not a multiple of the global batch {batch} "
            "(per-process batch × processes); choose a queue length that is"
        )
    start = int(ptr)
    queue[:, start : start + batch] = keys.transpose(0, 1).to(queue.dtype)
    ptr[0] = (start + batch) % queue_len


def densecl_lambda(iteration: int, loss_lambda: float = LOSS_LAMBDA, warmup_iters: int = WARMUP_ITERS) -> float:
    """The dense loss's weight λ at `iteration` (0-based, as mmcv's ``runner.iter`` before the step).

    ``DenseCLWarmupHook.before_train_iter``: ``loss_lambda if cur_iter >= start_iters else 0.``: the first
    `warmup_iters` steps train the global loss only, while the backbone's features (which choose the dense
    correspondences) are still random.
    """
    return loss_lambda if iteration >= warmup_iters else 0.0


@torch.no_grad()
def batch_shuffle(images: Tensor) -> tuple[Tensor, Tensor]:
    """Shuffle the global batch (across processes under DDP) for the key encoder: MoCo's ``_batch_shuffle_ddp``.

    The permutation is drawn from torch's global CPU RNG on every rank (so each rank's RNG stream advances the
    same and a resumed run draws the same permutations) and rank 0's is broadcast.

    Returns:
        This rank's share of the shuffled global batch, and the index that undoes the shuffle
        (:func:`batch_unshuffle`). In a single process: ``images[perm]`` and ``argsort(perm)``.
    """
    gathered = all_gather_cat(images)
    world_size = get_world_size()
    permutation = broadcast_(torch.randperm(gathered.shape[0]).to(images.device), src=0)
    mine = permutation.view(world_size, -1)[get_rank()]
    return gathered[mine], torch.argsort(permutation)


@torch.no_grad()
def batch_unshuffle(x: Tensor, unshuffle: Tensor) -> Tensor:
    """Undo :func:`batch_shuffle` on the key encoder's outputs: MoCo's ``_batch_unshuffle_ddp``."""
    gathered = all_gather_cat(x)
    return gathered[unshuffle.view(get_world_size(), -1)[get_rank()]]


class DenseCL(nn.Module):
    """The DenseCL model: query and key encoders (backbone + :class:`DenseCLNeck`) and the two queues.

    Shuffle BN: BatchNorm computes statistics over the batch, which would let a query find its positive key by
    the batch statistics both carry rather than by content (MoCo §3.3). The reference shuffles the key batch
    across GPUs, so that each key sees the statistics of a random sub-batch, and its query those of its own GPU's
    batch. Here the key batch is always shuffled (across processes under DDP, :func:`batch_shuffle`), and each
    process runs both encoders over `bn_splits` sub-batches of its batch (queries contiguous, keys shuffled):
    one process with ``bn_splits = W`` computes the BN statistics that W GPUs would. ``bn_splits = 1`` with one
    process lets BN leak; it is there to compare with the reference bit for bit.

    Args:
        backbone: The query backbone (its ``forward_features(x).layer4`` feeds the neck); the key encoder is a
            deep copy of it and of the neck, frozen (``requires_grad`` False), updated only by momentum.
        hid_dim: Hidden width of both neck branches (2048).
        feat_dim: Width of the projections and of the queues' entries (128).
        queue_len: Entries per queue (65,536); must be a multiple of the global batch.
        momentum: Key encoder EMA momentum m in ``k = m·k + (1 − m)·q`` (0.999).
        temperature: InfoNCE temperature of both losses (0.2).
        bn_splits: BN sub-batches per process; None: 1 under DDP (the reference's setting: the cross-process
            shuffle does the job), 2 in a single process. The per-process batch must be a multiple of it.
    """

    def __init__(
        self,
        backbone: ResNetBackbone,
        hid_dim: int = 2048,
        feat_dim: int = 128,
        queue_len: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        bn_splits: int | None = None,
    ) -> None:
        super().__init__()
        if bn_splits is not None and bn_splits < 1:
            raise ValueError(f"bn_splits must be at least 1, got {bn_splits}")
        self.encoder_q = nn.Sequential(backbone, DenseCLNeck(backbone.embed_dim, hid_dim, feat_dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param in self.encoder_k.parameters():
            param.requires_grad_(False)
        # The reference's alias (`self.backbone = self.encoder_q[0]`): its checkpoints hold `backbone.*` too.
        self.backbone = backbone
        self.queue_len = queue_len
        self.momentum = momentum
        self.temperature = temperature
        self.bn_splits = bn_splits
        self.register_buffer("queue", F.normalize(torch.randn(feat_dim, queue_len), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue2", F.normalize(torch.randn(feat_dim, queue_len), dim=0))
        self.register_buffer("queue2_ptr", torch.zeros(1, dtype=torch.long))

    def splits_for(self, batch: int) -> int:
        """The BN sub-batches for a per-process batch of `batch` images (see the class docstring)."""
        splits = self.bn_splits if self.bn_splits is not None else (1 if get_world_size() > 1 else 2)
        if batch % splits != 0:
            raise ValueError(f"DenseCL's per-process batch {batch} is not a multiple of bn_splits {splits}")
        return splits

    def forward(self, view_q: Tensor, view_k: Tensor, loss_lambda: float) -> DenseCLOutput:
        """One training step's loss, in the order of the reference's ``forward_train``; also updates the key
        encoder (before the key forward) and enqueues the keys (after the loss).

        Args:
            view_q: (N, 3, H, W) query views.
            view_k: (N, 3, H, W) key views of the same images.
            loss_lambda: λ, the dense loss's weight (:func:`densecl_lambda`).
        """
        splits = self.splits_for(view_q.shape[0])
        q = _encode(self.encoder_q, view_q, splits)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            shuffled, unshuffle = batch_shuffle(view_k)
            k = _encode(self.encoder_k, shuffled, splits)
            k = _Projections(*(batch_unshuffle(t, unshuffle) for t in k))
        # The logits and the correspondence in fp32 even under autocast, which would run the matmuls in 16 bits.
        with torch.autocast(view_q.device.type, enabled=False):
            loss_global, accuracy = self._global_loss(q, k)
            loss_dense = self._dense_loss(q, k)
        loss = (1.0 - loss_lambda) * loss_global + loss_lambda * loss_dense
        enqueue(self.queue, self.queue_ptr, all_gather_cat(k.global_))
        enqueue(self.queue2, self.queue2_ptr, all_gather_cat(k.pooled_dense))
        return DenseCLOutput(loss, loss_global.detach(), loss_dense.detach(), accuracy)

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """``k = k·m + q·(1 − m)`` over the parameters (not the buffers: the key encoder's BN keeps its own
        running statistics), evaluated as the reference does, so the result is the same to the bit."""
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            param_k.mul_(self.momentum).add_(param_q.detach() * (1.0 - self.momentum))

    def _global_loss(self, q: _Projections, k: _Projections) -> tuple[Tensor, Tensor]:
        """MoCo-v2's InfoNCE against ``queue``, and the fraction of positives ranked first."""
        l_pos = (q.global_ * k.global_).sum(dim=1, keepdim=True)
        # A copy: the queue is overwritten in place by the enqueue, before autograd's backward reads it.
        l_neg = q.global_ @ self.queue.clone()
        accuracy = (l_pos.detach() > l_neg.detach().amax(dim=1, keepdim=True)).float().mean()
        return contrastive_loss(l_pos, l_neg, self.temperature), accuracy

    def _dense_loss(self, q: _Projections, k: _Projections) -> Tensor:
        """InfoNCE per query location: positive the matched key location, negatives ``queue2``."""
        matched = gather_matches(k.grid, dense_correspondence(q.backbone_grid, k.backbone_grid))
        l_pos = (q.grid * matched).sum(dim=1).reshape(-1, 1)
        q_grid = q.grid.transpose(1, 2).reshape(-1, q.grid.shape[1])
        l_neg = q_grid @ self.queue2.clone()
        return contrastive_loss(l_pos, l_neg, self.temperature)


def _project(encoder: nn.Sequential, images: Tensor) -> _Projections:
    """One encoder on one (sub-)batch: backbone layer4 -> neck, each output L2-normalised in fp32."""
    backbone: ResNetBackbone = encoder[0]
    layer4 = backbone.forward_features(images).layer4
    neck: NeckOutput = encoder[1](layer4)
    return _Projections(
        F.normalize(neck.global_.float(), dim=1),
        F.normalize(neck.grid.float(), dim=1),
        F.normalize(neck.pooled_dense.float(), dim=1),
        F.normalize(torch.flatten(layer4, 2).float(), dim=1),
    )


def _encode(encoder: nn.Sequential, images: Tensor, splits: int) -> _Projections:
    """:func:`_project` over `splits` consecutive sub-batches, so that each BatchNorm sees one sub-batch."""
    if splits == 1:
        return _project(encoder, images)
    parts = [_project(encoder, chunk) for chunk in images.chunk(splits)]
    return _Projections(*(torch.cat(outputs) for outputs in zip(*parts, strict=True)))
