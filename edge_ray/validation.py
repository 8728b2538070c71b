"""Input checks shared by losses, metrics and OE selection.

They run before any arithmetic so that bad input fails with a ValueError that names the
argument and the shapes, instead of a NaN loss or a crash deep inside a worker.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

_STATE = threading.local()


@contextlib.contextmanager
def shape_checks_only():
    """Within this block `check_finite` and `check_binary` skip torch tensors.

    Reading a tensor's values back is a host synchronisation (three per training step
    for the loss inputs), which stalls the GPU between forward and backward. The training
    step runs its loss inside this block: its labels are 0/1 by construction (the reader
    builds them) and a NaN or inf reaches the loss, which `loop.train_epoch` checks when
    it reads the loss back. Shapes are still checked; numpy input is always checked.
    """
    before = getattr(_STATE, "skip_values", False)
    _STATE.skip_values = True
    try:
        yield
    finally:
        _STATE.skip_values = before


def _skip(x) -> bool:
    return isinstance(x, torch.Tensor) and getattr(_STATE, "skip_values", False)


def _shape(x) -> tuple:
    return tuple(x.shape)


def check_finite(x, name: str) -> None:
    """Raise if ``x`` holds NaN or inf (torch tensor or numpy array)."""
    if _skip(x):
        return
    if isinstance(x, torch.Tensor):
        bad = not bool(torch.isfinite(x).all())
    else:
        bad = not bool(np.isfinite(np.asarray(x, dtype=np.float64)).all())
    if bad:
        raise ValueError(f"{name} contains NaN or inf; check the model output or the input file")


def check_nonempty(x, name: str) -> None:
    if _shape(x)[0] == 0:
        raise ValueError(f"{name} is empty (shape {_shape(x)}); at least one sample is needed")


def check_binary(x, name: str) -> None:
    """Raise unless every entry is exactly 0 or 1."""
    if _skip(x):
        return
    if isinstance(x, torch.Tensor):
        ok = bool(((x == 0) | (x == 1)).all())
    else:
        arr = np.asarray(x)
        ok = bool(((arr == 0) | (arr == 1)).all())
    if not ok:
        raise ValueError(f"{name} must hold only 0/1 values (multi-hot labels)")


def check_logits_pair(logits_id, targets, logits_oe=None) -> None:
    """Shapes and values of a (logits, targets[, OE logits]) triple."""
    if logits_id.ndim != 2:
        raise ValueError(f"ID logits must be [N, C], got shape {_shape(logits_id)}")
    if _shape(targets) != _shape(logits_id):
        raise ValueError(f"targets shape {_shape(targets)} does not match ID logits shape {_shape(logits_id)}")
    check_nonempty(logits_id, "ID logits")
    check_finite(logits_id, "ID logits")
    if logits_oe is not None:
        if logits_oe.ndim != 2 or logits_oe.shape[1] != logits_id.shape[1]:
            raise ValueError(f"OE logits shape {_shape(logits_oe)} does not match ID logits shape "
                             f"{_shape(logits_id)} (same number of classes needed)")
        check_nonempty(logits_oe, "OE logits")
        check_finite(logits_oe, "OE logits")


def _as_float64(x, name: str, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {what}, got shape {arr.shape}")
    check_nonempty(arr, name)
    check_finite(arr, name)
    return arr


def as_float64_vector(x, name: str) -> np.ndarray:
    """A 1-D, non-empty, finite float64 array, or a ValueError saying which of those failed."""
    return _as_float64(x, name, 1, "1-D scores")


def as_float64_matrix(x, name: str) -> np.ndarray:
    """A 2-D, non-empty, finite float64 array, or a ValueError saying which of those failed."""
    return _as_float64(x, name, 2, "a 2-D matrix")
