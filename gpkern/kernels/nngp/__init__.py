"""Infinite-width network kernels (NNGP and NTK)."""
