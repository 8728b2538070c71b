"""KNN, deep nearest neighbours (Sun, Ming, Zhu & Li 2022, "Out-of-Distribution Detection
with Deep Nearest Neighbors", ICML).

Fit, on ID training features ``h_i`` ``[N, D]``: every row L2-normalised,
``z_i = h_i / (||h_i||_2 + 1e-10)`` (the reference code's normaliser), and a random share
``keep`` of the rows (the paper's alpha; a fixed ``seed``, so the same rows every time) kept
as the bank, float32. Score (higher = more ID):

    S(x) = -|| z(x) - z_(k)(x) ||_2

the negated Euclidean distance from the normalised feature of ``x`` to its k-th nearest
bank row, found by exact (exhaustive) search. The released code ranks by the squared
distance (faiss ``IndexFlatL2``); the square root changes no ranking, hence no FPR95, AUROC
or AUPR.

Defaults ``k = 50``, ``keep = 1.0``: the paper's CIFAR-10 setting (k = 50 over all 50,000
training images; k = 200 for CIFAR-100, both picked from a sweep of k). For ImageNet-1k
(1.28M images) its released code uses k = 1000 over all of them; the paper also samples a
random share of the training set, with k scaled down with it. This project's ID
training sets are CIFAR-sized, not ImageNet-sized (the EDGE paper's: COCO 82,783 and NUS-WIDE
119,986 training images, VOC fewer; and ``eval`` fits on at most 20,000 of them,
``EvalOptions.fit_samples``), so
the CIFAR-10 values are the default; pass ``k`` / ``keep`` to change them. Fewer than ``k``
kept rows is refused.

Search: faiss-cpu's ``IndexFlatL2`` (exact, exhaustive; float32; every core), the library
of the reference code. Measured against scikit-learn's ``NearestNeighbors(algorithm="brute")``
on 50,000 x 2048 features and 10,000 queries (``benchmarks/knn.py``, ``benchmarks/README.md``,
"KNN search"): 0.47x its CPU time and 0.41x its wall time, at a k-th distance within 4e-7
of a float64 brute force.

The fitted state is the bank ``[M, D]`` float32 (M = kept rows): 20,000 x 2048 ResNet-50
features are 164 MB in an exported detector folder; ``keep`` makes it smaller.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from edge_ray.scores.base import FitData, Scorer

EPS = 1e-10  # the reference code's normaliser: x / (||x|| + 1e-10)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Each row over its L2 norm (+ ``EPS``: a zero row stays zero), float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS)


def kth_distance(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact Euclidean distance of every query row to its k-th nearest ``bank`` row
    (faiss ``IndexFlatL2``: float32 squared distances; the root taken in float64)."""
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    squared, _ = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.sqrt(np.maximum(squared[:, k - 1].astype(np.float64), 0.0))


class KNN(Scorer):
    name = "knn"
    needs_fit = True
    requires = ("features",)
    state_keys = ("bank",)

    def __init__(self, *, k: int = 50, keep: float = 1.0, seed: int = 0):
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not 0 < float(keep) <= 1:
            raise ValueError(f"keep (the share of ID training features kept) must lie in (0, 1], got {keep}")
        super().__init__()
        self._params = dict(k=int(k), keep=float(keep), seed=int(seed))

    def _fit(self, data: FitData) -> dict:
        n = data.features.shape[0]
        kept = n if self._params["keep"] >= 1 else max(1, math.ceil(self._params["keep"] * n))
        if kept < self._params["k"]:
            raise ValueError(f"knn: k={self._params['k']} neighbours but only {kept} ID training features "
                             f"kept (keep={self._params['keep']:g} of {n}); lower k or raise keep")
        rows = np.arange(n)
        if kept < n:
            rows = np.sort(np.random.default_rng(self._params["seed"]).choice(n, kept, replace=False))
        return {"bank": np.ascontiguousarray(normalize_rows(data.features[rows]), dtype=np.float32)}

    def feature_dim(self) -> int:
        return self._state["bank"].shape[1]

    def state_dict(self) -> dict:
        self._check_fitted()
        return {"bank": np.array(self._state["bank"], dtype=np.float32)}

    def load_state_dict(self, state: Mapping) -> "KNN":
        """The bank stays float32 (the base class would widen it to float64)."""
        if set(state.keys()) != set(self.state_keys):
            raise ValueError(f"knn state_dict keys {sorted(state.keys())} differ from the expected {list(self.state_keys)}")
        bank = np.ascontiguousarray(state["bank"], dtype=np.float32)
        if bank.ndim != 2 or bank.shape[0] < self._params["k"]:
            raise ValueError(f"knn state: need bank [M, D] with M >= k={self._params['k']}, got {bank.shape}")
        if not np.isfinite(bank).all():
            raise ValueError("knn state 'bank' contains NaN or inf")
        self._state = {"bank": bank}
        return self

    def _score(self, features):
        if features.shape[0] == 0:
            return np.zeros(0)
        queries = normalize_rows(features).astype(np.float32)
        return -kth_distance(self._state["bank"], queries, self._params["k"])
