"""EDGE's bottom-k taken over every rank (loss.gap_scope=global): two real gloo processes,
each with half of a random batch, give the loss and the gradients of one process that holds
the whole batch. That is what makes an elastic run's objective independent of how many
workers survived (config.batches_for keeps the global batch fixed)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from edge_ray.losses import edge_loss, gather_energies

W, N, M, C, K = 2, 6, 5, 4, 4
ARGS = dict(alpha=0.7, beta=0.3, k=K, m=2.0)


def _batch():
    gen = torch.Generator().manual_seed(7)
    z_id = torch.randn(W * N, C, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(W * N, C, generator=gen) < 0.4).double()
    z_oe = torch.randn(W * M, C, generator=gen, dtype=torch.float64) * 3
    return z_id, y, z_oe


def _rank(rank, port, out, gap):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=W)
    z_id, y, z_oe = _batch()
    mine_id = z_id[rank * N:(rank + 1) * N].clone().requires_grad_()
    mine_oe = z_oe[rank * M:(rank + 1) * M].clone().requires_grad_()
    parts = edge_loss(mine_id, y[rank * N:(rank + 1) * N], mine_oe, gap=gap, gather=gather_energies, **ARGS)
    parts["loss"].backward()
    out[rank] = (float(parts["loss"]), float(parts["gap"]), mine_id.grad.clone(), mine_oe.grad.clone())
    dist.destroy_process_group()


@pytest.mark.parametrize("gap", ["mean", "pairwise"])
def test_gathered_bottom_k_equals_one_process_with_the_whole_batch(gap):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out, gap), nprocs=W)

    z_id, y, z_oe = (t.clone() for t in _batch())
    z_id.requires_grad_()
    z_oe.requires_grad_()
    whole = edge_loss(z_id, y, z_oe, gap=gap, **ARGS)  # no gather: one process, every sample
    whole["loss"].backward()
    losses = [out[r][0] for r in range(W)]
    gaps = [out[r][1] for r in range(W)]
    # DDP averages the ranks' gradients: the objective is the mean of the ranks' losses
    assert sum(losses) / W == pytest.approx(float(whole["loss"]), rel=1e-12)
    assert sum(gaps) / W == pytest.approx(float(whole["gap"]), rel=1e-12)
    # each rank's gradient is the sum over ranks' losses (all_gather's backward): W x the whole's
    grad_id = torch.cat([out[r][2] for r in range(W)])
    grad_oe = torch.cat([out[r][3] for r in range(W)])
    assert torch.allclose(grad_id, W * z_id.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_oe, W * z_oe.grad, rtol=1e-10, atol=1e-12)
    # and the per-rank bottom-k would have been another objective
    local = [edge_loss(z_id[r * N:(r + 1) * N].detach(), y[r * N:(r + 1) * N], z_oe[r * M:(r + 1) * M].detach(),
                       gap=gap, **ARGS)["gap"] for r in range(W)]
    assert abs(float(sum(local)) / W - float(whole["gap"])) > 1e-3


# ---- an uneven split: 3 ranks holding 11 / 11 / 10 of a global batch of 32 -----------------
SIZES_ID, SIZES_OE, FEATURES = [11, 11, 10], [8, 7, 7], 6


def _mlp():
    """A model without batch statistics (BatchNorm would make each rank's forward depend on
    its own batch): the gradients must then equal one process's with the whole batch."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, C)).double()


def _uneven_batch():
    gen = torch.Generator().manual_seed(11)
    x_id = torch.randn(sum(SIZES_ID), FEATURES, generator=gen, dtype=torch.float64)
    y = (torch.rand(sum(SIZES_ID), C, generator=gen) < 0.4).double()
    x_oe = torch.randn(sum(SIZES_OE), FEATURES, generator=gen, dtype=torch.float64) * 2
    return x_id, y, x_oe


METHODS = ("edge", "oe", "bce", "energy_oe")


def _uneven_rank(rank, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from edge_ray.config import LossConfig
    from edge_ray.losses import Shares
    from edge_ray.train.builders import make_loss_fn

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(SIZES_ID))
    x_id, y, x_oe = _uneven_batch()
    a, b = sum(SIZES_ID[:rank]), sum(SIZES_ID[:rank + 1])
    c, d = sum(SIZES_OE[:rank]), sum(SIZES_OE[:rank + 1])
    for method in METHODS:
        model = DistributedDataParallel(_mlp())
        loss_fn = make_loss_fn(LossConfig(method=method, k=K, m=2.0, beta=0.3, alpha=0.7), gap_scope="global",
                               id_batches=SIZES_ID, shares=Shares.of(rank, SIZES_ID, SIZES_OE))
        z = model(torch.cat([x_id[a:b], x_oe[c:d]]))
        parts = loss_fn(z[:b - a], y[a:b], z[b - a:], 1)
        parts["loss"].backward()  # DDP averages the three ranks' gradients
        out[(rank, method)] = (float(parts["loss"]), [p.grad.clone() for p in model.parameters()])
    dist.destroy_process_group()


def test_uneven_ranks_step_as_one_process_with_the_whole_batch():
    """Gradients of 3 gloo ranks under DDP with 11 / 11 / 10 ID and 8 / 7 / 7 OE images, each
    rank's terms weighted by its share of the global batch (losses.Shares), equal one
    process's with all 32 + 22 images, for EDGE (global bottom-k over ranks of different
    sizes), OE, BCE and EnergyOE."""
    from edge_ray.config import LossConfig
    from edge_ray.train.builders import make_loss_fn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_uneven_rank, args=(port, out), nprocs=len(SIZES_ID))
    ranks, worst = len(SIZES_ID), 0.0
    x_id, y, x_oe = _uneven_batch()
    for method in METHODS:
        model = _mlp()
        z = model(torch.cat([x_id, x_oe]))
        whole = make_loss_fn(LossConfig(method=method, k=K, m=2.0, beta=0.3, alpha=0.7))(z[:len(x_id)], y,
                                                                                           z[len(x_id):], 1)
        whole["loss"].backward()
        assert sum(out[(r, method)][0] for r in range(ranks)) / ranks == pytest.approx(float(whole["loss"]), rel=1e-12)
        for r in range(ranks):
            for got, want in zip(out[(r, method)][1], (p.grad for p in model.parameters())):
                assert torch.allclose(got, want, rtol=1e-6, atol=1e-12), (method, r, (got - want).abs().max())
                worst = max(worst, float(((got - want).abs() / want.abs().clamp(min=1e-12)).max()))
    print(f"uneven ranks vs one process: largest relative gradient difference {worst:.1e}")
    # unweighted, the uneven ranks' average would be another objective
    model = _mlp()
    plain = [make_loss_fn(LossConfig(method="bce"))(model(x_id[a:a + n]), y[a:a + n], None, 1)["loss"]
             for a, n in zip((0, 11, 22), SIZES_ID)]
    whole = make_loss_fn(LossConfig(method="bce"))(model(x_id), y, None, 1)["loss"]
    assert abs(float(sum(plain)) / ranks - float(whole)) > 1e-6
