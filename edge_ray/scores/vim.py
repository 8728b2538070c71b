"""ViM, Virtual-logit Matching (Wang, Li, Feng & Zhang 2022, "ViM: Out-Of-Distribution with
Virtual-logit Matching").

Fit, on ID training features ``h`` ``[N, D]``, logits ``f`` and the head ``W, b``:

    u     = -pinv(W) b                         (the origin of the logit space)
    P     = top-``dim`` eigenvectors of (h-u)^T (h-u) / N   (principal subspace; the
            covariance about u, not about the mean, as the reference code)
    r(h)  = || (h - u) P_perp ||                (residual norm; P_perp = the other D - dim)
    alpha = mean_i max_c f_ic / mean_i r(h_i)

Score (higher = more ID):

    S(x) = logsumexp_c f_c(x) - alpha * r(h(x))      (then='energy', default, as the paper)
         | sum_c softplus(f_c(x)) - alpha * r(h(x))  (then='jointenergy', a multi-label variant;
                                                      same alpha)

``dim`` default (``None``) follows the paper's rule by feature width: D >= 1500 -> 1000,
D >= 768 -> 512, else D // 2; it must satisfy 1 <= dim < D. ``score`` reads both the
features and the logits.
"""
from __future__ import annotations

import warnings

import numpy as np

from edge_ray.scores.base import ENERGIES, FitData, Scorer, check_choice, energy_of

_CHUNK = 8192


def default_dim(d: int) -> int:
    return 1000 if d >= 1500 else 512 if d >= 768 else d // 2


class ViM(Scorer):
    name = "vim"
    needs_fit = True
    requires = ("features", "logits")
    state_keys = ("origin", "residual_basis", "alpha")

    def __init__(self, *, dim: int | None = None, then: str = "energy"):
        if dim is not None and (int(dim) != dim or dim < 1):
            raise ValueError(f"dim must be a positive integer or None, got {dim!r}")
        super().__init__()
        self._params = dict(dim=None if dim is None else int(dim),
                            then=check_choice(then, "then", ENERGIES))

    def _fit(self, data: FitData) -> dict:
        d = data.features.shape[1]
        dim = self._params["dim"] if self._params["dim"] is not None else default_dim(d)
        if not 1 <= dim < d:
            raise ValueError(f"vim: principal dim must satisfy 1 <= dim < D={d}, got {dim}")
        origin = -np.linalg.pinv(data.weight.astype(np.float64)) @ data.bias.astype(np.float64)
        second_moment = np.zeros((d, d))
        for start in range(0, data.features.shape[0], _CHUNK):
            centred = data.features[start:start + _CHUNK].astype(np.float64) - origin
            second_moment += centred.T @ centred
        eigvals, eigvecs = np.linalg.eigh(second_moment / data.features.shape[0])
        order = np.argsort(eigvals)[::-1]
        basis = np.ascontiguousarray(eigvecs[:, order[dim:]])   # [D, D - dim]
        state = {"origin": origin, "residual_basis": basis, "alpha": 1.0}
        residual = self._residual(data.features.astype(np.float64), state)
        if residual.mean() <= 0:
            raise ValueError("vim: training features lie entirely in the principal subspace "
                             "(zero residual); use a smaller dim")
        state["alpha"] = float(data.logits.astype(np.float64).max(axis=1).mean() / residual.mean())
        if state["alpha"] <= 0:
            warnings.warn(f"vim: alpha = {state['alpha']:.3g} <= 0 (mean training max-logit is not "
                          "positive), so the residual term rewards instead of penalises", stacklevel=3)
        return state

    @staticmethod
    def _residual(features: np.ndarray, state: dict) -> np.ndarray:
        return np.linalg.norm((features - state["origin"]) @ state["residual_basis"], axis=1)

    def feature_dim(self) -> int:
        return self._state["origin"].shape[0]

    def _check_state(self, state: dict) -> None:
        origin, basis = state["origin"], state["residual_basis"]
        if origin.ndim != 1 or basis.ndim != 2 or basis.shape[0] != origin.shape[0]:
            raise ValueError(f"vim state: need origin [D] and residual_basis [D, D-dim], got "
                             f"{origin.shape} and {basis.shape}")
        if not isinstance(state["alpha"], float):
            raise ValueError(f"vim state: alpha must be a scalar, got {state['alpha']!r}")

    def _score(self, features, logits):
        virtual = self._state["alpha"] * self._residual(features, self._state)
        return energy_of(logits, self._params["then"]) - virtual
