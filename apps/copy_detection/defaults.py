"""The copy-detection app's defaults and calibrated thresholds (SPEC §12), import-light for the command line."""

from __future__ import annotations

from dataclasses import dataclass

from dino.hub.releases import BUNDLED_VIT_TINY, IMGFOCUS_WEIGHTS

__all__ = [
    "CALIBRATIONS",
    "DEFAULT_CALIBRATION",
    "DEFAULT_CANDIDATES",
    "DEFAULT_MIN_INLIERS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_VERIFIER",
    "STRONG_PER_ORIGINAL",
    "TOP_K",
    "VERIFIERS",
    "CopyCalibration",
]

# SPEC §12: only the 20 nearest database images of each query are scored.
TOP_K = 20
# Local-feature verifiers of `find --verify`.
VERIFIERS = ("dino", "sift")
# Nearest images by the global descriptor that a query examines (verifies, with verification): find's shortlist,
# and the one the calibration of its verified-match threshold must use.
DEFAULT_CANDIDATES = 10
# Copydays has 229 strong attacks for 157 originals; three per original gives every edit type room to appear.
STRONG_PER_ORIGINAL = 3


@dataclass(frozen=True)
class CopyCalibration:
    """The decision thresholds of one backbone, each the max-F1 value on the real-check benchmark.

    Attributes:
        threshold: Cosine similarity of the unwhitened copy-detection descriptor from which a pair is a copy.
        min_inliers: Per calibrated verifier, the verified matches from which a shortlisted candidate is a copy.
        verifier: The verifier of ``find --verify`` without a value: the calibrated one with the best F1.
    """

    threshold: float
    min_inliers: dict[str, int]
    verifier: str


# Calibrated for the backbones this project offers offline (docs/copy_detection.md, "Calibrating the copy
# threshold" and "Verified copies"; max F1 over 420 copy and 13,440 non-copy pairs, shortlist of 10):
CALIBRATIONS: dict[str, CopyCalibration] = {
    # threshold 0.9425: P 0.765, R 0.729; sift 58 matches: P 0.843, R 0.833. The `dino` verifier was not
    # calibrated for this backbone: its patch tokens take 14 s a query on two CPU cores (1.6 hours for the
    # benchmark); `copy-detect eval --verify dino` calibrates it where there is time.
    IMGFOCUS_WEIGHTS: CopyCalibration(0.9425, {"sift": 58}, "sift"),
    # threshold 0.9846: P 0.928, R 0.707; dino 42 matches: P 0.857, R 0.914; sift 50: P 0.851, R 0.845.
    BUNDLED_VIT_TINY: CopyCalibration(0.985, {"dino": 42, "sift": 50}, "dino"),
}
# Weights without their own calibration use the default backbone's (`copy-detect eval` calibrates any other).
DEFAULT_CALIBRATION = CALIBRATIONS[IMGFOCUS_WEIGHTS]
DEFAULT_THRESHOLD = DEFAULT_CALIBRATION.threshold
DEFAULT_MIN_INLIERS = DEFAULT_CALIBRATION.min_inliers
DEFAULT_VERIFIER = DEFAULT_CALIBRATION.verifier
