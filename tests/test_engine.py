"""The epoch loop: parts summed on the device and read back every few steps."""
import copy

import pytest
import torch

from edge_ray.train import builders, loop
from edge_ray.config import LossConfig, TrainConfig
from edge_ray.models.networks import build_model

C = 5


def batches(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 16, 16, generator=gen), (torch.rand(6, C, generator=gen) < 0.4).float(),
             torch.randn(4, 3, 16, 16, generator=gen)) for _ in range(n)]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def setup(seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    model = build_model("smallcnn", C, width=8).to(device)
    opt = builders.make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.05))
    opts = loop.StepOptions(device=torch.device(device), diag_k=3)
    return model, opt, opts


@pytest.mark.parametrize("sync_every,device", [(1, "cpu"), (3, "cpu"), (100, "cpu"),
                                               pytest.param(3, "cuda", marks=CUDA)])
def test_epoch_means_equal_step_by_step_floats(sync_every, device):
    """The device-side sums read every `sync_every` steps (a partial window at the end)
    give the means of what `train_step` returns one step at a time on a twin model; on
    CUDA through the pinned, non-blocking copies."""
    data = batches(7)
    loss_fn = builders.make_loss_fn(LossConfig(method="edge", k=3, beta=0.5, tau=0))
    model, opt, opts = setup(device=device)
    twin, twin_opt = copy.deepcopy(model), None
    twin_opt = builders.make_optimizer(twin, TrainConfig(optimizer="sgd", lr=0.05))
    stats = loop.train_epoch(model, data, loss_fn, opt, None, epoch=1, opts=opts, sync_every=sync_every)
    twin.train()
    steps = [loop.train_step(twin, b, loss_fn, twin_opt, None, epoch=1, opts=opts) for b in data]
    assert stats["steps"] == 7 and stats["images"] == 7 * 10
    assert set(steps[0]) == {"loss", "id", "conf", "gap", "gap_active", "energy_oe", "energy_id_bottomk"}
    for key in steps[0]:
        expected = sum(s[key] for s in steps) / 7
        assert stats[key] == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    assert stats["data_wait_s"] >= 0 and stats["sync_wait_s"] >= 0 and stats["seconds"] > 0


@pytest.mark.parametrize("n,bad_call,value,window,calls_made", [
    (12, 5, float("nan"), "between steps 3 and 5", 9),  # in the copy after step 5, checked after step 8
    (5, 5, float("inf"), "between steps 3 and 4", 5),   # in the last, partial window: the end's read
])
def test_non_finite_loss_is_caught_one_window_late(n, bad_call, value, window, calls_made):
    """Sums are copied every 3 steps and checked at the next copy (or the epoch's end): a
    bad loss is named by its window and stops the epoch there."""
    base = builders.make_loss_fn(LossConfig(method="oe"))
    calls = []

    def loss_fn(z_id, y, z_oe, epoch):
        parts = base(z_id, y, z_oe, epoch)
        calls.append(1)
        if len(calls) == bad_call:
            parts["loss"] = parts["loss"] * value
        return parts
    model, opt, opts = setup()
    with pytest.raises(FloatingPointError, match=window):
        loop.train_epoch(model, batches(n), loss_fn, opt, None, epoch=0, opts=opts, sync_every=3)
    assert len(calls) == calls_made


def test_empty_loader_gives_zero_steps():
    model, opt, opts = setup()
    stats = loop.train_epoch(model, [], builders.make_loss_fn(LossConfig(method="bce")), opt, None,
                               epoch=0, opts=opts)
    assert stats["steps"] == 0 and stats["images"] == 0


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_resumed_schedule_follows_the_new_number_of_epochs(schedule):
    """A checkpoint of a 2-epoch schedule resumed with 3 epochs: the steps taken are kept,
    the plan is the new one, and stepping through the third epoch does not fail (one-cycle
    raised 'Tried to step ... times' before)."""
    from dataclasses import replace

    from edge_ray.config import TrainConfig

    def make(epochs):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, builders.make_scheduler(opt, replace(TrainConfig(), schedule=schedule, epochs=epochs, lr=0.1), 10)

    opt, sched = make(2)
    for _ in range(20):
        opt.step()
        sched.step()
    opt3, sched3 = make(3)
    builders.load_scheduler_state(sched3, sched.state_dict())
    assert sched3.last_epoch == 20
    _, fresh = make(3)
    for _ in range(10):
        opt3.step()
        sched3.step()
    for _ in range(30):
        fresh.step()
    assert sched3.get_last_lr() == pytest.approx(fresh.get_last_lr())  # on the 3-epoch plan
