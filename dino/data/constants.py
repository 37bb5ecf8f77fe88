"""The protocols' preprocessing constants and the token budget of one image.

Import-light (no torch): the command line's ``--help`` reads them without loading PyTorch.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_TOKENS", "IMAGENET_MEAN", "IMAGENET_STD", "KNN_CROP", "KNN_RESIZE", "PREPROCESSING"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SPEC §8: k-NN / linear validation resize and crop.
KNN_RESIZE = 256
KNN_CROP = 224
# The preprocessings `dino.data.transforms.make_transform` builds by name.
PREPROCESSING = ("knn", "square", "short-side", "thumbnail")
# Patch tokens one preprocessed image may make. Attention costs grow with the square of the token count (the
# explicit last block holds heads × N² weights: 1.6 GB for a ViT-S at 8192 tokens), so an input is refused
# above this instead of running for minutes. 8192 holds every reference protocol: 480×854 at patch 8 is 6360.
DEFAULT_MAX_TOKENS = 8192
