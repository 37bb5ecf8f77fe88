"""Weights sources that need conversion."""
