"""Scripted CALVIN demonstrations, written in CALVIN's own split layout.

For each subtask: draw start states among the 192 symbolic initial states of the evaluation chains on
which the subtask is feasible (`tasks.next_states`), place the scene as the evaluation does
(`scene.reset_arrays`), run a scripted expert with relative actions until the oracle sees the subtask
done (judged exactly as `vla eval calvin` judges it: `oracle.subtask_done` on `get_info()` at the start
vs now) or the evaluation's 360 steps run out, and keep the successes.

Rollouts run state-only (no cameras: hundreds of steps per second instead of ~7 with both cameras on
a CPU); the kept ones are then drawn from their recorded states (robot_obs + scene_obs) by a second
simulator that renders (`CalvinBackend.render_state`), as vla/sim/rerender.py does for LIBERO.

Output (`out/`), what `vla data convert --from calvin out` reads unchanged:

    training/ and validation/     (validation: the last `validation` share of each subtask's demos)
        episode_XXXXXXX.npz       per frame: actions (absolute tcp target xyz, euler xyz, gripper as
                                  calvin_env tracks it), rel_actions (what was sent), robot_obs,
                                  scene_obs, rgb_static, rgb_gripper
        ep_start_end_ids.npy      (K, 2) first and last (inclusive) frame id of each demo
        ep_lens.npy               (K,)
        scene_info.npy            {"calvin_scene_D": [first, last]}
        lang_annotations/auto_lang_ann.npy   one window per demo: language.ann (the evaluation's
                                  instruction), language.task (the subtask), info.indx (first, last);
                                  no language.emb (the converter re-encodes the text)
    demos.json                    the settings and one record per attempt (subtask, start state, success)

Frame k holds the observation before action k; the last frame is the one whose action completed the
subtask. Everything is written under `out.partial/` (each demo's frames, then one journal line), and
renamed to `out` once every subtask is done; a killed run resumes from the journal, a half-written demo
is overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vla.files import atomic_write_text
from vla.sim.base import SimError
from vla.sim.calvin import tasks
from vla.sim.calvin.backend import TargetPose
from vla.sim.calvin.env import EP_LEN, BackendFactory, SimulatorFactory
from vla.sim.calvin.instructions import instruction
from vla.sim.calvin.oracle import subtask_done
from vla.sim.calvin.scene import reset_arrays
from vla.sim.calvin.tasks import SUBTASKS, initial_states, next_states
from vla.sim.experts.calvin_scripted import EXPERT, SCRIPTED, CalvinExpert

JOURNAL = "journal.jsonl"
RECORD = "demos.json"
SPLITS = ("training", "validation")
LANG_FILE = Path("lang_annotations") / "auto_lang_ann.npy"
SCENE = "calvin_scene_D"  # the evaluation's environment (and the simulator's default scene)


class Expert(Protocol):
    """One subtask's script: `reset` at the start state, then one 7-D relative action per step."""

    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> None: ...

    def act(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> np.ndarray: ...


ExpertFactory = Callable[[str, np.random.Generator], Expert]


@dataclass
class DemoConfig:
    out: Path
    subtasks: Sequence[str]
    episodes: int = 10  # successful demos wanted per subtask
    max_attempts: int | None = None  # per subtask (default 2 x episodes)
    seed: int = 0  # start states and the expert's per-episode variation
    validation: float = 0.1  # share of each subtask's demos written to validation/
    static_size: int = 200  # CALVIN's sizes; smaller ones only for CPU training (recorded)
    gripper_size: int = 84
    max_steps: int = EP_LEN
    renderer: str = "egl"
    # Python API (tests): the simulators and the expert; None = calvin_env and the scripted expert
    rollout_backend: BackendFactory | None = None  # state-only rollouts
    render_backend: BackendFactory | None = None  # draws the kept demos' cameras
    expert: ExpertFactory | None = None

    def settings(self) -> dict[str, Any]:
        """What the demos depend on (a resumed run must match; `episodes`/`max_attempts` may grow)."""
        return {
            "subtasks": list(self.subtasks),
            "seed": self.seed,
            "validation": self.validation,
            "image_sizes": {"rgb_static": self.static_size, "rgb_gripper": self.gripper_size},
            "max_steps": self.max_steps,
            "renderer": self.renderer if self.render_backend is None else _describe(self.render_backend),
            "expert": EXPERT if self.expert is None else getattr(self.expert, "__name__", "custom"),
            "scene": SCENE,
        }


@dataclass
class Attempt:
    subtask: str
    attempt: int
    state_id: int
    success: bool
    steps: int
    seconds: float
    split: str | None = None  # where a kept demo went
    frames: tuple[int, int] | None = None  # its first and last frame id there


@dataclass
class SubtaskReport:
    subtask: str
    attempts: int = 0
    successes: int = 0
    steps: list[int] = field(default_factory=list)  # of the kept demos
    failed_state_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class DemoRun:
    out: Path
    settings: dict[str, Any]
    attempts: list[Attempt]
    reused: bool = False  # the dataset was already complete: nothing ran

    def reports(self) -> list[SubtaskReport]:
        return [subtask_report(s, self.attempts) for s in self.settings["subtasks"]]


def subtask_report(subtask: str, attempts: Sequence[Attempt]) -> SubtaskReport:
    """One subtask's tally over `attempts`."""
    r = SubtaskReport(subtask)
    for a in attempts:
        if a.subtask != subtask:
            continue
        r.attempts += 1
        r.seconds += a.seconds
        if a.success:
            r.successes += 1
            r.steps.append(a.steps)
        else:
            r.failed_state_ids.append(a.state_id)
    return r


def check_subtasks(names: Sequence[str], scripted: Sequence[str] | None = None) -> tuple[str, ...]:
    """The subtasks asked for, without repeats; one error naming every unknown (or unscripted) one."""
    names = tasks.check_subtasks(names)
    if scripted is not None:
        missing = [n for n in names if n not in scripted]
        if missing:
            raise SimError(
                f"the scripted CALVIN expert has no script for {', '.join(missing)}; scripted: {', '.join(scripted)}"
            )
    return names


def start_states(subtask: str, seed: int) -> list[int]:
    """Ids (into `tasks.initial_states()`) of the start states where `subtask` is feasible, shuffled."""
    states = initial_states()
    ids = [i for i, s in enumerate(states) if len(next_states(s, subtask)) == 1]
    rng = np.random.default_rng([seed, SUBTASKS.index(subtask)])
    return [ids[i] for i in rng.permutation(len(ids))]


@dataclass
class Rollout:
    success: bool
    rel_actions: np.ndarray  # (T, 7)
    actions: np.ndarray  # (T, 7) the absolute target after each action
    robot_obs: np.ndarray  # (T, 15) before each action
    scene_obs: np.ndarray  # (T, 24)


def rollout(backend: Any, expert: Expert, subtask: str, state_id: int, max_steps: int) -> Rollout:
    """One expert run from start state `state_id`, stopped when the oracle sees `subtask` done."""
    robot, scene = reset_arrays(initial_states()[state_id])
    obs = backend.reset(robot, scene)
    start = backend.get_info()
    target = TargetPose.at(obs["robot_obs"])
    expert.reset(obs["robot_obs"], obs["scene_obs"])
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("rel_actions", "actions", "robot_obs", "scene_obs")}
    success = False
    for _ in range(max_steps):
        rel = np.asarray(expert.act(obs["robot_obs"], obs["scene_obs"]), np.float64)
        rel = np.clip(rel, -1.0, 1.0)
        rel[6] = 1.0 if rel[6] > 0 else -1.0
        rows["robot_obs"].append(np.asarray(obs["robot_obs"], np.float64))
        rows["scene_obs"].append(np.asarray(obs["scene_obs"], np.float64))
        rows["rel_actions"].append(rel)
        rows["actions"].append(target.apply(rel))
        obs = backend.step(rel)
        if subtask_done(subtask, start, backend.get_info()):
            success = True
            break
    return Rollout(success, **{k: np.asarray(v, np.float64) for k, v in rows.items()})


# --- the output folder ----------------------------------------------------------------------------------


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def read_journal(path: Path) -> list[Attempt]:
    """The attempts logged so far (a torn last line from a kill is dropped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        frames = row.pop("frames", None)
        out.append(Attempt(**row, frames=tuple(frames) if frames else None))
    return out


def _append(path: Path, attempt: Attempt) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(asdict(attempt)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_frames(split: Path, first: int, frames: Rollout, images: dict[str, np.ndarray]) -> int:
    """The demo's frames as episode_XXXXXXX.npz from `first` on; the last frame id."""
    split.mkdir(parents=True, exist_ok=True)
    n = len(frames.rel_actions)
    for k in range(n):
        arrays = {
            "actions": frames.actions[k],
            "rel_actions": frames.rel_actions[k],
            "robot_obs": frames.robot_obs[k],
            "scene_obs": frames.scene_obs[k],
            **{key: images[key][k] for key in images},
        }
        np.savez_compressed(split / f"episode_{first + k:07d}.npz", **arrays)
    return first + n - 1


def write_index(split: Path, kept: Sequence[Attempt]) -> None:
    """ep_start_end_ids, ep_lens, scene_info and the language annotations of one split's demos."""
    ids = np.asarray([a.frames for a in kept], np.int64).reshape(-1, 2)
    np.save(split / "ep_start_end_ids.npy", ids)
    np.save(split / "ep_lens.npy", ids[:, 1] - ids[:, 0] + 1)
    np.save(split / "scene_info.npy", {SCENE: [int(ids.min()), int(ids.max())]}, allow_pickle=True)
    lang = {
        "language": {"ann": [instruction(a.subtask) for a in kept], "task": [a.subtask for a in kept]},
        "info": {"episodes": [], "indx": [(np.int64(a.frames[0]), np.int64(a.frames[1])) for a in kept]},
    }
    (split / LANG_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.save(split / LANG_FILE, lang, allow_pickle=True)
    # frame files past the last kept demo: a demo half-written when a run was killed
    last = int(ids[:, 1].max())
    for path in split.glob("episode_*.npz"):
        if int(path.stem.split("_")[1]) > last:
            path.unlink()


def _describe(factory: Any) -> Any:
    return getattr(factory, "describe", lambda: type(factory).__name__)()


def _n_validation(episodes: int, share: float) -> int:
    """Demos of a subtask held out for validation/ (none for a single demo)."""
    return min(episodes - 1, round(share * episodes)) if episodes > 1 else 0


def collect_demos(config: DemoConfig, on_attempt: Callable[[SubtaskReport, Attempt], None] | None = None) -> DemoRun:
    """Collect (or resume, or find complete) the demos of `config`; see the module docstring."""
    subtasks = check_subtasks(config.subtasks, SCRIPTED if config.expert is None else None)
    config.subtasks = subtasks
    if config.episodes < 1:
        raise SimError(f"--episodes must be >= 1, got {config.episodes}")
    if not 0 <= config.validation < 1:
        raise SimError(f"--validation must be in [0, 1), got {config.validation}")
    if min(config.static_size, config.gripper_size) < 1 or config.max_steps < 1:
        raise SimError("image sizes and --max-steps must be positive")
    settings = config.settings()
    out, work = Path(config.out), partial_path(Path(config.out))
    if (out / RECORD).is_file():
        record = json.loads((out / RECORD).read_text())
        _check_settings(out / RECORD, record["settings"], settings)
        attempts = [Attempt(**{**a, "frames": tuple(a["frames"]) if a["frames"] else None}) for a in record["attempts"]]
        return DemoRun(out, settings, attempts, reused=True)
    if out.exists():
        raise SimError(
            f"{out}: exists but holds no {RECORD} (not a finished demo set); remove it or choose another --out"
        )
    work.mkdir(parents=True, exist_ok=True)
    settings_file = work / "settings.json"
    if settings_file.is_file():
        _check_settings(settings_file, json.loads(settings_file.read_text()), settings)
    else:
        atomic_write_text(settings_file, json.dumps(settings, indent=2))
    attempts = read_journal(work / JOURNAL)
    next_frame = {s: max((a.frames[1] + 1 for a in attempts if a.split == s and a.frames), default=0) for s in SPLITS}
    expert_factory = config.expert or CalvinExpert.for_subtask
    rollout_backend = config.rollout_backend or SimulatorFactory(cameras=(), renderer="tiny")
    render_backend = config.render_backend or SimulatorFactory(
        ("static", "gripper"), config.static_size, config.gripper_size, config.renderer
    )
    sim = painter = None
    try:
        for subtask in subtasks:
            report = subtask_report(subtask, attempts)
            states = start_states(subtask, config.seed)
            n_val = _n_validation(config.episodes, config.validation)
            limit = config.max_attempts or 2 * config.episodes
            while report.successes < config.episodes and report.attempts < limit:
                k = report.attempts
                rng = np.random.default_rng([config.seed, SUBTASKS.index(subtask), k])
                sim = sim or rollout_backend()
                t0 = time.perf_counter()
                state_id = states[k % len(states)]
                run = rollout(sim, expert_factory(subtask, rng), subtask, state_id, config.max_steps)
                attempt = Attempt(subtask, k, state_id, run.success, len(run.rel_actions), 0.0)
                if run.success:
                    painter = painter or render_backend()
                    images = render_frames(painter, run)
                    attempt.split = "validation" if report.successes >= config.episodes - n_val else "training"
                    first = next_frame[attempt.split]
                    last = write_frames(work / attempt.split, first, run, images)
                    attempt.frames = (first, last)
                    next_frame[attempt.split] = last + 1
                attempt.seconds = round(time.perf_counter() - t0, 3)
                _append(work / JOURNAL, attempt)
                attempts.append(attempt)
                report = subtask_report(subtask, attempts)
                if on_attempt is not None:
                    on_attempt(report, attempt)
    finally:
        for backend in (sim, painter):
            if backend is not None:
                backend.close()
    return _finish(out, work, settings, attempts)


def render_frames(backend: Any, run: Rollout) -> dict[str, np.ndarray]:
    """Camera key -> (T, H, W, 3) uint8 images of a rollout's recorded states."""
    images: dict[str, list[np.ndarray]] = {}
    for robot, scene in zip(run.robot_obs, run.scene_obs, strict=True):
        for key, image in backend.render_state(np.concatenate([robot, scene])).items():
            images.setdefault(key, []).append(np.asarray(image, np.uint8))
    return {k: np.stack(v) for k, v in images.items()}


def _finish(out: Path, work: Path, settings: dict[str, Any], attempts: list[Attempt]) -> DemoRun:
    kept = [a for a in attempts if a.success]
    if not kept:
        raise SimError(
            f"the expert solved none of {len(attempts)} attempts; nothing written (the journal stays in {work})"
        )
    for split in SPLITS:
        rows = sorted((a for a in kept if a.split == split), key=lambda a: a.frames[0])
        if rows:
            write_index(work / split, rows)
        elif (work / split).exists():
            shutil.rmtree(work / split)
    record = {"settings": settings, "attempts": [asdict(a) for a in attempts]}
    atomic_write_text(work / RECORD, json.dumps(record, indent=1))
    (work / JOURNAL).unlink()
    (work / "settings.json").unlink()
    os.replace(work, out)  # the finished set appears at once
    return DemoRun(out, settings, attempts)


def _check_settings(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    diff = [k for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)]
    if diff:
        parts = "; ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} now" for k in diff)
        raise SimError(
            f"{path}: demos there were collected with other settings ({parts}); use the same settings to "
            "resume, or another --out"
        )
