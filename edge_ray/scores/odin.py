"""ODIN (Liang, Li & Srikant 2018, "Enhancing The Reliability of Out-of-distribution Image
Detection in Neural Networks"), multi-label form with a sigmoid per class.

1. Pseudo-labels from the clean input: ``y_c = 1[sigmoid(f_c(x)) > 0.5]`` (i.e. ``f_c > 0``).
2. Input perturbation against the tempered loss, one signed-gradient step per pixel,
   divided per channel by the normalisation std (the step is ``eps`` in [0, 1] pixel
   units, as the original code does):

       x' = x - eps * sign(grad_x sum_c BCE(f_c(x) / T, y_c)) / input_std

3. ``S(x) = max_c sigmoid(f_c(x') / T)`` (``reduce='max'``, default) or
   ``sum_c sigmoid(f_c(x') / T)`` (``reduce='sum'``).

Defaults: ``temperature = 1000`` and ``eps = 0.0014`` (Liang et al.'s usual values; tune
them on validation data). Differences from Wang et al. 2021's multi-label code: they take
the BCE on the untempered logits and, for ``max``, only the arg-max class' term; we follow
ODIN's tempered loss over all classes. With ``eps = 0`` no gradient is taken, and ``score``
also works from cached logits.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from edge_ray.scores.base import Scorer, as_matrix, check_choice, sigmoid


class ODIN(Scorer):
    name = "odin"
    needs_inputs = True

    def __init__(self, *, temperature: float = 1000.0, eps: float = 0.0014, reduce: str = "max"):
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not float(eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__()
        self._params = dict(temperature=float(temperature), eps=float(eps),
                            reduce=check_choice(reduce, "reduce", ("max", "sum")))

    def _reduce(self, logits: np.ndarray) -> np.ndarray:
        p = sigmoid(logits / self._params["temperature"])
        return p.max(axis=1) if self._params["reduce"] == "max" else p.sum(axis=1)

    def _score(self, logits):
        if self._params["eps"] > 0:
            raise ValueError(f"odin with eps={self._params['eps']} perturbs the inputs: call "
                             "score_inputs(model, x, input_std=...) (or build it with eps=0)")
        return self._reduce(logits)

    def perturb(self, model, x: torch.Tensor, *, input_std) -> torch.Tensor:
        """The perturbed input ``x'`` of step 2 (``x`` itself, detached, when eps = 0)."""
        x = x.detach()
        eps = self._params["eps"]
        if eps == 0:
            return x
        std = _channel_std(input_std, x)
        with _eval_mode(model), torch.enable_grad():
            x_in = x.clone().requires_grad_(True)
            logits = _checked_logits(model(x_in), x)
            pseudo = (logits.detach() > 0).to(logits.dtype)  # sigmoid(f) > 0.5
            loss = F.binary_cross_entropy_with_logits(
                logits / self._params["temperature"], pseudo, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in)  # w.r.t. the input only
        return x - eps * torch.sign(grad) / std

    def score_inputs(self, model, x: torch.Tensor, *, input_std) -> np.ndarray:
        """ODIN scores ``[N]`` for a batch ``x`` ``[N, C, H, W]`` of normalised images.

        ``model(x)`` must return logits ``[N, classes]``; it runs in eval mode (its previous
        mode is restored) and no parameter gradient is accumulated."""
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise ValueError(f"odin expects an input tensor [N, C, H, W], got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        x_pert = self.perturb(model, x, input_std=input_std)
        with _eval_mode(model), torch.no_grad():
            logits = _checked_logits(model(x_pert), x)
        return self._reduce(as_matrix(logits.double().cpu().numpy(), "odin logits"))


@contextmanager
def _eval_mode(model):
    """Run ``model`` in eval mode (dropout off, BatchNorm frozen), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _channel_std(input_std, x: torch.Tensor) -> torch.Tensor:
    """The normalisation std as a tensor broadcastable to ``x``: scalar or one per channel."""
    std = torch.as_tensor(input_std, dtype=x.dtype, device=x.device).flatten()
    if std.numel() not in (1, x.shape[1]):
        raise ValueError(f"input_std has {std.numel()} values but the input {tuple(x.shape)} has "
                         f"{x.shape[1]} channels (pass one std per channel or a scalar)")
    if not bool((std > 0).all()):
        raise ValueError(f"input_std must be > 0, got {std.tolist()}")
    return std.view(1, -1, *([1] * (x.ndim - 2))) if std.numel() > 1 else std


def _checked_logits(logits, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"odin needs model(x) to return logits [N, classes] with N={x.shape[0]}, "
                         f"got {getattr(logits, 'shape', type(logits).__name__)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("odin: the model returned NaN or inf logits")
    return logits
