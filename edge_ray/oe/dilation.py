"""OE dataset selection by the feature-based dilation distance (paper Eq. 9, Fig. 3).

``d = mean_b || s_id,b[:k] - s_oe,b[:k] ||_2`` over consecutive batches of ``batch_size``
rows, where ``s`` are the singular values of a batch's penultimate feature matrix, in
descending order. Smaller = more informative OE set. The released ``oe.py`` averages the
spectra across batches before the norm and never cuts to k; this follows the paper.
"""
from __future__ import annotations

import numpy as np
import torch

from edge_ray.validation import as_float64_matrix

SPECTRUM_METHODS = ("gram", "svd")


def top_singular_values(batch: torch.Tensor, k: int, method: str = "gram") -> torch.Tensor:
    """Top-k singular values of a [B, D] matrix in float64, descending.

    ``gram`` takes the eigenvalues of the smaller Gram matrix (B x B or D x D): one
    symmetric eigensolve instead of an SVD, much cheaper when B << D (e.g. 64 x 2048).
    ``svd`` is ``torch.linalg.svdvals``. Values beyond the matrix rank are zero, so a ``k``
    larger than ``min(B, D)`` is padded with zeros.
    """
    x = batch.to(torch.float64)
    if method == "gram":
        gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
        s = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(0)
    elif method == "svd":
        s = torch.linalg.svdvals(x)
    else:
        raise ValueError(f"method must be one of {SPECTRUM_METHODS}, got {method!r}")
    if s.numel() < k:
        s = torch.cat([s, s.new_zeros(k - s.numel())])
    return s[:k]


def check_dilation_args(n_id: int, n_oe: int, k: int, batch_size: int) -> int:
    """Validate the arguments; return the number of full batches used."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size > n_id or batch_size > n_oe:
        raise ValueError(f"batch_size {batch_size} is larger than a feature set "
                         f"(ID has {n_id} rows, OE has {n_oe}); lower --batch-size")
    return min(n_id, n_oe) // batch_size


def batch_distances(id_features, oe_features, *, k: int, batch_size: int,
                    method: str = "gram") -> np.ndarray:
    """``d_b`` for every full batch b (see module docstring)."""
    f_id = torch.from_numpy(as_float64_matrix(id_features, "ID features"))
    f_oe = torch.from_numpy(as_float64_matrix(oe_features, "OE features"))
    if f_id.shape[1] != f_oe.shape[1]:
        raise ValueError(f"ID features {tuple(f_id.shape)} and OE features {tuple(f_oe.shape)} "
                         "have different feature dimensions; use the same backbone for both")
    n_batches = check_dilation_args(f_id.shape[0], f_oe.shape[0], k, batch_size)
    out = np.empty(n_batches)
    for b in range(n_batches):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        s_id = top_singular_values(f_id[rows], k, method)
        s_oe = top_singular_values(f_oe[rows], k, method)
        out[b] = float(torch.linalg.vector_norm(s_id - s_oe))
    return out


def dilation_distance(id_features, oe_features, *, k: int, batch_size: int,
                      method: str = "gram") -> float:
    """Paper Eq. 9 averaged over batches; smaller = more informative OE set."""
    return float(batch_distances(id_features, oe_features, k=k, batch_size=batch_size,
                                 method=method).mean())
