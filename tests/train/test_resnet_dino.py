"""DINO with a ResNet (SPEC §24): `dino train --arch resnet50`, the reference recipe's preset, BatchNorm under
torchrun (SyncBatchNorm, a DDP teacher), exact resume with BatchNorm statistics, and `load_resnet` on the result."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides
from torch import nn

from dino import cli
from dino.checkpoint import load_resnet
from dino.train import parallel
from dino.train.config import load_config
from dino.train.optim import SGD_MOMENTUM
from dino.train.trainer import build_networks, train

SPEC = Path(__file__).resolve().parents[2] / "docs" / "SPEC.md"


def _resnet_config(data: Path, output: Path, **overrides: str):
    """The resnet50 preset shrunk for a CPU: ResNet-18 on two 64-px global and two 32-px local crops, batches of 4,
    a 256-prototype head; 16 images give 4 steps per epoch."""
    settings = {"model.arch": "resnet18", "model.out_dim": "256", "crops.global_crops_size": "64"}
    settings.update({"crops.local_crops_size": "32", "optim.warmup_epochs": "1", **overrides})
    return load_config("resnet50", None, tiny_overrides(data, output, **settings))


def _assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key, value in left.items():
        assert torch.equal(value, right[key]), key


def test_resnet_run_resumes_bitwise_and_its_teacher_loads_with_load_resnet(image_folder, tmp_path) -> None:
    full = train(_resnet_config(image_folder, tmp_path / "full", **{"run.max_steps": "4"}))
    assert [row["step"] for row in full.history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in full.history)

    # The teacher stays in training mode (the reference never calls teacher.eval()): its BatchNorm layers ran on
    # batch statistics and counted one batch per step (the two global crops in one pass), the student two (one pass
    # per crop resolution). Running statistics are not averaged into the teacher: were they, the counts would match.
    assert full.teacher.training and all(module.training for module in full.teacher.modules())
    assert int(full.teacher.backbone.bn1.num_batches_tracked) == 4
    assert int(full.student.backbone.bn1.num_batches_tracked) == 8

    stopped = train(_resnet_config(image_folder, tmp_path / "run", **{"run.max_steps": "2"}))
    assert stopped.global_step == 2 and stopped.checkpoint == tmp_path / "run" / "checkpoint.pth"
    teacher = load_resnet(stopped.checkpoint, "teacher")
    assert teacher.depth == 18
    _assert_same(teacher.state_dict(), stopped.teacher.backbone.state_dict())
    _assert_same(load_resnet(stopped.checkpoint, "student").state_dict(), stopped.student.backbone.state_dict())

    resumed = train(_resnet_config(image_folder, tmp_path / "run", **{"run.max_steps": "4"}))
    assert [row["step"] for row in resumed.history] == [3, 4]
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in full.history[2:]]
    _assert_same(resumed.teacher.state_dict(), full.teacher.state_dict())  # BatchNorm buffers included
    _assert_same(resumed.student.state_dict(), full.student.state_dict())
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    reference = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    for index, state in reference["optimizer"]["state"].items():
        assert torch.equal(saved["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"]), index


def test_sgd_groups_leave_biases_and_batchnorm_undecayed(image_folder, tmp_path) -> None:
    result = train(_resnet_config(image_folder, tmp_path / "run", **{"run.max_steps": "4"}))
    groups = torch.load(result.checkpoint, weights_only=True)["optimizer"]["param_groups"]
    # ResNet-18 has 20 convolutions (stem, 16 in blocks, 3 downsamples) and as many BatchNorm layers; the head has 3
    # linear layers and last_layer.weight_v (weight_g is frozen by norm_last_layer and left out). Decayed: the 20
    # convolution weights, 3 linear weights and weight_v; not decayed: 20 BatchNorm weights and biases, 3 linear
    # biases (SPEC §5's groups, as main_dino.py builds them for SGD too).
    assert (len(groups[0]["params"]), len(groups[1]["params"])) == (20 + 3 + 1, 2 * 20 + 3)
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["momentum"] == groups[1]["momentum"] == SGD_MOMENTUM == 0.9
    # The 1-epoch (4-step) warm-up goes from 0 to the lr scaled by the batch: 0.03 x 4 / 256 (one process).
    peak = 0.03 * 4 / 256
    assert [row["lr"] for row in result.history] == pytest.approx([0.0, peak / 3, peak * 2 / 3, peak])


def test_resnet_heads_take_the_pooled_width_and_ignore_vit_settings(tmp_path) -> None:
    config = _resnet_config(tmp_path, tmp_path, **{"model.patch_size": "7", "model.drop_path_rate": "0.5"})
    student, teacher = build_networks(config)
    assert student.head.mlp[0].in_features == teacher.head.mlp[0].in_features == 512
    crops = [torch.randn(2, 3, 64, 64)] * 2 + [torch.randn(2, 3, 32, 32)] * 2
    assert student(crops).shape == (8, 256)  # crop-major rows, two backbone passes
    config.model.arch = "resnet50"
    assert build_networks(config)[0].head.mlp[0].in_features == 2048


def _spec_recipe() -> dict[str, list[str]]:
    """The flags of SPEC §24's "Recipe from the reference README" command."""
    line = next(line for line in SPEC.read_text().splitlines() if "Recipe from the reference README" in line)
    words = shlex.split(re.search(r"`([^`]*)`", line).group(1))
    flags: dict[str, list[str]] = {}
    for word in words:
        if word.startswith("--"):
            flags[word[2:]] = []
        else:
            flags[next(reversed(flags))].append(word)
    return flags


def test_the_resnet50_preset_is_the_readme_recipe_with_the_reference_defaults() -> None:
    recipe, config = _spec_recipe(), load_config("resnet50")
    assert recipe["arch"] == [config.model.arch] == ["resnet50"]
    assert recipe["optimizer"] == [config.optim.optimizer] == ["sgd"]
    assert float(recipe["lr"][0]) == config.optim.lr == 0.03
    assert float(recipe["weight_decay"][0]) == config.optim.weight_decay == 1e-4
    assert float(recipe["weight_decay_end"][0]) == config.optim.weight_decay_end == 1e-4
    assert tuple(map(float, recipe["global_crops_scale"])) == config.crops.global_crops_scale == (0.14, 1.0)
    assert tuple(map(float, recipe["local_crops_scale"])) == config.crops.local_crops_scale == (0.05, 0.14)
    # Everything else: main_dino.py's defaults (SPEC §2, §3, §5).
    optim, model = config.optim, config.model
    assert (optim.epochs, optim.batch_size_per_gpu, optim.warmup_epochs, optim.min_lr) == (100, 64, 10, 1e-6)
    assert (optim.momentum_teacher, optim.clip_grad, optim.freeze_last_layer) == (0.996, 3.0, 1)
    assert (model.out_dim, model.norm_last_layer, model.use_bn_in_head) == (65536, True, False)
    assert (config.crops.local_crops_number, config.loss.teacher_temp) == (8, 0.04)


def test_arch_resnet50_alone_prints_the_reference_recipe(capsys) -> None:
    assert cli.main(["train", "--arch", "resnet50", "--print-config"]) == 0
    captured = capsys.readouterr()
    printed = yaml.safe_load(captured.out)
    assert printed["model"]["arch"] == "resnet50" and printed["optim"]["optimizer"] == "sgd"
    assert printed["optim"]["lr"] == 0.03 and printed["crops"]["global_crops_scale"] == [0.14, 1.0]
    assert "--arch resnet50 without --preset or --config: the reference recipe, preset resnet50" in captured.err

    # A preset given keeps its own recipe: only the backbone changes, and nothing is announced.
    assert cli.main(["train", "--arch", "resnet18", "--preset", "cpu_small", "--print-config"]) == 0
    captured = capsys.readouterr()
    printed = yaml.safe_load(captured.out)
    assert printed["model"]["arch"] == "resnet18" and printed["optim"]["optimizer"] == "adamw"
    assert captured.err == ""


class _RecordingDDP(nn.Module):
    """Stands in for DistributedDataParallel (which needs a process group): records what it was given."""

    def __init__(self, module: nn.Module, device_ids: list[int] | None = None) -> None:
        super().__init__()
        self.module = module
        self.trainable_when_wrapped = all(param.requires_grad for param in module.parameters())


def test_batchnorm_under_torchrun_gets_syncbatchnorm_and_a_ddp_teacher(tmp_path, monkeypatch) -> None:
    student, teacher = build_networks(_resnet_config(tmp_path, tmp_path))
    cuda = torch.device("cuda")
    assert not parallel.use_sync_batchnorm(student, 1, cuda)  # one process: nothing to synchronise
    assert parallel.use_sync_batchnorm(student, 2, cuda)
    vit_student, _ = build_networks(load_config(overrides=tiny_overrides(tmp_path, tmp_path)))
    assert not parallel.use_sync_batchnorm(vit_student, 8, cuda)  # no BatchNorm, no SyncBatchNorm (the reference)
    with pytest.raises(ValueError, match=r"^a network with BatchNorm in 2 processes needs SyncBatchNorm .* on GPUs$"):
        parallel.use_sync_batchnorm(student, 2, torch.device("cpu"))

    assert parallel.wrap_dino_networks(student, teacher, 1, cuda, 0) == (student, teacher)
    monkeypatch.setattr(parallel, "DistributedDataParallel", _RecordingDDP)
    parameters = list(student.parameters())
    wrapped_student, wrapped_teacher = parallel.wrap_dino_networks(student, teacher, 2, cuda, 0)
    assert isinstance(wrapped_student, _RecordingDDP) and wrapped_student.module is student
    assert isinstance(wrapped_teacher, _RecordingDDP) and wrapped_teacher.module is teacher
    assert wrapped_teacher.trainable_when_wrapped and not any(param.requires_grad for param in teacher.parameters())
    for network in (student, teacher):
        assert isinstance(network.backbone.bn1, nn.SyncBatchNorm)
        assert not any(type(module) is nn.BatchNorm2d for module in network.modules())
    assert list(student.parameters()) == parameters  # the optimiser's parameters are still the network's
