"""ASH, Activation SHaping (Djurisic, Bozanic, Ashok & Liu 2023, "Extremely Simple
Activation Shaping for Out-of-Distribution Detection").

Per sample, on the feature vector ``h`` ``[D]``: keep the ``k = D - round(D * p / 100)``
largest activations (the reference code's reading of "prune below the p-th percentile";
p = 90 by default is the fraction PRUNED; k >= 1 always), zero the rest, then

    ash-p: h' = pruned h
    ash-b: h' = kept positions set to s1 / k, where s1 = sum(h) before pruning
    ash-s: h' = pruned h * exp(s1 / s2), s2 = sum after pruning   (variant='s', default)

and score ``S(x) = logsumexp_c (h' W^T + b)_c`` (``then='energy'``, default, as the paper)
or ``sum_c softplus(.)`` (``then='jointenergy'``).

Differences from the paper: it shapes the pre-pooling activation map [C, H, W] and then
pools; we shape the pooled penultimate features (what the cache holds). Ties at the cut
are broken by position (stable sort), so results are deterministic. ASH assumes
non-negative (post-ReLU) features; if s2 = 0, ash-s leaves h' unscaled.

ASH has no statistics to fit, but it needs the head to recompute logits, so
``needs_fit = True`` and ``fit`` only stores ``W`` and ``b``.
"""
from __future__ import annotations

import numpy as np

from edge_ray.scores.base import (ENERGIES, FitData, Scorer, check_choice, check_head, check_range,
                                  energy_of)

_CHUNK = 4096


def shape_activations(h: np.ndarray, percentile: float, variant: str) -> np.ndarray:
    """ASH-p / -b / -s of each row of ``h`` ``[N, D]`` (float64)."""
    n, d = h.shape
    k = max(1, d - int(np.round(d * percentile / 100.0)))
    order = np.argsort(-h, axis=1, kind="stable")[:, :k]       # the k largest, ties by position
    rows = np.arange(n)[:, None]
    kept = h[rows, order]
    out = np.zeros_like(h)
    if variant == "p":
        out[rows, order] = kept
    elif variant == "b":
        out[rows, order] = (h.sum(axis=1) / k)[:, None]
    else:  # "s"
        s1, s2 = h.sum(axis=1), kept.sum(axis=1)
        ratio = np.divide(s1, s2, out=np.zeros_like(s1), where=s2 != 0)
        out[rows, order] = kept * np.exp(ratio)[:, None]
    return out


class ASH(Scorer):
    name = "ash"
    needs_fit = True
    requires = ("features",)
    state_keys = ("weight", "bias")

    def __init__(self, *, percentile: float = 90.0, variant: str = "s", then: str = "energy"):
        super().__init__()
        self._params = dict(percentile=check_range(percentile, "percentile", 0.0, 100.0, hi_open=True),
                            variant=check_choice(variant, "variant", ("p", "b", "s")),
                            then=check_choice(then, "then", ENERGIES))

    def _fit(self, data: FitData) -> dict:
        return {"weight": data.weight.astype(np.float64), "bias": data.bias.astype(np.float64)}

    def feature_dim(self) -> int:
        return self._state["weight"].shape[1]

    def _check_state(self, state: dict) -> None:
        check_head(self.name, state["weight"], state["bias"])

    def _score(self, features):
        scores = np.empty(features.shape[0])
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, features.shape[0], _CHUNK):  # bounds the argsort's memory
                shaped = shape_activations(features[start:start + _CHUNK],
                                           self._params["percentile"], self._params["variant"])
                logits = shaped @ self._state["weight"].T + self._state["bias"]
                scores[start:start + _CHUNK] = energy_of(logits, self._params["then"])
        if not np.isfinite(scores).all():
            raise ValueError(f"ash-{self._params['variant']} produced non-finite scores; the exp(s1/s2) "
                             "scale overflows when features are not non-negative (use variant='p')")
        return scores
