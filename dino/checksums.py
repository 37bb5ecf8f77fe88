"""SHA-256 checksums of files and of a model's weights.

Below every module that reads or writes weights (:mod:`dino.checkpoint`, :mod:`dino.hub`, :mod:`dino.search`),
so that each can name what it read without importing the others.
"""

from __future__ import annotations

import hashlib
import os

import torch

__all__ = ["file_sha256", "state_dict_sha256"]


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Hex SHA-256 of a model's weights (keys, dtypes, shapes and values, in key order).

    Identifies the weights themselves, whatever file or release name they came from.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
