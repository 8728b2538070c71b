"""Stateless scores computed from the logits ``f(x)`` of a multi-label (sigmoid) head.

All take logits ``[N, C]`` and return ``[N]`` float64, higher = more in-distribution.
"""
from __future__ import annotations

from edge_ray.scores.base import Scorer, logsumexp, sigmoid, softplus


class MaxLogit(Scorer):
    """MaxLogit (Hendrycks et al. 2022, "Scaling Out-of-Distribution Detection for
    Real-World Settings"): ``S(x) = max_c f_c(x)``."""

    name = "maxlogit"

    def _score(self, logits):
        return logits.max(axis=1)


class MSP(Scorer):
    """Maximum probability (Hendrycks & Gimpel 2017, "A Baseline for Detecting Misclassified
    and Out-of-Distribution Examples"), multi-label form:

        S(x) = max_c sigmoid(f_c(x))

    With a sigmoid head each class has its own probability, so the softmax of the original
    becomes a per-class sigmoid (as ``--ood prob --method max`` in Wang et al. 2021's code).
    This is a monotone transform of MaxLogit: same ranking, except that it saturates at 1.0
    for logits above ~37 in float64, where ties appear."""

    name = "msp"

    def _score(self, logits):
        return sigmoid(logits.max(axis=1))  # sigmoid is increasing: max commutes with it


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
