"""The main job, `vla demo`: from nothing to a report, printing each stage.

Today's stages cover the data layer: demonstration data written in two real source layouts
(LIBERO HDF5 and LeRobot v3 with video cameras), converted into stores, validated, and sampled as
a two-robot training mixture. Training, LIBERO evaluation and the report's success table are
further stages appended here as those parts exist.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


@dataclass
class DemoConfig:
    out: Path
    libero_tasks: tuple[str, ...] = (
        "pick up the alphabet soup and place it in the basket",
        "pick up the cream cheese and place it in the basket",
    )
    demos_per_task: int = 5
    demo_len: int = 60
    lerobot_episodes: int = 4
    lerobot_episode_len: int = 40
    image_size: int = 64
    sample_batches: int = 20
    batch_size: int = 16
    seed: int = 0


@dataclass
class DemoResult:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (stage, result, seconds)
    artifacts: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


Stage = Callable[[DemoConfig, DemoResult], str]


def stage_source_data(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.datasets.fixtures.lerobot import write_lerobot_dataset
    from vla.datasets.fixtures.libero_hdf5 import write_libero_hdf5

    libero_dir = cfg.out / "source" / "libero"
    libero_dir.mkdir(parents=True, exist_ok=True)
    for i, task in enumerate(cfg.libero_tasks):
        path = libero_dir / f"{task.replace(' ', '_')}_demo.hdf5"
        if not path.exists():
            write_libero_hdf5(
                path,
                language=task,
                num_demos=cfg.demos_per_task,
                demo_len=cfg.demo_len,
                image_size=(cfg.image_size, cfg.image_size),
                seed=cfg.seed + i,
            )
    lerobot_dir = cfg.out / "source" / "lerobot"
    if not (lerobot_dir / "meta" / "info.json").exists():
        write_lerobot_dataset(
            lerobot_dir,
            num_episodes=cfg.lerobot_episodes,
            episode_len=cfg.lerobot_episode_len,
            image_size=(cfg.image_size, cfg.image_size),
            seed=cfg.seed,
        )
    res.artifacts["libero source"] = str(libero_dir)
    res.artifacts["lerobot source"] = str(lerobot_dir)
    return f"{len(cfg.libero_tasks)} LIBERO HDF5 files, 1 LeRobot v3 dataset"


def stage_convert(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.datasets.convert import convert

    parts = []
    for fmt, name in (("libero", "libero"), ("lerobot", "lerobot")):
        dst = cfg.out / "stores" / f"{name}.zarr"
        if not dst.exists():
            convert(fmt, res.artifacts[f"{name} source"], dst, progress=False)
        from vla.datasets.store import Store

        store = Store(dst)
        res.artifacts[f"{name} store"] = str(dst)
        parts.append(f"{name}: {store.num_episodes} ep / {store.num_frames} frames")
    return "; ".join(parts)


def stage_validate(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.datasets.validate import validate_store

    problems = {k: validate_store(v) for k, v in res.artifacts.items() if k.endswith("store")}
    bad = {k: p for k, p in problems.items() if p}
    if bad:
        raise RuntimeError(f"store validation failed: {bad}")
    return f"{len(problems)} stores valid"


def stage_sample(cfg: DemoConfig, res: DemoResult) -> str:
    import torch

    from vla.datasets.sampler import MixtureDataset, MixtureSampler, WindowConfig, WindowDataset

    window = WindowConfig(n_obs=1, horizons=(10,))
    parts = [WindowDataset(res.artifacts[k], window) for k in ("libero store", "lerobot store")]
    mixture = MixtureDataset(parts, slots=True, image_size=(cfg.image_size, cfg.image_size))
    sampler = MixtureSampler(
        mixture, weights=[0.5, 0.5], num_samples=cfg.batch_size * cfg.sample_batches, seed=cfg.seed
    )
    loader = torch.utils.data.DataLoader(mixture, batch_size=cfg.batch_size, sampler=sampler, num_workers=0)
    t0 = time.perf_counter()
    n, per_embodiment = 0, torch.zeros(len(parts), dtype=torch.long)
    for batch in loader:
        n += len(batch["action"])
        per_embodiment += torch.bincount(batch["embodiment_id"], minlength=len(parts))
    rate = n / (time.perf_counter() - t0)
    res.figures["mixture samples/s"] = round(rate, 1)
    res.figures["windows per embodiment"] = per_embodiment.tolist()
    shape = tuple(batch["action"].shape)
    return f"{n} windows ({per_embodiment.tolist()} per robot), {rate:.0f} samples/s, action batch {shape}"


STAGES: list[tuple[str, Stage]] = [
    ("source data", stage_source_data),
    ("convert", stage_convert),
    ("validate", stage_validate),
    ("sample mixture", stage_sample),
]


def run_demo(cfg: DemoConfig) -> DemoResult:
    cfg.out.mkdir(parents=True, exist_ok=True)
    res = DemoResult()
    t_all = time.perf_counter()
    for i, (name, stage) in enumerate(STAGES, 1):
        console.rule(f"[bold]stage {i}/{len(STAGES)}: {name}")
        t0 = time.perf_counter()
        summary = stage(cfg, res)
        seconds = time.perf_counter() - t0
        console.print(f"{summary}  [dim]({seconds:.1f} s)[/]")
        res.rows.append((name, summary, f"{seconds:.1f}"))
    res.figures["total seconds"] = round(time.perf_counter() - t_all, 1)
    write_report(cfg, res)
    return res


def write_report(cfg: DemoConfig, res: DemoResult) -> None:
    table = Table("stage", "result", "seconds", title="vla demo")
    for row in res.rows:
        table.add_row(*row)
    console.print(table)
    lines = ["# vla demo report", "", "| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in res.rows]
    lines += ["", "## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in res.artifacts.items()]
    lines += ["", "## Figures", "", "```json", json.dumps(res.figures, indent=2), "```", ""]
    (cfg.out / "report.md").write_text("\n".join(lines))
    (cfg.out / "summary.json").write_text(
        json.dumps({"stages": res.rows, "artifacts": res.artifacts, "figures": res.figures}, indent=2)
    )
    console.print(f"report: {cfg.out / 'report.md'}")
