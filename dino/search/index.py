"""A FAISS index over global image descriptors, saved with a manifest (SPEC §12, §13).

Shared by image retrieval and copy detection. Descriptors are L2-normalised, so FAISS's inner product is
the cosine similarity of the reference's ``db @ qᵀ`` for every factory (exact for ``Flat``, approximate
for IVF, HNSW and PQ). An index on disk is a folder::

    INDEX/
      index.faiss      # readable by plain ``faiss.read_index``; id i is ``manifest["files"]`` entry with "id" i
      manifest.json    # backbone identity, descriptor recipe, whitening checksum, dim, factory, files + sha256,
                       # the images left out as unusable, and the sha256 of the two other files
      whitening.npz    # only when the descriptors are whitened; queries are whitened with the same one

written to a temporary sibling folder and swapped in, so a crash never leaves a half-written index; the next
build, save or load deletes what a killed one left beside it (staging folders, the set-aside previous index).

Building streams: descriptors are computed batch by batch into one preallocated array (memory grows only
with the stored vectors) and, when the index has an output folder, flushed every few batches into chunk files
in a sidecar folder ``.INDEX.partial`` beside it. A rerun after an interruption reuses them, and
:func:`describe_shard` lets several processes (``torchrun``) fill the same sidecar before one of them builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
from PIL import Image

from dino.atomic import (
    atomic_output_dir,
    atomic_output_path,
    atomic_write,
    atomic_write_json,
    check_output_dir,
    remove_replaced_backups,
    remove_stale_temporaries,
    restore_interrupted_output_dir,
)
from dino.checkpoint import load_backbone, model_identity
from dino.checksums import file_sha256
from dino.features import NothingUsableError, OnError
from dino.models.backbone import Backbone
from dino.runtime import Runtime
from dino.search.defaults import DEFAULT_CHECKPOINT_EVERY, DEFAULT_FACTORY
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe
from dino.search.whitening import Whitening

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_FACTORY",
    "Hit",
    "ImageIndex",
    "IndexMismatchError",
    "IndexNotFoundError",
    "UpdateReport",
    "build_index",
    "create_faiss_index",
    "describe_shard",
    "partial_results_path",
    "search_images",
    "update_index",
]

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
WHITENING_FILE = "whitening.npz"
METRIC = "inner_product"
# The backbone fields that decide descriptor values; "weights" (where they were read from) does not.
IDENTITY_FIELDS = ("arch", "patch_size", "num_register_tokens", "embed_dim", "sha256")
# What an identity field means when a manifest written before it existed lacks it.
IDENTITY_DEFAULTS = {"num_register_tokens": 0}
# FAISS prefixes its messages with the C++ function and source line, and failed checks with the condition.
FAISS_MESSAGE_PREFIX = re.compile(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?")
# The backbone fields a manifest must hold to reload the backbone and compare it (the others have defaults).
REQUIRED_BACKBONE_FIELDS = ("weights", "arch", "patch_size", "embed_dim", "sha256")
PARTIAL_SUFFIX = ".partial"
PARTIAL_STATE = "state.json"

ImageInput = str | os.PathLike[str]


class Hit(NamedTuple):
    """One search result: the indexed image, its cosine similarity to the query, and its rank (0 = best)."""

    path: str
    score: float
    rank: int


class UpdateReport(NamedTuple):
    """What :func:`update_index` did, in images: ``added + updated + unchanged + skipped`` is the number of images
    given; `removed` counts indexed files no longer among them; `skipped` the new or changed ones left out as
    unusable (a changed one leaves the index, since its stored descriptor is of the old content)."""

    added: int
    updated: int
    removed: int
    unchanged: int
    skipped: int = 0


class IndexMismatchError(ValueError):
    """The index was built with another backbone, descriptor recipe or whitening than the one asked for."""


class IndexNotFoundError(FileNotFoundError, ValueError):
    """No index folder at the given path (both a FileNotFoundError and, as every load error, a ValueError)."""


# ---------------------------------------------------------------------------- FAISS helpers
def create_faiss_index(vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> faiss.Index:
    """A trained inner-product FAISS index holding `vectors` (n, d) under ids 0..n-1.

    Args:
        vectors: float32 rows, L2-normalised by the caller.
        factory: Any ``faiss.index_factory`` string: ``Flat`` (exact), ``IVF1024,Flat``, ``HNSW32``,
            ``IVF4096,PQ32`` … Indexes that need training are trained on `vectors` (FAISS subsamples).

    Raises:
        ValueError: An unknown factory string, or too few vectors to train it.
    """
    vectors = _as_matrix(vectors)
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {_faiss_message(error)}") from None
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as error:
            raise ValueError(
                f"cannot train FAISS index {factory!r} on {len(vectors)} vectors: {_faiss_message(error)} "
                "(use a smaller IVF list count, or 'Flat' for small collections)"
            ) from None
    index.add(vectors)
    return index


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected descriptors of shape (n, dim), got {vectors.shape}")
    return vectors


def _faiss_message(error: RuntimeError) -> str:
    """The useful part of a FAISS C++ exception: its last line, without the C++ function and source location."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return FAISS_MESSAGE_PREFIX.sub("", lines[-1]) if lines else type(error).__name__


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """Spread `index` over every GPU, or return it unchanged when its type has no GPU version (e.g. HNSW)."""
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as error:
        warnings.warn(
            f"searching on the CPU: this FAISS index has no GPU version ({_faiss_message(error)})", stacklevel=3
        )
        return index


def _reconstruct_all(index: faiss.Index) -> np.ndarray:
    """Every stored vector, (n, d) in id order; exact for Flat, HNSW-Flat and IVF-Flat, decoded for PQ/SQ."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.make_direct_map()
    try:
        return index.reconstruct_n(0, index.ntotal)
    except RuntimeError as error:
        raise ValueError(
            f"this FAISS index type cannot return its stored vectors ({_faiss_message(error)}); rebuild the "
            "index instead of updating it"
        ) from None


# ---------------------------------------------------------------------------- the index
class ImageIndex:
    """Image descriptors in a FAISS inner-product index, with the manifest that says how they were made.

    Build one with :func:`build_index`, open a saved one with :meth:`load`, query it with
    :func:`search_images` (images) or :meth:`search` (descriptors), keep it in sync with a folder with
    :func:`update_index`.

    Args:
        faiss_index: The CPU FAISS index; id i is ``paths[i]``.
        manifest: See :attr:`manifest`.
        whitening: Applied to raw descriptors before L2 normalisation, for the database and the queries.
        path: The folder the index was loaded from or last saved to.
        gpu: Search on every GPU (``None``: when a FAISS-GPU build and a GPU are present).
    """

    def __init__(
        self,
        faiss_index: faiss.Index,
        manifest: dict[str, Any],
        whitening: Whitening | None = None,
        path: str | os.PathLike[str] | None = None,
        gpu: bool | None = None,
    ) -> None:
        self._whitening = whitening
        self.path = Path(path) if path is not None else None
        self._gpu = _gpu_available() if gpu is None else gpu
        self._replace_contents(faiss_index, manifest)

    def _replace_contents(self, faiss_index: faiss.Index, manifest: dict[str, Any]) -> None:
        self._index = faiss_index
        self._manifest = manifest
        self._paths = [""] * len(manifest["files"])
        for file, entry in manifest["files"].items():
            self._paths[entry["id"]] = file
        self._searcher = _to_gpu(faiss_index) if self._gpu else faiss_index

    # -------------------------------------------------------------- properties
    @property
    def manifest(self) -> dict[str, Any]:
        """``format_version``, ``created``, ``updated``, ``backbone`` (:func:`dino.checkpoint.model_identity`),
        ``recipe`` (:meth:`DescriptorRecipe.as_dict`), ``whitening`` (sha256 or None), ``dim``, ``factory``,
        ``metric`` (``inner_product``), ``files`` ({absolute path: {"sha256", "id"}}), ``skipped`` (see
        :attr:`skipped`) and, once saved, ``checksums`` ({file name: sha256} of ``index.faiss`` and
        ``whitening.npz``, verified by :meth:`load`)."""
        return self._manifest

    @property
    def skipped(self) -> dict[str, str]:
        """The images left out of the index as unusable (unreadable, too small, over the token budget) by a build
        or update with ``on_error="skip"``: {absolute path: the one-line reason, which names the file}. Empty for
        indexes written before they were recorded; :func:`update_index` tries them again."""
        return dict(self._manifest.get("skipped", {}))

    @property
    def recipe(self) -> DescriptorRecipe:
        return DescriptorRecipe.from_dict(self._manifest["recipe"])

    @property
    def whitening(self) -> Whitening | None:
        return self._whitening

    @property
    def paths(self) -> list[str]:
        """Indexed image paths, in id order."""
        return list(self._paths)

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def factory(self) -> str:
        return str(self._manifest["factory"])

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying CPU FAISS index (id i = ``paths[i]``)."""
        return self._index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"ImageIndex({len(self)} images, dim={self.dim}, factory={self.factory!r}, path={self.path})"

    # -------------------------------------------------------------- search
    def search(self, vectors: np.ndarray, k: int, params: str | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """The `k` nearest indexed images of each final (whitened, L2-normalised) descriptor.

        Args:
            vectors: (Q, dim) float32 query descriptors.
            k: Results per query; at most ``len(self)``.
            params: FAISS search parameters for approximate indexes, e.g. ``"nprobe=16"`` (IVF) or
                ``"efSearch=128"`` (HNSW); they stay set for later searches.

        Returns:
            Scores (Q, k) float32, best first, and the matching paths. An approximate index may find fewer
            than k results; those paths are left out and their scores are ``-inf``.
        """
        vectors = _as_matrix(vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"query descriptors have dimension {vectors.shape[1]}, the index holds {self.dim}-d ones")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if params:
            self.set_search_parameters(params)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(vectors), 0), dtype=np.float32), [[] for _ in vectors]
        scores, ids = self._searcher.search(vectors, k)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, [[self._paths[i] for i in row if i >= 0] for row in ids]

    def set_search_parameters(self, params: str) -> None:
        """Set FAISS search parameters, e.g. ``"nprobe=16"`` or ``"efSearch=128"`` (comma-separated)."""
        space = faiss.GpuParameterSpace() if self._searcher is not self._index else faiss.ParameterSpace()
        try:
            space.set_index_parameters(self._searcher, params)
        except RuntimeError as error:
            raise ValueError(
                f"cannot set search parameters {params!r} on a {self.factory!r} index: {_faiss_message(error)}"
            ) from None

    # -------------------------------------------------------------- compatibility
    def check_compatible(
        self,
        model: Backbone,
        recipe: DescriptorRecipe | None = None,
        whitening: Whitening | None | bool = False,
    ) -> None:
        """Refuse to compare this index's descriptors with those of another backbone, recipe or whitening.

        Args:
            model: The backbone that will describe the queries.
            recipe: If given, the recipe the caller means to use.
            whitening: If given (a :class:`Whitening` or None), the whitening the caller means to use;
                ``False`` (default) skips the check.

        Raises:
            IndexMismatchError: Naming the index and every differing field.
        """
        differences = []
        built_with = self._manifest["backbone"]
        identity = model_identity(model)
        for key in IDENTITY_FIELDS:
            if built_with.get(key, IDENTITY_DEFAULTS.get(key)) != identity[key]:
                stored, given = built_with.get(key), identity[key]
                if key == "sha256":  # the first 12 hex digits tell two checksums apart
                    stored, given = _short(stored), _short(given)
                differences.append(f"backbone {key}: index {stored!r}, given {given!r}")
        if recipe is not None:
            stored = self._manifest["recipe"]
            for key, value in recipe.as_dict().items():
                if stored.get(key) != value:
                    differences.append(f"recipe {key}: index {stored.get(key)!r}, given {value!r}")
        if whitening is not False:
            given = _whitening_sha256(whitening) if isinstance(whitening, Whitening) else None
            if given != self._manifest["whitening"]:
                differences.append(f"whitening: index {self._manifest['whitening']}, given {given}")
        if differences:
            where = self.path or "this index"
            raise IndexMismatchError(
                f"{where} was built with weights {built_with.get('weights')!r} and cannot be used with these "
                f"settings ({'; '.join(differences)}); rebuild it, or pass the backbone and options it was built with"
            )

    def load_backbone(self, weights_only: bool = True, checkpoint_key: str = "teacher") -> Backbone:
        """The backbone this index was built with, loaded from the weights recorded in its manifest.

        Args:
            weights_only: Refuse to unpickle arbitrary objects (see :func:`dino.checkpoint.load_checkpoint_file`).
            checkpoint_key: The network of a full checkpoint to take when the manifest does not say (indexes
                written before it recorded one).
        """
        built_with = self._manifest["backbone"]
        return load_backbone(
            built_with["weights"],
            arch=built_with["arch"],
            patch_size=built_with["patch_size"],
            checkpoint_key=built_with.get("checkpoint_key", checkpoint_key),
            weights_only=weights_only,
        )

    # -------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index folder at `path`: built beside it, then swapped in (an interrupted save keeps the
        previous index). The manifest records the sha256 of the files it is saved with."""
        target = Path(path).absolute()
        _clean_up_interrupted_saves(target)
        with atomic_output_dir(target, replaceable=_is_index) as staging:
            with atomic_output_path(staging / INDEX_FILE) as temporary:
                faiss.write_index(self._index, str(temporary))
            checksums = {INDEX_FILE: file_sha256(staging / INDEX_FILE)}
            if self._whitening is not None:
                self._whitening.save(staging / WHITENING_FILE)
                checksums[WHITENING_FILE] = file_sha256(staging / WHITENING_FILE)
            manifest = {**self._manifest, "checksums": checksums}
            atomic_write_json(staging / MANIFEST_FILE, manifest)
        self._manifest = manifest
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], gpu: bool | None = None) -> ImageIndex:
        """Open an index folder written by :meth:`save`.

        Args:
            path: The index folder.
            gpu: Search on the GPUs (``None``: when FAISS-GPU and a GPU are present).

        Raises:
            ValueError: Naming `path`, when it is missing, not a dino index, damaged or inconsistent, or a file
                whose sha256 differs from the one its manifest recorded (it was replaced or damaged since).
        """
        path = Path(path).absolute()
        restore_interrupted_output_dir(path, is_complete=_is_index)
        remove_replaced_backups(path, is_complete=_is_index)
        if not path.is_dir():
            raise IndexNotFoundError(
                f"{path}: no such index folder (build one with `dino search index` or `dino copy-detect index`)"
            )
        manifest = _read_manifest(path)
        # Checked before FAISS parses the file: a same-sized index of other images would load and answer wrongly.
        _verify_checksum(path, INDEX_FILE, manifest)
        try:
            faiss_index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as error:
            raise ValueError(f"{path}: {INDEX_FILE} is missing or damaged ({_faiss_message(error)})") from None
        whitening = None
        if manifest["whitening"] is not None:
            if not (path / WHITENING_FILE).is_file():
                raise ValueError(f"{path}: {MANIFEST_FILE} names a whitening but {WHITENING_FILE} is missing")
            _verify_checksum(path, WHITENING_FILE, manifest)
            whitening = Whitening.load(path / WHITENING_FILE)
            if _whitening_sha256(whitening) != manifest["whitening"]:
                raise ValueError(f"{path}: {WHITENING_FILE} does not match the checksum in {MANIFEST_FILE}")
        if faiss_index.ntotal != len(manifest["files"]) or faiss_index.d != manifest["dim"]:
            raise ValueError(
                f"{path}: {INDEX_FILE} holds {faiss_index.ntotal} {faiss_index.d}-d vectors but {MANIFEST_FILE} "
                f"lists {len(manifest['files'])} {manifest['dim']}-d ones; the index is torn, rebuild it"
            )
        return cls(faiss_index, manifest, whitening, path, gpu=gpu)

    def vectors(self) -> np.ndarray:
        """The stored descriptors (n, dim) in id order (decoded approximations for compressed factories)."""
        return _reconstruct_all(self._index)


def _short(digest: Any) -> Any:
    return f"{digest[:12]}…" if isinstance(digest, str) and len(digest) > 12 else digest


def _read_manifest(folder: Path) -> dict[str, Any]:
    file = folder / MANIFEST_FILE
    if not file.is_file():
        raise ValueError(f"{folder}: not a dino image index (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: damaged manifest ({error})") from None
    required = ("format_version", "backbone", "recipe", "whitening", "dim", "factory", "metric", "files")
    missing = [key for key in required if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise ValueError(f"{file}: not a dino index manifest (missing {', '.join(missing)})")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{file}: index format version {manifest['format_version']} is not supported")
    if manifest["metric"] != METRIC:
        raise ValueError(f"{file}: metric {manifest['metric']!r} is not supported")
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise ValueError(f"{file}: damaged manifest ({problem}); rebuild the index")
    ids = sorted(entry["id"] for entry in manifest["files"].values())
    if ids != list(range(len(ids))):
        raise ValueError(f"{file}: file ids are not 0..{len(ids) - 1}; the manifest is damaged")
    return manifest


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a parsed manifest unusable (a field of the wrong type or shape), or None."""

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_str_map(value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())

    files = manifest["files"]
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and is_int(entry.get("id"))
        for entry in files.values()
    ):
        return 'files must map each path to {"sha256": text, "id": integer}'
    backbone = manifest["backbone"]
    if not isinstance(backbone, dict) or any(key not in backbone for key in REQUIRED_BACKBONE_FIELDS):
        return f"backbone must hold {', '.join(REQUIRED_BACKBONE_FIELDS)}"
    if not is_int(manifest["dim"]) or manifest["dim"] < 1:
        return f"dim must be a positive integer, not {manifest['dim']!r}"
    if not isinstance(manifest["factory"], str):
        return "factory must be a FAISS factory string"
    if manifest["whitening"] is not None and not isinstance(manifest["whitening"], str):
        return "whitening must be a sha256 or null"
    if not is_str_map(manifest.get("skipped", {})) or not is_str_map(manifest.get("checksums", {})):
        return "skipped and checksums must map names to text"
    if not isinstance(manifest["recipe"], dict):
        return "recipe must be an object"
    try:
        DescriptorRecipe.from_dict(manifest["recipe"])
    except (TypeError, ValueError) as error:
        return f"recipe: {error}"
    return None


def _verify_checksum(folder: Path, name: str, manifest: dict[str, Any]) -> None:
    """Refuse `folder`/`name` when its sha256 differs from the manifest's (manifests before checksums: accepted)."""
    expected = manifest.get("checksums", {}).get(name)
    file = folder / name
    if expected is None:
        return
    if not file.is_file():
        raise ValueError(f"{file}: missing from the index folder; rebuild the index")
    if file_sha256(file) != expected:
        raise ValueError(
            f"{file}: its sha256 differs from the one {MANIFEST_FILE} recorded when the index was saved (the file "
            "was replaced or damaged since); rebuild the index"
        )


def _clean_up_interrupted_saves(target: Path) -> None:
    """Finish what killed saves of the index at `target` left: put back an index set aside by a save killed between
    its renames, delete one set aside by a save killed after them, and the staging folders and temporaries of
    killed writers beside it (the partial-results sidecar is kept: it is how a build resumes)."""
    restore_interrupted_output_dir(target, is_complete=_is_index)
    remove_replaced_backups(target, is_complete=_is_index)
    remove_stale_temporaries(target.parent)
    remove_stale_temporaries(partial_results_path(target))


def _is_index(folder: Path) -> bool:
    """An index folder may only replace another index (or nothing)."""
    return (folder / MANIFEST_FILE).is_file()


def _whitening_sha256(whitening: Whitening) -> str:
    digest = hashlib.sha256()
    for array in (whitening.mean, whitening.projection):
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest.update(f"{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _unique_paths(images: Iterable[ImageInput]) -> list[str]:
    """Absolute paths (symlinks kept as named), duplicates dropped, order kept."""
    return list(dict.fromkeys(os.path.abspath(os.fspath(image)) for image in images))


# ---------------------------------------------------------------------------- describing, resumably
def partial_results_path(out: str | os.PathLike[str]) -> Path:
    """The sidecar folder holding the partial descriptors of an index being built at `out`."""
    out = Path(out).absolute()
    return out.with_name(f".{out.name}{PARTIAL_SUFFIX}")


class _PartialResults:
    """Descriptors computed so far for the index at `out`: chunk files of (paths, sha256, vectors)."""

    def __init__(self, out: str | os.PathLike[str], state: dict[str, Any]) -> None:
        self.folder = partial_results_path(out)
        self.state = state

    def open(self) -> None:
        """Check that an existing sidecar was computed the same way (it is created by the first write, so a build
        that fails before describing anything leaves none behind)."""
        state_file = self.folder / PARTIAL_STATE
        if not state_file.is_file():
            return
        try:
            state = json.loads(state_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{state_file}: damaged ({error}); delete {self.folder} to start over") from None
        if state != self.state:
            raise ValueError(
                f"{self.folder}: partial descriptors from an interrupted build with another backbone, recipe "
                "or whitening; delete this folder to start over"
            )

    def load(self, wanted: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
        """{path: (sha256, vector)} of the already described images among `wanted`."""
        wanted_set = set(wanted)
        found: dict[str, tuple[str, np.ndarray]] = {}
        for chunk in sorted(self.folder.glob("chunk-*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as data:
                    for path, sha, vector in zip(data["paths"], data["sha256"], data["vectors"], strict=True):
                        if str(path) in wanted_set:
                            found[str(path)] = (str(sha), vector)
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"{chunk}: damaged partial descriptors ({error}); delete the file") from None
        return found

    def write(self, paths: list[str], hashes: list[str], vectors: np.ndarray, tag: str) -> None:
        state_file = self.folder / PARTIAL_STATE
        if not state_file.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(state_file, self.state)
        with atomic_write(self.folder / f"chunk-{tag}-{time.time_ns()}.npz", "wb") as handle:
            np.savez(handle, paths=np.array(paths), sha256=np.array(hashes), vectors=vectors)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _partial_state(identity: dict[str, Any], recipe: DescriptorRecipe, whitening: Whitening | None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "backbone": {key: identity[key] for key in IDENTITY_FIELDS},
        "recipe": recipe.as_dict(),
        "whitening": _whitening_sha256(whitening) if whitening is not None else None,
    }


class _Descriptions(NamedTuple):
    """What :func:`_describe` made of a list of paths: the described ones in input order, their final descriptors
    and content sha256, and the unusable ones left out ({path: reason})."""

    paths: list[str]
    vectors: np.ndarray
    hashes: list[str]
    skipped: dict[str, str]


def _current_sha256(path: str) -> str | None:
    """The file's sha256 now, or None when it cannot be read (the extractor then says why, or skips it)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _describe(
    paths: Sequence[str],
    extractor: DescriptorExtractor,
    partial: _PartialResults | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    tag: str = "0",
) -> _Descriptions:
    """Final descriptors and content sha256 of `paths`, reusing and extending `partial`.

    A partial descriptor is reused only if its file still has the sha256 it was described with (a file may change
    between an interrupted run and its rerun). Images the extractor skips (``on_error="skip"``) are left out.
    """
    vectors = np.zeros((len(paths), extractor.dim), dtype=np.float32)
    hashes = [""] * len(paths)
    position = {path: i for i, path in enumerate(paths)}
    done = partial.load(paths) if partial is not None else {}
    for path, (sha, vector) in done.items():
        if _current_sha256(path) == sha:
            vectors[position[path]], hashes[position[path]] = vector, sha
    todo = [path for path, sha in zip(paths, hashes, strict=True) if not sha]
    skipped: dict[str, str] = {}
    if todo:
        pending: list[int] = []
        batches = 0
        try:
            for indices, raw in extractor.iter_raw(todo):
                rows = [position[todo[i]] for i in indices]
                vectors[rows] = extractor.finalize(raw)
                for row in rows:
                    hashes[row] = file_sha256(paths[row])
                pending.extend(rows)
                batches += 1
                if partial is not None and batches % checkpoint_every == 0:
                    partial.write([paths[r] for r in pending], [hashes[r] for r in pending], vectors[pending], tag)
                    pending = []
        except NothingUsableError:
            # Here the list may be only what is left to describe (the rest reused), so the caller decides whether
            # anything at all was usable.
            pass
        if partial is not None and pending:
            partial.write([paths[r] for r in pending], [hashes[r] for r in pending], vectors[pending], tag)
        skipped = {todo[image.index]: image.reason for image in extractor.features.skipped}
    kept = [row for row, sha in enumerate(hashes) if sha]
    return _Descriptions([paths[row] for row in kept], vectors[kept], [hashes[row] for row in kept], skipped)


def _nothing_usable(skipped: dict[str, str]) -> NothingUsableError:
    first = next(iter(skipped.values()))
    return NothingUsableError(f"none of the {len(skipped)} images could be used; the first: {first}")


# ---------------------------------------------------------------------------- public functions
def build_index(
    images: Sequence[ImageInput],
    model: Backbone,
    recipe: DescriptorRecipe,
    whitening: Whitening | None = None,
    factory: str = DEFAULT_FACTORY,
    out: str | os.PathLike[str] | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> ImageIndex:
    """Describe `images` and index them.

    Args:
        images: Image files (list folders with :func:`dino.data.io.list_images`); duplicates are dropped.
        model: The backbone.
        recipe: How descriptors are computed (:meth:`DescriptorRecipe.retrieval` is the SPEC §13 reference).
        whitening: Applied before L2 normalisation; stored inside the index so that queries use it too.
        factory: A ``faiss.index_factory`` string; trained on the descriptors when needed.
        out: Save the index there (atomically). Descriptors are also flushed every `checkpoint_every`
            batches to :func:`partial_results_path` so that a rerun after an interruption resumes.
        checkpoint_every: Batches between flushes of partial descriptors.
        on_error: An unusable image (unreadable, too small, over the token budget): ``raise`` its one-line
            error, indexing nothing, or ``skip`` it: it is left out of the index and listed in
            :attr:`ImageIndex.skipped` (and the manifest's ``skipped``) with the reason.
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None.

    Raises:
        ValueError: No images, none usable, or a factory that cannot be built or trained on them.
    """
    paths = _unique_paths(images)
    if not paths:
        raise ValueError("no images to index")
    extractor = DescriptorExtractor(model, recipe, whitening, runtime, on_error=on_error)
    identity = model_identity(model)
    partial = None
    if out is not None:
        _clean_up_interrupted_saves(Path(out).absolute())
        check_output_dir(out, replaceable=_is_index)
        partial = _PartialResults(out, _partial_state(identity, recipe, whitening))
        partial.open()
    described = _describe(paths, extractor, partial, checkpoint_every)
    if not described.paths:
        raise _nothing_usable(described.skipped)
    created = _now()
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": created,
        "updated": created,
        "backbone": identity,
        "recipe": recipe.as_dict(),
        "whitening": _whitening_sha256(whitening) if whitening is not None else None,
        "dim": extractor.dim,
        "factory": factory,
        "metric": METRIC,
        "files": {
            path: {"sha256": sha, "id": i}
            for i, (path, sha) in enumerate(zip(described.paths, described.hashes, strict=True))
        },
        "skipped": described.skipped,
    }
    index = ImageIndex(create_faiss_index(described.vectors, factory), manifest, whitening)
    if out is not None:
        index.save(out)
        partial.remove()
    return index


def describe_shard(
    images: Sequence[ImageInput],
    model: Backbone,
    recipe: DescriptorRecipe,
    out: str | os.PathLike[str],
    rank: int,
    world_size: int,
    whitening: Whitening | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> int:
    """Describe this process's share of `images` into the partial-results sidecar of `out`.

    For sharded builds (one process per GPU or machine, e.g. under ``torchrun``, with `out` on a filesystem
    they share): every rank calls this with the same arguments, then, once all are done, one rank calls
    :func:`build_index` with the same images and `out`, which finds every descriptor already computed (and
    tries the images a shard skipped again, listing them in the index when they fail there too).

    Returns:
        The number of images in this rank's shard.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    paths = _unique_paths(images)
    shard = [str(part) for part in np.array_split(np.array(paths, dtype=object), world_size)[rank]]
    partial = _PartialResults(out, _partial_state(model_identity(model), recipe, whitening))
    partial.open()
    if shard:
        extractor = DescriptorExtractor(model, recipe, whitening, runtime, on_error=on_error)
        _describe(shard, extractor, partial, checkpoint_every, tag=f"r{rank}")
    return len(shard)


def search_images(
    index: ImageIndex,
    queries: Sequence[ImageInput | Image.Image],
    model: Backbone,
    k: int = 10,
    params: str | None = None,
    runtime: Runtime | None = None,
) -> list[list[Hit]]:
    """The `k` best indexed images for each query image, best first.

    Queries are described with the index's recipe and whitening, after checking that `model` is the
    backbone the index was built with.

    Args:
        index: The index.
        queries: Image files or PIL images.
        model: The backbone.
        k: Results per query.
        params: FAISS search parameters (see :meth:`ImageIndex.search`).
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None.

    Raises:
        ImageLoadError / FileNotFoundError / ValueError: A query that cannot be used, named (every query gets an
            answer or the search fails).
    """
    index.check_compatible(model)
    if not queries:
        raise ValueError("no query images")
    vectors = DescriptorExtractor(model, index.recipe, index.whitening, runtime).extract(queries)
    scores, paths = index.search(vectors, k, params)
    # An approximate index may return fewer paths than scores (missing results are -inf, at the end).
    return [
        [Hit(path, float(score), rank) for rank, (path, score) in enumerate(zip(row_paths, row_scores, strict=False))]
        for row_paths, row_scores in zip(paths, scores, strict=True)
    ]


def update_index(
    index: ImageIndex,
    images: Sequence[ImageInput],
    model: Backbone,
    on_error: OnError = "raise",
    runtime: Runtime | None = None,
) -> UpdateReport:
    """Make `index` hold exactly `images`, describing only new and changed files (by content sha256).

    Unchanged descriptors are read back from the FAISS index (exactly for Flat, HNSW-Flat and IVF-Flat);
    the index keeps its trained structure (IVF centroids) and is refilled in place. Images an earlier build or
    update skipped are new to it, so they are tried again. Save it afterwards.

    Args:
        on_error: An unusable new or changed image: ``raise`` its error (the index is left as it was) or
            ``skip`` it (it is left out and listed in :attr:`ImageIndex.skipped`).
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None.

    Returns:
        Counts of added, updated (content changed), removed, unchanged and skipped images.

    Raises:
        IndexMismatchError: `model` is not the backbone the index was built with.
        ValueError: `images` is empty, or none of them is usable.
    """
    index.check_compatible(model)
    paths = _unique_paths(images)
    if not paths:
        raise ValueError("no images to index; an index cannot be empty (delete its folder instead)")
    files = index.manifest["files"]
    current = {path: _current_sha256(path) for path in paths}
    unchanged = [path for path in paths if path in files and files[path]["sha256"] == current[path]]
    unchanged_set = set(unchanged)
    fresh = [path for path in paths if path not in unchanged_set]
    wanted = set(paths)
    removed = [path for path in files if path not in wanted]
    if fresh:
        extractor = DescriptorExtractor(model, index.recipe, index.whitening, runtime, on_error=on_error)
        described = _describe(fresh, extractor)
    else:
        described = _Descriptions([], np.zeros((0, index.dim), dtype=np.float32), [], {})
    if not (unchanged or described.paths):
        raise _nothing_usable(described.skipped)
    report = UpdateReport(
        added=sum(path not in files for path in described.paths),
        updated=sum(path in files for path in described.paths),
        removed=len(removed),
        unchanged=len(unchanged),
        skipped=len(described.skipped),
    )
    # An indexed file whose new content is unusable is new to `skipped`, so it is not missed here.
    if not (described.paths or removed) and described.skipped == index.skipped:
        return report
    kept = sorted(unchanged, key=lambda path: files[path]["id"])
    kept_vectors = index.vectors()[[files[path]["id"] for path in kept]]
    faiss_index = faiss.clone_index(index.faiss_index)
    faiss_index.reset()
    faiss_index.add(np.concatenate([kept_vectors, described.vectors]))
    manifest = {key: value for key, value in index.manifest.items() if key != "checksums"}  # of the saved files
    manifest["updated"] = _now()
    hashes = {path: files[path]["sha256"] for path in kept} | dict(zip(described.paths, described.hashes, strict=True))
    manifest["files"] = {path: {"sha256": sha, "id": i} for i, (path, sha) in enumerate(hashes.items())}
    manifest["skipped"] = described.skipped
    index._replace_contents(faiss_index, manifest)
    return report
