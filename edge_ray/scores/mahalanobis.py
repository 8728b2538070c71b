"""Mahalanobis (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks"), multi-label form as in Wang et al. 2021's code.

Fit, on ID training features ``h_i`` with multi-hot targets ``y_ic``:

    mu_c  = mean of h_i over the samples positive for class c
    Sigma = 1/M * sum over (i, c) with y_ic = 1 of (h_i - mu_c)(h_i - mu_c)^T

i.e. one tied covariance over one class-centred row per (sample, positive class) pair
(M pairs; the maximum-likelihood normalisation of scikit-learn's ``EmpiricalCovariance``).
A sample with several labels contributes one row per label; a sample with none is unused.
Classes with no positive training sample have no mean and are left out of the max.
The precision is ``pinv(Sigma)`` (Hermitian pseudo-inverse, so a singular Sigma is fine).

Score (higher = more ID):  ``S(x) = max_c -(h - mu_c)^T Sigma^+ (h - mu_c)``.

Only the penultimate layer is used; Lee et al.'s multi-layer ensemble with a logistic
regression on top and their input pre-processing (a perturbation of x) are not implemented.
"""
from __future__ import annotations

import numpy as np

from edge_ray.scores.base import FitData, Scorer

_CHUNK = 4096  # rows per block: bounds the float64 temporaries for large N


class Mahalanobis(Scorer):
    name = "mahalanobis"
    needs_fit = True
    requires = ("features",)
    state_keys = ("means", "precision")

    def _fit(self, data: FitData) -> dict:
        feats, targets = data.features, data.targets.astype(bool)
        present = np.flatnonzero(targets.any(axis=0))
        if present.size == 0:
            raise ValueError("mahalanobis: no training sample has a positive label; class means "
                             "are undefined")
        dim = feats.shape[1]
        means = np.empty((present.size, dim))
        scatter = np.zeros((dim, dim))
        pairs = 0
        for k, c in enumerate(present):
            rows = feats[targets[:, c]].astype(np.float64)
            means[k] = rows.mean(axis=0)
            centred = rows - means[k]
            scatter += centred.T @ centred
            pairs += rows.shape[0]
        precision = np.linalg.pinv(scatter / pairs, hermitian=True)
        return {"means": means, "precision": (precision + precision.T) / 2}

    def feature_dim(self) -> int:
        return self._state["precision"].shape[0]

    def _check_state(self, state: dict) -> None:
        means, precision = np.asarray(state["means"]), np.asarray(state["precision"])
        d = precision.shape[0] if precision.ndim == 2 else -1
        if precision.shape != (d, d) or means.ndim != 2 or means.shape[1] != d:
            raise ValueError(f"mahalanobis state: need means [K, D] and precision [D, D], got "
                             f"{means.shape} and {precision.shape}")

    def _score(self, features):
        means, precision = self._state["means"], self._state["precision"]
        # Shift everything by the mean of the class means: distances are unchanged, and the
        # expanded form below loses less to cancellation.
        centre = means.mean(axis=0)
        m = means - centre
        m_p = m @ precision                                   # [K, D]
        m_term = np.einsum("kd,kd->k", m_p, m)                # mu^T P mu
        out = np.empty(features.shape[0])
        for start in range(0, features.shape[0], _CHUNK):
            h = features[start:start + _CHUNK] - centre
            h_term = np.einsum("nd,nd->n", h @ precision, h)  # h^T P h
            dist = h_term[:, None] - 2.0 * (h @ m_p.T) + m_term[None, :]
            out[start:start + _CHUNK] = -np.maximum(dist, 0.0).min(axis=1)
        return out
