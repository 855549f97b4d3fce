"""The training loop: any registered policy, one or more stores, CPU / one GPU / many (accelerate).

- Data: the stores' mixture (`build_training_data`), drawn by `MixtureSampler` with this process's
  rank, so accelerate never re-shards it; batch b of epoch e is a pure function of (seed, e, b),
  which is what makes `--resume` exact: the loader restarts at the saved step's position.
- Optimiser: AdamW (no weight decay on biases, norms and embeddings), linear warm-up then cosine,
  gradient clipping, optional mixed precision on GPU; EMA weights are what checkpoints ship for
  evaluation (raw weights are kept for resuming).
- Every DataLoader gets its own seeded generator, so creating one never draws from the global
  torch RNG that the policy's noise, dropout and expert sampling use.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Sampler
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vla.datasets.sampler import MixtureSampler
from vla.policies.config import PolicyConfig
from vla.policies.policy import Policy
from vla.policies.pretrained import latest_checkpoint
from vla.policies.registry import get_policy
from vla.progress import progress_bar
from vla.train import checkpoint as ckpt
from vla.train.config import TrainConfig, TrainError
from vla.train.data import DATA_FIELDS, TrainingData, build_training_data
from vla.train.ema import EMA
from vla.train.metrics import MetricsLog

TRAIN_CONFIG_FILE = "train_config.json"


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path | None
    steps: int
    first_loss: float | None
    last_loss: float | None
    samples_per_s: float
    seconds: float
    parameters: dict[str, int] = field(default_factory=dict)


class _EpochSlice(Sampler[int]):
    """One epoch of a MixtureSampler from a given sample position (for resuming mid-epoch)."""

    def __init__(self, sampler: MixtureSampler, epoch: int, start: int):
        self.sampler, self.epoch, self.start = sampler, epoch, start

    def __iter__(self) -> Iterator[int]:
        self.sampler.set_epoch(self.epoch)
        return iter(list(self.sampler)[self.start :])

    def __len__(self) -> int:
        return len(self.sampler) - self.start


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and conv kernels only (not biases, norms, embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "pos_emb" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer_settings(tc: TrainConfig, pc: PolicyConfig) -> tuple[float, tuple[float, float], float]:
    lr = tc.lr if tc.lr is not None else getattr(pc, "optimizer_lr", 1e-4)
    betas = tc.betas if tc.betas is not None else tuple(getattr(pc, "optimizer_betas", (0.9, 0.95)))
    wd = tc.weight_decay if tc.weight_decay is not None else getattr(pc, "optimizer_weight_decay", 0.0)
    return float(lr), (float(betas[0]), float(betas[1])), float(wd)


def _prepare_run_dir(tc: TrainConfig, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: fresh start); refuses to mix two runs in one folder."""
    out = tc.out_dir
    last = latest_checkpoint(out)
    saved = out / TRAIN_CONFIG_FILE
    if not resume:
        if last is not None or saved.exists():
            raise TrainError(
                f"{out} already holds a training run; pass --resume to continue it or choose another --out"
            )
        return None
    if saved.exists():
        before = TrainConfig.from_dict(json.loads(saved.read_text()))
        changed = before.same_run(tc)
        if changed:
            raise TrainError(
                f"--resume: {', '.join(changed)} differ from the run in {out}; resume with the same settings "
                "(only steps, logging, checkpointing and workers may change)"
            )
    return last


def _policy_config(
    config_cls: type[PolicyConfig], preset: str | None, overrides: Mapping[str, Any], resume_from: Path | None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Config fields before the data contract is filled in (preset + overrides, or the checkpoint's),
    and which data-contract fields to derive from the stores (those the user did not set)."""
    if resume_from is not None:
        saved = json.loads((resume_from / "config.json").read_text())
        return {k: v for k, v in saved.items() if k != "type"}, ()
    cfg = config_cls.from_preset(preset, **overrides) if preset else config_cls(**overrides)
    fields = cfg.to_dict()
    fields.pop("type")
    return fields, tuple(k for k in DATA_FIELDS if k not in overrides)


@dataclass
class _Session:
    """A run once it is set up: the prepared model and optimiser, and where training starts."""

    accelerator: Accelerator
    data: TrainingData
    model: torch.nn.Module  # as accelerate prepared it (wrapped on several processes)
    policy: Policy  # the same model unwrapped: what EMA, checkpoints and parameter counts use
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA | None
    resume_from: Path | None
    start: int  # optimiser steps already done (0 unless resuming)


class _MetricsWindow:
    """Per-step metrics since the last log line; `flush` averages them and restarts the window."""

    def __init__(self) -> None:
        self.entries: list[dict[str, float]] = []
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, entry: dict[str, float], samples: int) -> None:
        self.entries.append(entry)
        self.samples += samples

    def flush(self, lr: float) -> dict[str, float]:
        now = time.perf_counter()
        means = {k: sum(e[k] for e in self.entries if k in e) / len(self.entries) for k in self.entries[-1]}
        means.update(lr=lr, samples_per_s=self.samples / max(now - self.started, 1e-9))
        self.entries, self.samples, self.started = [], 0, now
        return means


def train(
    policy: str,
    tc: TrainConfig,
    *,
    preset: str | None = "cpu",
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `policy` (a registered name) as `tc` says; see the module docstring."""
    t_start = time.perf_counter()
    session = _set_up(policy, tc, preset, dict(overrides or {}), resume)
    _write_train_config(session.accelerator, tc, policy)
    result = _run_steps(session, tc)
    result.seconds = time.perf_counter() - t_start
    return result


def _set_up(policy: str, tc: TrainConfig, preset: str | None, overrides: dict[str, Any], resume: bool) -> _Session:
    """Seed, data, model, optimiser, schedule and EMA, restored from the last checkpoint when resuming.
    The order is fixed: the model's initial weights come from the global RNG right after seeding."""
    config_cls, model_cls = get_policy(policy)
    resume_from = _prepare_run_dir(tc, resume)
    accelerator = Accelerator(cpu=tc.cpu, mixed_precision=tc.mixed_precision)
    set_seed(tc.seed + accelerator.process_index)
    base, derive = _policy_config(config_cls, preset, overrides, resume_from)
    data = build_training_data(config_cls, base, tc.data, derive=derive, image_size=tc.image_size, language=tc.language)
    model: Policy = model_cls(data.config)
    model.set_normalization(data.normalizer)
    optimizer, scheduler = _optimizer_and_schedule(model, tc, data.config)
    ema = EMA(model, tc.ema_decay) if tc.ema_decay > 0 else None
    start = _restore(resume_from, model, optimizer, scheduler, ema) if resume_from is not None else 0
    prepared, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: Policy = accelerator.unwrap_model(prepared)
    return _Session(accelerator, data, prepared, unwrapped, optimizer, scheduler, ema, resume_from, start)


def _optimizer_and_schedule(model: Policy, tc: TrainConfig, pc: PolicyConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over `param_groups`, linear warm-up then cosine decay to `lr * min_lr_ratio`."""
    lr, betas, wd = _optimizer_settings(tc, pc)
    optimizer = torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=betas)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, min(tc.warmup_steps, tc.steps), tc.steps, min_lr_rate=tc.min_lr_ratio
    )
    return optimizer, scheduler


def _write_train_config(accelerator: Accelerator, tc: TrainConfig, policy: str) -> None:
    """What `--resume` compares against (see `_prepare_run_dir`)."""
    if accelerator.is_main_process:
        tc.out_dir.mkdir(parents=True, exist_ok=True)
        (tc.out_dir / TRAIN_CONFIG_FILE).write_text(json.dumps({**tc.to_dict(), "policy": policy}, indent=2))


def _run_steps(s: _Session, tc: TrainConfig) -> TrainResult:
    """Optimiser steps from `s.start` to `tc.steps`, logging and checkpointing on the way."""
    sampler = _sampler(s.data, tc, s.accelerator)
    per_epoch = len(sampler) // tc.batch_size
    main = s.accelerator.is_main_process
    log = MetricsLog(tc.out_dir, s.start, enabled=main)
    result = TrainResult(tc.out_dir, s.resume_from, s.start, None, None, 0.0, 0.0, _param_counts(s.policy))
    bar = progress_bar(tc.steps, "train", initial=s.start, unit="step", disable=not (tc.progress and main))
    s.model.train()
    window = _MetricsWindow()
    step = s.start
    try:
        for batch in _batches(s.data, sampler, tc, per_epoch, s.start):
            entry = _train_step(s, batch, step + 1, tc.grad_clip)
            step += 1
            window.add(entry, tc.batch_size * s.accelerator.num_processes)
            if result.first_loss is None:
                result.first_loss = entry["loss"]
            if step % tc.log_every == 0 or step == tc.steps:
                _report(step, window.flush(lr=s.scheduler.get_last_lr()[0]), log, bar, result)
            bar.update(1)
            if step % tc.save_every == 0 or step == tc.steps:
                result.checkpoint = _save(s, tc, step)
            if step >= tc.steps:
                break
    finally:
        bar.close()
        log.close()
    result.steps = step
    return result


def _report(step: int, means: dict[str, float], log: MetricsLog, bar: Any, result: TrainResult) -> None:
    """One log line: metrics.jsonl, the progress bar, and the loss/speed the run reports at the end."""
    log.log(step, means)
    bar.set_postfix(loss=f"{means['loss']:.4f}", samples_s=f"{means['samples_per_s']:.0f}")
    result.last_loss, result.samples_per_s = means["loss"], means["samples_per_s"]


def _train_step(s: _Session, batch: dict[str, Any], step: int, grad_clip: float) -> dict[str, float]:
    """One optimiser step (number `step`, counted from 1); returns its metrics as floats."""
    with s.accelerator.autocast():
        loss, info = s.model(batch)
    if not torch.isfinite(loss):
        raise TrainError(
            f"step {step}: the loss is {float(loss)}; lower --lr, check the store's statistics "
            "(`vla data info`), or resume from the last checkpoint"
        )
    s.accelerator.backward(loss)
    grad_norm = s.accelerator.clip_grad_norm_(s.model.parameters(), grad_clip) if grad_clip > 0 else None
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    if s.ema is not None:
        s.ema.update(s.policy)
    entry = {k: float(v) for k, v in info.items()}
    if grad_norm is not None:
        entry["grad_norm"] = float(grad_norm)
    return entry


def _sampler(data: TrainingData, tc: TrainConfig, accelerator: Accelerator) -> MixtureSampler:
    world = accelerator.num_processes
    n = max(len(data.mixture), tc.batch_size * world)  # tiny stores: draw with repeats to fill a batch
    return MixtureSampler(
        data.mixture, tc.weights, num_samples=n, seed=tc.seed, rank=accelerator.process_index, world_size=world
    )


WORKER_START_METHOD = "forkserver"


def _batches(
    data: TrainingData, sampler: MixtureSampler, tc: TrainConfig, per_epoch: int, start: int
) -> Iterator[dict[str, Any]]:
    """Batches from step `start` on, epoch after epoch; each epoch's loader restarts the sampler."""
    epoch, pos = divmod(start, per_epoch)
    while True:
        loader = DataLoader(
            data.mixture,
            batch_size=tc.batch_size,
            sampler=_EpochSlice(sampler, epoch, pos * tc.batch_size),
            drop_last=True,
            num_workers=tc.num_workers,
            generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch),
            persistent_workers=False,
            # By now zarr's event loop and torch's pools run threads: a forked worker could inherit a held
            # lock and deadlock. forkserver starts workers from a clean single-threaded server process.
            multiprocessing_context=WORKER_START_METHOD if tc.num_workers > 0 else None,
        )
        yield from loader
        epoch, pos = epoch + 1, 0


def _save(s: _Session, tc: TrainConfig, step: int) -> Path | None:
    """Checkpoint `step` (EMA weights for evaluation + the full training state), written by the main process."""
    s.accelerator.wait_for_everyone()
    path = None
    if s.accelerator.is_main_process:
        path = ckpt.save_checkpoint(
            tc.out_dir,
            step,
            s.policy,
            optimizer=s.optimizer,
            scheduler=s.scheduler,
            ema_state=s.ema.state_dict() if s.ema is not None else None,
            ema_updates=s.ema.updates if s.ema is not None else 0,
            specs=s.data.specs,
            data_paths=tc.data,
            train_config=tc.to_dict(),
            keep=tc.keep_checkpoints,
        )
    s.accelerator.wait_for_everyone()
    return path


def _restore(path: Path, model: Policy, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMA | None) -> int:
    state = ckpt.load_training_state(path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise TrainError(f"{path}: the checkpoint does not fit this policy ({str(e).splitlines()[0]})") from None
    scheduler.load_state_dict(state["trainer"]["scheduler"])
    if ema is not None:
        ema.load_state_dict(
            state["ema"] if state["ema"] is not None else state["model"], state["trainer"]["ema_updates"]
        )
    ckpt.restore_rng(state)
    return int(state["trainer"]["step"])


def _param_counts(policy: Policy) -> dict[str, int]:
    counts = getattr(policy, "parameter_counts", None)
    return counts() if callable(counts) else {"total": policy.num_parameters()}
