"""One training step and one epoch, free of any rank or Ray logic: a Ray Train worker
(``ray_worker.py``) runs them under DDP, the tests call them directly. Read top to bottom:
the step's options (and the autocast dtype, with the fp16 gradient scaler), the forward over
ID and OE, one step, then the epoch loop, which reads the loss back from the device without
stalling it (``_RunningSums``)."""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from edge_ray import losses, validation


# train.amp_dtype's choices (config/schema.py AMP_DTYPES) -> the autocast dtype
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CAPABILITY = (8, 0)  # CUDA compute capability with native bf16: Ampere (A100, A10, L4) and newer


def amp_dtype(requested: str, capability: tuple[int, int] | None) -> str:
    """The autocast dtype a run trains in: ``bf16`` / ``fp16`` as asked; ``auto`` gives bf16 on
    a GPU of compute capability ``BF16_CAPABILITY`` or newer and fp16 below it (V100 7.0, T4
    7.5: bf16 there is emulated or missing). ``capability`` is the device's (major, minor),
    None without a GPU (autocast is then off anyway; the answer is what a GPU-less device
    would get: fp16)."""
    if requested in AUTOCAST_DTYPES:
        return requested
    if requested != "auto":
        raise ValueError(f"train.amp_dtype must be auto, bf16 or fp16, got {requested!r}")
    return "bf16" if capability is not None and tuple(capability) >= BF16_CAPABILITY else "fp16"


def device_amp_dtype(requested: str, device: torch.device) -> str:
    """``amp_dtype`` for ``device`` (its CUDA compute capability; None on the CPU)."""
    device = torch.device(device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return amp_dtype(requested, capability)


@dataclass(frozen=True)
class StepOptions:
    device: torch.device
    amp: bool = False              # autocast (GPU only), in amp_dtype
    amp_dtype: str = "bf16"        # bf16 | fp16 (amp_dtype()); fp16 steps through a GradScaler (make_scaler)
    channels_last: bool = False
    separate_forward: bool = False
    diag_k: int = 32               # bottom-k / margin for the gap diagnostics
    diag_m: float = 1.0
    diag_gap: str = "mean"
    diag_m_mode: str = "absolute"


def gap_diag_options(loss_cfg) -> dict:
    """StepOptions' gap-diagnostics fields from a ``LossConfig`` (the training's own k, m, gap, m_mode)."""
    return dict(diag_k=loss_cfg.k, diag_m=loss_cfg.m, diag_gap=loss_cfg.gap, diag_m_mode=loss_cfg.m_mode)


def autocast(opts: StepOptions):
    if opts.amp and opts.device.type == "cuda":
        return torch.autocast("cuda", dtype=AUTOCAST_DTYPES[opts.amp_dtype])
    return contextlib.nullcontext()


def make_scaler(opts: StepOptions):
    """The gradient scaler of an fp16 run on a GPU (``torch.amp.GradScaler``: the loss scaled
    up so that small fp16 gradients do not underflow; a step whose gradients hold inf or NaN
    is skipped and the scale halved), None otherwise (bf16 and float32 need none). Under DDP
    every rank sees the same all-reduced gradients and so skips the same steps. Its state
    goes in the checkpoint (``checkpoint.save_checkpoint(scaler_state=...)``)."""
    if opts.amp and opts.amp_dtype == "fp16" and opts.device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def restore_scaler(scaler, state: dict) -> None:
    """Load a checkpoint's scaler state into ``scaler``; a checkpoint without one (bf16 or
    float32 runs, and every checkpoint written before fp16 existed) leaves it fresh."""
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def to_device(x: torch.Tensor, opts: StepOptions) -> torch.Tensor:
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


def step_tensors(model, batch, loss_fn, optimizer, scheduler, *, epoch: int, opts: StepOptions,
                 scaler=None) -> dict:
    """Forward, loss, backward, step. Returns the loss parts (and, with OE, the gap
    diagnostics) as detached 0-d tensors on the device: no host synchronisation, so the
    host can queue the next step while this one runs. With ``scaler`` (fp16, ``make_scaler``)
    the backward runs on the scaled loss and ``scaler.step`` decides whether to step: that
    decision reads one flag back from the device per step (GradScaler's own sync)."""
    x_id, y, x_oe = batch
    x_id, y = to_device(x_id, opts), y.to(opts.device, non_blocking=True)
    x_oe = to_device(x_oe, opts) if x_oe is not None else None
    with autocast(opts):
        z_id, z_oe = forward_id_oe(model, x_id, x_oe, opts)
    z_id = z_id.float()
    z_oe = z_oe.float() if z_oe is not None else None
    with validation.shape_checks_only():  # no host sync between forward and backward
        parts = loss_fn(z_id, y, z_oe, epoch)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        parts["loss"].backward()
        optimizer.step()
    else:
        scaler.scale(parts["loss"]).backward()
        scaler.step(optimizer)  # unscales; skipped when a gradient is inf or NaN
        scaler.update()
    if scheduler is not None:
        scheduler.step()
    out = {k: v.detach() for k, v in parts.items()}
    if z_oe is not None:
        out.update(losses.gap_diagnostics(z_id.detach(), z_oe.detach(), k=opts.diag_k, m=opts.diag_m,
                                          gap=opts.diag_gap, m_mode=opts.diag_m_mode))
    return out


def train_step(model, batch, loss_fn, optimizer, scheduler, *, epoch: int, opts: StepOptions,
               scaler=None) -> dict:
    """`step_tensors`, then the parts as floats (one host synchronisation)."""
    parts = step_tensors(model, batch, loss_fn, optimizer, scheduler, epoch=epoch, opts=opts, scaler=scaler)
    return dict(zip(parts, _stack(parts).tolist()))


def _stack(parts: dict) -> torch.Tensor:
    return torch.stack([v.detach().float().reshape(()) for v in parts.values()])


class _RunningSums:
    """An epoch's loss parts, summed on the device and read back on the host one window late.

    Every ``send()`` starts copying the running sums to the host without waiting, and reads
    the copy the previous ``send()`` started, long finished by then: the GPU's queue never
    drains mid-epoch (a blocking read would leave the GPU idle while the host queues the
    next step). A non-finite loss is therefore caught one window late, naming the steps it
    happened between; ``finish()`` reads everything.
    """

    def __init__(self, epoch: int, progress=None):
        self.epoch, self.progress = epoch, progress
        self.keys, self.total, self.steps = None, None, 0
        self.last_read, self.read_step = None, 0
        self.pending = None  # (host buffer, event or None, steps covered): a copy in flight
        self.host = None     # the pinned host buffer of CUDA copies
        self.sync_wait = 0.0  # seconds spent waiting for values to reach the host

    def add(self, parts: dict) -> None:
        if self.keys is None:
            self.keys, self.last_read = list(parts), [0.0] * len(parts)
            self.total = torch.zeros(len(self.keys), dtype=torch.float64, device=parts["loss"].device)
        self.total += _stack(parts)
        self.steps += 1

    def send(self) -> None:
        """Start copying the sums to the host; they are read at the next call."""
        self._resolve()
        if self.total.is_cuda:
            if self.host is None:
                self.host = torch.empty(self.total.shape, dtype=self.total.dtype, pin_memory=True)
            self.host.copy_(self.total, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending = (self.host, event, self.steps)
        else:
            self.pending = (self.total.clone(), None, self.steps)

    def finish(self) -> dict:
        """The mean of every part over the epoch's steps ({} when there was none)."""
        if self.keys is None:
            return {}
        self._resolve()
        asked = time.perf_counter()
        values = self.total.tolist()
        self.sync_wait += time.perf_counter() - asked
        sums = self._check(values, self.steps)
        return {k: v / max(self.steps, 1) for k, v in zip(self.keys, sums)}

    def _resolve(self) -> None:
        if self.pending is None:
            return
        buffer, event, upto = self.pending
        self.pending = None
        asked = time.perf_counter()
        if event is not None:
            event.synchronize()
        values = buffer.tolist()
        self.sync_wait += time.perf_counter() - asked
        self._check(values, upto)

    def _check(self, values: list[float], upto: int) -> list[float]:
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"loss became {values[0]} at epoch {self.epoch} between steps {self.read_step} "
                                     f"and {upto - 1}; lower train.lr or loss.beta / loss.m")
        if self.progress is not None and self.last_read is not None:
            self.progress.set_postfix(loss=f"{(values[0] - self.last_read[0]) / max(upto - self.read_step, 1):.4f}")
        self.last_read, self.read_step = values, upto
        return values


def train_epoch(model, loader, loss_fn, optimizer, scheduler, *, epoch: int, opts: StepOptions,
                progress=None, fail_at_step: int | None = None, sync_every: int = 10, scaler=None) -> dict:
    """One pass of ``loader``: mean of every reported part, step and image counts, img/s,
    ``data_wait_s`` (seconds the loop waited for the loader: input-bound when high) and
    ``sync_wait_s`` (seconds it waited for the device to hand back loss values). The sums
    are read every ``sync_every`` steps, one window late (``_RunningSums``).
    ``fail_at_step`` raises a RuntimeError at that step (the fault-tolerance test switch);
    ``scaler``: the fp16 gradient scaler (``make_scaler``), None otherwise.
    """
    model.train()
    sums = _RunningSums(epoch, progress)
    images, wait = 0, 0.0  # wait: seconds the step loop stood waiting for the loader's next batch
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
        sums.add(step_tensors(model, batch, loss_fn, optimizer, scheduler, epoch=epoch, opts=opts, scaler=scaler))
        images += batch[0].shape[0] + (batch[2].shape[0] if batch[2] is not None else 0)
        if progress is not None:
            progress.update(1)
        if sums.steps % max(1, sync_every) == 0:
            sums.send()
    out = sums.finish()
    seconds = time.perf_counter() - start
    out.update(steps=sums.steps, images=images, seconds=seconds, images_per_s=images / max(seconds, 1e-9),
               data_wait_s=wait, sync_wait_s=sums.sync_wait)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers (for state dicts and forward_features)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
