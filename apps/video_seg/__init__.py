"""DAVIS-style semi-supervised video object segmentation by label propagation of DINO patch features (SPEC §11)."""
