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
