"""DenseCL (SPEC §23): hand-computed pieces, and the whole step against a direct port of the authors'
``forward_train`` (WXinlong/DenseCL ``openselfsup/models/densecl.py``) on identical weights and inputs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dino.checkpoint import load_resnet
from dino.data.multicrop import MultiCropDataset
from dino.data.twoview import MoCoV2Augmentation
from dino.models.resnet import ResNetBackbone
from dino.train.densecl import (
    DenseCL,
    DenseCLNeck,
    batch_shuffle,
    batch_unshuffle,
    contrastive_loss,
    dense_correspondence,
    densecl_lambda,
    enqueue,
    gather_matches,
)

FEAT, HID, QUEUE = 16, 32, 32


def tiny_densecl(bn_splits: int | None = 1, momentum: float = 0.99) -> DenseCL:
    """ResNet-18 + a 32-wide neck with 16-d projections and queues of 32: a step on 64-px images is ~0.2 s."""
    model = DenseCL(ResNetBackbone(18), HID, FEAT, QUEUE, momentum=momentum, temperature=0.2, bn_splits=bn_splits)
    with torch.no_grad():  # a query encoder unlike the key encoder, so that the EMA is not trivially k
        for param in model.encoder_q.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model


def views(batch: int = 4, size: int = 64, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, size, size)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


# --------------------------------------------------------------------------------------------- small pieces
def test_contrastive_loss_by_hand() -> None:
    l_pos = torch.tensor([[0.5], [0.1]])
    l_neg = torch.tensor([[0.2, -0.3], [0.4, 0.0]])
    # logits / 0.5: [1.0, 0.4, -0.6] and [0.2, 0.8, 0.0]; label 0 -> -z0 + log Σ exp z
    row1 = -1.0 + math.log(math.exp(1.0) + math.exp(0.4) + math.exp(-0.6))
    row2 = -0.2 + math.log(math.exp(0.2) + math.exp(0.8) + math.exp(0.0))
    assert contrastive_loss(l_pos, l_neg, 0.5).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_dense_correspondence_and_gather_by_hand() -> None:
    # Key locations of image 0 point at 0°, 90°, 180°, 270°; image 1's are image 0's in reverse order.
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    queries = F.normalize(torch.tensor([[0.0, 1.0], [-0.6, -0.8], [1.0, 0.1], [-1.0, 0.2]]), dim=1)
    k_b = torch.stack([keys.T, keys.flip(0).T])  # (2, C=2, S²=4)
    q_b = torch.stack([queries.T, queries.T])
    indices = dense_correspondence(q_b, k_b)
    # Image 0: (0,1)->90° (1); (-.6,-.8)->270° (3, dot .8 vs .6); (1,.1)->0° (0); (-1,.2)->180° (2).
    assert indices.tolist() == [[1, 3, 0, 2], [2, 0, 3, 1]]
    k_grid = torch.arange(4.0).view(1, 1, 4) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1)
    k_grid = torch.cat([k_grid, k_grid + 1000])  # (2, 3, 4): column j of image n is n·1000 + [j, 10j, 100j]
    gathered = gather_matches(k_grid, indices)
    assert gathered[0, :, 1].tolist() == [3.0, 30.0, 300.0]
    assert gathered[1, :, 0].tolist() == [1002.0, 1020.0, 1200.0]


def test_enqueue_advances_and_wraps_the_pointer() -> None:
    queue, ptr = torch.zeros(2, 6), torch.zeros(1, dtype=torch.long)
    for step in range(4):
        enqueue(queue, ptr, torch.tensor([[step, 10.0 + step], [step + 0.5, 20.0 + step]]))
        assert ptr.tolist() == [[2, 4, 0, 2][step]]
    # Steps 0-2 filled columns 0-1, 2-3, 4-5; step 3 wrapped and overwrote columns 0-1.
    assert queue.tolist() == [[3.0, 3.5, 1.0, 1.5, 2.0, 2.5], [13.0, 23.0, 11.0, 21.0, 12.0, 22.0]]


def test_enqueue_refuses_a_batch_that_does_not_divide_the_queue() -> None:
    with pytest.raises(ValueError, match=r"queue_len 6 is not a multiple of the global batch 4"):
        enqueue(torch.zeros(2, 6), torch.zeros(1, dtype=torch.long), torch.zeros(4, 2))


def test_lambda_warmup_boundaries() -> None:
    assert densecl_lambda(0) == 0.0
    assert densecl_lambda(999) == 0.0
    assert densecl_lambda(1000) == 0.5  # DenseCLWarmupHook: `cur_iter >= start_iters`
    assert densecl_lambda(9, loss_lambda=0.3, warmup_iters=10) == 0.0
    assert densecl_lambda(10, loss_lambda=0.3, warmup_iters=10) == 0.3


def test_batch_shuffle_draws_torch_global_rng_and_unshuffles() -> None:
    x = torch.arange(6.0).view(6, 1)
    torch.manual_seed(7)
    shuffled, unshuffle = batch_shuffle(x)
    torch.manual_seed(7)
    permutation = torch.randperm(6)
    assert torch.equal(shuffled, x[permutation])
    assert torch.equal(batch_unshuffle(shuffled, unshuffle), x)


def test_neck_shapes_and_the_references_init() -> None:
    neck = DenseCLNeck(512, 1024, 64)
    out = neck(torch.randn(2, 512, 3, 5))
    assert [tuple(t.shape) for t in out] == [(2, 64), (2, 64, 15), (2, 64)]
    torch.testing.assert_close(out.pooled_dense, out.grid.mean(dim=2))
    # Linear: kaiming_normal_(fan_in, relu) -> std sqrt(2 / fan_in), bias 0 (mmcv kaiming_init).
    for linear, fan_in in ((neck.mlp[0], 512), (neck.mlp[2], 1024)):
        assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
        assert not linear.bias.any()
    # Conv 1×1: untouched by the reference's _init_weights (Linear only): PyTorch's default,
    # kaiming_uniform_(a=√5) -> U(±1/√fan_in), std 1/√(3·fan_in), bias U(±1/√fan_in), not zero.
    for conv, fan_in in ((neck.mlp2[0], 512), (neck.mlp2[2], 1024)):
        assert conv.weight.abs().max().item() <= 1 / math.sqrt(fan_in)
        assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.02)
        assert conv.bias.abs().min().item() > 0


def test_key_encoder_starts_as_a_frozen_copy_and_queues_are_unit_columns() -> None:
    model = DenseCL(ResNetBackbone(18), HID, FEAT, QUEUE)
    for (name, q), k in zip(model.encoder_q.named_parameters(), model.encoder_k.parameters(), strict=True):
        assert torch.equal(q, k) and q.requires_grad and not k.requires_grad, name
    for name in ("queue", "queue2"):
        queue = getattr(model, name)
        assert queue.shape == (FEAT, QUEUE)
        torch.testing.assert_close(queue.norm(dim=0), torch.ones(QUEUE))
        assert getattr(model, f"{name}_ptr").tolist() == [0]


# ------------------------------------------------------------------- the authors' forward_train, ported as is
def _ref_backbone(backbone: nn.Module, x: Tensor) -> tuple[Tensor]:
    """OpenSelfSup's ResNet with out_indices=[4]: the layer4 grid, in a 1-tuple."""
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    return (backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x)))),)


def _ref_neck(neck: nn.Module, x: tuple[Tensor]) -> list[Tensor]:
    """DenseCLNeck.forward with num_grid=None."""
    x = x[0]
    avgpooled_x = neck.avgpool(x)
    avgpooled_x = neck.mlp(avgpooled_x.view(avgpooled_x.size(0), -1))
    x = neck.mlp2(x)
    avgpooled_x2 = neck.avgpool2(x)
    x = x.view(x.size(0), x.size(1), -1)
    avgpooled_x2 = avgpooled_x2.view(avgpooled_x2.size(0), -1)
    return [avgpooled_x, x, avgpooled_x2]


def _ref_head(pos: Tensor, neg: Tensor, temperature: float) -> Tensor:
    logits = torch.cat((pos, neg), dim=1)
    logits /= temperature
    return nn.CrossEntropyLoss()(logits, torch.zeros((pos.size(0),), dtype=torch.long))


def _ref_enqueue(queue: Tensor, queue_ptr: Tensor, queue_len: int, keys: Tensor) -> None:
    batch_size = keys.shape[0]
    ptr = int(queue_ptr)
    assert queue_len % batch_size == 0
    queue[:, ptr : ptr + batch_size] = keys.transpose(0, 1)
    queue_ptr[0] = (ptr + batch_size) % queue_len


def reference_forward_train(m: DenseCL, im_q: Tensor, im_k: Tensor, loss_lambda: float) -> tuple[Tensor, Tensor]:
    """``DenseCL.forward_train`` of the reference, on `m`'s modules and buffers, without the (DDP-only) shuffle."""
    q_b = _ref_backbone(m.encoder_q[0], im_q)
    q, q_grid, q2 = _ref_neck(m.encoder_q[1], q_b)
    q_b = q_b[0]
    q_b = q_b.view(q_b.size(0), q_b.size(1), -1)
    q = nn.functional.normalize(q, dim=1)
    q_grid = nn.functional.normalize(q_grid, dim=1)
    q_b = nn.functional.normalize(q_b, dim=1)
    with torch.no_grad():
        for param_q, param_k in zip(m.encoder_q.parameters(), m.encoder_k.parameters(), strict=True):
            param_k.data = param_k.data * m.momentum + param_q.data * (1.0 - m.momentum)
        k_b = _ref_backbone(m.encoder_k[0], im_k)
        k, k_grid, k2 = _ref_neck(m.encoder_k[1], k_b)
        k_b = k_b[0]
        k_b = k_b.view(k_b.size(0), k_b.size(1), -1)
        k = nn.functional.normalize(k, dim=1)
        k2 = nn.functional.normalize(k2, dim=1)
        k_grid = nn.functional.normalize(k_grid, dim=1)
        k_b = nn.functional.normalize(k_b, dim=1)
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, m.queue.clone().detach()])
    backbone_sim_matrix = torch.matmul(q_b.permute(0, 2, 1), k_b)
    densecl_sim_ind = backbone_sim_matrix.max(dim=2)[1]
    indexed_k_grid = torch.gather(k_grid, 2, densecl_sim_ind.unsqueeze(1).expand(-1, k_grid.size(1), -1))
    densecl_sim_q = (q_grid * indexed_k_grid).sum(1)
    l_pos_dense = densecl_sim_q.view(-1).unsqueeze(-1)
    q_grid = q_grid.permute(0, 2, 1)
    q_grid = q_grid.reshape(-1, q_grid.size(2))
    l_neg_dense = torch.einsum("nc,ck->nk", [q_grid, m.queue2.clone().detach()])
    loss_single = _ref_head(l_pos, l_neg, m.temperature)
    loss_dense = _ref_head(l_pos_dense, l_neg_dense, m.temperature)
    _ref_enqueue(m.queue, m.queue_ptr, m.queue_len, k)
    _ref_enqueue(m.queue2, m.queue2_ptr, m.queue_len, k2)
    return loss_single * (1 - loss_lambda), loss_dense * loss_lambda


def test_step_matches_the_reference_forward_train() -> None:
    """Same weights, inputs and queues (one process, bn_splits 1: the key shuffle then only reorders BN's sums)."""
    model = tiny_densecl(bn_splits=1)
    with torch.no_grad():  # a pointer away from 0, so the columns written are not trivially the first ones
        model.queue_ptr.fill_(8)
        model.queue2_ptr.fill_(8)
    reference = copy.deepcopy(model)
    before = {name: getattr(model, name).clone() for name in ("queue", "queue2")}
    im_q, im_k = views(size=128)  # a 4×4 layer4 grid: 16 locations to match
    out = model(im_q, im_k, 0.25)
    ref_single, ref_dense = reference_forward_train(reference, im_q, im_k, 0.25)

    torch.testing.assert_close(out.loss_global, ref_single.detach() / 0.75, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loss_dense, ref_dense.detach() / 0.25, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loss, (ref_single + ref_dense).detach(), rtol=1e-5, atol=0)
    for name in ("queue", "queue2"):
        torch.testing.assert_close(getattr(model, name), getattr(reference, name), rtol=0, atol=1e-5)
        assert getattr(model, f"{name}_ptr").tolist() == getattr(reference, f"{name}_ptr").tolist() == [12]
        changed = (getattr(model, name) != before[name]).all(dim=0)
        assert changed.nonzero().flatten().tolist() == [8, 9, 10, 11]
    for (name, k), k_ref in zip(model.encoder_k.named_parameters(), reference.encoder_k.parameters(), strict=True):
        assert torch.equal(k, k_ref), name
    # The gradients the query encoder gets agree too.
    out.loss.backward()
    (ref_single + ref_dense).backward()
    for (name, q), q_ref in zip(model.encoder_q.named_parameters(), reference.encoder_q.parameters(), strict=True):
        torch.testing.assert_close(q.grad, q_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_key_encoder_is_the_ema_of_the_query_encoder() -> None:
    model = tiny_densecl(bn_splits=2, momentum=0.9)
    q_old = [p.detach().clone() for p in model.encoder_q.parameters()]
    k_old = [p.detach().clone() for p in model.encoder_k.parameters()]
    model(*views(), 0.5)
    for q, k, k_new in zip(q_old, k_old, model.encoder_k.parameters(), strict=True):
        assert torch.equal(k_new, k * 0.9 + q * (1 - 0.9))
        assert not torch.equal(k_new, k)


def test_split_bn_runs_each_shuffled_half_on_its_own() -> None:
    """bn_splits 2: the key of image i is the key encoder on the half of the shuffled batch that holds i."""
    model = tiny_densecl(bn_splits=2)
    im_q, im_k = views()
    queue = model.queue.clone()
    torch.manual_seed(5)
    out = model(im_q, im_k, 0.0)
    torch.manual_seed(5)
    permutation = torch.randperm(4)  # the only draw from torch's RNG in the step
    keys, queries = torch.empty(4, FEAT), []
    with torch.no_grad():
        for half in permutation.chunk(2):
            keys[half] = F.normalize(model.encoder_k[1](model.encoder_k[0].forward_features(im_k[half]).layer4)[0])
        for half in im_q.chunk(2):  # queries: consecutive halves, as two processes would hold them
            queries.append(F.normalize(model.encoder_q[1](model.encoder_q[0].forward_features(half).layer4)[0]))
    torch.testing.assert_close(model.queue[:, :4].T, keys, rtol=0, atol=1e-6)
    q = torch.cat(queries)
    expected_loss = contrastive_loss((q * keys).sum(1, keepdim=True), q @ queue, 0.2)
    torch.testing.assert_close(out.loss_global, expected_loss, rtol=1e-5, atol=0)
    # In eval mode BN uses running statistics: splitting and shuffling then change nothing.
    model.eval()
    split, single = model, copy.deepcopy(model)
    single.bn_splits = 1
    a, b = split(im_q, im_k, 0.5), single(im_q, im_k, 0.5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(split.queue2, single.queue2, rtol=0, atol=1e-6)


def test_logits_are_fp32_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    import dino.train.densecl as densecl

    seen: list[torch.dtype] = []

    def recording_loss(l_pos: Tensor, l_neg: Tensor, temperature: float) -> Tensor:
        seen.extend((l_pos.dtype, l_neg.dtype))
        return contrastive_loss(l_pos, l_neg, temperature)

    monkeypatch.setattr(densecl, "contrastive_loss", recording_loss)
    model = tiny_densecl(bn_splits=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*views(), 0.5)
    assert seen == [torch.float32] * 4
    assert out.loss.dtype == model.queue.dtype == model.queue2.dtype == torch.float32


def test_batch_not_divisible_by_bn_splits_is_refused() -> None:
    with pytest.raises(ValueError, match=r"per-process batch 3 is not a multiple of bn_splits 2"):
        tiny_densecl(bn_splits=None)(*(v[:3] for v in views()), 0.5)


def test_loss_decreases_over_a_few_sgd_steps() -> None:
    """Fixed views, queues restored after each step (so the objective stays put): SGD must lower it."""
    model = tiny_densecl(bn_splits=2)
    im_q, im_k = views()
    initial = {name: getattr(model, name).clone() for name in ("queue", "queue_ptr", "queue2", "queue2_ptr")}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        torch.manual_seed(0)  # the same key shuffle every step
        out = model(im_q, im_k, 0.5)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        with torch.no_grad():
            for name, value in initial.items():
                getattr(model, name).copy_(value)
    assert losses[-1] < losses[0] - 0.05, losses


def test_state_dict_has_the_reference_keys_and_load_resnet_reads_the_query_backbone(tmp_path: Path) -> None:
    model = tiny_densecl()
    with torch.no_grad():
        for param in model.encoder_k.parameters():
            param.add_(1.0)
    state = model.state_dict()
    for key in (
        "encoder_q.0.conv1.weight",
        "encoder_q.0.layer4.1.bn2.running_var",
        "encoder_q.1.mlp.0.weight",
        "encoder_q.1.mlp.2.bias",
        "encoder_q.1.mlp2.0.weight",
        "encoder_q.1.mlp2.2.bias",
        "encoder_k.0.conv1.weight",
        "encoder_k.1.mlp2.2.weight",
        "backbone.conv1.weight",
        "queue",
        "queue_ptr",
        "queue2",
        "queue2_ptr",
    ):
        assert key in state, key
    tops = {key.split(".")[0] for key in state}
    assert tops == {"encoder_q", "encoder_k", "backbone", "queue", "queue_ptr", "queue2", "queue2_ptr"}
    path = tmp_path / "densecl_epoch_1.pth"
    torch.save({"state_dict": state}, path)
    loaded = load_resnet(path).state_dict()
    query = model.encoder_q[0].state_dict()
    assert loaded.keys() == query.keys()
    assert all(torch.equal(loaded[key], query[key]) for key in query)
    assert not torch.equal(loaded["conv1.weight"], model.encoder_k[0].conv1.weight)


# ---------------------------------------------------------------------------------------------- augmentation
def test_moco_v2_views_differ_and_reproduce_under_the_dataset_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 120)[None, :, None] * np.ones((90, 1, 3)) * np.array([1.0, 0.5, 0.2])
    photo = np.clip(ramp + rng.normal(0, 20, (90, 120, 3)), 0, 255).astype(np.uint8)
    (tmp_path / "photos").mkdir()
    Image.fromarray(photo).save(tmp_path / "photos" / "a.png")
    augmentation = MoCoV2Augmentation(size=32)
    assert augmentation.ncrops == 2
    dataset = MultiCropDataset(tmp_path / "photos", augmentation, seed=3, rank=0)
    view_q, view_k = dataset[(0, 0)]
    assert view_q.shape == view_k.shape == (3, 32, 32)
    assert not torch.equal(view_q, view_k)
    again = dataset[(0, 0)]
    assert torch.equal(again[0], view_q) and torch.equal(again[1], view_k)
    assert not torch.equal(dataset[(1, 0)][0], view_q)


# ------------------------------------------------------------------------------------------------------ DDP
def _densecl_rank(rank: int, port: int, result_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = tiny_densecl(bn_splits=None).eval()
    im_q, im_k = (v[2 * rank : 2 * rank + 2] for v in views())
    torch.manual_seed(100 + rank)  # different streams: the ranks must use rank 0's broadcast permutation
    out = model(im_q, im_k, 0.5)
    buffers = {name: getattr(model, name) for name in ("queue", "queue_ptr", "queue2", "queue2_ptr")}
    torch.save({"global": out.loss_global, "dense": out.loss_dense, **buffers}, f"{result_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_shuffle_bn_matches_one_process(tmp_path: Path) -> None:
    """Two gloo processes with 2 images each = one process with all 4 (eval-mode BN, so batch statistics do not
    enter): the cross-process shuffle and unshuffle give every image its own key, and both ranks enqueue all keys
    in rank order."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        port = handle.getsockname()[1]
    mp.spawn(_densecl_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = tiny_densecl(bn_splits=1).eval()
    out = model(*views(), 0.5)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    # Each rank's loss is the mean over its 2 images (dense: its 2·S² locations), so their mean is the 4-image mean.
    torch.testing.assert_close((ranks[0]["global"] + ranks[1]["global"]) / 2, out.loss_global, rtol=1e-5, atol=0)
    torch.testing.assert_close((ranks[0]["dense"] + ranks[1]["dense"]) / 2, out.loss_dense, rtol=1e-5, atol=0)
    for shard in ranks:
        torch.testing.assert_close(shard["queue"], model.queue, rtol=0, atol=1e-6)
        torch.testing.assert_close(shard["queue2"], model.queue2, rtol=0, atol=1e-6)
        assert shard["queue_ptr"].tolist() == shard["queue2_ptr"].tolist() == [4]


def test_moco_v2_view_pipeline_has_the_reference_settings() -> None:
    """densecl_imagenet_200ep.py's train_pipeline: RandomResizedCrop(224, (0.2, 1)) (bilinear, torchvision's 2020
    default), ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, RandomGrayscale 0.2, blur σ ~ U(0.1, 2) p 0.5, flip, normalise."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    from dino.data.multicrop import GaussianBlur

    crop, jitter, gray, blur, flip, norm = MoCoV2Augmentation().view_transform.transforms
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (224, 224) and crop.scale == (0.2, 1.0)
    assert crop.interpolation == InterpolationMode.BILINEAR
    assert isinstance(jitter, T.RandomApply) and jitter.p == 0.8
    (color,) = jitter.transforms
    assert (color.brightness, color.contrast, color.saturation) == ((0.6, 1.4),) * 3  # 1 ± 0.4
    assert color.hue == (-0.1, 0.1)
    assert isinstance(gray, T.RandomGrayscale) and gray.p == 0.2
    assert isinstance(blur, GaussianBlur) and (blur.prob, blur.radius_min, blur.radius_max) == (0.5, 0.1, 2.0)
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert [type(t) for t in norm.transforms] == [T.ToTensor, T.Normalize]
    assert tuple(norm.transforms[1].mean) == (0.485, 0.456, 0.406)
    assert tuple(norm.transforms[1].std) == (0.229, 0.224, 0.225)
