"""Evaluation protocols on frozen features: weighted k-NN (SPEC §8) and linear probing (SPEC §9)."""
