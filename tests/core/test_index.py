"""dino.index: FAISS image index with a manifest — build, search, save/load, update, resume, shards, errors."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

import dino.index as index_module
from dino.checkpoint import CheckpointError, load_backbone
from dino.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.index import (
    Hit,
    ImageIndex,
    IndexMismatchError,
    UpdateReport,
    build_index,
    create_faiss_index,
    describe_shard,
    partial_results_path,
    search_images,
    update_index,
)
from dino.whitening import Whitening

QUIET = {"progress": False, "batch_size": 4}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model():
    return load_backbone("random:vit_tiny/16")


@pytest.fixture
def images(tmp_path: Path, make_images) -> list[Path]:
    return make_images(tmp_path / "images", 6)


def _exact_ranking(model, recipe, database, queries, whitening=None) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference (SPEC §13): sim = db @ qᵀ of L2-normalised descriptors, argsort(−sim)."""
    db = DescriptorExtractor(model, recipe, **QUIET).extract_raw(database)
    q = DescriptorExtractor(model, recipe, **QUIET).extract_raw(queries)
    if whitening is not None:
        db, q = whitening.apply(db), whitening.apply(q)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sim = q @ db.T
    order = np.argsort(-sim, axis=1, kind="stable")
    return order, np.take_along_axis(sim, order, axis=1)


def test_search_matches_reference_matmul(model, images) -> None:
    recipe = DescriptorRecipe.retrieval()
    index = build_index(images, model, recipe, **QUIET)
    assert len(index) == 6 and index.paths == [str(p) for p in images] and index.dim == model.embed_dim
    hits = search_images(index, images[:3], model, k=4, **QUIET)
    order, sims = _exact_ranking(model, recipe, images, images[:3])
    for row, query_hits in enumerate(hits):
        assert [hit.rank for hit in query_hits] == [0, 1, 2, 3]
        assert [hit.path for hit in query_hits] == [str(images[i]) for i in order[row, :4]]
        np.testing.assert_allclose([hit.score for hit in query_hits], sims[row, :4], atol=1e-5)
        assert query_hits[0] == Hit(str(images[row]), pytest.approx(1.0, abs=1e-5), 0)
    # k beyond the collection size returns the whole collection.
    scores, paths = index.search(index.vectors()[:1], k=50)
    assert scores.shape == (1, 6) and len(paths[0]) == 6


def test_manifest_contents(model, images) -> None:
    index = build_index(images, model, DescriptorRecipe.retrieval(size=64), **QUIET)
    manifest = index.manifest
    assert manifest["format_version"] == 1 and manifest["metric"] == "inner_product"
    assert manifest["factory"] == "Flat" and manifest["dim"] == 192 and manifest["whitening"] is None
    assert manifest["backbone"]["arch"] == "vit_tiny" and len(manifest["backbone"]["sha256"]) == 64
    assert manifest["recipe"] == DescriptorRecipe.retrieval(size=64).as_dict()
    assert index.recipe == DescriptorRecipe.retrieval(size=64)
    import hashlib

    first = manifest["files"][str(images[0])]
    assert first == {"sha256": hashlib.sha256(images[0].read_bytes()).hexdigest(), "id": 0}
    json.dumps(manifest)  # serialisable as is


def test_save_load_round_trip_with_whitening(make_images, model, images, tmp_path) -> None:
    recipe = DescriptorRecipe(pooling="cls+gem", size=64)
    fitting = make_images(tmp_path / "whitening-set", 40, seed=1)
    raw = DescriptorExtractor(model, recipe, **QUIET).extract_raw(fitting)
    whitening = Whitening.fit(raw, dim=32)
    index = build_index(images, model, recipe, whitening=whitening, out=tmp_path / "idx", **QUIET)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.faiss", "manifest.json", "whitening.npz"]
    assert not partial_results_path(tmp_path / "idx").exists()

    loaded = ImageIndex.load(tmp_path / "idx")
    assert loaded.manifest == index.manifest and loaded.paths == index.paths and loaded.dim == 32
    np.testing.assert_array_equal(loaded.whitening.projection, whitening.projection)
    np.testing.assert_array_equal(loaded.vectors(), index.vectors())
    plain = faiss.read_index(str(tmp_path / "idx" / "index.faiss"))  # plain FAISS reads it
    assert plain.ntotal == 6 and plain.d == 32

    # Queries go through the stored whitening: same ranking as whitening by hand.
    hits = search_images(loaded, images[4:], model, k=6, **QUIET)
    order, sims = _exact_ranking(model, recipe, images, images[4:], whitening)
    assert [[h.path for h in row] for row in hits] == [[str(images[i]) for i in row] for row in order]
    np.testing.assert_allclose([[h.score for h in row] for row in hits], sims, atol=1e-4)

    Whitening.fit(raw[:20], dim=32).save(tmp_path / "idx" / "whitening.npz")  # another whitening swapped in
    with pytest.raises(ValueError, match="whitening.npz does not match the checksum"):
        ImageIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "whitening.npz").unlink()
    with pytest.raises(ValueError, match="idx: manifest.json names a whitening but whitening.npz is missing"):
        ImageIndex.load(tmp_path / "idx")


def test_save_replaces_previous_index_and_refuses_other_folders(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    build_index(images[:3], model, DescriptorRecipe.retrieval(), out=out, **QUIET)
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, **QUIET)
    assert len(ImageIndex.load(out)) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging or backup left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes: already exists and is not an empty folder"):
        ImageIndex.load(out).save(tmp_path / "notes")
    # build_index refuses it before describing anything.
    with pytest.raises(FileExistsError, match="notes: already exists and is not an empty folder"):
        build_index(images, model, DescriptorRecipe.retrieval(), out=tmp_path / "notes", progress=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    assert not partial_results_path(tmp_path / "notes").exists()


def test_interrupted_swap_is_recovered(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, **QUIET)
    out.rename(tmp_path / ".idx.old-deadbeef")  # a save that died between its two renames
    assert len(ImageIndex.load(out)) == 6


def test_corrupt_and_foreign_indexes_give_clear_errors(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, **QUIET)
    manifest = json.loads((out / "manifest.json").read_text())

    with pytest.raises(FileNotFoundError, match="no such index folder"):
        ImageIndex.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="missing: no such index folder"):  # every load error is a ValueError
        ImageIndex.load(tmp_path / "missing")
    (tmp_path / "foreign").mkdir()
    with pytest.raises(ValueError, match="foreign: not a dino image index"):
        ImageIndex.load(tmp_path / "foreign")

    (out / "manifest.json").write_text("{ not json")
    with pytest.raises(ValueError, match="manifest.json: damaged manifest"):
        ImageIndex.load(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        ImageIndex.load(out)
    torn = {**manifest, "files": dict(list(manifest["files"].items())[:5])}
    (out / "manifest.json").write_text(json.dumps(torn))
    with pytest.raises(ValueError, match="torn"):
        ImageIndex.load(out)

    (out / "manifest.json").write_text(json.dumps(manifest))
    data = (out / "index.faiss").read_bytes()
    (out / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"idx: index.faiss is missing or damaged"):
        ImageIndex.load(out)


def test_other_backbone_or_recipe_is_refused(model, images, tmp_path) -> None:
    index = build_index(images, model, DescriptorRecipe.retrieval(), out=tmp_path / "idx", **QUIET)
    other = load_backbone("random:vit_tiny/16")
    with torch.no_grad():
        other.blocks[0].mlp.fc1.bias.add_(0.5)
    with pytest.raises(IndexMismatchError, match=r"(?s)idx was built with.*backbone sha256"):
        search_images(index, images[:1], other, **QUIET)
    with pytest.raises(IndexMismatchError, match="backbone embed_dim: index 192, given 384"):
        index.check_compatible(load_backbone("random:vit_small/16"))
    with pytest.raises(IndexMismatchError, match="recipe pooling: index 'cls', given 'gem'"):
        index.check_compatible(model, recipe=DescriptorRecipe(pooling="gem"))
    with pytest.raises(IndexMismatchError, match="whitening: index None"):
        index.check_compatible(model, whitening=Whitening.fit(np.random.rand(10, 192)))
    index.check_compatible(model, recipe=DescriptorRecipe.retrieval(), whitening=None)  # the same: accepted
    with pytest.raises(IndexMismatchError):
        update_index(index, images, other, **QUIET)


def test_update_adds_changes_and_removes_without_reextracting(
    make_images, model, images, tmp_path, monkeypatch
) -> None:
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    index = build_index(images, model, recipe, out=out, **QUIET)
    before = dict(zip(index.paths, index.vectors(), strict=True))

    images[1].unlink()
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(images[2])  # content changed
    new = make_images(images[0].parent, 2, seed=5, start=10)
    current = sorted(images[0].parent.iterdir())

    described: list[str] = []
    original = DescriptorExtractor.extract_raw

    def spy(self, batch):
        described.extend(map(str, batch))
        return original(self, batch)

    monkeypatch.setattr(DescriptorExtractor, "extract_raw", spy)
    report = update_index(index, current, model, **QUIET)
    assert report == UpdateReport(added=2, updated=1, removed=1, unchanged=4)
    assert sorted(described) == sorted(map(str, [images[2], *new]))
    index.save(out)

    reloaded = ImageIndex.load(out)
    assert sorted(reloaded.paths) == sorted(map(str, current))
    vectors = dict(zip(reloaded.paths, reloaded.vectors(), strict=True))
    for unchanged in (images[0], images[3], images[4], images[5]):
        np.testing.assert_array_equal(vectors[str(unchanged)], before[str(unchanged)])
    # The updated index ranks exactly like one built from scratch on the current folder.
    order, _ = _exact_ranking(model, recipe, current, current[:2])
    hits = search_images(reloaded, current[:2], model, k=len(current), **QUIET)
    assert [[h.path for h in row] for row in hits] == [[str(current[i]) for i in row] for row in order]

    described.clear()
    assert update_index(reloaded, current, model, **QUIET) == UpdateReport(0, 0, 0, 7)
    assert described == []


def test_update_keeps_trained_ivf(make_images, model, tmp_path) -> None:
    images = make_images(tmp_path / "images", 12)
    index = build_index(images, model, DescriptorRecipe.retrieval(size=32), factory="IVF2,Flat", **QUIET)
    centroids = faiss.extract_index_ivf(index.faiss_index).quantizer.reconstruct_n(0, 2)
    report = update_index(index, images[:8], model, **QUIET)
    assert report == UpdateReport(0, 0, 4, 8) and len(index) == 8
    np.testing.assert_array_equal(faiss.extract_index_ivf(index.faiss_index).quantizer.reconstruct_n(0, 2), centroids)
    hits = search_images(index, images[:1], model, k=1, params="nprobe=2", **QUIET)
    assert hits[0][0].path == str(images[0])


def test_factories_and_their_errors() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = create_faiss_index(vectors)
    for factory in ("HNSW16", "IVF4,Flat"):
        approx = create_faiss_index(vectors, factory)
        assert approx.ntotal == 300 and approx.metric_type == faiss.METRIC_INNER_PRODUCT
        # Every index scores by inner product: the self-match scores 1.
        scores, ids = approx.search(vectors[:5], 1)
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
        np.testing.assert_array_equal(ids[:, 0], np.arange(5))
    np.testing.assert_allclose(
        exact.search(vectors[:2], 3)[0], np.sort(vectors[:2] @ vectors.T, axis=1)[:, ::-1][:, :3], atol=1e-6
    )
    with pytest.raises(ValueError, match="invalid FAISS factory string 'Bogus'"):
        create_faiss_index(vectors, "Bogus")
    with pytest.raises(ValueError, match="cannot train FAISS index 'IVF1024,Flat' on 300 vectors"):
        create_faiss_index(vectors, "IVF1024,Flat")


def test_interrupted_build_resumes_from_partial_results(model, images, tmp_path, monkeypatch) -> None:
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    reference = build_index(images, model, recipe, **QUIET)

    original = DescriptorExtractor.iter_raw
    seen: list[int] = []

    def dies_after_two_batches(self, todo):
        for batch_number, item in enumerate(original(self, todo)):
            if batch_number == 2:
                raise KeyboardInterrupt
            seen.extend(item[0])
            yield item

    monkeypatch.setattr(DescriptorExtractor, "iter_raw", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        build_index(images, model, recipe, out=out, checkpoint_every=1, **QUIET)
    assert not out.exists() and len(list(partial_results_path(out).glob("chunk-*.npz"))) == 2
    done_before = len(seen)
    assert 0 < done_before < 6

    counted: list[str] = []

    def counting(self, todo):
        counted.extend(map(str, todo))
        yield from original(self, todo)

    monkeypatch.setattr(DescriptorExtractor, "iter_raw", counting)
    resumed = build_index(images, model, recipe, out=out, checkpoint_every=1, **QUIET)
    assert len(counted) == 6 - done_before  # only the images not described before the interruption
    assert resumed.paths == reference.paths and resumed.manifest["files"] == reference.manifest["files"]
    np.testing.assert_allclose(resumed.vectors(), reference.vectors(), atol=1e-6)
    assert not partial_results_path(out).exists()


def test_a_build_that_fails_before_describing_leaves_nothing(model, images, tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "icon.png")
    out = tmp_path / "idx"
    with pytest.raises(ValueError, match="icon.png: too small"):
        build_index([tmp_path / "icon.png", *images], model, DescriptorRecipe.retrieval(), out=out, **QUIET)
    assert not out.exists() and not partial_results_path(out).exists()
    # So another build into the same place is not refused as a stale partial one.
    assert len(build_index(images, model, DescriptorRecipe(pooling="gem"), out=out, **QUIET)) == len(images)


def test_index_reloads_its_backbone_from_anywhere(images, tmp_path, monkeypatch) -> None:
    student = load_backbone("random:vit_tiny/16")
    torch.save({"teacher": {}, "student": student.state_dict()}, tmp_path / "run.pth")
    monkeypatch.chdir(tmp_path)
    built_with = load_backbone("run.pth", checkpoint_key="student")
    build_index(images, built_with, DescriptorRecipe.retrieval(), out=tmp_path / "idx", **QUIET)
    monkeypatch.chdir(images[0].parent)
    reloaded = ImageIndex.load(tmp_path / "idx").load_backbone()
    assert reloaded.weights_source == str(tmp_path / "run.pth") and reloaded.checkpoint_key == "student"
    ImageIndex.load(tmp_path / "idx").check_compatible(reloaded)
    # An index written before manifests recorded the key takes the one the caller gives.
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["backbone"]["checkpoint_key"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no ViT backbone found under key 'teacher'"):
        ImageIndex.load(tmp_path / "idx").load_backbone()
    assert ImageIndex.load(tmp_path / "idx").load_backbone(checkpoint_key="student").checkpoint_key == "student"


def test_stale_partial_results_are_refused(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    describe_shard(images, model, DescriptorRecipe.retrieval(), out, rank=0, world_size=3, **QUIET)
    with pytest.raises(ValueError, match=r"\.idx\.partial: partial descriptors .* delete this folder"):
        build_index(images, model, DescriptorRecipe(pooling="gem"), out=out, **QUIET)


def test_shards_merge_into_one_index(model, images, tmp_path, monkeypatch) -> None:
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    sizes = [describe_shard(images, model, recipe, out, rank, 2, **QUIET) for rank in range(2)]
    assert sizes == [3, 3]
    monkeypatch.setattr(
        index_module.DescriptorExtractor, "iter_raw", lambda self, todo: pytest.fail(f"re-described {todo}")
    )
    merged = build_index(images, model, recipe, out=out, **QUIET)
    monkeypatch.undo()
    reference = build_index(images, model, recipe, **QUIET)
    assert merged.paths == reference.paths
    np.testing.assert_allclose(merged.vectors(), reference.vectors(), atol=1e-6)
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        describe_shard(images, model, recipe, out, rank=2, world_size=2)


def test_bad_inputs(model, images) -> None:
    with pytest.raises(ValueError, match="no images to index"):
        build_index([], model, DescriptorRecipe.retrieval())
    index = build_index(images, model, DescriptorRecipe.retrieval(), **QUIET)
    with pytest.raises(ValueError, match="dimension 8, the index holds 192-d"):
        index.search(np.zeros((1, 8), np.float32), 3)
    with pytest.raises(ValueError, match="cannot set search parameters"):
        index.search(index.vectors()[:1], 3, params="nprobe=4")
    with pytest.raises(ValueError, match="cannot be empty"):
        update_index(index, [], model)


def test_approximate_search_may_return_fewer_results(make_images, model, tmp_path) -> None:
    images = make_images(tmp_path / "images", 12)
    index = build_index(images, model, DescriptorRecipe.retrieval(), factory="IVF4,Flat", **QUIET)
    sizes = faiss.extract_index_ivf(index.faiss_index).invlists
    smallest = min(sizes.list_size(i) for i in range(4))
    # nprobe=1 visits one inverted list: a query finds at most that list's images, the rest are left out.
    scores, paths = index.search(index.vectors(), k=12, params="nprobe=1")
    assert scores.shape == (12, 12)
    for row_scores, row_paths in zip(scores, paths, strict=True):
        assert smallest <= len(row_paths) < 12
        assert np.isfinite(row_scores[: len(row_paths)]).all() and np.isneginf(row_scores[len(row_paths) :]).all()
    hits = search_images(index, images[:1], model, k=12, **QUIET)
    assert len(hits[0]) == len(paths[0])


def test_gpu_search_falls_back_to_cpu_for_types_without_gpu_version(model, images, monkeypatch) -> None:
    index = build_index(images, model, DescriptorRecipe.retrieval(), **QUIET)

    def no_gpu_version(cpu_index):
        raise RuntimeError("Error in index_cpu_to_gpu: this index type is not implemented on GPU")

    monkeypatch.setattr(index_module.faiss, "index_cpu_to_all_gpus", no_gpu_version, raising=False)
    with pytest.warns(UserWarning, match="searching on the CPU"):
        fallback = ImageIndex(index.faiss_index, index.manifest, gpu=True)
    assert fallback.search(index.vectors()[:1], 1)[1] == [[index.paths[0]]]
