"""Scripted demonstrations in LIBERO, saved as LIBERO task files (`<task_name>_demo.hdf5`).

For each task: build the environment (cameras only when images are wanted), run the scripted
expert from the task's fixed initial states (cycling through the chosen ids), keep the successful
episodes and write them with `LiberoHdf5Writer` in LIBERO's own layout, so `vla data convert
--from libero` reads them like the released datasets. Frames are stored as LIBERO renders them
(upside down, `macros_image_convention="opengl"`); the converter rotates them upright.

Each demo records the frame at every step BEFORE its action, starting after the settle steps; the
episode ends at the step where the task's success predicate first fires (rewards/dones 1 there).
Which initial states were used goes into each demo's attrs (`init_state_id`), the file's
`data.attrs["vla_init_state_ids"]`, and a sidecar `<task_name>_demo.json` with the success rate.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vla import ids
from vla.datasets.conventions.libero import CAMERAS, TASK_FILE_SUFFIX
from vla.datasets.libero_hdf5 import LiberoHdf5Writer
from vla.sim.base import SimError
from vla.sim.experts.libero_pick_place import PickPlaceExpert, pick_place_goal
from vla.sim.libero import LiberoEnv, get_task, quat_to_axis_angle
from vla.sim.perturb import Perturbation

EXPERT = "libero_pick_place/v1"


@dataclass
class Rollout:
    """One expert rollout, in LIBERO's dataset arrays."""

    init_state_id: int
    success: bool
    steps: int
    actions: np.ndarray
    obs: dict[str, np.ndarray]
    states: np.ndarray
    seconds: float


@dataclass
class TaskReport:
    suite: str
    task_id: int
    task_name: str
    language: str
    attempts: int = 0
    successes: int = 0
    init_state_ids: list[int] = field(default_factory=list)  # of the kept demos, in file order
    failed_init_state_ids: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # of the kept demos
    seconds: float = 0.0
    path: str | None = None
    skipped: str | None = None  # why no demo was attempted

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


def parse_ids(text: str) -> list[int]:
    """'0-9' / '0,3,5-7' -> ids in the given order, without repeats."""
    return ids.parse_ids(text, SimError)


def rollout(env: LiberoEnv, expert: PickPlaceExpert, init_state_id: int) -> Rollout:
    """Run the expert once; arrays hold one row per step taken (frame before the action)."""
    t0 = time.perf_counter()
    env.reset(init_state_id)
    expert.reset()
    keys = ("ee_pos", "ee_ori", "gripper_states", "joint_states", *(f"{c}_rgb" for c in env.cameras))
    obs: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    actions, states = [], []
    success = False
    while env.steps < env.max_steps and not success:
        obs["ee_pos"].append(np.array(env.raw_obs["robot0_eef_pos"], np.float64))
        obs["ee_ori"].append(quat_to_axis_angle(env.raw_obs["robot0_eef_quat"]))
        obs["gripper_states"].append(np.array(env.raw_obs["robot0_gripper_qpos"], np.float64))
        obs["joint_states"].append(np.array(env.raw_obs["robot0_joint_pos"], np.float64))
        for cam in env.cameras:
            obs[f"{cam}_rgb"].append(env.raw_frame(env.raw_obs[f"{CAMERAS[cam]}_image"]))
        states.append(env.sim_state())
        action = expert.act()
        actions.append(action)
        _, success, _ = env.step(action)
    return Rollout(
        init_state_id=init_state_id,
        success=success,
        steps=len(actions),
        actions=np.asarray(actions, np.float64),
        obs={k: np.asarray(v) for k, v in obs.items()},
        states=np.asarray(states, np.float64),
        seconds=time.perf_counter() - t0,
    )


def collect_task(
    suite: str,
    task_id: int,
    out_dir: Path,
    episodes: int,
    *,
    init_state_ids: Sequence[int] | None = None,
    max_attempts: int | None = None,
    images: bool = False,
    image_size: int = 128,
    seed: int = 0,
    max_steps: int | None = None,
    perturbation: Perturbation | None = None,
    on_episode: Callable[[TaskReport, Rollout], None] | None = None,
) -> TaskReport:
    """Collect `episodes` successful demos of one task (at most `max_attempts` tries, default 2x);
    `perturbation`: from perturbed layouts of the initial states (vla.sim.perturb)."""
    task = get_task(suite, task_id)
    report = TaskReport(suite, task_id, task.name, task.language)
    cameras = tuple(CAMERAS) if images else ()
    # Raw frames (upside down) as LIBERO's datasets hold them; the converter rotates them.
    env = LiberoEnv(
        suite,
        task_id,
        cameras=cameras,
        image_size=image_size,
        image_orientation="rotated_180",
        max_steps=max_steps,
        perturbation=perturbation,
    )
    try:
        if pick_place_goal(env) is None:
            report.skipped = f"goal {env.goal()} is not a single In/On pick-and-place"
            return report
        ids = list(init_state_ids) if init_state_ids is not None else list(range(env.num_init_states))
        bad = [i for i in ids if not 0 <= i < env.num_init_states]
        if bad:
            raise SimError(f"init-state ids {bad} out of range 0..{env.num_init_states - 1} for {task.name}")
        expert = PickPlaceExpert(env, rng=np.random.default_rng([seed, task_id]))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{task.name}{TASK_FILE_SUFFIX}"
        partial = path.with_name(path.name + ".partial")  # a killed run never leaves a complete-looking file
        t0 = time.perf_counter()
        with _writer(env, partial, image_size if images else None) as writer:
            while report.successes < episodes and report.attempts < (max_attempts or 2 * episodes):
                init_id = ids[report.attempts % len(ids)]
                ep = rollout(env, expert, init_id)
                report.attempts += 1
                if ep.success:
                    name = writer.add_demo(ep.actions, ep.obs, ep.states, model_file=env.model_xml())
                    writer.data[name].attrs["init_state_id"] = init_id
                    report.successes += 1
                    report.init_state_ids.append(init_id)
                    report.steps.append(ep.steps)
                else:
                    report.failed_init_state_ids.append(init_id)
                if on_episode is not None:
                    on_episode(report, ep)
            writer.data.attrs["vla_init_state_ids"] = json.dumps(report.init_state_ids)
            writer.data.attrs["vla_expert"] = EXPERT
        report.seconds = time.perf_counter() - t0
        if report.successes:
            os.replace(partial, path)
            report.path = str(path)
        else:  # nothing to keep; a file from an earlier run would contradict this run's report
            partial.unlink()
            path.unlink(missing_ok=True)
        meta = {
            **asdict(report),
            "success_rate": report.success_rate,
            "expert": EXPERT,
            "seed": seed,
            "settle_steps": env.settle_steps,
            "max_steps": env.max_steps,
            "images": images,
            "image_size": image_size if images else None,
            "perturbation": None if env.perturbation is None else env.perturbation.to_json(),
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        return report
    finally:
        env.close()


def _writer(env: LiberoEnv, path: Path, image_size: int | None) -> LiberoHdf5Writer:
    bddl = env.task.bddl_file
    kwargs = {
        "bddl_file_name": str(bddl),
        "control_freq": 20,
        "controller": "OSC_POSE",
        "camera_names": [CAMERAS[c] for c in env.cameras],
        "camera_heights": image_size or 0,
        "camera_widths": image_size or 0,
        "settle_steps": env.settle_steps,
    }
    return LiberoHdf5Writer(
        path,
        env.task_language,
        problem_name=env.problem_info["problem_name"],
        domain_name=env.problem_info["domain_name"],
        env_kwargs=kwargs,
        bddl_file_name=str(bddl),
        bddl_file_content=bddl.read_text(),
        image_convention="opengl",
    )
