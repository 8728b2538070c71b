"""Training objectives: EDGE (paper Eq. 4-8) and the baselines it is compared with.

Every loss takes ID logits ``[N, C]``, 0/1 ID targets ``[N, C]`` and (where it uses
outliers) OE logits ``[M, C]``, and returns a dict of its parts plus ``loss`` so a
training loop can log each term. Energies use ``softplus`` throughout (the released
code's ``log(1 + exp(x))`` overflows for logits above ~88).

``LOSSES`` (at the end) is the registry of training methods, as ``scores.SCORES`` is of
scores: a method's loss built from the ``loss.*`` settings, whether it reads OE images,
its training recipe and the settings it reads. A new method is one function here and
one entry there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from edge_ray.validation import check_binary, check_logits_pair

GAP_MODES = ("mean", "pairwise")
# absolute (the paper's): the margin is m, in energy units. relative (an option, off by default):
# the margin is m times the batch's mean bottom-k ID energy (a constant of the step, no gradient
# through it), so it grows with the energies; the paper's form can go idle once training lifts
# the bottom-k ID energy past m (README, "Why the gap idles").
M_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class Shares:
    """The weights of one DDP rank's ID and OE terms: the world size times the rank's share
    of the global ID / OE batch (1 and 1 when every rank holds the same number). DDP
    averages gradients over ranks, so a rank's per-sample means weighted so make that
    average the mean over the whole global batch, however unevenly it was split."""

    id: float = 1.0
    oe: float = 1.0

    @classmethod
    def of(cls, rank: int, id_batches, oe_batches) -> "Shares":
        world = len(id_batches)
        return cls(id=world * id_batches[rank] / sum(id_batches), oe=world * oe_batches[rank] / sum(oe_batches))


NO_SHARES = Shares()


def joint_energy(logits: torch.Tensor) -> torch.Tensor:
    """JointEnergy (Wang et al. 2021), paper Eq. 3: ``E(x) = sum_c log(1 + exp(f_c(x)))``.

    Higher = more in-distribution. ``softplus`` keeps it finite for any finite logit.
    """
    if logits.ndim != 2:
        raise ValueError(f"joint_energy expects logits of shape [N, C], got {tuple(logits.shape)}")
    return F.softplus(logits).sum(dim=1)


def bottom_k_energy(energy_id: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` lowest ID JointEnergies of the batch (all of them when ``k`` exceeds the batch)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return torch.topk(energy_id, min(k, energy_id.numel()), largest=False).values


def _id_bce(logits_id: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 4: binary cross-entropy with logits, averaged over samples and classes."""
    return F.binary_cross_entropy_with_logits(logits_id, targets.to(logits_id.dtype))


def _conf(logits_oe: torch.Tensor) -> torch.Tensor:
    """Eq. 5: BCE of every OE logit to a 0 target, i.e. mean of ``softplus(f_c(x'))``."""
    return F.softplus(logits_oe).mean()


def gather_energies(energy: torch.Tensor, sizes=None) -> torch.Tensor:
    """Every rank's energies, concatenated in rank order, with gradients flowing back to the
    rank that owns each one (``torch.distributed.nn``'s differentiable all-gather); the
    tensor itself when no process group is running. ``sizes``: every rank's count when they
    differ (padded for the gather, cut after it). For ``edge_loss(gather=...)``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return energy
    import warnings

    from torch.distributed.nn.functional import all_gather

    pad = max(sizes) - energy.shape[0] if sizes else 0
    if pad:
        energy = torch.cat([energy, energy.new_zeros(pad)])
    with warnings.catch_warnings():  # deprecated in favour of an API without autograd on gloo
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(energy)
    if sizes:
        parts = [part[:n] for part, n in zip(parts, sizes)]
    return torch.cat(parts)


def margin(low: torch.Tensor, m: float, m_mode: str = "absolute"):
    """The hinge's margin for bottom-k ID energies ``low``: ``m`` (``absolute``, paper Eq. 6) or
    ``m * mean(low)`` held constant for the step (``relative``)."""
    if m_mode == "absolute":
        return m
    if m_mode == "relative":
        return m * low.detach().mean()
    raise ValueError(f"m_mode must be one of {M_MODES}, got {m_mode!r}")


def gap_hinge(energy_id: torch.Tensor, energy_oe: torch.Tensor, *, k: int, m: float,
              gap: str = "mean", gather=None, m_mode: str = "absolute") -> torch.Tensor:
    """The hinge terms of L_gap before averaging.

    ``mean`` (paper Eq. 6-7): one term per OE sample, ``E(oe_j) - mean(bottom_k E(id)) + m``.
    ``pairwise`` (released code): one term per (OE sample, bottom-k ID sample) pair.
    ``gather`` (e.g. ``gather_energies``): take the bottom-k over every rank's ID batch, not
    this rank's alone; with DDP's gradient averaging the objective is then the one of a
    single process holding the whole global batch, whatever the number of ranks.
    ``m_mode``: the margin ``m`` in energy units (``absolute``) or as a multiple of the mean
    bottom-k ID energy (``relative``; see ``margin``).
    """
    low = bottom_k_energy(gather(energy_id) if gather is not None else energy_id, k)
    m = margin(low, m, m_mode)
    if gap == "mean":
        return F.relu(energy_oe - low.mean() + m)
    if gap == "pairwise":
        return F.relu(energy_oe[:, None] - low[None, :] + m)
    raise ValueError(f"gap must be one of {GAP_MODES}, got {gap!r}")


def _check_edge_inputs(logits_id, targets, logits_oe, k=None):
    check_logits_pair(logits_id, targets, logits_oe)
    check_binary(targets, "targets")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def edge_loss(logits_id: torch.Tensor, targets: torch.Tensor, logits_oe: torch.Tensor, *,
              alpha: float, beta: float, k: int, m: float, gap: str = "mean", gather=None,
              shares: Shares = NO_SHARES, m_mode: str = "absolute") -> dict:
    """EDGE objective, Eq. 8: ``L = L_id + alpha * L_conf + beta * L_gap``.

    Returns ``{"loss", "id", "conf", "gap"}``. ``beta = 0`` before epoch ``tau`` is the
    caller's schedule. Bottom-k is taken within this ID batch, or over every rank's with
    ``gather`` (see ``gap_hinge``). ``shares`` weights the ID and OE terms of a rank
    holding an uneven part of the global batch (``Shares``).
    """
    _check_edge_inputs(logits_id, targets, logits_oe, k)
    l_id = _id_bce(logits_id, targets) * shares.id
    l_conf = _conf(logits_oe) * shares.oe
    hinge = gap_hinge(joint_energy(logits_id), joint_energy(logits_oe), k=k, m=m, gap=gap, gather=gather,
                      m_mode=m_mode)
    l_gap = hinge.mean() * shares.oe
    return {"loss": l_id + alpha * l_conf + beta * l_gap, "id": l_id, "conf": l_conf, "gap": l_gap}


@torch.no_grad()
def gap_diagnostics(logits_id: torch.Tensor, logits_oe: torch.Tensor, *, k: int, m: float,
                    gap: str = "mean", m_mode: str = "absolute") -> dict:
    """What tells EDGE apart from OE: an active fraction of 0 means the gap term does nothing.

    Returns the fraction of hinge terms above zero, the mean OE JointEnergy and the mean of
    the bottom-k ID JointEnergies (logged every epoch).
    """
    e_id, e_oe = joint_energy(logits_id.float()), joint_energy(logits_oe.float())
    hinge = gap_hinge(e_id, e_oe, k=k, m=m, gap=gap, m_mode=m_mode)
    return {"gap_active": (hinge > 0).float().mean(), "energy_oe": e_oe.mean(),
            "energy_id_bottomk": bottom_k_energy(e_id, k).mean()}


def bce_loss(logits_id, targets, *, shares: Shares = NO_SHARES) -> dict:
    """Plain multi-label training (Eq. 4 alone): the paper's BCE baseline."""
    check_logits_pair(logits_id, targets)
    check_binary(targets, "targets")
    l_id = _id_bce(logits_id, targets) * shares.id
    return {"loss": l_id, "id": l_id}


def oe_loss(logits_id, targets, logits_oe, *, alpha: float = 1.0, shares: Shares = NO_SHARES) -> dict:
    """Multi-label OE: BCE + alpha * L_conf, i.e. EDGE without the gap term (paper Table 4)."""
    _check_edge_inputs(logits_id, targets, logits_oe)
    l_id, l_conf = _id_bce(logits_id, targets) * shares.id, _conf(logits_oe) * shares.oe
    return {"loss": l_id + alpha * l_conf, "id": l_id, "conf": l_conf}


def hendrycks_oe_loss(logits_id, targets, logits_oe, *, lam: float = 0.5, shares: Shares = NO_SHARES) -> dict:
    """Outlier Exposure (Hendrycks et al. 2019): BCE + lam * CE(softmax(f(x')), uniform).

    The cross-entropy to the uniform distribution is ``-(1/C) sum_c log softmax(f(x'))_c``,
    averaged over OE samples.
    """
    _check_edge_inputs(logits_id, targets, logits_oe)
    l_id = _id_bce(logits_id, targets) * shares.id
    l_oe = -F.log_softmax(logits_oe, dim=1).mean(dim=1).mean() * shares.oe
    return {"loss": l_id + lam * l_oe, "id": l_id, "oe": l_oe}


def free_energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy of Liu et al. 2020: ``-T logsumexp(f / T)`` (lower = more ID)."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def energy_oe_loss(logits_id, targets, logits_oe, *, lam: float = 0.1, m_in: float = -7.0,
                   m_out: float = -1.0, shares: Shares = NO_SHARES) -> dict:
    """Energy-bounded learning (Liu et al. 2020, Eq. 9):
    ``BCE + lam * (mean relu(E(x) - m_in)^2 + mean relu(m_out - E(x'))^2)`` with the free
    energy ``E = -logsumexp(f)``. The margins default to values sized for sigmoid logits of a
    multi-label head (the paper's -25/-7 are for 10-way softmax logits); tune them per dataset.
    """
    _check_edge_inputs(logits_id, targets, logits_oe)
    l_id = _id_bce(logits_id, targets) * shares.id
    reg_in = F.relu(free_energy(logits_id) - m_in).pow(2).mean() * shares.id
    reg_out = F.relu(m_out - free_energy(logits_oe)).pow(2).mean() * shares.oe
    return {"loss": l_id + lam * (reg_in + reg_out), "id": l_id, "energy_in": reg_in,
            "energy_out": reg_out}


def focal_loss(logits, targets, *, gamma: float = 2.0, alpha: float | None = None,
               shares: Shares = NO_SHARES) -> dict:
    """Sigmoid focal loss (Lin et al. 2017), mean over samples and classes:
    ``-[y (1-p)^g log p + (1-y) p^g log(1-p)]``, optionally weighted by alpha / 1-alpha."""
    check_logits_pair(logits, targets)
    check_binary(targets, "targets")
    y = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p_t = torch.exp(-ce)
    loss = (1 - p_t).pow(gamma) * ce
    if alpha is not None:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    loss = loss.mean() * shares.id
    return {"loss": loss, "id": loss}


def asl_loss(logits, targets, *, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
             clip: float = 0.05, eps: float = 1e-8, shares: Shares = NO_SHARES) -> dict:
    """Asymmetric loss (Ridnik et al. 2021): ``-[y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m)]``
    with the shifted probability ``p_m = max(p - clip, 0)``. Averaged over samples and classes
    (the reference code sums; the mean keeps the scale of BCE so learning rates carry over)."""
    check_logits_pair(logits, targets)
    check_binary(targets, "targets")
    y = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    p_m = (p - clip).clamp(min=0) if clip > 0 else p
    log_p = F.logsigmoid(logits).clamp(min=math.log(eps))
    log_1mp = torch.log((1 - p_m).clamp(min=eps))
    loss = -(y * (1 - p).pow(gamma_pos) * log_p + (1 - y) * p_m.pow(gamma_neg) * log_1mp)
    loss = loss.mean() * shares.id
    return {"loss": loss, "id": loss}


def db_loss(logits, targets, *, class_freq, num_samples: int, map_alpha: float = 0.1,
            map_beta: float = 10.0, map_gamma: float = 0.2, neg_scale: float = 2.0,
            init_bias: float = 0.05, focal: bool = True, focal_gamma: float = 2.0,
            balance: float = 0.5, shares: Shares = NO_SHARES) -> dict:
    """Distribution-Balanced loss (Wu et al. 2020), as the authors' ``ResampleLoss``:

    - re-balanced weights: ``r = (1/n_c) / sum_{c' in y} 1/n_c'``, smoothed to
      ``sigmoid(map_beta * (r - map_gamma)) + map_alpha``;
    - negative-tolerant regularisation: logits shifted by the class prior bias
      ``-log(N/n_c - 1) * init_bias / neg_scale``, negative logits scaled by ``neg_scale`` and
      their weights divided by it;
    - optional focal modulation (DB-Focal, the paper's best variant).
    """
    check_logits_pair(logits, targets)
    check_binary(targets, "targets")
    y = targets.to(logits.dtype)
    freq = torch.as_tensor(class_freq, dtype=logits.dtype, device=logits.device).clamp(min=1)
    if freq.numel() != logits.shape[1]:
        raise ValueError(f"class_freq has {freq.numel()} entries but logits have {logits.shape[1]} classes")
    inv = 1.0 / freq
    repeat = (y * inv).sum(dim=1, keepdim=True).clamp(min=1e-12)
    weight = torch.sigmoid(map_beta * (inv / repeat - map_gamma)) + map_alpha
    bias = -torch.log((num_samples / freq - 1).clamp(min=1e-6)) * init_bias / neg_scale
    z = logits + bias
    z = z * (1 - y) * neg_scale + z * y
    weight = weight / neg_scale * (1 - y) + weight * y
    wce = F.binary_cross_entropy_with_logits(z, y, weight=weight, reduction="none")
    if focal:
        p_t = torch.exp(-F.binary_cross_entropy_with_logits(z, y, reduction="none"))
        alpha_t = balance * y + (1 - balance) * (1 - y)
        wce = alpha_t * (1 - p_t).pow(focal_gamma) * wce
    loss = wce.mean() * shares.id
    return {"loss": loss, "id": loss}


# ---- the registry of training methods ---------------------------------------------------
# The paper ("Implementation details"): "For trivial BCE models, we use the Adam"; every other
# method uses SGD with momentum 0.9 and weight decay 1e-4. It gives no learning rate or
# schedule: BCE's Adam lr 1e-4 without weight decay follows the multi-label OOD code its BCE
# baselines come from (Wang et al. 2021); SGD's lr 0.01 and one-cycle are this project's.
SGD_RECIPE = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4, "schedule": "onecycle"}
ADAM_RECIPE = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "schedule": "onecycle"}


@dataclass(frozen=True)
class Method:
    """A training method. ``build(cfg, class_freq=, num_train=, gather=, shares=)`` returns
    ``fn(logits_id, targets, logits_oe, epoch) -> dict`` for a ``LossConfig`` ``cfg``;
    ``gather`` (or None) gathers EDGE's ID energies over DDP ranks (``gather_energies``),
    ``shares`` weights a rank's terms by its share of the global batch (``Shares``)."""

    build: Callable
    uses_oe: bool
    display: str             # the name tables and plots show
    recipe: dict = field(default_factory=lambda: dict(SGD_RECIPE))
    params: tuple = ()  # the loss.* settings it reads (the model card lists them)


def _edge(cfg, *, gather=None, shares=NO_SHARES, **_):
    def fn(z_id, y, z_oe, epoch: int) -> dict:
        beta = cfg.beta if epoch >= cfg.tau else 0.0  # the tau schedule (Alg. 1): no gap before epoch tau
        return edge_loss(z_id, y, z_oe, alpha=cfg.alpha, beta=beta, k=cfg.k, m=cfg.m, gap=cfg.gap, gather=gather,
                         shares=shares, m_mode=cfg.m_mode)
    return fn


def _oe(cfg, *, shares=NO_SHARES, **_):
    return lambda z_id, y, z_oe, epoch: oe_loss(z_id, y, z_oe, alpha=cfg.alpha, shares=shares)


def _hendrycks_oe(cfg, *, shares=NO_SHARES, **_):
    return lambda z_id, y, z_oe, epoch: hendrycks_oe_loss(z_id, y, z_oe, lam=cfg.lam, shares=shares)


def _energy_oe(cfg, *, shares=NO_SHARES, **_):
    return lambda z_id, y, z_oe, epoch: energy_oe_loss(z_id, y, z_oe, lam=cfg.energy_lam, m_in=cfg.m_in,
                                                       m_out=cfg.m_out, shares=shares)


def _bce(cfg, *, shares=NO_SHARES, **_):
    return lambda z_id, y, z_oe, epoch: bce_loss(z_id, y, shares=shares)


def _focal(cfg, *, shares=NO_SHARES, **_):
    return lambda z_id, y, z_oe, epoch: focal_loss(z_id, y, gamma=cfg.focal_gamma, shares=shares)


def _asl(cfg, *, shares=NO_SHARES, **_):
    return lambda z_id, y, z_oe, epoch: asl_loss(z_id, y, gamma_pos=cfg.asl_gamma_pos, gamma_neg=cfg.asl_gamma_neg,
                                                 clip=cfg.asl_clip, shares=shares)


def _db(cfg, *, class_freq=None, num_train=None, shares=NO_SHARES, **_):
    return lambda z_id, y, z_oe, epoch: db_loss(z_id, y, class_freq=class_freq, num_samples=num_train,
                                                shares=shares)


LOSSES: dict[str, Method] = {
    "bce": Method(_bce, uses_oe=False, display="BCE", recipe=dict(ADAM_RECIPE)),
    "edge": Method(_edge, uses_oe=True, display="EDGE", params=("alpha", "beta", "k", "m", "m_mode", "tau", "gap")),
    "oe": Method(_oe, uses_oe=True, display="OE", params=("alpha",)),
    "hendrycks_oe": Method(_hendrycks_oe, uses_oe=True, display="HendrycksOE", params=("lam",)),
    "energy_oe": Method(_energy_oe, uses_oe=True, display="EnergyOE", params=("energy_lam", "m_in", "m_out")),
    "focal": Method(_focal, uses_oe=False, display="Focal", params=("focal_gamma",)),
    "asl": Method(_asl, uses_oe=False, display="ASL", params=("asl_gamma_pos", "asl_gamma_neg", "asl_clip")),
    "dbloss": Method(_db, uses_oe=False, display="DB loss"),
}


def build_loss(cfg, *, class_freq=None, num_train: int | None = None, gather=None, shares: Shares = NO_SHARES):
    """``fn(logits_id, targets, logits_oe, epoch) -> dict`` for ``cfg.method`` (``LOSSES``)."""
    if cfg.method not in LOSSES:
        raise ValueError(f"unknown loss.method {cfg.method!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[cfg.method].build(cfg, class_freq=class_freq, num_train=num_train, gather=gather, shares=shares)
