"""End-to-end training runs on tiny data: checkpoints, exact resume, distributed agreement, learning."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dino.checkpoint import load_backbone
from dino.train.trainer import NonFiniteLossError, train


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_layout_and_loading(make_config, image_folder, tmp_path) -> None:
    result = train(make_config(image_folder, tmp_path / "run", **{"optim.epochs": "1"}))
    assert result.completed and result.global_step == 4
    checkpoint = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert {"student", "teacher", "optimizer", "epoch", "dino_loss", "config"} <= checkpoint.keys()
    assert checkpoint["epoch"] == 1 and checkpoint["step_in_epoch"] == 0
    assert all(k.startswith(("module.backbone.", "module.head.")) for k in checkpoint["student"])
    assert all(k.startswith(("backbone.", "head.")) for k in checkpoint["teacher"])
    assert checkpoint["dino_loss"]["center"].shape == (1, 64)
    assert checkpoint["config"]["model"]["arch"] == "vit_tiny"
    teacher = load_backbone(result.checkpoint)
    student = load_backbone(result.checkpoint, checkpoint_key="student")
    _assert_same_state(teacher.state_dict(), result.teacher.backbone.state_dict())
    _assert_same_state(student.state_dict(), result.student.backbone.state_dict())
    assert (tmp_path / "run" / "config.yaml").is_file()
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 4 and '"teacher_entropy"' in log[0] and '"kl_teacher_student"' in log[0]


@pytest.mark.parametrize("stop_after", [3, 6])  # mid-epoch, and mid-epoch after an epoch boundary
def test_interrupted_and_resumed_run_is_bitwise_identical(make_config, image_folder, tmp_path, stop_after) -> None:
    full = train(make_config(image_folder, tmp_path / "full", **{"optim.epochs": "2"}))
    stopped = train(
        make_config(image_folder, tmp_path / "cut", **{"optim.epochs": "2", "run.max_steps": str(stop_after)})
    )
    assert not stopped.completed and stopped.global_step == stop_after
    resumed = train(make_config(image_folder, tmp_path / "cut", **{"optim.epochs": "2"}))
    assert resumed.completed and resumed.global_step == full.global_step == 8
    _assert_same_state(full.teacher.state_dict(), resumed.teacher.state_dict())
    _assert_same_state(full.student.state_dict(), resumed.student.state_dict())
    assert torch.equal(full.center, resumed.center)
    final_full = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    final_cut = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    for group_full, group_cut in zip(
        final_full["optimizer"]["state"].values(), final_cut["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(group_full["exp_avg"], group_cut["exp_avg"])


def test_non_finite_loss_stops_and_keeps_last_checkpoint(make_config, image_folder, tmp_path, monkeypatch) -> None:
    config = make_config(image_folder, tmp_path / "run", **{"optim.epochs": "2"})
    train(make_config(image_folder, tmp_path / "run", **{"optim.epochs": "2", "run.max_steps": "4"}))
    before = (tmp_path / "run" / "checkpoint.pth").read_bytes()
    from dino.train.loss import DINOLoss

    original = DINOLoss.forward
    monkeypatch.setattr(DINOLoss, "forward", lambda self, *a: original(self, *a) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train(config)
    assert (tmp_path / "run" / "checkpoint.pth").read_bytes() == before


def test_resume_with_another_model_is_refused_and_leaves_the_run_as_it_was(make_config, image_folder, tmp_path) -> None:
    train(make_config(image_folder, tmp_path / "run", **{"run.max_steps": "1"}))
    names = ("checkpoint.pth", "config.yaml", "metrics.jsonl")
    files = {name: (tmp_path / "run" / name).read_bytes() for name in names}
    with pytest.raises(ValueError, match=r"checkpoint.pth: this run cannot resume .*size mismatch.*config.yaml"):
        train(make_config(image_folder, tmp_path / "run", **{"model.out_dim": "32"}))
    assert {name: (tmp_path / "run" / name).read_bytes() for name in files} == files


@pytest.mark.slow
def test_short_run_loss_decreases(make_config, image_folder, tmp_path) -> None:
    result = train(
        make_config(
            image_folder,
            tmp_path / "run",
            **{"optim.epochs": "6", "optim.lr": "0.01", "optim.momentum_teacher": "0.9", "run.log_every": "4"},
        )
    )
    losses = [record["loss"] for record in result.history]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.1, (first, last)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, data: str, output: str, result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import importlib.util

    import torch.distributed as dist

    # Load this folder's conftest by path: a plain `import conftest` in the spawned process can find another
    # folder's conftest.py first on sys.path.
    spec = importlib.util.spec_from_file_location("train_conftest", Path(__file__).with_name("conftest.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    tiny_config = helpers.tiny_config

    result = train(tiny_config(Path(data), Path(output), **{"optim.epochs": "1", "optim.batch_size_per_gpu": "2"}))
    torch.save({"teacher": result.teacher.state_dict(), "center": result.center}, Path(result_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(image_folder, tmp_path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(
        _rank_main,
        args=(2, _free_port(), str(image_folder), str(tmp_path / "run"), str(results)),
        nprocs=2,
        join=True,
    )
    rank0 = torch.load(results / "rank0.pt", weights_only=True)
    rank1 = torch.load(results / "rank1.pt", weights_only=True)
    _assert_same_state(rank0["teacher"], rank1["teacher"])
    assert torch.equal(rank0["center"], rank1["center"]) and rank0["center"].abs().sum() > 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert len(checkpoint["rng_states"]) == 2 and checkpoint["global_step"] == 4
