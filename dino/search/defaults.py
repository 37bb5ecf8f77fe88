"""The descriptor recipes' and the index's defaults (SPEC §12, §13), import-light for the command line."""

from __future__ import annotations

__all__ = ["COPY_DETECTION_SIZE", "DEFAULT_CHECKPOINT_EVERY", "DEFAULT_FACTORY", "POOLINGS", "RETRIEVAL_SIZE"]

POOLINGS: tuple[str, ...] = ("cls", "gem", "cls+gem")
# SPEC §13: retrieval thumbnails to 224 (ROxford) or 512 (RParis); SPEC §12: copy detection squares to 320.
RETRIEVAL_SIZE = 224
COPY_DETECTION_SIZE = 320
# SPEC §13: `IndexFlatIP` over L2-normalised vectors ranks exactly as the reference's matmul and argsort.
DEFAULT_FACTORY = "Flat"
# Partial descriptors are flushed to the sidecar after this many batches.
DEFAULT_CHECKPOINT_EVERY = 20
