"""Heat maps of attention weights (optional extra: ``pip install rnnfast[plot]``, i.e. matplotlib).

matplotlib is imported only when a function here is called; ``import rnnfast`` never needs it.

    >>> res = model.greedy(src, src_lengths, end_token=1, return_attention=True)
    >>> from rnnfast.plotting import plot_attention
    >>> plot_attention(res.attention[0, : res.lengths[0], : src_lengths[0]], "attn.png",
    ...                source_labels=src_words, target_labels=out_words)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnfast.errors import ShapeError, UnsupportedError

__all__ = ["plot_attention"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise UnsupportedError(
            "plot_attention needs matplotlib, which is not installed: pip install 'rnnfast[plot]' "
            "(or pip install matplotlib)"
        ) from exc
    matplotlib.use("Agg", force=False)  # no display needed: we only write files
    import matplotlib.pyplot as plt

    return plt


def plot_attention(
    weights: Any,
    path: str | os.PathLike,
    source_labels: Sequence[str] | None = None,
    target_labels: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    dpi: int = 120,
) -> str:
    """Write a heat map PNG of attention weights.

    Parameters
    ----------
    weights : (T, S) array: row t = weights of output step t over the S source positions (e.g.
        ``DecodeResult.attention[b, :length]``, or one head of MultiheadAttention's (L, S) weights)
    path : output file (PNG)
    source_labels : S labels for the x axis; target_labels : T labels for the y axis
    title, cmap, dpi : passed to matplotlib

    Returns
    -------
    The path written, as a string.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ShapeError(f"weights: expected a 2-D (T, S) array, got shape {w.shape}")
    T, S = w.shape
    if source_labels is not None and len(source_labels) != S:
        raise ShapeError(f"source_labels: expected {S} labels, got {len(source_labels)}")
    if target_labels is not None and len(target_labels) != T:
        raise ShapeError(f"target_labels: expected {T} labels, got {len(target_labels)}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * S + 1.5), max(2.5, 0.4 * T + 1.2)))
    try:
        im = ax.imshow(w, cmap=cmap, aspect="auto", vmin=0.0, vmax=max(1e-12, float(np.nanmax(w)) if w.size else 1.0))
        ax.set_xlabel("source position")
        ax.set_ylabel("output step")
        if source_labels is not None:
            ax.set_xticks(range(S))
            ax.set_xticklabels([str(s) for s in source_labels], rotation=90)
        if target_labels is not None:
            ax.set_yticks(range(T))
            ax.set_yticklabels([str(t) for t in target_labels])
        if title:
            ax.set_title(title)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = os.fspath(path)
        fig.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
