"""The training loop: any registered policy, one or more stores, CPU / one GPU / many (accelerate).

- Data: the stores' mixture (`build_training_data`), drawn by one global `MixtureSampler` list per
  epoch; the global batch of step b of epoch e is a pure function of (seed, e, b), which is what makes
  `--resume` exact: the loader restarts at the saved step's position. It holds batch_size x grad_accum
  x processes windows; process r takes its contiguous share, as grad_accum micro-batches (accelerate
  never re-shards the loader).
- Randomness: before each micro-batch the torch RNG is seeded from (seed, step, micro-batch index in
  the global batch), so noise, expert sampling and dropout do not depend on how many processes share
  the work: 2 processes x batch B give the losses of 1 process x batch B x grad_accum 2.
- Several processes (DDP): gradients and logged metrics are averaged across processes; an expert that
  got no token on some rank still joins its graph (see `keep_idle_experts`), or, with
  `find_unused_parameters`, DDP finds it.
- Optimiser: AdamW (no weight decay on biases, norms and embeddings), linear warm-up then cosine,
  gradient clipping, optional mixed precision on GPU; EMA weights are what checkpoints ship for
  evaluation (raw weights are kept for resuming).
- Every DataLoader gets its own seeded generator, so creating one never draws from the global
  torch RNG that the policy's noise, dropout and expert sampling use.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from torch.utils.data import DataLoader, Sampler
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vla.datasets.sampler import MixtureSampler
from vla.policies.config import PolicyConfig
from vla.policies.modules.moe import MoELayer, drop_idle_expert_grads, experts_used, keep_idle_experts
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


@dataclass(frozen=True)
class _Layout:
    """How one optimiser step's global batch is split: into `processes` contiguous shares of
    `grad_accum` micro-batches of `batch_size` windows each."""

    batch_size: int
    grad_accum: int
    processes: int
    rank: int

    @property
    def per_process(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def global_batch(self) -> int:
        return self.per_process * self.processes

    @property
    def split(self) -> bool:
        """Whether a step's batch is split over processes or micro-batches: only then is each micro-batch's
        randomness reseeded (so the split does not change it); one process without accumulation keeps the
        one running RNG stream, and with it the numbers of every run made before splitting existed."""
        return self.processes > 1 or self.grad_accum > 1

    def micro_batch_index(self, a: int) -> int:
        """Index in the global batch of this process's a-th micro-batch (what seeds its randomness)."""
        return self.rank * self.grad_accum + a


class _EpochSlice(Sampler[int]):
    """This process's share of one epoch's global batches, from step `start` of the epoch on."""

    def __init__(self, sampler: MixtureSampler, epoch: int, start: int, layout: _Layout):
        self.sampler, self.epoch, self.start, self.layout = sampler, epoch, start, layout

    def __iter__(self) -> Iterator[int]:
        self.sampler.set_epoch(self.epoch)
        order, lay = list(self.sampler), self.layout
        for step in range(self.start, len(order) // lay.global_batch):
            first = step * lay.global_batch + lay.rank * lay.per_process
            yield from order[first : first + lay.per_process]

    def __len__(self) -> int:
        return (len(self.sampler) // self.layout.global_batch - self.start) * self.layout.per_process


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


def _prepare_run_dir(tc: TrainConfig, resume: bool, processes: int) -> Path | None:
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
        saved_dict = json.loads(saved.read_text())
        before = TrainConfig.from_dict(saved_dict)
        changed = before.same_run(tc)
        if saved_dict.get("num_processes", 1) != processes:  # the split of each global batch would change
            changed.append(f"the number of processes ({saved_dict.get('num_processes', 1)} -> {processes})")
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
    layout: _Layout
    idle_layers: list[MoELayer]  # MoE layers that run idle experts on zero rows (several processes)


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
    ddp = DistributedDataParallelKwargs(find_unused_parameters=tc.find_unused_parameters)
    accelerator = Accelerator(cpu=tc.cpu, mixed_precision=tc.mixed_precision, kwargs_handlers=[ddp])
    resume_from = _prepare_run_dir(tc, resume, accelerator.num_processes)
    accelerator.wait_for_everyone()  # every process has looked at OUT before the main one writes there
    set_seed(tc.seed)  # the same initial weights on every process (DDP would broadcast rank 0's anyway)
    base, derive = _policy_config(config_cls, preset, overrides, resume_from)
    data = build_training_data(config_cls, base, tc.data, derive=derive, image_size=tc.image_size, language=tc.language)
    model: Policy = model_cls(data.config)
    model.set_normalization(data.normalizer)
    several = accelerator.num_processes > 1
    idle_layers = keep_idle_experts(model) if several and not tc.find_unused_parameters else []
    optimizer, scheduler = _optimizer_and_schedule(model, tc, data.config)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: Policy = accelerator.unwrap_model(prepared)
    ema = EMA(unwrapped, tc.ema_decay) if tc.ema_decay > 0 else None  # the weights as prepared (device, dtype)
    start = 0
    if resume_from is not None:
        start = _restore(resume_from, unwrapped, optimizer, scheduler, ema, accelerator.process_index)
    layout = _Layout(tc.batch_size, tc.grad_accum, accelerator.num_processes, accelerator.process_index)
    return _Session(
        accelerator, data, prepared, unwrapped, optimizer, scheduler, ema, resume_from, start, layout, idle_layers
    )


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
        saved = {**tc.to_dict(), "policy": policy, "num_processes": accelerator.num_processes}
        (tc.out_dir / TRAIN_CONFIG_FILE).write_text(json.dumps(saved, indent=2))


def _run_steps(s: _Session, tc: TrainConfig) -> TrainResult:
    """Optimiser steps from `s.start` to `tc.steps`, logging and checkpointing on the way."""
    sampler = _sampler(s.data, s.layout.global_batch, tc)
    per_epoch = len(sampler) // s.layout.global_batch
    main = s.accelerator.is_main_process
    log = MetricsLog(tc.out_dir, s.start, enabled=main)
    result = TrainResult(tc.out_dir, s.resume_from, s.start, None, None, 0.0, 0.0, _param_counts(s.policy))
    bar = progress_bar(tc.steps, "train", initial=s.start, unit="step", disable=not (tc.progress and main))
    s.model.train()
    window = _MetricsWindow()
    step = s.start
    try:
        for micro_batches in _steps(_batches(s.data, sampler, tc, s.layout, per_epoch, s.start), tc.grad_accum):
            entry = _train_step(s, micro_batches, step + 1, tc)
            step += 1
            window.add(entry, s.layout.global_batch)
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


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The torch seed of micro-batch `index` (in the global batch) of optimiser step `step`."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] >> 1)


def _train_step(s: _Session, micro_batches: Sequence[dict[str, Any]], step: int, tc: TrainConfig) -> dict[str, float]:
    """One optimiser step (number `step`, counted from 1) over this process's micro-batches; returns
    its metrics as floats, averaged over micro-batches and processes."""
    infos = []
    for a, batch in enumerate(micro_batches):
        if s.layout.split:
            torch.manual_seed(micro_batch_seed(tc.seed, step, s.layout.micro_batch_index(a)))
        last = a == len(micro_batches) - 1
        # DDP reduces gradients once per optimiser step: not after the micro-batches before the last
        with contextlib.nullcontext() if last else s.accelerator.no_sync(s.model):
            with s.accelerator.autocast():
                loss, info = s.model(batch)
            if not torch.isfinite(loss):
                raise TrainError(
                    f"step {step}: the loss is {float(loss)}; lower --lr, check the store's statistics "
                    "(`vla data info`), or resume from the last checkpoint"
                )
            s.accelerator.backward(loss / len(micro_batches) if len(micro_batches) > 1 else loss)
        infos.append(info)
    if s.idle_layers:  # experts no process used get no gradient, as in one process
        used = s.accelerator.reduce(experts_used(s.idle_layers).to(s.accelerator.device), "sum")
        drop_idle_expert_grads(s.idle_layers, used.cpu())
    grad_norm = s.accelerator.clip_grad_norm_(s.model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    if s.ema is not None:
        s.ema.update(s.policy)
    entry = {k: sum(float(i[k]) for i in infos) / len(infos) for k in infos[0]}
    if grad_norm is not None:
        entry["grad_norm"] = float(grad_norm)
    return _mean_across_processes(s.accelerator, entry)


def _mean_across_processes(accelerator: Accelerator, entry: dict[str, float]) -> dict[str, float]:
    """Every process logs the same numbers: the mean over processes (same keys everywhere)."""
    if accelerator.num_processes == 1:
        return entry
    keys = sorted(entry)
    values = torch.tensor([entry[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(values, "mean").tolist(), strict=True))


def _sampler(data: TrainingData, global_batch: int, tc: TrainConfig) -> MixtureSampler:
    """One epoch's global order (the same on every process; `_EpochSlice` takes this process's share)."""
    n = max(len(data.mixture), global_batch)  # tiny stores: draw with repeats to fill a batch
    return MixtureSampler(data.mixture, tc.weights, num_samples=n, seed=tc.seed, rank=0, world_size=1)


WORKER_START_METHOD = "forkserver"


def _batches(
    data: TrainingData, sampler: MixtureSampler, tc: TrainConfig, layout: _Layout, per_epoch: int, start: int
) -> Iterator[dict[str, Any]]:
    """This process's micro-batches from step `start` on, epoch after epoch; each epoch's loader
    restarts the sampler."""
    epoch, pos = divmod(start, per_epoch)
    while True:
        loader = DataLoader(
            data.mixture,
            batch_size=tc.batch_size,
            sampler=_EpochSlice(sampler, epoch, pos, layout),
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


def _steps(micro_batches: Iterator[dict[str, Any]], n: int) -> Iterator[list[dict[str, Any]]]:
    """Groups of `n` micro-batches: one optimiser step each."""
    group: list[dict[str, Any]] = []
    for batch in micro_batches:
        group.append(batch)
        if len(group) == n:
            yield group
            group = []


def _save(s: _Session, tc: TrainConfig, step: int) -> Path | None:
    """Checkpoint `step` (EMA weights for evaluation + the full training state, with every process's RNG
    state), written by the main process."""
    s.accelerator.wait_for_everyone()
    rank_rngs = gather_object([ckpt.rng_state()]) if s.accelerator.num_processes > 1 else None
    model_state = s.accelerator.get_state_dict(s.model)  # every process takes part (FSDP gathers shards)
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
            rank_rngs=rank_rngs,
            model_state=model_state,
        )
    s.accelerator.wait_for_everyone()
    return path


def _restore(
    path: Path, model: Policy, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMA | None, rank: int
) -> int:
    state = ckpt.load_training_state(path, rank)
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
