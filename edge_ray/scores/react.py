"""ReAct (Sun, Guo & Li 2021, "ReAct: Out-of-distribution Detection With Rectified
Activations").

Fit: ``c = percentile(all ID training activations, p)`` — the p-th percentile of the
flattened ``[N, D]`` training features (p = 90 by default, as the paper), plus the head
``W, b``. Score:

    h_bar = min(h, c)                 (element-wise clip from above)
    f_bar = h_bar W^T + b
    S(x)  = logsumexp_c f_bar_c       (then='energy', default, as the paper)
          | sum_c softplus(f_bar_c)   (then='jointenergy', the multi-label energy)
"""
from __future__ import annotations

import numpy as np

from edge_ray.scores.base import (ENERGIES, FitData, Scorer, check_choice, check_head, check_range,
                                  energy_of)


class ReAct(Scorer):
    name = "react"
    needs_fit = True
    requires = ("features",)
    state_keys = ("threshold", "weight", "bias")

    def __init__(self, *, percentile: float = 90.0, then: str = "energy"):
        super().__init__()
        self._params = dict(percentile=check_range(percentile, "percentile", 0.0, 100.0),
                            then=check_choice(then, "then", ENERGIES))

    def _fit(self, data: FitData) -> dict:
        threshold = float(np.percentile(data.features, self._params["percentile"]))
        return {"threshold": threshold, "weight": data.weight.astype(np.float64),
                "bias": data.bias.astype(np.float64)}

    def feature_dim(self) -> int:
        return self._state["weight"].shape[1]

    def _check_state(self, state: dict) -> None:
        check_head(self.name, state["weight"], state["bias"])
        if not isinstance(state["threshold"], float):
            raise ValueError(f"react state: threshold must be a scalar, got {state['threshold']!r}")

    def _score(self, features):
        clipped = np.minimum(features, self._state["threshold"])
        logits = clipped @ self._state["weight"].T + self._state["bias"]
        return energy_of(logits, self._params["then"])
