"""DenseCL as a method of the trainer (SPEC §23): `dino train --method densecl`, its presets, the λ warm-up in the
logs, checkpoints in the reference's training layout that `load_resnet` reads, exact resume (queues, pointers, key
encoder, BatchNorm statistics, optimiser), and the start-up check of the queue length."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dino import cli
from dino.checkpoint import load_resnet
from dino.train.config import load_config
from dino.train.densecl_recipe import build_densecl, build_densecl_optimizer
from dino.train.schedules import epoch_cosine_scheduler
from dino.train.trainer import build_densecl_schedules, train

TIMING_KEYS = {"images_per_s"}


def _densecl_overrides(data: Path, output: Path, **overrides: str) -> list[str]:
    """ResNet-18 on 64-px views, batches of 4, queues of 16 entries of 16-d, a 32-wide neck, λ after 2 steps."""
    settings = {
        "run.method": "densecl",
        "model.arch": "resnet18",
        "densecl.crop_size": "64",
        "densecl.queue_len": "16",
        "densecl.feat_dim": "16",
        "densecl.hid_dim": "32",
        "densecl.warmup_iters": "2",
        "optim.warmup_epochs": "0",
        **overrides,
    }
    # Imported here, not at the top: the two-process test's workers import this module, and there `conftest` can
    # be the top-level tests/conftest.py, which has no tiny_overrides (the parent passes them their overrides).
    from conftest import tiny_overrides

    return tiny_overrides(data, output, **settings)


def _config(data: Path, output: Path, **overrides: str):
    return load_config("densecl_cpu_small", None, _densecl_overrides(data, output, **overrides))


def _assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key, value in left.items():
        assert torch.equal(value, right[key]), key


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS} for row in rows]


def test_densecl_run_logs_lambda_and_checkpoints_the_reference_layout(image_folder, tmp_path) -> None:
    result = train(_config(image_folder, tmp_path / "run", **{"run.max_steps": "2"}))
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and all(math.isfinite(row["loss"]) for row in rows)
    # 16 images, batch 4, lr 0.12 per 256 (the preset's) scaled by 4/256; epoch 0 of a by-epoch cosine: the base.
    assert rows[0]["lr"] == pytest.approx(0.12 * 4 / 256) and rows[0]["wd"] == 1e-4
    checkpoint = torch.load(result.checkpoint, weights_only=True)
    assert checkpoint["method"] == "densecl" and "student" not in checkpoint and "teacher" not in checkpoint
    state = checkpoint["state_dict"]
    # Two steps of 4 keys each went into both queues of 16 (feat_dim 16): the pointers stand at 8.
    assert state["queue"].shape == state["queue2"].shape == (16, 16)
    assert int(state["queue_ptr"]) == int(state["queue2_ptr"]) == 8
    assert any(key.startswith("encoder_k.0.layer4.") for key in state)
    assert any(key.startswith("encoder_q.1.mlp2.") for key in state)

    model = result.student
    backbone = load_resnet(result.checkpoint)  # the default key "teacher" is absent: "state_dict", encoder_q.0
    _assert_same(backbone.state_dict(), model.encoder_q[0].state_dict())
    key_conv = model.encoder_k[0].conv1.weight
    assert not torch.equal(backbone.conv1.weight, key_conv)  # the key encoder lags (momentum 0.99): not it


def test_lambda_is_zero_during_warmup_then_loss_lambda(image_folder, tmp_path) -> None:
    result = train(_config(image_folder, tmp_path / "run", **{"run.max_steps": "4"}))
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert [row["lambda"] for row in rows] == [0.0, 0.0, 0.5, 0.5]  # densecl.warmup_iters = 2
    for row in rows:
        total = (1 - row["lambda"]) * row["loss_global"] + row["lambda"] * row["loss_dense"]
        assert row["loss"] == pytest.approx(total, rel=1e-6)
    assert rows[0]["loss"] == rows[0]["loss_global"] != rows[0]["loss_dense"]
    assert result.completed is False and result.teacher is None and result.center is None


def test_densecl_resume_is_bitwise(image_folder, tmp_path) -> None:
    full = train(_config(image_folder, tmp_path / "full", **{"run.max_steps": "4"}))
    train(_config(image_folder, tmp_path / "run", **{"run.max_steps": "2"}))
    resumed = train(_config(image_folder, tmp_path / "run", **{"run.max_steps": "4"}))
    assert [row["step"] for row in resumed.history] == [3, 4]
    assert _rows(tmp_path / "run" / "metrics.jsonl") == _rows(tmp_path / "full" / "metrics.jsonl")
    # Everything: both encoders (BatchNorm statistics included), both queues and their pointers.
    _assert_same(resumed.student.state_dict(), full.student.state_dict())
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    reference = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    _assert_same(saved["state_dict"], reference["state_dict"])
    assert saved["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for index, state in reference["optimizer"]["state"].items():
        assert torch.equal(saved["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"]), index


def test_a_queue_the_global_batch_does_not_divide_is_refused_at_start(image_folder, tmp_path, capsys) -> None:
    with pytest.raises(ValueError) as error:
        train(_config(image_folder, tmp_path / "run", **{"densecl.queue_len": "18"}))
    assert str(error.value) == (
        "config densecl.queue_len=18 is not a multiple of the global batch 4 (optim.batch_size_per_gpu=4 x 1 processes)"
    )
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
    argv = ["train", *_densecl_overrides(image_folder, tmp_path / "cli", **{"densecl.queue_len": "18"})]
    assert cli.main(argv) != 0
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "queue_len=18 is not a multiple of the global batch 4" in message


def test_densecl_optimiser_decays_everything_and_anneals_by_epoch(tmp_path) -> None:
    config = _config(tmp_path, tmp_path)
    model = build_densecl(config)
    optimizer = build_densecl_optimizer(model)
    (group,) = optimizer.param_groups  # OpenSelfSup's config has no paramwise options: one group, BN included
    trainable = [param for param in model.parameters() if param.requires_grad]
    assert group["params"] == trainable and group["momentum"] == 0.9
    assert {id(param) for param in model.encoder_k.parameters()}.isdisjoint(map(id, group["params"]))
    assert any(param.ndim == 1 for param in group["params"])  # BatchNorm weights and biases are there

    # mmcv's CosineAnnealing with by_epoch=True: lr_e = ½·base·(1 + cos(π e / E)), held for the epoch.
    config.optim.epochs = 4
    schedules = build_densecl_schedules(config, iterations_per_epoch=3, world_size=2)
    base = 0.12 * 8 / 256
    expected = [base * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4) for _ in range(3)]
    np.testing.assert_allclose(schedules.lr, expected, rtol=1e-12)
    assert set(schedules.weight_decay) == {1e-4} and set(schedules.momentum) == {0.99}
    # An optional warm-up (the reference has none) replaces the first epochs' values with a ramp from 0.
    assert list(epoch_cosine_scheduler(1.0, 0.0, 2, 2, warmup_epochs=1)) == [0.0, 1.0, 0.5, 0.5]


def test_densecl_presets_are_the_reference_recipe_and_its_cpu_reduction() -> None:
    reference = load_config("densecl_r50")
    section, optim = reference.densecl, reference.optim
    # SPEC §23 / densecl_imagenet_200ep.py: queue_len=65536, feat_dim=128, momentum=0.999, loss_lambda=0.5,
    # hid_channels=2048, temperature=0.2, RandomResizedCrop(224, scale=(0.2, 1.)), imgs_per_gpu=32,
    # SGD(lr=0.03, weight_decay=0.0001, momentum=0.9), CosineAnnealing(min_lr=0.), total_epochs = 200.
    assert (reference.run.method, reference.model.arch) == ("densecl", "resnet50")
    assert (section.queue_len, section.feat_dim, section.hid_dim) == (65536, 128, 2048)
    assert (section.momentum, section.temperature, section.loss_lambda, section.warmup_iters) == (0.999, 0.2, 0.5, 1000)
    assert (section.crop_size, section.crop_scale) == (224, (0.2, 1.0))
    assert (optim.optimizer, optim.lr, optim.weight_decay, optim.weight_decay_end) == ("sgd", 0.03, 1e-4, 1e-4)
    assert (optim.min_lr, optim.warmup_epochs, optim.epochs, optim.batch_size_per_gpu) == (0.0, 0, 200, 32)
    assert optim.clip_grad == 0.0

    small = load_config("densecl_cpu_small")
    assert (small.model.arch, small.densecl.hid_dim, small.densecl.feat_dim) == ("resnet18", 512, 128)
    assert small.densecl.queue_len % small.optim.batch_size_per_gpu == 0
    assert (small.densecl.crop_size, small.densecl.warmup_iters, small.run.precision) == (112, 100, "fp32")
    steps = small.optim.epochs * (900 // small.optim.batch_size_per_gpu)  # ~900 images, drop_last
    assert 600 <= steps <= 1000


def test_method_densecl_alone_takes_the_reference_recipe_and_a_preset_runs(image_folder, tmp_path, capsys) -> None:
    assert cli.main(["train", "--method", "densecl", "--print-config"]) == 0
    captured = capsys.readouterr()
    printed = yaml.safe_load(captured.out)
    assert printed["run"]["method"] == "densecl" and printed["densecl"]["queue_len"] == 65536
    assert printed["model"]["arch"] == "resnet50" and printed["optim"]["epochs"] == 200
    assert "--method densecl without --preset or --config: the reference recipe, preset densecl_r50" in captured.err

    run = tmp_path / "run"
    overrides = _densecl_overrides(image_folder, run, **{"run.max_steps": "1"})
    argv = ["train", "--method", "densecl", "--preset", "densecl_cpu_small", "--data-path", str(image_folder)]
    assert cli.main([*argv, "--output-dir", str(run), *overrides]) == 0
    assert "stopped at step 1" in capsys.readouterr().out
    assert load_resnet(run / "checkpoint.pth").depth == 18


def _rank_main(rank: int, port: int, overrides: list[str], result_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    result = train(load_config("densecl_cpu_small", None, overrides))
    torch.save(result.student.state_dict(), Path(result_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_densecl_keeps_ranks_identical(image_folder, tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        port = handle.getsockname()[1]
    results = tmp_path / "results"
    results.mkdir()
    overrides = _densecl_overrides(
        image_folder, tmp_path / "run", **{"optim.batch_size_per_gpu": "2", "run.max_steps": "2"}
    )
    mp.spawn(_rank_main, args=(port, overrides, str(results)), nprocs=2, join=True)
    rank0 = torch.load(results / "rank0.pt", weights_only=True)
    rank1 = torch.load(results / "rank1.pt", weights_only=True)
    # DDP averages the query encoder's gradients and every rank enqueues the keys of both: parameters and queues
    # agree; the BatchNorm running statistics are each rank's own (DDP with broadcast_buffers=False).
    for key, value in rank0.items():
        if "running_" not in key and "num_batches_tracked" not in key:
            assert torch.equal(value, rank1[key]), key
    # Two steps of a global batch of 2 x 2 keys: both pointers at 8.
    assert int(rank0["queue_ptr"]) == int(rank0["queue2_ptr"]) == 8
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert len(checkpoint["rng_states"]) == 2 and checkpoint["global_step"] == 2
