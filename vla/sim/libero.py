"""LIBERO tasks behind the `SimEnv` interface, observing exactly what converted LIBERO stores hold.

Built on LIBERO's own `ControlEnv` (the off-screen renderer on only when a camera is asked for) and
its benchmark suites and fixed initial states. Cameras are drawn by us from the simulator state at the
end of each step, only for the steps that need them (`step(action, images=False)` skips them; with
software rendering one camera costs ~5x a physics step), so a frame rendered live equals a frame
re-rendered later from the saved state (`render_states`), which is how demos get their images.
Per episode: reset, set initial state `k` of the task's 50, run
`settle_steps` of `settle_action` (not counted), then the policy's steps.

Observations and actions follow LIBERO's conventions (`vla.datasets.conventions.libero`, shared with
the converter), so a policy trained on a converted store runs here unchanged. LIBERO renders upside
down (robosuite's "opengl" convention); `image_orientation="upright"` (the store's convention) rotates
frames 180 degrees, `"rotated_180"` passes the raw render through. The spec says which.

Rendering is headless: MUJOCO_GL=egl, else osmesa, chosen by a probe in a child process before
MuJoCo is first imported (the backend cannot change afterwards).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from vla.datasets.conventions.libero import ACTION_DIM, CAMERAS, GRIPPER_STATE_KEY, JOINT_STATE_KEY, libero_spec
from vla.datasets.spec import ORIENTATIONS, StoreSpec
from vla.keys import STATE_KEY, camera_key
from vla.sim.base import Obs, SimEnv, SimError, StepResult
from vla.sim.perturb import Perturbation

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Step budgets per suite as openpi evaluates (the most common protocol in recent papers).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
SETTLE_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # hold still, gripper open
GL_BACKENDS = ("egl", "osmesa")
_GL_CHECKED = "VLA_GL_CHECKED"  # set once a backend rendered, so child processes skip the probe


# --- headless rendering ----------------------------------------------------------------------------

_GL_PROBE = """
import os, mujoco
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="0.1"/></worldbody></mujoco>')
d = mujoco.MjData(m); mujoco.mj_forward(m, d)
r = mujoco.Renderer(m, 8, 8); r.update_scene(d); r.render()
os._exit(0)  # skip interpreter teardown, where EGL contexts complain harmlessly
"""


def gl_works(backend: str, timeout: float = 60.0) -> bool:
    """Whether MuJoCo can render off-screen with `backend`, tried in a child process."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        done = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def choose_gl_backend(current: str, works: Callable[[str], bool] = gl_works) -> str | None:
    """The first backend that renders: `current`, then egl, then osmesa (None if none does)."""
    for backend in dict.fromkeys((current, *GL_BACKENDS)):
        if works(backend):
            return backend
    return None


def select_gl_backend() -> str | None:
    """Make MUJOCO_GL name a backend that renders (see `choose_gl_backend`) and return it.

    None when none renders (camera-less simulation still works then). Once MuJoCo is imported
    its backend is fixed, so then the current one is reported unchecked.
    """
    current = os.environ.get("MUJOCO_GL", "egl").lower()
    if os.environ.get(_GL_CHECKED) == current or "mujoco" in sys.modules:
        return current
    backend = choose_gl_backend(current)
    if backend is not None:
        os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = backend
        os.environ[_GL_CHECKED] = backend
    return backend


# --- LIBERO itself ------------------------------------------------------------------------------


ROBOSUITE_LOGGER = "robosuite_logs"
# What robosuite logs on import when it has no macros_private.py: advice for robosuite developers, three
# warning lines in every worker's log. Its other messages pass.
MACRO_ADVICE = ("No private macro file found", "It is recommended to use a private macro file", "To setup, run:")


def _not_macro_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(MACRO_ADVICE)


def quiet_robosuite_macros() -> None:
    """Drop robosuite's macro-file advice (a filter on its logger, set before robosuite is imported)."""
    logger = logging.getLogger(ROBOSUITE_LOGGER)
    if _not_macro_advice not in logger.filters:
        logger.addFilter(_not_macro_advice)


@functools.cache
def _libero() -> SimpleNamespace:
    """Import LIBERO once: config written (its import would prompt otherwise), assets located, GL chosen."""
    from vla import setup_libero

    select_gl_backend()
    quiet_robosuite_macros()
    config = Path(os.environ["LIBERO_CONFIG_PATH"]) / "config.yaml"
    if not config.exists():
        setup_libero.write_config(config.parent)
    import libero.libero as libero_root

    if not (Path(libero_root.__file__).parent / "assets").exists():  # hf-libero would try a hub download
        libero_root._assets_path_cache = str(setup_libero.assets_dir())
    import robosuite.macros as macros
    from libero.libero import benchmark
    from libero.libero.envs.env_wrapper import ControlEnv

    return SimpleNamespace(benchmark=benchmark, ControlEnv=ControlEnv, macros=macros)


@functools.cache
def _suite(name: str) -> Any:
    if name not in SUITES:
        raise SimError(f"unknown LIBERO suite {name!r}; valid suites: {', '.join(SUITES)}")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its task order on construction
        return _libero().benchmark.get_benchmark_dict()[name]()


@dataclass(frozen=True)
class LiberoTask:
    suite: str
    task_id: int
    name: str  # the BDDL file's stem, also the demo file's `<name>_demo.hdf5`
    language: str
    bddl_file: Path


def suite_tasks(suite: str) -> list[LiberoTask]:
    bench = _suite(suite)
    return [
        LiberoTask(suite, i, t.name, t.language, Path(bench.get_task_bddl_file_path(i)))
        for i, t in enumerate(bench.tasks)
    ]


def get_task(suite: str, task_id: int) -> LiberoTask:
    tasks = suite_tasks(suite)
    if not 0 <= task_id < len(tasks):
        listing = "\n".join(f"  {t.task_id}: {t.name}" for t in tasks)
        raise SimError(f"{suite} has no task {task_id}; valid task ids 0..{len(tasks) - 1}:\n{listing}")
    return tasks[task_id]


def init_states(task: LiberoTask) -> np.ndarray:
    """The task's fixed initial states (50 flattened MuJoCo states)."""
    return np.asarray(_suite(task.suite).get_task_init_states(task.task_id))


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion -> axis-angle, as LIBERO's datasets and openpi compute it."""
    w = float(np.clip(quat_xyzw[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if den < 1e-12:
        return np.zeros(3)
    return np.asarray(quat_xyzw[:3], np.float64) * 2.0 * np.arccos(w) / den


class LiberoEnv(SimEnv):
    """One LIBERO task (suite name + task id) with fixed initial states; see the module docstring."""

    def __init__(
        self,
        suite: str,
        task_id: int,
        *,
        cameras: tuple[str, ...] | list[str] = tuple(CAMERAS),
        image_size: int | tuple[int, int] = 128,
        image_orientation: str = "upright",
        settle_steps: int = 10,
        settle_action: tuple[float, ...] = SETTLE_ACTION,
        max_steps: int | None = None,
        hard_reset: bool = False,
        seed: int | None = None,
        perturbation: Perturbation | None = None,
    ):
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise SimError(f"unknown LIBERO camera(s) {unknown}; valid: {', '.join(CAMERAS)}")
        if image_orientation not in ORIENTATIONS:
            raise SimError(f"image_orientation must be one of {ORIENTATIONS}, got {image_orientation!r}")
        if len(settle_action) != ACTION_DIM:
            raise SimError(f"settle_action needs {ACTION_DIM} values, got {len(settle_action)}")
        self.task = get_task(suite, task_id)
        self.cameras = tuple(cameras)
        self.image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(self.image_hw) != 2 or min(self.image_hw) < 1:
            raise SimError(f"image_size must be a positive int or (height, width), got {image_size!r}")
        self.image_orientation = image_orientation
        self.settle_steps = settle_steps
        self.settle_action = np.asarray(settle_action, np.float64)
        self._max_steps = max_steps or MAX_STEPS[suite]
        self._init_states = init_states(self.task)
        lib = _libero()
        if self.cameras and select_gl_backend() is None:
            raise SimError(f"no headless OpenGL backend renders here (tried {GL_BACKENDS}); use cameras=()")
        kwargs: dict[str, Any] = {
            "bddl_file_name": str(self.task.bddl_file),
            "camera_heights": self.image_hw[0],
            "camera_widths": self.image_hw[1],
            "hard_reset": hard_reset,
            "ignore_done": True,  # the step budget is ours; robosuite would raise past its horizon
        }
        # Cameras are rendered by us, from the simulator state at the end of each step, and only when asked
        # (`step(..., images=False)` skips them): robosuite would render every camera at every step, and
        # from a state part-way through the step, which no saved `states` array can reproduce.
        kwargs.update(has_renderer=False, has_offscreen_renderer=bool(self.cameras), use_camera_obs=False)
        kwargs["camera_names"] = [CAMERAS[c] for c in self.cameras]
        self._env = lib.ControlEnv(**kwargs)
        self._opencv = lib.macros.IMAGE_CONVENTION == "opencv"
        if seed is not None:
            self._env.seed(seed)  # LIBERO seeds numpy's global generator
        self.seed = seed
        # Perturbed layouts (vla.sim.perturb): the fixed initial states with the objects displaced.
        self.perturbation = perturbation if perturbation is not None and perturbation.objects > 0 else None
        self._perturbed: dict[int, np.ndarray] = {}
        self._reset_once = False
        self.displacements: dict[int, dict[str, list[float]]] = {}  # per init state id: object -> (dx, dy)
        self.raw_obs: dict[str, Any] = {}  # robosuite's last observation (object poses etc.)
        self.steps = 0
        self.init_state_id: int | None = None
        self._spec = libero_spec(
            self.cameras,
            self.image_hw,
            image_orientation,
            {
                "suite": suite,
                "task_id": task_id,
                "task_name": self.task.name,
                "settle_steps": settle_steps,
                "settle_action": self.settle_action.tolist(),
                "max_steps": self._max_steps,
                "hard_reset": hard_reset,
                "seed": seed,
                "perturbation": None if self.perturbation is None else self.perturbation.to_json(),
            },
        )

    # --- SimEnv ---------------------------------------------------------------------------------
    @property
    def spec(self) -> StoreSpec:
        return self._spec

    @property
    def task_language(self) -> str:
        return self.task.language

    @property
    def max_steps(self) -> int:
        return self._max_steps

    @property
    def num_init_states(self) -> int:
        return len(self._init_states)

    def reset(self, init_state_id: int | None = 0, *, state: np.ndarray | None = None, images: bool = True) -> Obs:
        """Episode from fixed initial state `init_state_id` (displaced when the env has a perturbation),
        or from an explicit flattened `state`; then the settle steps."""
        if state is None:
            if init_state_id is None or not 0 <= init_state_id < self.num_init_states:
                raise SimError(f"init_state_id {init_state_id} out of range 0..{self.num_init_states - 1}")
            state = self._init_states[init_state_id] if self.perturbation is None else self.layout(init_state_id)
        else:
            init_state_id = None
        self.load_state(state)
        self.init_state_id = init_state_id
        for _ in range(self.settle_steps):
            self.raw_obs, _, _, _ = self._env.step(self.settle_action)
        self.steps = 0
        return self.store_obs(self.raw_obs, images)

    def load_state(self, state: np.ndarray) -> None:
        """Reset robosuite and set a flattened state, without settling (`reset` settles after this)."""
        self._env.reset()
        self._reset_once = True
        self._reset_gripper_commands()
        self.raw_obs = self._env.set_init_state(np.asarray(state))

    def layout(self, init_state_id: int) -> np.ndarray:
        """Initial state `init_state_id` as this env's episodes start from it (perturbed or not)."""
        if self.perturbation is None:
            return self._init_states[init_state_id]
        if init_state_id not in self._perturbed:
            from vla.sim.perturb import displace_objects, layout_rng

            p = self.perturbation
            rng = layout_rng(p.seed, self.task.task_id, init_state_id)
            state, shifts = displace_objects(self, self._init_states[init_state_id], p.objects, rng)
            self._perturbed[init_state_id], self.displacements[init_state_id] = state, shifts
        return self._perturbed[init_state_id]

    @property
    def renders_on_demand(self) -> bool:
        """Whether `step(action, images=False)` skips the cameras (the eval worker uses it for frames no
        plan will read)."""
        return bool(self.cameras)

    def step(self, action: np.ndarray, images: bool = True) -> StepResult:
        action = np.asarray(action, np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
            raise SimError(f"action must be {ACTION_DIM} finite numbers, got {action.tolist()}")
        self.raw_obs, reward, done, _ = self._env.step(action)
        self.steps += 1
        info = {"step": self.steps, "reward": float(reward), "truncated": self.steps >= self._max_steps}
        return StepResult(self.store_obs(self.raw_obs, images), bool(done), info)

    def _claim_render_context(self) -> None:
        # robosuite renders into whichever GL context is current, and only makes its own current when
        # creating it: with several environments alive in one process, the last one built would
        # receive every render (garbage frames, or none at all once it is closed).
        context = getattr(self.robosuite_env.sim, "_render_context_offscreen", None)
        if context is not None:
            context.gl_ctx.make_current()

    def _reset_gripper_commands(self) -> None:
        # robosuite grippers integrate their command (`current_action`); a hard reset rebuilds them at
        # zero, a soft reset keeps the last episode's value. Zeroing it makes a soft reset behave
        # exactly like LIBERO's default hard reset (same state -> same trajectory), ~20x faster.
        for robot in self.robosuite_env.robots:
            grippers = robot.gripper.values() if isinstance(robot.gripper, dict) else [robot.gripper]
            for gripper in grippers:
                if getattr(gripper, "current_action", None) is not None:
                    gripper.current_action = np.zeros_like(gripper.current_action)

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()

    # --- observations -----------------------------------------------------------------------------
    def store_obs(self, raw: dict[str, Any], images: bool = True) -> Obs:
        """The store's keys from robosuite's observation; cameras rendered now (into `raw` too, under
        robosuite's names) unless `images` is False."""
        grip = np.array(raw["robot0_gripper_qpos"], np.float64)
        state = np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), grip])
        obs: Obs = {
            STATE_KEY: state.astype(np.float32),
            JOINT_STATE_KEY: np.array(raw["robot0_joint_pos"], np.float64),
            GRIPPER_STATE_KEY: grip,
        }
        if images and self.cameras:
            self._claim_render_context()
            # After mj_step the body poses lag the integrated state by one substep; recompute them so the
            # frame shows the saved state exactly (robosuite runs forward before every substep anyway).
            self.robosuite_env.sim.forward()
            for cam in self.cameras:
                raw[f"{CAMERAS[cam]}_image"] = self._render(cam)
                obs[camera_key(cam)] = self.frame(raw[f"{CAMERAS[cam]}_image"])
        return obs

    def _render(self, camera: str) -> np.ndarray:
        """One camera at the current simulator state, as robosuite's camera sensor returns it."""
        h, w = self.image_hw
        img = self.robosuite_env.sim.render(camera_name=CAMERAS[camera], width=w, height=h)
        return img[::-1] if self._opencv else img  # MuJoCo draws bottom row first ("opengl")

    def raw_frame(self, raw: np.ndarray) -> np.ndarray:
        """A render in LIBERO's dataset convention ("opengl": upside down), whatever robosuite's macro says."""
        return np.ascontiguousarray(raw[::-1] if self._opencv else raw)  # "opencv" flips rows only

    def frame(self, raw: np.ndarray) -> np.ndarray:
        frame = self.raw_frame(raw)
        if self.image_orientation == "upright":
            frame = np.ascontiguousarray(frame[::-1, ::-1])
        return frame

    # --- simulator internals the scripted expert and demo recorder use ----------------------------
    @property
    def robosuite_env(self) -> Any:
        return self._env.env

    @property
    def problem_info(self) -> dict[str, str]:
        """What LIBERO parsed from the BDDL file (its datasets' `problem_info`)."""
        return {
            "problem_name": self._env.problem_name,
            "domain_name": self._env.domain_name,
            "language_instruction": self.task.language,
        }

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (what LIBERO's `states` arrays and init states hold)."""
        return np.array(self._env.get_sim_state())

    def render_states(self, states: np.ndarray, camera: str = "agentview") -> np.ndarray:
        """Frames (T, H, W, 3) of `camera` for saved simulator states, in this env's orientation.

        Re-rendering afterwards is how evaluation makes videos cheaply: episodes run without a
        renderer, record `sim_state()` per step, and only the episodes worth keeping are drawn."""
        if camera not in self.cameras:
            raise SimError(f"this environment renders {self.cameras or 'no cameras'}; build it with {camera!r}")
        if not self._reset_once:  # a never-reset robosuite model draws slightly differently (fixed at reset)
            self._env.reset()
            self._reset_once = True
        self._claim_render_context()
        sim = self.robosuite_env.sim
        frames = []
        for state in states:
            sim.set_state_from_flattened(np.asarray(state))
            sim.forward()  # positions only: nothing else of robosuite's observation is needed for a picture
            frames.append(self.frame(self._render(camera)))
        return np.stack(frames)

    def model_xml(self) -> str:
        return self.robosuite_env.sim.model.get_xml()

    def goal(self) -> list[tuple[str, ...]]:
        """The BDDL goal as predicates, e.g. [("in", "milk_1", "basket_1_contain_region")]."""
        return [tuple(p) for p in self.robosuite_env.parsed_problem["goal_state"]]

    def object_names(self) -> list[str]:
        e = self.robosuite_env
        return [*e.objects_dict, *e.fixtures_dict]

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and (x, y, z, w) quaternion of an object's or fixture's root body."""
        e = self.robosuite_env
        if name not in e.obj_body_id:
            raise SimError(f"no object {name!r} in this task; objects: {', '.join(self.object_names())}")
        bid = e.obj_body_id[name]
        w, x, y, z = e.sim.data.body_xquat[bid]
        return np.array(e.sim.data.body_xpos[bid]), np.array([x, y, z, w])

    def object_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {n: self.object_pose(n) for n in self.object_names()}

    def site_position(self, name: str) -> np.ndarray:
        """World position of a named site, e.g. a region such as `basket_1_contain_region`."""
        return np.array(self.robosuite_env.sim.data.get_site_xpos(name))

    def surface_height(self, x: float, y: float, z_from: float) -> float | None:
        """Height of the first surface straight below (x, y, z_from), None if there is none."""
        import mujoco

        sim = self.robosuite_env.sim
        start, down = np.array([x, y, z_from], np.float64), np.array([0.0, 0.0, -1.0])
        dist = mujoco.mj_ray(sim.model._model, sim.data._data, start, down, None, 1, -1, np.zeros(1, np.int32))
        return None if dist < 0 else z_from - dist

    def object_bounds(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned box (low, high corners) around an object's geoms, now."""
        e = self.robosuite_env
        model, data = e.sim.model, e.sim.data
        root = e.obj_body_id.get(name)
        if root is None:
            raise SimError(f"no object {name!r} in this task; objects: {', '.join(self.object_names())}")
        bodies = {root}
        for b in range(model.nbody):  # bodies are ordered parents first, so one pass collects the subtree
            if model.body_parentid[b] in bodies:
                bodies.add(b)
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
        for g in np.flatnonzero(np.isin(model.geom_bodyid, list(bodies))):
            center, half = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]
            corners = (center + signs * half) @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g]
            lo, hi = np.minimum(lo, corners.min(0)), np.maximum(hi, corners.max(0))
        return lo, hi
