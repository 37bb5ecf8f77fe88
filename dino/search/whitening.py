"""PCA-whitening of global descriptors: fit on a separate image set, save, apply at query time (SPEC §12).

The reference (`utils.PCA` in `eval_copy_detection.py`) subtracts the mean of the whitening features but
eigen-decomposes their *uncentred* second moment ``FᵀF / n``; that is the default here. ``centered=True``
uses the covariance of the centred features (textbook PCA-whitening, as FAISS's ``PCAMatrix``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dino.atomic import atomic_write

__all__ = ["EIGENVALUE_FLOOR", "WHITENING_POWER", "Whitening"]

# SPEC §12: eigenvalues are floored at max·1e-5 and whitened with power 0.5 (P = diag(λ^-0.5)·Vᵀ).
EIGENVALUE_FLOOR = 1e-5
WHITENING_POWER = 0.5
FORMAT_VERSION = 1


@dataclass
class Whitening:
    """A fitted whitening: ``x ↦ P (x − μ)`` with P of shape (dim, D).

    Attributes:
        mean: μ, (D,), the mean of the fitting features.
        projection: P, (dim, D); rows sorted by decreasing eigenvalue.
        eigenvalues: The kept eigenvalues after flooring, (dim,), decreasing.
        energy_kept: Fraction of the total eigenvalue mass kept (1.0 when dim = D).
        metadata: Free-form, JSON-serialisable description (backbone, descriptor recipe, image count).
    """

    mean: np.ndarray
    projection: np.ndarray
    eigenvalues: np.ndarray
    energy_kept: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return self.projection.shape[1]

    @property
    def out_dim(self) -> int:
        return self.projection.shape[0]

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        dim: int | None = None,
        power: float = WHITENING_POWER,
        centered: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> Whitening:
        """Fit on (n, D) features.

        Args:
            features: The whitening set's descriptors, one per row, in the same form they will be applied to.
            dim: Output dimension (the top-`dim` eigenvectors); all D by default, as the reference.
            power: Eigenvalue exponent; 0.5 whitens, 0 gives a plain PCA rotation.
            centered: Use the centred covariance instead of the reference's uncentred ``FᵀF / n``.
            metadata: Stored with the whitening and written by :meth:`save`.
        """
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"whitening needs at least 2 feature rows of shape (n, D), got {features.shape}")
        size, in_dim = features.shape
        dim = in_dim if dim is None else dim
        if not 1 <= dim <= in_dim:
            raise ValueError(f"whitening dim must lie in 1..{in_dim}, got {dim}")
        mean = features.mean(axis=0)
        basis = features - mean if centered else features
        second_moment = basis.T @ basis / size
        eigenvalues, eigenvectors = np.linalg.eigh(second_moment)
        eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * EIGENVALUE_FLOOR)
        order = np.argsort(eigenvalues)[::-1][:dim]
        kept, vectors = eigenvalues[order], eigenvectors[:, order]
        projection = (kept ** (-power))[:, None] * vectors.T
        return cls(
            mean=mean.astype(np.float32),
            projection=projection.astype(np.float32),
            eigenvalues=kept.astype(np.float32),
            energy_kept=float(kept.sum() / eigenvalues.sum()),
            metadata=dict(metadata or {}),
        )

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Whiten (n, D) features: (n, dim), float32. Not L2-normalised (callers normalise afterwards)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"whitening expects features of shape (n, {self.in_dim}), got {features.shape}")
        return (features - self.mean) @ self.projection.T

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` (arrays plus a JSON header), atomically."""
        header = {"format_version": FORMAT_VERSION, "energy_kept": self.energy_kept, "metadata": self.metadata}
        with atomic_write(path, "wb") as handle:
            np.savez(
                handle,
                mean=self.mean,
                projection=self.projection,
                eigenvalues=self.eigenvalues,
                header=np.array(json.dumps(header)),
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Whitening:
        """Read a file written by :meth:`save`; a missing, foreign or damaged file raises an error naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such whitening file")
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile):
            raise ValueError(f"{path}: not a whitening file written by dino (not a NumPy .npz archive)") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a plain .npy array
            raise ValueError(f"{path}: not a whitening file written by dino (a single array, not an .npz archive)")
        try:
            with archive as data:
                header = json.loads(str(data["header"]))
                arrays = {name: data[name] for name in ("mean", "projection", "eigenvalues")}
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{path}: not a whitening file written by dino ({type(error).__name__}: {error})"
            ) from None
        if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
            version = header.get("format_version") if isinstance(header, dict) else None
            raise ValueError(f"{path}: whitening format version {version} is not supported")
        problem = _arrays_problem(**arrays, energy_kept=header.get("energy_kept"))
        if problem is not None:
            raise ValueError(f"{path}: damaged whitening file ({problem})")
        return cls(
            **arrays,
            energy_kept=float(header["energy_kept"]),
            metadata=header.get("metadata") if isinstance(header.get("metadata"), dict) else {},
        )


def _arrays_problem(mean: np.ndarray, projection: np.ndarray, eigenvalues: np.ndarray, energy_kept: Any) -> str | None:
    """What makes loaded whitening arrays unusable (shapes, types, non-finite values), or None."""
    if not all(np.issubdtype(array.dtype, np.floating) for array in (mean, projection, eigenvalues)):
        return "its arrays must hold floating-point numbers"
    if mean.ndim != 1 or projection.ndim != 2 or eigenvalues.shape != (projection.shape[0],):
        return f"inconsistent arrays: mean {mean.shape}, projection {projection.shape}, eigenvalues {eigenvalues.shape}"
    if projection.shape[1] != mean.shape[0]:
        return f"inconsistent whitening arrays {projection.shape} / {mean.shape}"
    if not all(np.isfinite(array).all() for array in (mean, projection, eigenvalues)):
        return "its arrays hold NaN or infinite values"
    if not isinstance(energy_kept, (int, float)) or isinstance(energy_kept, bool):
        return "its header lacks the kept energy"
    return None
