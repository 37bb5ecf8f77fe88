"""bench/gpu_suite.py at tiny sizes on the CPU (``--quick``): every section runs through the project's real code
paths and records its numbers, a failing section is recorded while the others run, and a spent budget skips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SUITE = Path(__file__).resolve().parents[2] / "bench" / "gpu_suite.py"


def run_suite(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "results" / "gpu_suite.json"
    command = [sys.executable, str(SUITE), "--device", "cpu", "--quick", "--out", str(out), *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    return result, json.loads(out.read_text())


@pytest.mark.slow  # about 30 s on 2 CPU cores: four sections, each in a fresh interpreter
def test_quick_run_records_every_section_with_positive_numbers(tmp_path: Path) -> None:
    result, report = run_suite(tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert report["environment"]["torch"] == torch.__version__
    assert report["settings"]["device"] == "cpu"
    sections = report["sections"]
    assert list(sections) == ["vit", "davis", "train", "vit_compile"]
    assert {name: section["status"] for name, section in sections.items()} == dict.fromkeys(sections, "ok")
    assert all(section["errors"] == [] for section in sections.values())

    # --quick: ViT-T/16 and ViT-T/8 on 32² (1 + 2² and 1 + 4² tokens) and ViT-T/8 on the 48×80 "DAVIS" input.
    vit = sections["vit"]["results"]
    assert [(r["model"], r["input"], r["tokens"], r["dtype"], r["entry"]) for r in vit] == [
        ("ViT-tiny/16", "32x32", 5, "bf16", "forward_features"),
        ("ViT-tiny/16", "32x32", 5, "fp32", "forward_features"),
        ("ViT-tiny/16", "32x32", 5, "bf16", "FeatureExtractor.forward"),
        ("ViT-tiny/8", "32x32", 17, "bf16", "forward_features"),
        ("ViT-tiny/8", "48x80", 61, "bf16", "forward_features"),
    ]
    compiled = sections["vit_compile"]["results"]
    assert [(r["model"], r["mode"], r["compile_backend"]) for r in compiled] == [
        ("ViT-tiny/16", "compiled", "eager"),
        ("ViT-tiny/8", "compiled", "eager"),
    ]
    for record in vit + compiled:
        assert record["images_per_s"] > 0 and record["iters"] >= 2
        # images/s and ms per batch are two views of one measurement
        assert record["images_per_s"] * record["ms_per_batch"] / 1000 == pytest.approx(record["batch"], rel=1e-3)
    assert all(record["compile_s"] > 0 for record in compiled)

    # 128×72 synthetic frames, short side 48 and long side floored to 16s: 48×80, a 6×10 grid at patch 8.
    davis = sections["davis"]["results"]
    propagation = [r for r in davis if r["measure"].startswith("segment_frames")]
    assert [(r["backbone_dtype"], r["affinity_dtype"]) for r in propagation] == [
        ("fp32", "fp32"),
        ("bf16", "fp32"),
        ("bf16", "bf16"),
    ]
    assert len(davis) == 5  # and the backbone alone in fp32 and bf16
    for record in davis:
        assert (record["frames"], record["input"], record["patch_tokens"], record["objects"]) == (
            "synthetic",
            "48x80",
            60,
            2,
        )
        assert record["frames_per_s"] > 0
    assert all(r["timed_frames"] == 3 and r["context_frames"] == 8 for r in propagation)

    training, step, loader = sections["train"]["results"]
    assert training["crops"] == step["crops"] == "2x32^2 + 2x16^2" and training["timed_steps"] == 2
    assert training["images_per_s"] > 0 and training["final_loss"] > 0
    assert step["images_per_s"] > 0 and loader["images_per_s"] > 0

    for name in sections:
        assert f"{name}: ok" in result.stdout


def test_a_spent_budget_skips_every_section_and_still_writes_the_file(tmp_path: Path) -> None:
    result, report = run_suite(tmp_path, "--budget", "0.001")
    assert result.returncode == 1
    for section in report["sections"].values():
        assert section["status"] == "skipped" and "time budget spent" in section["error"]
        assert section["results"] == []


@pytest.mark.slow  # about 18 s: two sections
def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    result, report = run_suite(tmp_path, "--sections", "davis", "train", "--weights-8", str(missing))
    assert result.returncode == 1
    davis, train = report["sections"]["davis"], report["sections"]["train"]
    assert davis["status"] == "error" and str(missing) in davis["error"] and davis["results"] == []
    assert "Traceback" not in davis["error"] and "\n" not in davis["error"]
    assert train["status"] == "ok" and train["results"][0]["images_per_s"] > 0


@pytest.mark.slow  # about 14 s
def test_real_davis_frames_are_used_when_given(tmp_path: Path, shared_data: Path) -> None:
    root = shared_data / "davis2016-dev"
    result, report = run_suite(tmp_path, "--sections", "davis", "--davis", str(root))
    assert result.returncode == 0, result.stderr + result.stdout
    records = report["sections"]["davis"]["results"]
    first = (root / "ImageSets" / "2017" / "val.txt").read_text().split()[0]
    # DAVIS-2016 sequences have one object; --quick resizes the 854×480 frames to 128×72.
    assert {(r["frames"], r["objects"], r["frame_size"]) for r in records} == {
        (f"DAVIS davis2016-dev/{first}", 1, "128x72")
    }
    assert all(record["frames_per_s"] > 0 for record in records)
