"""The pure pieces of the recipe against hand-computed values (SPEC §3, §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dino.train.loss import DINOLoss
from dino.train.optim import cancel_gradients_last_layer, clip_gradients, get_params_groups
from dino.train.schedules import cosine_scheduler, teacher_temperature_schedule
from dino.train.trainer import MultiCropWrapper, build_networks


def _loss(ncrops: int, out_dim: int = 2) -> DINOLoss:
    return DINOLoss(out_dim, ncrops, 0.04, 0.04, 0, nepochs=1)


def test_loss_hand_computed_value() -> None:
    # Uniform teacher (equal logits, zero center) and student logits [0, 0.1·ln3]: the student softmax at
    # temperature 0.1 is [1/4, 3/4], so every term is −½(ln ¼ + ln ¾).
    loss_fn = _loss(ncrops=3)
    teacher = torch.zeros(2, 2)
    student = torch.tensor([[0.0, 0.1 * math.log(3.0)]] * 3)
    expected = -0.5 * (math.log(0.25) + math.log(0.75))
    assert loss_fn(student, teacher, epoch=0).item() == pytest.approx(expected, rel=1e-6)


def test_loss_has_2_ncrops_minus_2_terms_skipping_same_view() -> None:
    # Each student view v has its own cross-entropy c_v against the (uniform) teacher; with 3 crops the
    # pairs are (0,1), (0,2), (1,0), (1,2): loss = (c0 + c1 + 2·c2) / 4.
    loss_fn = _loss(ncrops=3)
    teacher = torch.zeros(2, 2)
    student = torch.tensor([[0.0, 0.1], [0.0, 0.3], [0.0, -0.2]])
    ce = [-(0.5 * F.log_softmax(row / 0.1, dim=-1)).sum().item() for row in student]
    expected = (ce[0] + ce[1] + 2 * ce[2]) / 4
    assert loss_fn(student, teacher, epoch=0).item() == pytest.approx(expected, rel=1e-6)


def test_loss_teacher_sharpening_and_centering() -> None:
    loss_fn = _loss(ncrops=2)
    loss_fn.center = torch.tensor([[0.02, 0.0]])
    teacher = torch.tensor([[0.06, 0.0], [0.06, 0.0]])  # centred: [0.04, 0] -> /0.04 -> [1, 0]
    q = torch.softmax(torch.tensor([1.0, 0.0]), dim=0)
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    expected = -(q * math.log(0.5)).sum().item()
    assert loss_fn(student, teacher, epoch=0).item() == pytest.approx(expected, rel=1e-6)


def test_center_update_is_ema_of_raw_teacher_mean() -> None:
    loss_fn = _loss(ncrops=2)
    first = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    loss_fn(torch.zeros(2, 2), first, epoch=0)
    assert torch.allclose(loss_fn.center, torch.tensor([[0.2, 0.4]]))
    second = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    loss_fn(torch.zeros(2, 2), second, epoch=0)
    assert torch.allclose(loss_fn.center, 0.9 * torch.tensor([[0.2, 0.4]]) + 0.1 * torch.tensor([[1.0, 1.0]]))


def test_teacher_temperature_is_per_epoch_linear_warmup() -> None:
    schedule = teacher_temperature_schedule(0.04, 0.07, 30, 100)
    assert len(schedule) == 100
    assert schedule[0] == 0.04 and schedule[29] == pytest.approx(0.07) and schedule[99] == 0.07
    assert schedule[15] == pytest.approx(0.04 + 0.03 * 15 / 29)


def test_cosine_scheduler_lengths_and_endpoints() -> None:
    schedule = cosine_scheduler(2e-3, 1e-6, epochs=10, niter_per_ep=5, warmup_epochs=2)
    assert len(schedule) == 50
    assert schedule[0] == 0.0
    assert schedule[9] == 2e-3  # the linspace warm-up includes its end point
    assert schedule[10] == 2e-3  # cosine starts at the base value (i = 0)
    post = np.arange(40)
    assert np.allclose(schedule[10:], 1e-6 + 0.5 * (2e-3 - 1e-6) * (1 + np.cos(np.pi * post / 40)))
    assert schedule[-1] > 1e-6  # the final value is approached, never reached
    momentum = cosine_scheduler(0.996, 1.0, 3, 7)
    assert len(momentum) == 21 and momentum[0] == 0.996 and 0.996 < momentum[-1] < 1.0
    assert np.all(np.diff(momentum) > 0)


def test_cosine_scheduler_rejects_warmup_longer_than_run() -> None:
    with pytest.raises(ValueError):
        cosine_scheduler(1.0, 0.0, epochs=2, niter_per_ep=3, warmup_epochs=3)


def test_param_groups(make_config, tmp_path) -> None:
    student, _ = build_networks(make_config(tmp_path, tmp_path))
    names = {id(p): n for n, p in student.named_parameters()}
    decayed, not_decayed = get_params_groups(student)
    decayed_names = {names[id(p)] for p in decayed["params"]}
    plain_names = {names[id(p)] for p in not_decayed["params"]}
    assert not_decayed["weight_decay"] == 0.0
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight"} <= decayed_names
    assert "head.last_layer.weight_v" in decayed_names
    assert all(n.endswith(".bias") or "norm" in n for n in plain_names)
    assert "head.last_layer.weight_g" not in decayed_names | plain_names  # frozen with norm_last_layer
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert decayed_names | plain_names == trainable and not decayed_names & plain_names


def test_per_parameter_clipping_matches_reference() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    model[0].weight.grad = torch.tensor([[6.0, 0.0], [0.0, 0.0]])
    small = torch.tensor([[0.6, 0.8]])
    model[1].weight.grad = small.clone()
    norms = clip_gradients(model, 3.0)
    assert torch.allclose(norms, torch.tensor([6.0, 1.0]))
    assert torch.equal(model[0].weight.grad, torch.tensor([[6.0, 0.0], [0.0, 0.0]]) * (3.0 / (6.0 + 1e-6)))
    assert torch.equal(model[1].weight.grad, small)  # under the threshold: untouched, bit for bit


def test_freeze_last_layer_drops_only_last_layer_grads(make_config, tmp_path) -> None:
    student, _ = build_networks(make_config(tmp_path, tmp_path))
    for param in student.parameters():
        param.grad = torch.ones_like(param)
    cancel_gradients_last_layer(epoch=0, model=student, freeze_last_layer=1)
    assert student.head.last_layer.weight_v.grad is None
    assert student.backbone.cls_token.grad is not None
    cancel_gradients_last_layer(epoch=1, model=student, freeze_last_layer=1)
    assert student.backbone.cls_token.grad is not None


def test_multicrop_wrapper_groups_by_resolution() -> None:
    calls = []

    class Recorder(nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return x.mean(dim=(2, 3))

    wrapper = MultiCropWrapper(Recorder(), nn.Identity())
    crops = [torch.full((2, 3, 8, 8), float(i)) for i in range(2)] + [torch.full((2, 3, 4, 4), 5.0)] * 3
    out = wrapper(crops)
    assert calls == [(4, 3, 8, 8), (6, 3, 4, 4)]
    assert out.shape == (10, 3) and out[2, 0] == 1.0 and out[4, 0] == 5.0
