"""bench/reference_speed.py: its reference ViT computes what the project's does, and a --quick run gives ratios.

The timings themselves are not asserted (speed targets live in docs/benchmarks.md): only that every workload
produces a ratio from alternating rounds and that the two sides' outputs agree, which is what makes the ratios
mean anything.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dino.checkpoint import load_backbone
from dino.models.vision_transformer import build_vit

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str) -> ModuleType:
    """A bench/ script as a module (registered: its dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference_vit() -> ModuleType:
    return load_bench("reference_vit")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("reference_speed")


def test_reference_vit_computes_the_project_models_outputs(reference_vit, single_thread) -> None:
    model = load_backbone("random:vit_tiny/16")
    reference = reference_vit.from_project(model)
    # 80×48 is not the training grid: both resample the positions (bicubic, the reference's +0.1 offset).
    for x in (torch.randn(2, 3, 224, 224), torch.randn(1, 3, 80, 48)):
        with torch.no_grad():
            layers = reference.get_intermediate_layers(x, 2), model.get_intermediate_layers(x, 2)
            assert len(layers[0]) == 2
            for mine, theirs in zip(*layers, strict=True):
                torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
            torch.testing.assert_close(reference(x), model(x), rtol=0, atol=1e-5)
            attention = reference.get_last_selfattention(x)
            torch.testing.assert_close(attention, model.get_last_selfattention(x), rtol=0, atol=1e-6)
    assert attention.shape == (1, 3, 1 + 5 * 3, 1 + 5 * 3)
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 3, 16))


def test_reference_vit_refuses_what_dino_v1_lacks(reference_vit) -> None:
    with pytest.raises(ValueError, match="LayerScale"):
        reference_vit.from_project(build_vit("vit_tiny", 16, depth=1, layer_scale_init=1e-5))


def test_the_projection_check_catches_other_weights(bench, reference_vit, single_thread) -> None:
    model = build_vit("vit_tiny", 16, depth=2).eval()
    reference = reference_vit.from_project(model)
    assert bench.check_same_projection(model, reference) < 1e-5
    with torch.no_grad():
        reference.blocks[1].attn.qkv.weight.mul_(1.01)  # 1 % more: attention and tokens move by far more than 1e-4
    with pytest.raises(bench.ProjectionMismatchError, match="meaningless"):
        bench.check_same_projection(model, reference)


@pytest.mark.slow
def test_quick_run_gives_ratios_and_agreeing_outputs(bench, shared_data, single_thread) -> None:
    args = bench.parse_args(["--quick", "--dtype", "fp32", "--data", str(shared_data)])
    report = bench.run_bench(args, log=lambda line: None)
    assert report.skipped == []
    kinds = ["k-NN", "attention", "copy-detection", "DAVIS", "DAVIS"]
    assert [result.workload.split()[0] for result in report.results] == kinds
    assert [result.model for result in report.results] == ["ViT-T/16"] * 4 + ["ViT-T/8"]
    for result in report.results:
        assert result.precision == "fp32"
        assert len(result.reference_s) == len(result.project_s) == 2
        assert math.isfinite(result.ratio) and result.ratio > 0
    knn, attention, copy, *davis = report.results
    assert knn.agreement["max_rel_diff"] < 1e-4 and copy.agreement["max_rel_diff"] < 1e-4
    assert attention.agreement["maps_max_rel_diff"] < 1e-4 and attention.agreement["mask_pixels_equal"] > 0.99
    for result in davis:
        assert result.items == 2 and result.reference_once_s > 0
        assert result.ratio_with_once > result.ratio
        assert result.agreement["pixels_equal"] > 0.99


def test_without_davis_the_video_workload_is_skipped(bench, tmp_path, make_images, single_thread) -> None:
    make_images(tmp_path / "images", 2)
    args = bench.parse_args(["--quick", "--only", "knn", "davis", "--data", str(tmp_path)])
    report = bench.run_bench(args, log=lambda line: None)
    assert [result.workload for result in report.results] == ["k-NN features 64²"]
    assert report.skipped == [f"davis: {tmp_path / 'davis2016-dev'} not found"]


def test_a_missing_data_folder_is_a_one_line_error(bench, tmp_path, capsys) -> None:
    assert bench.main(["--quick", "--data", str(tmp_path / "absent")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"reference_speed: error: {tmp_path / 'absent'}: no data folder (give --data or set DINO_DATA_DIR)"
    )
