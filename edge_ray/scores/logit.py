"""Stateless scores computed from the logits ``f(x)`` of a multi-label (sigmoid) head.

All take logits ``[N, C]`` and return ``[N]`` float64, higher = more in-distribution.
"""
from __future__ import annotations

import numpy as np

from edge_ray.scores.base import Scorer, logsumexp, softplus


class MaxLogit(Scorer):
    """MaxLogit (Hendrycks et al. 2022, "Scaling Out-of-Distribution Detection for
    Real-World Settings"): ``S(x) = max_c f_c(x)``."""

    name = "maxlogit"

    def _score(self, logits):
        return logits.max(axis=1)


class MSP(Scorer):
    """Maximum softmax probability (Hendrycks & Gimpel 2017, arXiv:1610.02136), over the
    class logits, as the paper's released evaluation code computes it:

        S(x) = max_c softmax(f(x))_c = 1 / sum_c exp(f_c(x) - max_c' f_c'(x))

    (A per-class ``max_c sigmoid(f_c)`` would rank exactly as MaxLogit.) The row max is
    subtracted, so the result is finite and in [1/C, 1] for any finite logits."""

    name = "msp"

    def _score(self, logits):
        shifted = logits - logits.max(axis=1, keepdims=True)   # max term is exp(0) = 1
        return 1.0 / np.exp(shifted).sum(axis=1)


class Energy(Scorer):
    """Energy score (Liu et al. 2020, "Energy-based Out-of-distribution Detection"):

        S(x) = T * logsumexp_c (f_c(x) / T)      (the negative free energy; T = 1 default)

    Defined for a softmax head; applied here to the multi-label logits as the paper's
    baseline. Computed with a max shift, so it is finite for any finite logit."""

    name = "energy"

    def __init__(self, *, temperature: float = 1.0):
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__()
        self._params = dict(temperature=float(temperature))

    def _score(self, logits):
        t = self._params["temperature"]
        return t * logsumexp(logits / t)


class MaxEnergy(Scorer):
    """MaxEnergy: the largest label-wise energy (Wang et al. 2021, "Can multi-label
    classification networks know what they don't know?", the ``max`` variant):

        S(x) = max_c log(1 + e^{f_c(x)}) = max_c softplus(f_c(x))

    Computed as ``logaddexp(0, f)``, never ``log(1 + exp(f))`` (overflows above ~709)."""

    name = "maxenergy"

    def _score(self, logits):
        return softplus(logits).max(axis=1)


class JointEnergy(Scorer):
    """JointEnergy (Wang et al. 2021; EDGE paper Eq. 3):

        S(x) = sum_c log(1 + e^{f_c(x)}) = sum_c softplus(f_c(x))

    Computed as ``logaddexp(0, f)``: finite for every finite logit."""

    name = "jointenergy"

    def _score(self, logits):
        return softplus(logits).sum(axis=1)


__all__ = ["MaxLogit", "MSP", "Energy", "MaxEnergy", "JointEnergy"]
