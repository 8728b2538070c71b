"""Training and inference steps, free of any rank or Ray logic.

A Ray Train worker (``edge_ray.distributed``) wraps these in DDP; the tests and the
evaluation engine call them directly. Read top to bottom: loss selection, optimiser and
schedule, one training step, one epoch, then the no-grad pass that collects logits and
features for scoring.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from edge_ray import losses, validation
from edge_ray.config import LossConfig, TrainConfig
from edge_ray.train.recipes import resolve_train

USES_OE = {"edge": True, "oe": True, "hendrycks_oe": True, "energy_oe": True,
           "bce": False, "focal": False, "asl": False, "dbloss": False}


def make_loss_fn(cfg: LossConfig, *, class_freq=None, num_train: int | None = None,
                 gap_scope: str = "rank"):
    """``fn(logits_id, targets, logits_oe, epoch) -> dict`` for ``cfg.method``.

    The tau schedule lives here: EDGE's gap weight beta is 0 for epochs < tau (Alg. 1).
    ``gap_scope="global"``: EDGE's bottom-k over every DDP rank's ID batch (config.gap_scope).
    """
    m = cfg.method
    gather = losses.gather_energies if gap_scope == "global" else None

    def fn(z_id, y, z_oe, epoch: int) -> dict:
        if m == "edge":
            beta = cfg.beta if epoch >= cfg.tau else 0.0
            return losses.edge_loss(z_id, y, z_oe, alpha=cfg.alpha, beta=beta, k=cfg.k, m=cfg.m, gap=cfg.gap,
                                    gather=gather)
        if m == "oe":
            return losses.oe_loss(z_id, y, z_oe, alpha=cfg.alpha)
        if m == "hendrycks_oe":
            return losses.hendrycks_oe_loss(z_id, y, z_oe, lam=cfg.lam)
        if m == "energy_oe":
            return losses.energy_oe_loss(z_id, y, z_oe, lam=cfg.energy_lam, m_in=cfg.m_in, m_out=cfg.m_out)
        if m == "bce":
            return losses.bce_loss(z_id, y)
        if m == "focal":
            return losses.focal_loss(z_id, y, gamma=cfg.focal_gamma)
        if m == "asl":
            return losses.asl_loss(z_id, y, gamma_pos=cfg.asl_gamma_pos, gamma_neg=cfg.asl_gamma_neg, clip=cfg.asl_clip)
        if m == "dbloss":
            return losses.db_loss(z_id, y, class_freq=class_freq, num_samples=num_train)
        raise ValueError(f"unknown loss.method {m!r}")

    return fn


def make_optimizer(model: nn.Module, cfg: TrainConfig, method: str = "") -> torch.optim.Optimizer:
    """SGD (momentum, weight decay, optional Nesterov; the paper) or Adam/AdamW. Keys left
    unset take ``method``'s recipe (config.RECIPES; no method: the SGD one)."""
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


@dataclass(frozen=True)
class StepOptions:
    device: torch.device
    amp: bool = False              # bf16 autocast (GPU only)
    channels_last: bool = False
    separate_forward: bool = False
    diag_k: int = 32               # bottom-k / margin for the gap diagnostics
    diag_m: float = 1.0
    diag_gap: str = "mean"


def _autocast(opts: StepOptions):
    if opts.amp and opts.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Evaluation forwards on the CPU go in chunks of this many images: the demo's small CNN took
# 2-2.8x longer per image in batches of 96-512 than of 32-64 (2-core AMD EPYC, 2026-12-04:
# 0.30-0.36 s against 0.13 s per 1,024 images, threads 2). A GPU takes the loader's batch whole.
CPU_EVAL_CHUNK = 64


def eval_chunks(x: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
    """``x`` split into the batches an evaluation forward on ``device`` runs (views, in order)."""
    if torch.device(device).type != "cpu" or x.shape[0] <= CPU_EVAL_CHUNK:
        return (x,)
    return x.split(CPU_EVAL_CHUNK)


def _to_device(x: torch.Tensor, opts: StepOptions) -> torch.Tensor:
    x = x.to(opts.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if opts.channels_last and x.ndim == 4 else x


def forward_id_oe(model: nn.Module, x_id, x_oe, opts: StepOptions):
    """One forward over ``cat(ID, OE)`` as the paper (default), or two forwards.

    Joint is the default: it is the paper's setup and one larger batch uses the GPU better.
    Its cost is that BatchNorm's batch statistics mix ID and OE images; ``separate_forward``
    keeps them apart at the price of two smaller forwards.
    """
    if x_oe is None:
        return model(x_id), None
    if opts.separate_forward:
        return model(x_id), model(x_oe)
    z = model(torch.cat([x_id, x_oe]))
    return z[: x_id.shape[0]], z[x_id.shape[0]:]


def step_tensors(model, batch, loss_fn, optimizer, scheduler, *, epoch: int, opts: StepOptions) -> dict:
    """Forward, loss, backward, step. Returns the loss parts (and, with OE, the gap
    diagnostics) as detached 0-d tensors on the device: no host synchronisation, so the
    host can queue the next step while this one runs."""
    x_id, y, x_oe = batch
    x_id, y = _to_device(x_id, opts), y.to(opts.device, non_blocking=True)
    x_oe = _to_device(x_oe, opts) if x_oe is not None else None
    with _autocast(opts):
        z_id, z_oe = forward_id_oe(model, x_id, x_oe, opts)
    z_id = z_id.float()
    z_oe = z_oe.float() if z_oe is not None else None
    with validation.shape_checks_only():  # no host sync between forward and backward
        parts = loss_fn(z_id, y, z_oe, epoch)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    out = {k: v.detach() for k, v in parts.items()}
    if z_oe is not None:
        out.update(losses.gap_diagnostics(z_id.detach(), z_oe.detach(), k=opts.diag_k, m=opts.diag_m,
                                          gap=opts.diag_gap))
    return out


def train_step(model, batch, loss_fn, optimizer, scheduler, *, epoch: int, opts: StepOptions) -> dict:
    """`step_tensors`, then the parts as floats (one host synchronisation)."""
    parts = step_tensors(model, batch, loss_fn, optimizer, scheduler, epoch=epoch, opts=opts)
    return dict(zip(parts, _stack(parts).tolist()))


def _stack(parts: dict) -> torch.Tensor:
    return torch.stack([v.detach().float().reshape(()) for v in parts.values()])


def train_epoch(model, loader, loss_fn, optimizer, scheduler, *, epoch: int, opts: StepOptions,
                progress=None, fail_at_step: int | None = None, sync_every: int = 10) -> dict:
    """One pass of ``loader``: mean of every reported part, step and image counts, img/s,
    ``data_wait_s`` (seconds the loop waited for the loader: input-bound when high) and
    ``sync_wait_s`` (seconds it waited for the GPU to hand back loss values).

    The parts are summed on the device. Every ``sync_every`` steps the running sums are
    copied to the host without waiting, and the copy made ``sync_every`` steps earlier,
    long finished by then, is checked: the GPU's queue never drains mid-epoch (a blocking
    read would leave the GPU idle while the host queues the next step). A non-finite loss
    is therefore caught one window late, naming the steps it happened between; the epoch's
    end reads everything. ``fail_at_step`` raises a RuntimeError at that step (the
    fault-tolerance test switch).
    """
    model.train()
    keys, total, last_read = None, None, None
    read_step, steps = 0, 0
    images = 0
    wait = 0.0  # seconds the step loop stood waiting for the loader's next batch
    sync_wait = 0.0  # seconds it stood waiting for loss values to reach the host
    pending = None  # (host buffer, event or None, steps covered): a copy in flight
    host = None

    def check(values: list[float], upto: int) -> list[float]:
        nonlocal last_read, read_step
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"loss became {values[0]} at epoch {epoch} between steps {read_step} and "
                                     f"{upto - 1}; lower train.lr or loss.beta / loss.m")
        if progress is not None and last_read is not None:
            progress.set_postfix(loss=f"{(values[0] - last_read[0]) / max(upto - read_step, 1):.4f}")
        last_read, read_step = values, upto
        return values

    def resolve() -> None:
        nonlocal pending, sync_wait
        if pending is None:
            return
        buffer, event, upto = pending
        pending = None
        asked = time.perf_counter()
        if event is not None:
            event.synchronize()
        values = buffer.tolist()
        sync_wait += time.perf_counter() - asked
        check(values, upto)

    def send() -> None:
        """Start copying the sums to the host; read them at the next call."""
        nonlocal pending, host
        resolve()
        if total.is_cuda:
            if host is None:
                host = torch.empty(total.shape, dtype=total.dtype, pin_memory=True)
            host.copy_(total, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            pending = (host, event, steps)
        else:
            pending = (total.clone(), None, steps)

    start = time.perf_counter()
    batches = iter(loader)
    for step in itertools.count():
        asked = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - asked
        if batch is None:
            break
        if fail_at_step is not None and step == fail_at_step:
            raise RuntimeError(f"injected failure at epoch {epoch} step {step} (train.fail_at_epoch)")
        parts = step_tensors(model, batch, loss_fn, optimizer, scheduler, epoch=epoch, opts=opts)
        if keys is None:
            keys, last_read = list(parts), [0.0] * len(parts)
            total = torch.zeros(len(keys), dtype=torch.float64, device=parts["loss"].device)
        total += _stack(parts)
        steps += 1
        images += batch[0].shape[0] + (batch[2].shape[0] if batch[2] is not None else 0)
        if progress is not None:
            progress.update(1)
        if steps % max(1, sync_every) == 0:
            send()
    sums = []
    if keys:
        resolve()
        asked = time.perf_counter()
        values = total.tolist()
        sync_wait += time.perf_counter() - asked
        sums = check(values, steps)
    seconds = time.perf_counter() - start
    out = {k: v / max(steps, 1) for k, v in zip(keys or [], sums)}
    out.update(steps=steps, images=images, seconds=seconds, images_per_s=images / max(seconds, 1e-9),
               data_wait_s=wait, sync_wait_s=sync_wait)
    return out


@torch.no_grad()
def collect_outputs(model, loader, *, device: torch.device, amp: bool = False,
                    channels_last: bool = False, progress=None) -> dict:
    """Logits, penultimate features, targets and keys of every sample of an eval loader.

    Runs the backbone once (on the CPU in chunks of ``CPU_EVAL_CHUNK`` images); scores are
    computed afterwards from the cached arrays.
    """
    model.eval()
    opts = StepOptions(device=device, amp=amp, channels_last=channels_last)
    feats, logits, targets, keys = [], [], [], []
    for x, y, k in loader:
        for part in eval_chunks(_to_device(x, opts), opts.device):
            with _autocast(opts):
                f = model.forward_features(part)
                z = model.forward_head(f)
            feats.append(f.float().cpu().numpy())
            logits.append(z.float().cpu().numpy())
        targets.append(np.asarray(y, dtype=np.float32))
        keys.extend(k)
        if progress is not None:
            progress.update(len(k))
    if not keys:
        raise ValueError("the evaluation loader yielded no samples")
    return {"features": np.concatenate(feats), "logits": np.concatenate(logits),
            "targets": np.concatenate(targets), "keys": keys}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers (for state dicts and forward_features)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
