"""Weighted k-NN (SPEC §8) against a hand-worked example, and the CLI on a tiny folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import dino.eval.knn as knn_module
from dino.cli import main
from dino.eval.knn import knn_classifier, run_knn
from dino.eval.linear import run_linear
from dino.models.vision_transformer import vit_tiny
from dino.runtime import Runtime


def test_weighted_vote_hand_example() -> None:
    # Query q = e0. Bank: two class-1 neighbours at cos 0.6, one class-0 neighbour at cos 0.9.
    # k=3, T=0.07: class 0 scores e^{0.9/0.07} ≈ 3.9e5, class 1 scores 2·e^{0.6/0.07} ≈ 1.1e4: class 0 wins.
    bank = torch.tensor([[0.9, math.sqrt(1 - 0.81)], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert 2 * math.exp(0.6 / 0.07) < math.exp(0.9 / 0.07)
    assert knn_classifier(bank, labels, query, torch.tensor([0]), k=3).top1 == 100.0
    # With a high temperature the weights flatten and the majority (class 1) wins.
    assert knn_classifier(bank, labels, query, torch.tensor([0]), k=3, temperature=10.0).top1 == 0.0
    # k=1 keeps only the nearest neighbour; top-5 is capped at the number of classes.
    result = knn_classifier(bank, labels, query, torch.tensor([1]), k=1)
    assert result.top1 == 0.0 and result.top5 == 0.0


def test_fewer_than_100_queries_and_k_larger_than_bank() -> None:
    bank = torch.eye(3)
    result = knn_classifier(bank, torch.tensor([0, 1, 2]), torch.eye(3), torch.tensor([0, 1, 2]), k=20)
    assert result.k == 3 and result.top1 == 100.0


def test_ks_above_the_bank_are_capped_and_reported_once(tmp_path) -> None:
    train, val = _folder(tmp_path / "train", 0), _folder(tmp_path / "val", 1)
    results = run_knn(vit_tiny(16).eval(), train, val, ks=[2, 10, 20], runtime=Runtime(device="cpu", progress=False))
    assert [r.k for r in results] == [2, 6]


def test_linear_refuses_layouts_the_reference_cannot_build(tmp_path) -> None:
    model = vit_tiny(16)
    for options, message in (
        ({"n_last_blocks": 4, "avgpool": True}, "use n_last_blocks 1"),
        ({"n_last_blocks": 13}, r"1\.\.12"),
        ({"epochs": 0}, "at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            run_linear(model, tmp_path, tmp_path, **options)


def _folder(root, seed):
    rng = np.random.default_rng(seed)
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / name).mkdir(parents=True)
        for index in range(3):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


@pytest.mark.slow
def test_knn_cli_writes_json_and_caches(tmp_path, capsys, monkeypatch) -> None:
    train, val = _folder(tmp_path / "train", 0), _folder(tmp_path / "val", 1)
    out, cache = tmp_path / "knn.json", tmp_path / "cache"
    argv = [
        "knn",
        "--train",
        str(train),
        "--val",
        str(val),
        "--weights",
        "random:vit_tiny/16",
        "--nb-knn",
        "1",
        "3",
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["k"] for r in results] == [1, 3]
    assert (cache / "train.npy").is_file() and np.load(cache / "train.npy").shape == (6, 192)
    norms = np.linalg.norm(np.load(cache / "val.npy"), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    real_extract = knn_module._extract_sharded
    monkeypatch.setattr(knn_module, "_extract_sharded", lambda *args: pytest.fail("recomputed a valid cache"))
    assert main(argv) == 0  # second run reads the cache
    assert json.loads(out.read_text())["results"] == results
    # Other images with the same count, or other weights, make the cache stale: it is recomputed, not reused.
    recomputed = []
    monkeypatch.setattr(knn_module, "_extract_sharded", lambda *args: recomputed.append(1) or real_extract(*args))
    Image.new("RGB", (40, 40), (30, 30, 220)).save(train / "red" / "0.png")
    assert main(argv) == 0 and len(recomputed) == 1
    assert main([*argv[:6], "random:vit_tiny/8", *argv[7:]]) == 0
    assert len(recomputed) == 3
    # A rewrite that dies half-way leaves no fingerprint vouching for the arrays.
    monkeypatch.setattr(knn_module.np, "save", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        main(argv)
    assert not (cache / "train.json").exists()


@pytest.mark.slow
def test_linear_cli_learns_colours(tmp_path) -> None:
    train, val = _folder(tmp_path / "train", 0), _folder(tmp_path / "val", 1)
    argv = [
        "linear",
        "--train",
        str(train),
        "--val",
        str(val),
        "--weights",
        "random:vit_tiny/16",
        "--epochs",
        "3",
        "--lr",
        "0.5",
        "--batch-size",
        "6",
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "out" / "linear_results.json").read_text())
    assert len(results["history"]) == 3 and 0 <= results["best_top1"] <= 100
    weights = torch.load(tmp_path / "out" / "linear_weights.pth", weights_only=True)["state_dict"]
    assert weights["module.linear.weight"].shape == (2, 4 * 192)


def test_linear_features_avgpool_is_interleaved() -> None:
    from dino.eval.linear import linear_features
    from dino.models.vision_transformer import vit_tiny

    model = vit_tiny(16).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = linear_features(model, images, 1, avgpool=True)
        tokens = model.get_intermediate_layers(images, 1)[-1]
    assert features.shape == (1, 2 * 192)
    assert torch.allclose(features[0, 0::2], tokens[0, 0]) and torch.allclose(features[0, 1::2], tokens[0, 1:].mean(0))


def _knn_rank(rank: int, port: int, folder: str, result_dir: str) -> None:
    import os

    import torch.distributed as dist

    from dino.eval.knn import extract_folder_features
    from dino.models.vision_transformer import vit_tiny

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    features, labels, _ = extract_folder_features(vit_tiny(16), folder, runtime=Runtime(device="cpu", progress=False))
    torch.save({"features": features, "labels": labels}, f"{result_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_extraction_matches_single_process(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    from dino.eval.knn import extract_folder_features
    from dino.models.vision_transformer import vit_tiny

    folder = _folder(tmp_path / "train", 0)
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        port = handle.getsockname()[1]
    mp.spawn(_knn_rank, args=(port, str(folder), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single, labels, _ = extract_folder_features(vit_tiny(16), folder, runtime=Runtime(device="cpu", progress=False))
    for rank in range(2):
        shard = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(shard["features"], single, atol=1e-5)
        assert torch.equal(shard["labels"], labels)
