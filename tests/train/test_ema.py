"""The EMA's warm-up numbers, and why diffusers' EMAModel does not replace it (see vla/train/ema.py)."""

from __future__ import annotations

import torch
from torch import nn

from vla.train.ema import EMA


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


def train_steps(model: nn.Module, n: int, on_step) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        loss = model(torch.randn(8, 4, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        on_step()


def test_warm_up_is_one_plus_t_over_ten_plus_t():
    model = tiny_model()
    ema = EMA(model, decay=0.5)
    used = []

    def step():
        used.append(ema.current_decay())
        before = {k: v.clone() for k, v in ema.shadow.items()}
        ema.update(model)
        for k, v in model.state_dict().items():  # every floating entry, buffers included
            expected = before[k].lerp(v, 1 - used[-1]) if v.dtype.is_floating_point else v
            assert torch.equal(ema.shadow[k], expected), k

    train_steps(model, 12, step)
    assert used == [min(0.5, (1 + t) / (10 + t)) for t in range(12)]
    assert ema.updates == 12


def test_diffusers_ema_gives_other_numbers():
    from diffusers.training_utils import EMAModel

    model = tiny_model()
    ours = EMA(model, decay=0.999)
    theirs = EMAModel(model.parameters(), decay=0.999, min_decay=0.0, update_after_step=0, use_ema_warmup=False)
    decays = []

    def step():
        ours.update(model)
        theirs.step(model.parameters())
        decays.append(theirs.cur_decay_value)

    train_steps(model, 3, step)
    assert decays[0] == 0.0 and decays[1:] == [2 / 11, 3 / 12]  # shifted by one against ours (1/10, 2/11, 3/12)
    names = [n for n, _ in model.named_parameters()]
    assert not all(torch.equal(ours.shadow[n], p) for n, p in zip(names, theirs.shadow_params, strict=True))
    assert "1.running_mean" in ours.shadow  # averaged here; EMAModel sees parameters only
