"""dino.search.index: FAISS image index with a manifest — build, search, save/load, update, resume, shards, errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

import dino.search.index as index_module
from dino.checkpoint import CheckpointError, load_backbone
from dino.data.io import ImageLoadError
from dino.runtime import Runtime
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.search.index import (
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
from dino.search.whitening import Whitening
from tests.core.test_bad_inputs import bomb_png

QUIET = Runtime(progress=False, batch_size=4)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model():
    return load_backbone("random:vit_tiny/16")


@pytest.fixture
def images(tmp_path: Path, make_images) -> list[Path]:
    return make_images(tmp_path / "images", 6)


def write_bad_images(folder: Path) -> dict[Path, str]:
    """Files the retrieval descriptor cannot use, each with what its skip reason says."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.jpg").write_bytes(b"")
    bomb_png(folder / "bomb.png")
    Image.new("RGB", (10000, 20), "white").save(folder / "strip.png")  # a 224×1 thumbnail: under one patch
    return {
        folder / "corrupt.jpg": "cannot decode image",
        folder / "empty.jpg": "not an image file",
        folder / "bomb.png": "too many pixels to decode safely",
        folder / "strip.png": "too small, 10000×20 pixels",
    }


def dead_pid() -> int:
    """The pid of a process that has exited."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def _exact_ranking(model, recipe, database, queries, whitening=None) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference (SPEC §13): sim = db @ qᵀ of L2-normalised descriptors, argsort(−sim)."""
    db = DescriptorExtractor(model, recipe, runtime=QUIET).extract_raw(database)
    q = DescriptorExtractor(model, recipe, runtime=QUIET).extract_raw(queries)
    if whitening is not None:
        db, q = whitening.apply(db), whitening.apply(q)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sim = q @ db.T
    order = np.argsort(-sim, axis=1, kind="stable")
    return order, np.take_along_axis(sim, order, axis=1)


def test_search_matches_reference_matmul(model, images) -> None:
    recipe = DescriptorRecipe.retrieval()
    index = build_index(images, model, recipe, runtime=QUIET)
    assert len(index) == 6 and index.paths == [str(p) for p in images] and index.dim == model.embed_dim
    hits = search_images(index, images[:3], model, k=4, runtime=QUIET)
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
    index = build_index(images, model, DescriptorRecipe.retrieval(size=64), runtime=QUIET)
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
    raw = DescriptorExtractor(model, recipe, runtime=QUIET).extract_raw(fitting)
    whitening = Whitening.fit(raw, dim=32)
    index = build_index(images, model, recipe, whitening=whitening, out=tmp_path / "idx", runtime=QUIET)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.faiss", "manifest.json", "whitening.npz"]
    assert not partial_results_path(tmp_path / "idx").exists()

    loaded = ImageIndex.load(tmp_path / "idx")
    assert loaded.manifest == index.manifest and loaded.paths == index.paths and loaded.dim == 32
    np.testing.assert_array_equal(loaded.whitening.projection, whitening.projection)
    np.testing.assert_array_equal(loaded.vectors(), index.vectors())
    plain = faiss.read_index(str(tmp_path / "idx" / "index.faiss"))  # plain FAISS reads it
    assert plain.ntotal == 6 and plain.d == 32

    # Queries go through the stored whitening: same ranking as whitening by hand.
    hits = search_images(loaded, images[4:], model, k=6, runtime=QUIET)
    order, sims = _exact_ranking(model, recipe, images, images[4:], whitening)
    assert [[h.path for h in row] for row in hits] == [[str(images[i]) for i in row] for row in order]
    np.testing.assert_allclose([[h.score for h in row] for row in hits], sims, atol=1e-4)

    Whitening.fit(raw[:20], dim=32).save(tmp_path / "idx" / "whitening.npz")  # another whitening swapped in
    with pytest.raises(ValueError, match="idx/whitening.npz: its sha256 differs from the one manifest.json recorded"):
        ImageIndex.load(tmp_path / "idx")
    # A manifest written before file checksums: the whitening's own checksum still catches it.
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del manifest["checksums"]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="whitening.npz does not match the checksum"):
        ImageIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "whitening.npz").unlink()
    with pytest.raises(ValueError, match="idx: manifest.json names a whitening but whitening.npz is missing"):
        ImageIndex.load(tmp_path / "idx")


def test_save_replaces_previous_index_and_refuses_other_folders(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    build_index(images[:3], model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    assert len(ImageIndex.load(out)) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging or backup left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes: already exists and is not an empty folder"):
        ImageIndex.load(out).save(tmp_path / "notes")
    # build_index refuses it before describing anything.
    with pytest.raises(FileExistsError, match="notes: already exists and is not an empty folder"):
        build_index(images, model, DescriptorRecipe.retrieval(), out=tmp_path / "notes", runtime=QUIET)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    assert not partial_results_path(tmp_path / "notes").exists()


def test_interrupted_swap_is_recovered(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    out.rename(tmp_path / ".idx.old-deadbeef")  # a save that died between its two renames
    assert len(ImageIndex.load(out)) == 6


def test_corrupt_and_foreign_indexes_give_clear_errors(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
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
    with pytest.raises(ValueError, match=r"idx/index.faiss: its sha256 differs"):
        ImageIndex.load(out)
    del manifest["checksums"]  # as written before checksums: FAISS finds the damage
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"idx: index.faiss is missing or damaged"):
        ImageIndex.load(out)


def _damage(manifest: dict, field: str, value) -> dict:
    return {**manifest, field: value}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: _damage(m, "files", []), "files must map each path"),
        (lambda m: _damage(m, "files", {path: 5 for path in m["files"]}), "files must map each path"),
        (lambda m: _damage(m, "files", {path: {"id": e["id"]} for path, e in m["files"].items()}), "files must map"),
        (lambda m: _damage(m, "backbone", None), "backbone must hold weights, arch"),
        (lambda m: _damage(m, "dim", "192"), "dim must be a positive integer, not '192'"),
        (lambda m: _damage(m, "recipe", [1]), "recipe must be an object"),
        (lambda m: _damage(m, "recipe", {**m["recipe"], "pooling": "max"}), "recipe: unknown pooling 'max'"),
        (lambda m: _damage(m, "recipe", {**m["recipe"], "size": "big"}), "recipe: "),
        (lambda m: _damage(m, "checksums", 5), "skipped and checksums must map names to text"),
        (lambda m: _damage(m, "whitening", 7), "whitening must be a sha256 or null"),
    ],
)
def test_a_damaged_manifest_is_one_error_naming_it(model, images, tmp_path, damage, message) -> None:
    """Fields of the wrong type used to escape as AttributeError/TypeError tracebacks at load or first use."""
    out = tmp_path / "idx"
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    manifest_file = out / "manifest.json"
    manifest_file.write_text(json.dumps(damage(json.loads(manifest_file.read_text()))))
    with pytest.raises(ValueError, match=r"idx/manifest.json: damaged manifest \(") as error:
        ImageIndex.load(out)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_index_file_swapped_for_another_of_the_same_shape_is_refused(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    index = build_index(images, model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checksums"] == {"index.faiss": hashlib.sha256((out / "index.faiss").read_bytes()).hexdigest()}
    assert ImageIndex.load(out).manifest == index.manifest  # the checksums are part of the saved index's manifest
    # Another index of as many vectors of the same dimension: FAISS reads it, the ids point to other images.
    other = faiss.IndexFlatIP(index.dim)
    other.add(np.roll(index.vectors(), 1, axis=0))
    faiss.write_index(other, str(out / "index.faiss"))
    with pytest.raises(ValueError, match=r"idx/index.faiss: its sha256 differs .* was replaced or damaged since"):
        ImageIndex.load(out)
    (out / "index.faiss").unlink()
    with pytest.raises(ValueError, match=r"idx/index.faiss: missing from the index folder"):
        ImageIndex.load(out)
    # Indexes saved before checksums existed still load (and are not verified).
    faiss.write_index(other, str(out / "index.faiss"))
    del manifest["checksums"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    np.testing.assert_array_equal(ImageIndex.load(out).vectors(), other.reconstruct_n(0, other.ntotal))


def test_other_backbone_or_recipe_is_refused(model, images, tmp_path) -> None:
    index = build_index(images, model, DescriptorRecipe.retrieval(), out=tmp_path / "idx", runtime=QUIET)
    other = load_backbone("random:vit_tiny/16")
    with torch.no_grad():
        other.blocks[0].mlp.fc1.bias.add_(0.5)
    one_line = r"idx was built with .*\(backbone sha256: index '[0-9a-f]{12}…', given '[0-9a-f]{12}…'\); rebuild it"
    with pytest.raises(IndexMismatchError, match=one_line):
        search_images(index, images[:1], other, runtime=QUIET)
    with pytest.raises(IndexMismatchError, match="backbone embed_dim: index 192, given 384"):
        index.check_compatible(load_backbone("random:vit_small/16"))
    with pytest.raises(IndexMismatchError, match="recipe pooling: index 'cls', given 'gem'"):
        index.check_compatible(model, recipe=DescriptorRecipe(pooling="gem"))
    with pytest.raises(IndexMismatchError, match="whitening: index None"):
        index.check_compatible(model, whitening=Whitening.fit(np.random.rand(10, 192)))
    index.check_compatible(model, recipe=DescriptorRecipe.retrieval(), whitening=None)  # the same: accepted
    with pytest.raises(IndexMismatchError):
        update_index(index, images, other, runtime=QUIET)


def test_update_adds_changes_and_removes_without_reextracting(
    make_images, model, images, tmp_path, monkeypatch
) -> None:
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    index = build_index(images, model, recipe, out=out, runtime=QUIET)
    before = dict(zip(index.paths, index.vectors(), strict=True))

    images[1].unlink()
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(images[2])  # content changed
    new = make_images(images[0].parent, 2, seed=5, start=10)
    current = sorted(images[0].parent.iterdir())

    described: list[str] = []
    original = DescriptorExtractor.iter_raw

    def spy(self, batch):
        described.extend(map(str, batch))
        return original(self, batch)

    monkeypatch.setattr(DescriptorExtractor, "iter_raw", spy)
    report = update_index(index, current, model, runtime=QUIET)
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
    hits = search_images(reloaded, current[:2], model, k=len(current), runtime=QUIET)
    assert [[h.path for h in row] for row in hits] == [[str(current[i]) for i in row] for row in order]

    described.clear()
    assert update_index(reloaded, current, model, runtime=QUIET) == UpdateReport(0, 0, 0, 7)
    assert described == []


def test_update_keeps_trained_ivf(make_images, model, tmp_path) -> None:
    images = make_images(tmp_path / "images", 12)
    index = build_index(images, model, DescriptorRecipe.retrieval(size=32), factory="IVF2,Flat", runtime=QUIET)
    centroids = faiss.extract_index_ivf(index.faiss_index).quantizer.reconstruct_n(0, 2)
    report = update_index(index, images[:8], model, runtime=QUIET)
    assert report == UpdateReport(0, 0, 4, 8) and len(index) == 8
    np.testing.assert_array_equal(faiss.extract_index_ivf(index.faiss_index).quantizer.reconstruct_n(0, 2), centroids)
    hits = search_images(index, images[:1], model, k=1, params="nprobe=2", runtime=QUIET)
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
    with pytest.raises(ValueError, match="cannot train FAISS index 'IVF1024,Flat' on 300 vectors") as error:
        create_faiss_index(vectors, "IVF1024,Flat")
    # FAISS's own words, without its C++ function signature and source line.
    assert "Number of training points (300) should be at least as large as number of clusters (1024)" in str(
        error.value
    )
    assert "Error in" not in str(error.value) and ".cpp" not in str(error.value)


def test_interrupted_build_resumes_from_partial_results(model, images, tmp_path, monkeypatch) -> None:
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    reference = build_index(images, model, recipe, runtime=QUIET)

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
        build_index(images, model, recipe, out=out, checkpoint_every=1, runtime=QUIET)
    assert not out.exists() and len(list(partial_results_path(out).glob("chunk-*.npz"))) == 2
    done_before = len(seen)
    assert 0 < done_before < 6

    counted: list[str] = []

    def counting(self, todo):
        counted.extend(map(str, todo))
        yield from original(self, todo)

    monkeypatch.setattr(DescriptorExtractor, "iter_raw", counting)
    resumed = build_index(images, model, recipe, out=out, checkpoint_every=1, runtime=QUIET)
    assert len(counted) == 6 - done_before  # only the images not described before the interruption
    assert resumed.paths == reference.paths and resumed.manifest["files"] == reference.manifest["files"]
    np.testing.assert_allclose(resumed.vectors(), reference.vectors(), atol=1e-6)
    assert not partial_results_path(out).exists()


def test_a_build_that_fails_before_describing_leaves_nothing(model, images, tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "icon.png")
    out = tmp_path / "idx"
    with pytest.raises(ValueError, match="icon.png: too small"):
        build_index([tmp_path / "icon.png", *images], model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    assert not out.exists() and not partial_results_path(out).exists()
    # So another build into the same place is not refused as a stale partial one.
    assert len(build_index(images, model, DescriptorRecipe(pooling="gem"), out=out, runtime=QUIET)) == len(images)


def test_index_reloads_its_backbone_from_anywhere(images, tmp_path, monkeypatch) -> None:
    student = load_backbone("random:vit_tiny/16")
    torch.save({"teacher": {}, "student": student.state_dict()}, tmp_path / "run.pth")
    monkeypatch.chdir(tmp_path)
    built_with = load_backbone("run.pth", checkpoint_key="student")
    build_index(images, built_with, DescriptorRecipe.retrieval(), out=tmp_path / "idx", runtime=QUIET)
    monkeypatch.chdir(images[0].parent)
    reloaded = ImageIndex.load(tmp_path / "idx").load_backbone()
    assert reloaded.provenance.source == str(tmp_path / "run.pth") and reloaded.provenance.checkpoint_key == "student"
    ImageIndex.load(tmp_path / "idx").check_compatible(reloaded)
    # An index written before manifests recorded the key takes the one the caller gives.
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["backbone"]["checkpoint_key"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no ViT backbone found under key 'teacher'"):
        ImageIndex.load(tmp_path / "idx").load_backbone()
    reloaded = ImageIndex.load(tmp_path / "idx").load_backbone(checkpoint_key="student")
    assert reloaded.provenance.checkpoint_key == "student"


def test_stale_partial_results_are_refused(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    describe_shard(images, model, DescriptorRecipe.retrieval(), out, rank=0, world_size=3, runtime=QUIET)
    with pytest.raises(ValueError, match=r"\.idx\.partial: partial descriptors .* delete this folder"):
        build_index(images, model, DescriptorRecipe(pooling="gem"), out=out, runtime=QUIET)


def test_shards_merge_into_one_index(model, images, tmp_path, monkeypatch) -> None:
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    sizes = [describe_shard(images, model, recipe, out, rank, 2, runtime=QUIET) for rank in range(2)]
    assert sizes == [3, 3]
    monkeypatch.setattr(
        index_module.DescriptorExtractor, "iter_raw", lambda self, todo: pytest.fail(f"re-described {todo}")
    )
    merged = build_index(images, model, recipe, out=out, runtime=QUIET)
    monkeypatch.undo()
    reference = build_index(images, model, recipe, runtime=QUIET)
    assert merged.paths == reference.paths
    np.testing.assert_allclose(merged.vectors(), reference.vectors(), atol=1e-6)
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        describe_shard(images, model, recipe, out, rank=2, world_size=2)


def test_bad_inputs(model, images) -> None:
    with pytest.raises(ValueError, match="no images to index"):
        build_index([], model, DescriptorRecipe.retrieval())
    index = build_index(images, model, DescriptorRecipe.retrieval(), runtime=QUIET)
    with pytest.raises(ValueError, match="dimension 8, the index holds 192-d"):
        index.search(np.zeros((1, 8), np.float32), 3)
    with pytest.raises(ValueError, match="cannot set search parameters"):
        index.search(index.vectors()[:1], 3, params="nprobe=4")
    with pytest.raises(ValueError, match="cannot be empty"):
        update_index(index, [], model)


def test_approximate_search_may_return_fewer_results(make_images, model, tmp_path) -> None:
    images = make_images(tmp_path / "images", 12)
    index = build_index(images, model, DescriptorRecipe.retrieval(), factory="IVF4,Flat", runtime=QUIET)
    sizes = faiss.extract_index_ivf(index.faiss_index).invlists
    smallest = min(sizes.list_size(i) for i in range(4))
    # nprobe=1 visits one inverted list: a query finds at most that list's images, the rest are left out.
    scores, paths = index.search(index.vectors(), k=12, params="nprobe=1")
    assert scores.shape == (12, 12)
    for row_scores, row_paths in zip(scores, paths, strict=True):
        assert smallest <= len(row_paths) < 12
        assert np.isfinite(row_scores[: len(row_paths)]).all() and np.isneginf(row_scores[len(row_paths) :]).all()
    hits = search_images(index, images[:1], model, k=12, runtime=QUIET)
    assert len(hits[0]) == len(paths[0])


def test_gpu_search_falls_back_to_cpu_for_types_without_gpu_version(model, images, monkeypatch) -> None:
    index = build_index(images, model, DescriptorRecipe.retrieval(), runtime=QUIET)

    def no_gpu_version(cpu_index):
        raise RuntimeError("Error in index_cpu_to_gpu: this index type is not implemented on GPU")

    monkeypatch.setattr(index_module.faiss, "index_cpu_to_all_gpus", no_gpu_version, raising=False)
    with pytest.warns(UserWarning, match="searching on the CPU"):
        fallback = ImageIndex(index.faiss_index, index.manifest, gpu=True)
    assert fallback.search(index.vectors()[:1], 1)[1] == [[index.paths[0]]]


# ---------------------------------------------------------------------------- unusable images (#19)
def test_skipped_images_are_left_out_and_listed(model, images, tmp_path) -> None:
    bad = write_bad_images(images[0].parent)
    everything = sorted(images[0].parent.iterdir())
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    with pytest.raises(ImageLoadError, match="bomb.png: too many pixels"):  # on_error="raise" by default
        build_index(everything, model, recipe, out=out, runtime=QUIET)
    assert not out.exists()

    index = build_index(everything, model, recipe, out=out, on_error="skip", runtime=QUIET)
    # No row for an unusable image (a zero vector would silently rank as "similar"): exactly the good ones' index.
    assert index.paths == [str(p) for p in images] and len(index) == 6
    np.testing.assert_allclose(index.vectors(), build_index(images, model, recipe, runtime=QUIET).vectors(), atol=1e-6)
    assert sorted(index.skipped) == sorted(map(str, bad))
    for path, reason in index.skipped.items():
        assert reason.startswith(f"{path}: ") and bad[Path(path)] in reason and "\n" not in reason
    reloaded = ImageIndex.load(out)
    assert reloaded.skipped == index.skipped == json.loads((out / "manifest.json").read_text())["skipped"]
    assert build_index(images, model, recipe, runtime=QUIET).skipped == {}


def test_update_retries_skipped_images(model, images, tmp_path) -> None:
    bad = write_bad_images(images[0].parent)
    index = build_index(
        sorted(images[0].parent.iterdir()), model, DescriptorRecipe.retrieval(), on_error="skip", runtime=QUIET
    )
    corrupt, strip = images[0].parent / "corrupt.jpg", images[0].parent / "strip.png"
    Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(corrupt, format="JPEG")  # repaired
    strip.unlink()
    images[1].write_bytes(b"")  # an indexed image, now unusable: its old descriptor must not stay
    current = sorted(images[0].parent.iterdir())
    report = update_index(index, current, model, on_error="skip", runtime=QUIET)
    assert report == UpdateReport(added=1, updated=0, removed=0, unchanged=5, skipped=3)  # the strip was not indexed
    assert str(corrupt) in index.paths and str(images[1]) not in index.paths and len(index) == 6
    assert sorted(index.skipped) == sorted([str(images[1]), *(str(p) for p in bad if p.exists() and p != corrupt)])
    with pytest.raises(ImageLoadError, match="001.png: not an image file"):
        update_index(index, current, model, runtime=QUIET)  # on_error="raise": the index is left as it was
    assert len(index) == 6

    # Nothing new: the index is kept as it is; the same images are still reported skipped.
    manifest = index.manifest
    assert update_index(index, current, model, on_error="skip", runtime=QUIET) == UpdateReport(0, 0, 0, 6, 3)
    assert index.manifest is manifest


def test_a_resume_where_only_unusable_images_remain(model, images, tmp_path, monkeypatch) -> None:
    """The extractor refuses a list of which nothing is usable; after an interruption that list may be the rest."""
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    describe_shard(images, model, recipe, out, rank=0, world_size=1, runtime=QUIET)  # every good image described
    bad = write_bad_images(images[0].parent)
    index = build_index(sorted(images[0].parent.iterdir()), model, recipe, out=out, on_error="skip", runtime=QUIET)
    assert index.paths == [str(p) for p in images] and sorted(index.skipped) == sorted(map(str, bad))
    # With nothing usable at all the build fails, naming the first reason.
    with pytest.raises(ValueError, match=r"none of the 4 images could be used; the first: .*bomb.png: too many"):
        build_index(sorted(bad), model, recipe, out=tmp_path / "none", on_error="skip", runtime=QUIET)
    assert not (tmp_path / "none").exists()


def test_a_resume_redescribes_files_changed_since_the_interruption(model, images, tmp_path, monkeypatch) -> None:
    recipe = DescriptorRecipe.retrieval()
    out = tmp_path / "idx"
    describe_shard(images, model, recipe, out, rank=0, world_size=1, runtime=QUIET)  # as if killed before building
    Image.fromarray(np.full((40, 48, 3), 17, dtype=np.uint8)).save(images[2])  # edited before the rerun
    described: list[str] = []
    original = DescriptorExtractor.iter_raw

    def spy(self, todo):
        described.extend(map(str, todo))
        return original(self, todo)

    monkeypatch.setattr(DescriptorExtractor, "iter_raw", spy)
    resumed = build_index(images, model, recipe, out=out, runtime=QUIET)
    assert described == [str(images[2])]
    expected = hashlib.sha256(images[2].read_bytes()).hexdigest()
    assert resumed.manifest["files"][str(images[2])]["sha256"] == expected
    fresh = DescriptorExtractor(model, recipe, runtime=QUIET).extract([images[2]])[0]
    np.testing.assert_allclose(resumed.vectors()[2], fresh, atol=1e-6)


def test_leftovers_of_killed_saves_are_cleaned_up(model, images, tmp_path) -> None:
    out = tmp_path / "idx"
    build_index(images, model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    pid = dead_pid()
    staging = tmp_path / f".idx.{pid}-abcd1234.tmp"  # a save killed while filling its staging folder
    staging.mkdir()
    (staging / "index.faiss").write_bytes(b"half")
    chunk = partial_results_path(out) / f".chunk-0-1.npz.{pid}-x.tmp"  # a partial-results flush killed midway
    chunk.parent.mkdir()
    chunk.write_bytes(b"half")
    live = tmp_path / f".idx.{os.getpid()}-live.tmp"  # a writer still running (here: this process)
    live.mkdir()
    # A save killed after its second rename: the replaced index, set aside whole or half deleted.
    backup = tmp_path / ".idx.old-deadbeef"
    shutil.copytree(out, backup)
    (backup / "index.faiss").unlink()

    assert len(ImageIndex.load(out)) == 6  # loading removes the set-aside copy, only
    assert not backup.exists() and staging.exists()
    build_index(images[:4], model, DescriptorRecipe.retrieval(), out=out, runtime=QUIET)
    assert not staging.exists() and not chunk.parent.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", "images", live.name])
    # Killed between the renames (no index in place): the set-aside copy is the index, restored, never deleted.
    out.rename(backup)
    assert len(ImageIndex.load(out)) == 4 and not backup.exists()


def test_damaged_whitening_files_are_one_line_errors(tmp_path) -> None:
    """An empty or truncated file escaped as EOFError / BadZipFile tracebacks, wrong shapes as IndexError."""
    good = tmp_path / "w.npz"
    Whitening.fit(np.random.default_rng(0).normal(size=(10, 8))).save(good)
    data = good.read_bytes()
    header = np.array(json.dumps({"format_version": 1, "energy_kept": 1.0}))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "flat.npz", mean=np.zeros(3), projection=np.zeros(3), eigenvalues=np.zeros(3), header=header)
    np.savez(tmp_path / "nan.npz", mean=np.zeros(2), projection=np.full((2, 2), np.nan), eigenvalues=np.ones(2),
             header=header)  # fmt: skip
    cases = {
        "empty.npz": "not a NumPy .npz archive",
        "truncated.npz": "not a NumPy .npz archive",
        "array.npy": "a single array, not an .npz archive",
        "flat.npz": "damaged whitening file (inconsistent arrays",
        "nan.npz": "damaged whitening file (its arrays hold NaN",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=rf"{name}: .*{re.escape(message)}"):
            Whitening.load(tmp_path / name)
    assert Whitening.load(good).in_dim == 8
