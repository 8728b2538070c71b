"""What every scorer shares: the fit data, the base class, input checks, stable energies.

Convention (ARCHITECTURE.md, "Scores"): every ``score`` returns float64 ``[N]`` with HIGHER = MORE
IN-DISTRIBUTION. Multi-label heads are sigmoid per class; logits are ``[N, C]``, features
the penultimate ``[N, D]`` vectors with ``logits = features @ weight.T + bias``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

ENERGIES = ("energy", "jointenergy")


def as_matrix(x, name: str) -> np.ndarray:
    """A finite float64 ``[N, K]`` array (N = 0 allowed), or a ValueError naming the problem."""
    if x is None:
        raise ValueError(f"{name} is required but was None")
    if hasattr(x, "detach"):  # a torch tensor; no torch import needed here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, K], got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} contains NaN or inf in {int(bad.sum())} of {arr.shape[0]} rows "
                         f"(first bad row {int(np.argmax(bad))})")
    return arr


def logsumexp(z: np.ndarray) -> np.ndarray:
    """Row-wise log sum_c exp(z_c), shifted by the row max so it never overflows."""
    if z.shape[1] == 0:
        return np.full(z.shape[0], -np.inf)
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + e^z) computed as logaddexp(0, z): finite for every finite z."""
    return np.logaddexp(0.0, z)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) from e^-|z|: never overflows, keeps tiny values (sigmoid(-100) = 3.7e-44)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def energy_of(logits: np.ndarray, then: str) -> np.ndarray:
    """``energy`` = logsumexp_c f_c (Liu et al. 2020); ``jointenergy`` = sum_c softplus(f_c)."""
    return logsumexp(logits) if then == "energy" else softplus(logits).sum(axis=1)


def check_choice(value, name: str, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_range(value, name: str, lo: float, hi: float, *, hi_open: bool = False) -> float:
    value = float(value)
    if not (lo <= value < hi if hi_open else lo <= value <= hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")
    return value


@dataclass(frozen=True)
class FitData:
    """Everything a stateful scorer may fit on; all of it from the ID TRAINING set.

    features ``[N, D]`` penultimate features, logits ``[N, C]``, targets ``[N, C]`` 0/1
    multi-hot, weight ``[C, D]`` and bias ``[C]`` of the linear head. Shapes and finiteness
    are checked on construction; dtypes are kept (scorers cast to float64 where it matters).
    """

    features: np.ndarray
    logits: np.ndarray
    targets: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self):
        for field in ("features", "logits", "targets", "weight", "bias"):
            value = getattr(self, field)
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            object.__setattr__(self, field, np.asarray(value))
        f, lg, t, w, b = self.features, self.logits, self.targets, self.weight, self.bias
        if f.ndim != 2 or f.shape[0] == 0:
            raise ValueError(f"FitData.features must be non-empty [N, D], got shape {f.shape}")
        if lg.ndim != 2 or lg.shape[0] != f.shape[0]:
            raise ValueError(f"FitData.logits must be [N, C] with N={f.shape[0]} (features {f.shape}), "
                             f"got shape {lg.shape}")
        if t.shape != lg.shape:
            raise ValueError(f"FitData.targets shape {t.shape} differs from logits shape {lg.shape}")
        if w.shape != (lg.shape[1], f.shape[1]):
            raise ValueError(f"FitData.weight must be [C, D] = {(lg.shape[1], f.shape[1])} "
                             f"(logits {lg.shape}, features {f.shape}), got shape {w.shape}")
        if b.shape != (lg.shape[1],):
            raise ValueError(f"FitData.bias must be [C] = ({lg.shape[1]},), got shape {b.shape}")
        for field in ("features", "logits", "weight", "bias"):
            if not np.isfinite(getattr(self, field)).all():
                raise ValueError(f"FitData.{field} contains NaN or inf")
        if not ((t == 0) | (t == 1)).all():
            raise ValueError("FitData.targets must hold only 0/1 values (multi-hot labels)")


class Scorer:
    """Base class. Subclasses set ``name``, ``requires`` (which of features/logits ``score``
    reads) and, if stateful, ``needs_fit = True``, ``state_keys``, ``_fit`` and ``feature_dim``."""

    name: ClassVar[str] = ""
    needs_fit: ClassVar[bool] = False
    needs_inputs: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("logits",)
    state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self):
        self._params: dict = {}  # subclasses fill in their validated hyperparameters
        self._state: dict | None = None

    @property
    def params(self) -> dict:
        return dict(self._params)

    @property
    def fitted(self) -> bool:
        return not self.needs_fit or self._state is not None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"

    # ---- fitting and state -------------------------------------------------------------
    def fit(self, data: FitData | None = None) -> "Scorer":
        if not self.needs_fit:
            return self
        if not isinstance(data, FitData):
            raise ValueError(f"{self.name} needs FitData from the ID training set to fit, "
                             f"got {type(data).__name__}")
        self._state = self._fit(data)
        return self

    def _fit(self, data: FitData) -> dict:
        raise NotImplementedError

    def feature_dim(self) -> int | None:
        """The feature dimension D the fitted state expects (None if features are unused)."""
        return None

    def state_dict(self) -> dict:
        self._check_fitted()
        return {k: np.array(v) if isinstance(v, np.ndarray) else float(v)
                for k, v in (self._state or {}).items()}

    def load_state_dict(self, state: Mapping) -> "Scorer":
        keys = set(state.keys())
        if keys != set(self.state_keys):
            raise ValueError(f"{self.name} state_dict keys {sorted(keys)} differ from the expected "
                             f"{sorted(self.state_keys)}")
        if not self.needs_fit:
            return self
        loaded = {}
        for k in self.state_keys:
            arr = np.array(state[k], dtype=np.float64)  # np.load gives 0-d arrays for floats
            if not np.isfinite(arr).all():
                raise ValueError(f"{self.name} state {k!r} contains NaN or inf")
            loaded[k] = float(arr) if arr.ndim == 0 else arr
        self._check_state(loaded)
        self._state = loaded
        return self

    def _check_state(self, state: dict) -> None:
        """Raise ValueError if a loaded state's shapes do not fit together."""

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ValueError(f"{self.name} must be fitted first: call fit(FitData) or load_state_dict()")

    # ---- scoring -----------------------------------------------------------------------
    def score(self, features=None, logits=None) -> np.ndarray:
        """Higher = more in-distribution. Only the inputs in ``requires`` are read."""
        self._check_fitted()
        given = {"features": features, "logits": logits}
        for k in self.requires:
            if given[k] is None:
                raise ValueError(f"{self.name} scores from {' and '.join(self.requires)}; {k} is missing")
        inputs = {k: as_matrix(given[k], k) for k in self.requires}
        if len({v.shape[0] for v in inputs.values()}) > 1:
            raise ValueError(f"features {inputs['features'].shape} and logits {inputs['logits'].shape} "
                             "have different numbers of rows")
        dim = self.feature_dim()
        if "features" in inputs and dim is not None and inputs["features"].shape[1] != dim:
            raise ValueError(f"{self.name}: features have D={inputs['features'].shape[1]} but the "
                             f"scorer was fitted on D={dim}")
        return np.asarray(self._score(**inputs), dtype=np.float64)

    def _score(self, **inputs) -> np.ndarray:
        raise NotImplementedError

    def score_inputs(self, model, x, *, input_std) -> np.ndarray:
        raise ValueError(f"{self.name} scores cached features/logits with score(); only scorers "
                         "with needs_inputs=True (odin) take the model and inputs")


def check_head(name: str, weight: np.ndarray, bias: np.ndarray) -> None:
    """A linear head as stored in a state dict: weight ``[C, D]`` and bias ``[C]``."""
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ValueError(f"{name} state: need weight [C, D] and bias [C], got {weight.shape} "
                         f"and {bias.shape}")
