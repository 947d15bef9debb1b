"""Probabilistic models on torch tensors (no numpy, no scikit-learn)."""
