"""Training with 2 processes (torchrun, CPU, gloo): the losses of one process with the same global
batch, exact resume after a SIGKILL, only rank 0 writes; and gradient accumulation in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tests.train.helpers import write_reach_store
from vla.cli.train import moh_settings
from vla.train import TrainConfig, train, trainer
from vla.train.ema import EMA
from vla.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "train" / "ddp_worker.py"
STEPS, SAVE_EVERY, KILL_AT = 10, 5, 8  # killed as step 8 starts: steps 6-7 are redone after --resume
# policy, config overrides (small models), CLI flags of the 2-process runs on top of --set overrides
MODE = {"width": 32, "n_heads": 2, "n_layers": 2, "num_sampling_steps": 2}
CASES = {
    "mode": ("mode", MODE, ()),
    "himoe": ("himoe", {"width": 32, "n_heads": 2, "num_steps": 2}, ()),
    "mode_moh": ("mode", MODE, ("--horizons", "5,10")),  # the mixture of horizons, as a user turns it on
}


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory):
    return write_reach_store(tmp_path_factory.mktemp("reach") / "reach.zarr", episodes=6, length=20)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _settings(overrides: dict) -> list[str]:
    return [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]


def _torchrun(store, out: Path, policy: str, options: list[str], *before: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), *before,
        "--policy", policy, "--data", str(store.path), "--out", str(out), "--steps", str(STEPS), "--batch-size", "4",
        "--warmup-steps", "2", "--lr", "1e-3", "--save-every", str(SAVE_EVERY), "--log-every", "1", "--cpu",
        *options,
    ]  # fmt: skip
    return subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=900, cwd=REPO)


def _losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(out)}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_and_resume_after_sigkill(reach_store, tmp_path, case):
    policy, overrides, flags = CASES[case]
    in_process = {**overrides, **(moh_settings(policy, flags[1]) if flags else {})}
    # One process, the same global batch (2 x 4): two micro-batches of 4, seeded as the two processes' are.
    one = TrainConfig(
        data=(str(reach_store.path),), out=str(tmp_path / "one"), steps=STEPS, batch_size=4, grad_accum=2,
        warmup_steps=2, lr=1e-3, save_every=SAVE_EVERY, log_every=1, progress=False, cpu=True,
    )  # fmt: skip
    train(policy, one, preset="cpu", overrides=in_process)
    ref = _losses(tmp_path / "one")

    run = tmp_path / "two"
    killed = _torchrun(reach_store, run, policy, [*_settings(overrides), *flags], "--kill-at", str(KILL_AT))
    assert killed.returncode != 0, "the run was not killed"
    assert "rank 1" not in killed.stderr, killed.stderr[-3000:]  # the write guard of ddp_worker.py
    assert sorted(_losses(run)) == list(range(1, KILL_AT)), killed.stderr[-3000:]
    assert (run / "checkpoints" / f"step_{SAVE_EVERY:06d}" / "train_state" / "rng_rank1.safetensors").is_file()

    resumed = _torchrun(reach_store, run, policy, [*_settings(overrides), *flags, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))  # no step lost, none logged twice
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-6), (step, got, ref)
    # only rank 0 wrote: one set of files, nothing left half-written
    assert {p.name for p in run.iterdir()} <= {
        "checkpoints",
        "last",
        "metrics.jsonl",
        "tensorboard",
        "train_config.json",
    }
    assert not list(run.rglob("*.partial")) and not list(run.rglob("*.tmp"))


def test_resume_refuses_another_number_of_processes(reach_store, tmp_path):
    import json

    tc = TrainConfig(data=(str(reach_store.path),), out=str(tmp_path / "run"), steps=2, batch_size=4, progress=False)
    train("mode", tc, preset="cpu", overrides=MODE)
    saved = tmp_path / "run" / "train_config.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "num_processes": 2}))
    from vla.train.config import TrainError

    with pytest.raises(TrainError, match="number of processes"):
        train("mode", TrainConfig(**{**tc.to_dict(), "steps": 3}), preset="cpu", overrides=MODE, resume=True)


class _Regression(torch.nn.Module):
    """A deterministic model with a policy's training interface: forward(batch) -> (loss, info)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = ((self.lin(batch["x"]) - batch["y"]) ** 2).mean()
        return loss, {"loss": float(loss.detach())}


def _steps_with(batch_size: int, grad_accum: int, data: list[dict]) -> tuple[list[float], list[torch.Tensor]]:
    model = _Regression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    accelerator = Accelerator(cpu=True)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    session = trainer._Session(
        accelerator, None, prepared, model, optimizer, scheduler, EMA(model, 0.9), None, 0,
        trainer._Layout(batch_size, grad_accum, 1, 0), [],
    )  # fmt: skip
    tc = TrainConfig(data=("unused",), out="unused", batch_size=batch_size, grad_accum=grad_accum, grad_clip=0.5)
    losses = []
    for step, full in enumerate(data, 1):
        micro = [{k: v[i : i + batch_size] for k, v in full.items()} for i in range(0, len(full["x"]), batch_size)]
        losses.append(trainer._train_step(session, micro, step, tc)["loss"])
    return losses, [p.detach().clone() for p in model.parameters()] + list(session.ema.shadow.values())


def test_grad_accum_2_of_batch_b_equals_one_batch_of_2b():
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(8, 3, generator=g), "y": torch.randn(8, 2, generator=g)} for _ in range(4)]
    loss_big, params_big = _steps_with(8, 1, data)
    loss_acc, params_acc = _steps_with(4, 2, data)
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    for a, b in zip(params_acc, params_big, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(params_big[0], _Regression().lin.weight)  # it did train (clipped: grad_clip 0.5)
