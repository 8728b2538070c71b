"""What a training run is built from: its loss (``losses.LOSSES``), optimiser and
learning-rate schedule, from the config's sections."""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from edge_ray import losses
from edge_ray.config import LossConfig, TrainConfig
from edge_ray.train.recipes import resolve_train


def make_loss_fn(cfg: LossConfig, *, class_freq=None, num_train: int | None = None,
                 gap_scope: str = "rank", id_batches=None, shares: losses.Shares = losses.NO_SHARES):
    """``fn(logits_id, targets, logits_oe, epoch) -> dict`` for ``cfg.method`` (``losses.LOSSES``;
    EDGE's tau schedule is in its entry). ``gap_scope="global"``: EDGE's bottom-k over every DDP
    rank's ID batch (``config.gap_scope``), whose sizes ``id_batches`` gives when they differ;
    ``shares``: this rank's weights in the global batch (``losses.Shares``)."""
    gather = functools.partial(losses.gather_energies, sizes=id_batches) if gap_scope == "global" else None
    return losses.build_loss(cfg, class_freq=class_freq, num_train=num_train, gather=gather, shares=shares)


def make_optimizer(model: nn.Module, cfg: TrainConfig, method: str = "") -> torch.optim.Optimizer:
    """SGD (momentum, weight decay, optional Nesterov; the paper) or Adam/AdamW. Keys left
    unset take ``method``'s recipe (``train.recipes``; no method: the SGD one)."""
    cfg = resolve_train(cfg, method)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, method: str = ""):
    """Per-step schedule sized from the reader's fixed steps per epoch (unset keys: as
    ``make_optimizer``)."""
    cfg = resolve_train(cfg, method)
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


# Scheduler state that describes the plan, not the progress: kept from the current config
# when a checkpoint's state is loaded.
_PLAN_KEYS = ("total_steps", "_schedule_phases", "T_max")


def load_scheduler_state(sched, state: dict) -> None:
    """Restore a checkpoint's scheduler progress (steps taken, last LR) into ``sched``, keeping
    ``sched``'s own plan (total steps of a one-cycle or cosine schedule). A run resumed with
    another ``train.epochs`` then follows the schedule re-planned over the new total from
    the step it reached, instead of stepping past the end of the old plan (one-cycle raises
    there)."""
    plan = {k: sched.__dict__[k] for k in _PLAN_KEYS if k in sched.__dict__}
    sched.load_state_dict({**state, **plan})
