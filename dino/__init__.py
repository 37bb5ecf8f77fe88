"""dino: a reimplementation of DINO (Caron et al., ICCV 2021) and its evaluation protocols."""

__version__ = "0.1.0"
