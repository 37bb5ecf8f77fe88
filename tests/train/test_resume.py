"""Resuming `dino train` after a stop or a kill: run.max_steps is a global step, the logs are cut back to the
checkpoint, temporaries of killed writers are removed, and kill -9 at a random point loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dino.cli import main
from dino.train.loss import DINOLoss
from dino.train.trainer import NonFiniteLossError, train

# Wall-clock throughput differs between two runs of the same steps; no other logged value may.
TIMING_KEYS = {"images_per_s"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS} for row in rows]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.iterdir())}


def _assert_same_logs(run: Path, reference: Path) -> None:
    """Same metrics rows (steps 1…N once each) and the same epoch rows as an uninterrupted run."""
    rows, expected = _rows(run / "metrics.jsonl"), _rows(reference / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, len(expected) + 1))
    assert _without_timing(rows) == _without_timing(expected)
    assert _rows(run / "log.txt") == _rows(reference / "log.txt")


def test_max_steps_is_a_global_step_and_a_rerun_past_it_touches_nothing(
    make_argv, make_config, image_folder, tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(make_argv(image_folder, run, **{"optim.epochs": "2", "run.max_steps": "3"})) == 0
    assert "stopped at step 3 (run.max_steps=3: raise run.max_steps or drop it to continue)" in capsys.readouterr().out
    before = _snapshot(run)

    # The same command again: the checkpoint is at step 3 already, so nothing is trained and nothing written.
    assert main(make_argv(image_folder, run, **{"optim.epochs": "2", "run.max_steps": "3"})) == 0
    captured = capsys.readouterr()
    assert "checkpoint.pth is at step 3, at or past run.max_steps=3: nothing to do; raise run.max_steps" in captured.err
    assert "stopped at step 3 (run.max_steps=3: raise run.max_steps" in captured.out
    assert _snapshot(run) == before
    idle = train(make_config(image_folder, run, **{"optim.epochs": "2", "run.max_steps": "2"}))
    assert idle.global_step == 3 and not idle.completed and idle.history == []
    assert idle.checkpoint == run / "checkpoint.pth"
    assert _snapshot(run) == before

    # Raising it trains up to that global step: 2 more steps, not 5 more.
    raised = train(make_config(image_folder, run, **{"optim.epochs": "2", "run.max_steps": "5"}))
    assert raised.global_step == 5 and not raised.completed and [row["step"] for row in raised.history] == [4, 5]

    # Dropping it runs to the end, and a finished run says so.
    assert main(make_argv(image_folder, run, **{"optim.epochs": "2"})) == 0
    assert "finished at step 8; checkpoint:" in capsys.readouterr().out
    full = train(make_config(image_folder, tmp_path / "full", **{"optim.epochs": "2"}))
    _assert_same_logs(run, tmp_path / "full")
    final = torch.load(run / "checkpoint.pth", weights_only=True)
    for key, value in full.teacher.state_dict().items():
        assert torch.equal(final["teacher"][key], value), key


def test_resume_drops_the_rows_a_killed_run_logged_past_its_checkpoint(make_config, image_folder, tmp_path) -> None:
    train(make_config(image_folder, tmp_path / "full", **{"optim.epochs": "2"}))
    run = tmp_path / "run"
    train(make_config(image_folder, run, **{"optim.epochs": "2", "run.max_steps": "6"}))  # epoch 1, batch 2
    # What a run killed after step 8 and before its next checkpoint leaves: rows for steps 7-8, the row of
    # epoch 1, and half-written last lines.
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 1, "step": 7, "loss": 1.0}\n{"epoch": 1, "step": 8, "loss": 2.0}\n{"epoch": 1, "st')
    with open(run / "log.txt", "a") as handle:
        handle.write('{"train_loss": 3.0, "epoch": 1}\n{"train_lo')

    resumed = train(make_config(image_folder, run, **{"optim.epochs": "2"}))
    assert resumed.completed and resumed.global_step == 8
    _assert_same_logs(run, tmp_path / "full")


def test_no_resume_starts_a_run_that_owns_the_folder(make_config, image_folder, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    train(make_config(image_folder, run, **{"optim.epochs": "2", "run.max_steps": "6"}))
    assert (run / "log.txt").read_text() and len(_rows(run / "metrics.jsonl")) == 6

    # A fresh run that dies before its first checkpoint leaves no trace of the old run to resume from.
    original = DINOLoss.forward
    with monkeypatch.context() as patch:
        patch.setattr(DINOLoss, "forward", lambda self, *a: original(self, *a) * float("nan"))
        with pytest.raises(NonFiniteLossError, match="no checkpoint was written"):
            train(make_config(image_folder, run, **{"optim.epochs": "2"}), resume=False)
    assert not (run / "checkpoint.pth").exists()
    assert (run / "metrics.jsonl").read_text() == "" and (run / "log.txt").read_text() == ""

    train(make_config(image_folder, run, **{"optim.epochs": "2", "run.max_steps": "6"}))
    restarted = train(make_config(image_folder, run, **{"optim.epochs": "1"}), resume=False)
    assert restarted.completed and restarted.global_step == 4
    train(make_config(image_folder, tmp_path / "fresh", **{"optim.epochs": "1"}))
    _assert_same_logs(run, tmp_path / "fresh")


def test_a_run_removes_the_temporaries_of_killed_writers(make_config, image_folder, tmp_path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # reaped: its pid names no process
    run = tmp_path / "run"
    run.mkdir()
    orphan = run / f".checkpoint.pth.{finished.pid}-k1lled.tmp"
    orphan.write_bytes(b"half a checkpoint")
    live = run / f".checkpoint.pth.{os.getpid()}-writing.tmp"  # this process's own: a live writer's, kept
    live.write_bytes(b"being written")
    train(make_config(image_folder, run, **{"run.max_steps": "1"}))
    assert not orphan.exists() and live.exists()


@pytest.mark.slow  # ~10 s: a fresh Python process importing torch, then resumed here
def test_kill_9_at_a_random_point_then_resume_gives_the_uninterrupted_run(make_argv, image_folder, tmp_path) -> None:
    """SIGKILL `dino train` (a real process) once it has checkpointed, at a random step and moment (often while
    it writes a checkpoint), resume with the same command: the same weights and logs as a run never killed."""
    settings = {"optim.epochs": "2", "run.checkpoint_every_steps": "3"}  # checkpoints at steps 3, 4, 6, 8
    run = tmp_path / "run"
    argv = make_argv(image_folder, run, **settings)
    kill_after_rows, extra_delay = random.randint(3, 6), random.uniform(0.0, 0.1)
    where = f"killed after {kill_after_rows} logged steps + {extra_delay:.3f} s"
    process = subprocess.Popen(
        [sys.executable, "-m", "dino.cli", *argv],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while not (
            (run / "checkpoint.pth").exists()
            and metrics.exists()
            and metrics.read_text().count("\n") >= kill_after_rows
        ):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the training process never reached its first checkpoint"
            time.sleep(0.005)
        time.sleep(extra_delay)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"{where}: the run ended before it was killed"
    saved = torch.load(run / "checkpoint.pth", weights_only=True)
    assert saved["global_step"] < 8, where

    assert main(argv) == 0  # the same command, resumed
    assert main(make_argv(image_folder, tmp_path / "full", **settings)) == 0
    final, full = (torch.load(folder / "checkpoint.pth", weights_only=True) for folder in (run, tmp_path / "full"))
    assert final["global_step"] == full["global_step"] == 8
    for key in ("teacher", "student"):
        for name, value in full[key].items():
            assert torch.equal(final[key][name], value), f"{where}: {key}.{name}"
    assert torch.equal(final["dino_loss"]["center"], full["dino_loss"]["center"]), where
    _assert_same_logs(run, tmp_path / "full")
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")], where
