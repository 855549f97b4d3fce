"""The main job, `vla demo`: from nothing to a LIBERO success rate, printing each stage.

1. scripted demos: a scripted pick-and-place expert in the real LIBERO simulator writes
   demonstrations in LIBERO's HDF5 layout, without cameras (fast);
   (`images=True`: render cameras: the agentview and wrist cameras are drawn afterwards from each
   demo's saved simulator states, at the policy's input size; see vla.sim.rerender;)
2. convert: `vla data convert --from libero` into a store, then validation;
3. train: a small MoDE (CPU preset) on the store (with images: cameras + instruction + state);
4. evaluate: closed loop in LIBERO with the openpi protocol on initial states the demos never used;
5. report: `report.md` + `summary.json` (stage table, expert rates, loss curve, success table).

Every stage reuses what an earlier run left in OUT (demo files, the store, the training run is
resumed, finished evaluation episodes are kept), so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


@dataclass
class DemoConfig:
    out: Path
    suite: str = "libero_object"
    tasks: tuple[int, ...] = (0, 1, 2)  # alphabet soup, cream cheese, salad dressing -> basket
    demos_per_task: int = 20
    demo_init_states: tuple[int, ...] = tuple(range(40))  # the expert's starts; 40-49 are held out
    eval_init_states: tuple[int, ...] = tuple(range(40, 50))
    images: bool = False  # state-only by default; True adds the agentview and wrist cameras
    image_size: int = 64  # rendered at the cpu preset's input size: no resize, and the render cost is per frame
    cameras: tuple[str, ...] = ("agentview", "eye_in_hand")
    train_steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    policy_overrides: dict[str, Any] = field(default_factory=dict)
    eval_preset: str = "openpi"
    eval_max_steps: int | None = None  # None: the protocol's budget for the suite
    workers: int = 1
    videos: int = 2
    seed: int = 0
    progress: bool = True


@dataclass
class DemoResult:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (stage, result, seconds)
    artifacts: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


Stage = Callable[[DemoConfig, DemoResult], str]


def stage_demos(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.datasets.conventions.libero import TASK_FILE_SUFFIX
    from vla.sim.libero import get_task
    from vla.sim.scripted import collect_task

    src = cfg.out / "source" / "libero"
    rates = {}
    for task_id in cfg.tasks:
        task = get_task(cfg.suite, task_id)
        done = src / f"{task.name}{TASK_FILE_SUFFIX}"
        meta = done.with_suffix(".json")
        if done.exists() and meta.exists():
            report = json.loads(meta.read_text())
            if report["successes"] >= cfg.demos_per_task:
                rates[task.name] = (report["successes"], report["attempts"])
                continue
        r = collect_task(
            cfg.suite,
            task_id,
            src,
            cfg.demos_per_task,
            init_state_ids=cfg.demo_init_states,
            seed=cfg.seed,
        )
        if not r.successes:
            raise RuntimeError(f"the scripted expert solved none of {r.attempts} tries of {task.name}")
        rates[task.name] = (r.successes, r.attempts)
    res.artifacts["demos"] = str(src)
    res.figures["expert success"] = {k: f"{s}/{a}" for k, (s, a) in rates.items()}
    kept = sum(s for s, _ in rates.values())
    tries = sum(a for _, a in rates.values())
    return f"{kept} successful demos of {len(rates)} tasks ({kept}/{tries} expert rollouts succeeded)"


def stage_render(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.datasets.conventions.libero import TASK_FILE_SUFFIX
    from vla.sim.libero import get_task
    from vla.sim.rerender import RenderJob, render_task_files

    src, dst = Path(res.artifacts["demos"]), cfg.out / "source" / "libero_images"
    jobs = [
        RenderJob(cfg.suite, t, src / f"{name}{TASK_FILE_SUFFIX}", dst / f"{name}{TASK_FILE_SUFFIX}", cfg.cameras,
                  cfg.image_size)
        for t in cfg.tasks
        for name in [get_task(cfg.suite, t).name]
    ]  # fmt: skip
    reports = render_task_files(jobs, workers=cfg.workers)
    res.artifacts["demos"] = str(dst)
    frames = sum(r.frames for r in reports)
    reused = sum(r.reused for r in reports)
    return (
        f"{frames} frames x {len(cfg.cameras)} cameras ({', '.join(cfg.cameras)}) at {cfg.image_size} px from "
        f"saved states, {len(reports)} task files ({reused} reused), {cfg.workers} process(es)"
    )


def stage_convert(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.datasets.convert.base import convert
    from vla.datasets.store import Store
    from vla.datasets.validate import validate_store

    dst = cfg.out / "stores" / "libero.zarr"
    if not dst.exists():
        convert("libero", res.artifacts["demos"], dst, progress=cfg.progress)
    problems = validate_store(dst)
    if problems:
        raise RuntimeError(f"{dst} is not valid: {problems}")
    store = Store(dst)
    res.artifacts["store"] = str(dst)
    return f"{store.num_episodes} episodes, {store.num_frames} frames, {len(store.tasks)} tasks; valid"


def stage_train(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.policies.pretrained import latest_checkpoint
    from vla.train import TrainConfig, train

    run = cfg.out / "train"
    tc = TrainConfig(
        data=(res.artifacts["store"],),
        out=str(run),
        steps=cfg.train_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=min(cfg.warmup_steps, cfg.train_steps),
        seed=cfg.seed,
        save_every=max(cfg.train_steps // 4, 1),
        log_every=max(min(50, cfg.train_steps // 10), 1),
        progress=cfg.progress,
    )
    last = latest_checkpoint(run)
    res.artifacts["checkpoint"] = str(run / "last")
    if last is not None and int(last.name.split("_")[1]) >= cfg.train_steps:
        _record_training(run, res)
        return f"reused {last}"
    result = train("mode", tc, preset="cpu", overrides=cfg.policy_overrides, resume=last is not None)
    res.figures["parameters"] = result.parameters
    _record_training(run, res)
    curve = res.figures["loss curve"]
    return (
        f"{result.steps} steps, loss {curve['first']:.3f} -> {curve['last']:.3f}, "
        f"{result.samples_per_s:.0f} samples/s, {result.parameters.get('total', 0) / 1e6:.1f}M parameters"
    )


def _record_training(run: Path, res: DemoResult) -> None:
    from vla.train.metrics import read_metrics

    metrics = read_metrics(run)
    if metrics:
        res.figures["loss curve"] = {
            "first": metrics[0]["loss"],
            "last": metrics[-1]["loss"],
            "steps": metrics[-1]["step"],
        }
        res.artifacts["loss plot"] = str(plot_loss(metrics, run / "loss.png"))


def plot_loss(metrics: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics])
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="MoDE training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_evaluate(cfg: DemoConfig, res: DemoResult) -> str:
    from vla.eval.protocols.libero import LiberoEvalConfig, evaluate_libero, print_summary

    out = cfg.out / "eval"
    summary = evaluate_libero(
        LiberoEvalConfig(
            suite=cfg.suite,
            out=out,
            policy=res.artifacts["checkpoint"],
            tasks=cfg.tasks,
            preset=cfg.eval_preset,
            init_states=cfg.eval_init_states,
            seed=cfg.seed,
            max_steps=cfg.eval_max_steps,
            workers=cfg.workers,
            videos=cfg.videos,
        ),
        progress=cfg.progress,
    )
    print_summary(summary, console)
    res.artifacts["eval"] = str(out)
    res.artifacts["eval report"] = summary["report"]
    res.figures["success rate"] = summary["success_rate"]
    res.figures["episodes"] = summary["episodes"]
    res.figures["per task"] = {t["name"]: t["success_rate"] for t in summary["tasks"]}
    res.figures["eval throughput"] = summary["throughput"]
    res.figures["eval"] = {"preset": summary["preset"], "init_states": list(cfg.eval_init_states)}
    return (
        f"{summary['successes']}/{summary['episodes']} successes ({summary['success_rate']:.0%}) "
        f"on held-out initial states {cfg.eval_init_states[0]}-{cfg.eval_init_states[-1]}"
    )


STAGES: list[tuple[str, Stage]] = [
    ("scripted demos", stage_demos),
    ("convert", stage_convert),
    ("train", stage_train),
    ("evaluate", stage_evaluate),
]


def stages(cfg: DemoConfig) -> list[tuple[str, Stage]]:
    """The stages of this run: with images, cameras are rendered between collecting and converting."""
    return [*STAGES[:1], ("render cameras", stage_render), *STAGES[1:]] if cfg.images else list(STAGES)


def run_demo(cfg: DemoConfig) -> DemoResult:
    cfg.out.mkdir(parents=True, exist_ok=True)
    res = DemoResult()
    t_all = time.perf_counter()
    todo = stages(cfg)
    for i, (name, stage) in enumerate(todo, 1):
        console.rule(f"[bold]stage {i}/{len(todo)}: {name}")
        t0, c0 = time.perf_counter(), _cpu_seconds()
        summary = stage(cfg, res)
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        console.print(f"{summary}  [dim]({seconds:.1f} s, {cpu:.0f} CPU s)[/]")
        res.rows.append((name, summary, f"{seconds:.1f}"))
        # CPU seconds (this process and its finished children) say what a stage costs when the cores are shared.
        res.figures.setdefault("stage cpu seconds", {})[name] = round(cpu, 1)
    res.figures["total seconds"] = round(time.perf_counter() - t_all, 1)
    write_report(cfg, res)
    return res


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def write_report(cfg: DemoConfig, res: DemoResult) -> None:
    table = Table("stage", "result", "seconds", title="vla demo")
    for row in res.rows:
        table.add_row(*row)
    console.print(table)
    lines = ["# vla demo report", "", "| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in res.rows]
    if "per task" in res.figures:
        lines += ["", "## LIBERO success on held-out initial states", "", "| task | success |", "|---|---|"]
        lines += [f"| {k} | {v:.0%} |" for k, v in res.figures["per task"].items()]
        lines += ["", f"Full evaluation report: `{res.artifacts['eval report']}`"]
    if "loss plot" in res.artifacts:
        lines += ["", "## Training", "", f"![loss]({Path(res.artifacts['loss plot']).relative_to(cfg.out)})"]
    lines += ["", "## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in res.artifacts.items()]
    lines += ["", "## Figures", "", "```json", json.dumps(res.figures, indent=2, default=str), "```", ""]
    (cfg.out / "report.md").write_text("\n".join(lines))
    summary = {"config": asdict(cfg), "stages": res.rows, "artifacts": res.artifacts, "figures": res.figures}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"report: {cfg.out / 'report.md'}")
