"""Loaders: outside formats -> rnnfast layers with canonical (PyTorch) weights."""
