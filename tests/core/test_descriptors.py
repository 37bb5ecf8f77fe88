"""Pooling, whitening and global descriptors (SPEC §12, §13), checked against the reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dino.checkpoint import load_backbone, model_identity
from dino.checksums import state_dict_sha256
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe, describe, l2_normalize
from dino.search.pooling import gem, multiscale
from dino.search.whitening import Whitening


def test_gem_hand_computed() -> None:
    tokens = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])  # (B=1, N=2, D=2)
    pooled = gem(tokens, p=4)
    # Column 0: ((1⁴ + 3⁴) / 2)^(1/4); column 1: -2 is clamped to 1e-6, whose 4th power vanishes: (4⁴ / 2)^(1/4).
    expected = torch.tensor([[(82 / 2) ** 0.25, (256 / 2) ** 0.25]])
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(gem(tokens.abs(), p=1), tokens.abs().mean(dim=1))


def test_gem_matches_reference_avg_pool() -> None:
    grid = torch.randn(2, 3, 5, 8)  # (B, h, w, D)
    reference = F.avg_pool2d(grid.clamp(min=1e-6).permute(0, 3, 1, 2).pow(4), (3, 5)).pow(1.0 / 4).reshape(2, -1)
    torch.testing.assert_close(gem(grid), reference)
    with pytest.raises(ValueError, match="patch tokens"):
        gem(torch.randn(4, 8))


def test_multiscale_matches_reference_loop() -> None:
    model = load_backbone("random:vit_tiny/16")
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got = multiscale(model, image)
        # The reference's `multi_scale` (eval_image_retrieval.py), batch size 1.
        v = None
        for s in [1, 1 / 2 ** (1 / 2), 1 / 2]:
            inp = (
                image.clone() if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
            )
            feats = model(inp).clone()
            v = feats if v is None else v + feats
        v /= 3
        v /= v.norm()
    torch.testing.assert_close(got, v)


def _reference_pca(features: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """eval_copy_detection.py: centre with the mean, PCA(whit=0.5) trained on the uncentred FᵀF/n."""
    mean = features.mean(axis=0)
    cov = features.T @ features / features.shape[0]
    d, v = np.linalg.eigh(cov)
    eps = d.max() * 1e-5
    d[d < eps] = eps
    idx = np.argsort(d)[::-1]
    dvt = np.diag(1.0 / d[idx] ** 0.5) @ v[:, idx].T
    return (dvt @ (queries - mean).T).T


def test_whitening_matches_reference_eigendecomposition() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 3.0
    queries = rng.normal(size=(4, 6))
    whitening = Whitening.fit(features)
    # Eigenvectors are defined up to sign: compare the whitened vectors' absolute values row by row.
    np.testing.assert_allclose(
        np.abs(whitening.apply(queries)), np.abs(_reference_pca(features, queries)), rtol=1e-4, atol=1e-4
    )
    assert whitening.energy_kept == pytest.approx(1.0)


def test_centered_whitening_gives_identity_covariance() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + 2.0
    whitened = Whitening.fit(features, centered=True).apply(features)
    np.testing.assert_allclose(np.cov(whitened.T, bias=True), np.eye(5), atol=1e-3)
    reduced = Whitening.fit(features, dim=2, centered=True)
    assert reduced.apply(features).shape == (400, 2) and 0 < reduced.energy_kept < 1


def test_whitening_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(2)
    whitening = Whitening.fit(rng.normal(size=(20, 4)), metadata={"recipe": {"pooling": "cls"}})
    path = tmp_path / "whitening.npz"
    whitening.save(path)
    loaded = Whitening.load(path)
    np.testing.assert_array_equal(loaded.projection, whitening.projection)
    assert loaded.metadata == {"recipe": {"pooling": "cls"}}
    with pytest.raises(ValueError, match="expects features of shape"):
        loaded.apply(np.zeros((1, 3)))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a whitening file"):
        Whitening.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        Whitening.load(tmp_path / "missing.npz")


def test_copy_detection_descriptor_matches_reference() -> None:
    model = load_backbone("random:vit_tiny/16")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = describe(model, images, DescriptorRecipe.copy_detection(size=64))
        # eval_copy_detection.py's extract_features body.
        output = model.get_intermediate_layers(images, n=1)[0].clone()
        cls = output[:, 0, :]
        b, h, w, d = 2, 4, 4, output.shape[-1]
        output = output[:, 1:].reshape(b, h, w, d).clamp(min=1e-6).permute(0, 3, 1, 2)
        output = F.avg_pool2d(output.pow(4), (h, w)).pow(1.0 / 4).reshape(b, -1)
        expected = torch.cat((cls, output), dim=1)
    torch.testing.assert_close(got, expected)
    assert DescriptorRecipe.copy_detection().dim(192) == 384


def test_recipe_round_trip_and_validation() -> None:
    recipe = DescriptorRecipe.retrieval(size=512, multiscale=True)
    assert DescriptorRecipe.from_dict(recipe.as_dict()) == recipe
    with pytest.raises(ValueError, match="unknown pooling"):
        DescriptorRecipe(pooling="max")  # type: ignore[arg-type]


def test_extractor_keeps_order_and_whitens(tmp_path) -> None:
    rng = np.random.default_rng(3)
    paths = []
    for index, size in enumerate([(64, 48), (48, 80), (64, 64), (64, 48)]):
        path = tmp_path / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    model = load_backbone("random:vit_tiny/16")
    recipe = DescriptorRecipe.retrieval(size=64)
    extractor = DescriptorExtractor(
        model, recipe, runtime=Runtime(device="cpu", dtype="fp32", batch_size=3, progress=False)
    )
    raw = extractor.extract_raw(paths)
    with torch.no_grad():
        direct = [describe(model, recipe.transform()(Image.open(p).convert("RGB"))[None], recipe)[0] for p in paths]
    np.testing.assert_allclose(raw, torch.stack(direct).numpy(), atol=1e-5)
    final = extractor.extract(paths)
    np.testing.assert_allclose(np.linalg.norm(final, axis=1), 1.0, rtol=1e-5)
    whitening = Whitening.fit(raw, dim=3)
    whitened = DescriptorExtractor(model, recipe, whitening, Runtime(device="cpu", dtype="fp32", progress=False))
    assert whitened.dim == 3
    np.testing.assert_allclose(whitened.extract(paths), l2_normalize(whitening.apply(raw)), atol=1e-5)
    with pytest.raises(ValueError, match="fitted on 3-d"):
        DescriptorExtractor(model, recipe, Whitening.fit(rng.normal(size=(10, 3))), Runtime(device="cpu"))


def test_state_dict_sha256_tracks_the_weights() -> None:
    model = load_backbone("random:vit_tiny/16")
    same = load_backbone("random:vit_tiny/16")
    assert state_dict_sha256(model) == state_dict_sha256(same)
    with torch.no_grad():
        same.norm.bias[0] += 1e-3
    assert state_dict_sha256(model) != state_dict_sha256(same)
    identity = model_identity(model)
    assert identity == {
        "weights": "random:vit_tiny/16",
        "provenance": "random initialisation (seed 0), no learned features",
        "checkpoint_key": "teacher",
        "arch": "vit_tiny",
        "patch_size": 16,
        "num_register_tokens": 0,
        "embed_dim": 192,
        "sha256": state_dict_sha256(model),
    }
