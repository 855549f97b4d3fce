"""The real CALVIN backend: calvin_env's PyBullet `PlayTableSimEnv`, built from the user's checkout.

The environment config is composed here from the checkout's own conf/ files (robot, scene, static
and gripper cameras) instead of through hydra's command line, so nothing depends on a working
directory or on `sys.argv`. The tactile camera is left out: it is the only user of the `tacto`
submodule. Cameras match the CALVIN dataset (static 200x200, gripper 84x84).

calvin_env is imported only when a simulator is built; if it (or pybullet, gym, ...) is missing,
that is one `SimError` telling the user to run `vla sim calvin-setup PATH`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from vla.sim.base import SimError
from vla.sim.calvin.setup import SETUP_HINT, git_commit

log = logging.getLogger(__name__)
ROBOT_OBS_DIM, SCENE_OBS_DIM, ACTION_DIM = 15, 24, 7
CAMERA_FILES = {"static": "static.yaml", "gripper": "gripper.yaml"}  # conf/cameras/cameras/<file>


@dataclass(frozen=True)
class SimulatorConfig:
    scene: str = "calvin_scene_D"  # conf/scene/<scene>.yaml; evaluation always runs in environment D
    robot: str = "panda_longer_finger"  # conf/robot/<robot>.yaml, the robot the dataset was recorded with
    renderer: Literal["egl", "tiny"] = "egl"  # EGL as in the dataset; "tiny": pybullet's CPU TinyRenderer
    static_size: int = 200
    gripper_size: int = 84
    cameras: tuple[str, ...] = ("static", "gripper")  # observation keys rgb_<name>
    seed: int = 0  # only calvin_env's own random object placement uses it; resets here are explicit


def import_calvin_env() -> ModuleType:
    """calvin_env's environment module, or one clear error saying how to install it."""
    try:
        import calvin_env.envs.play_table_env as play_table_env
    except ImportError as e:  # calvin_env itself or one of its imports (pybullet, gym, quaternion, git...)
        raise SimError(
            f"the CALVIN simulator (calvin_env) cannot be imported ({type(e).__name__}: {e}); it is not on "
            f"PyPI: clone https://github.com/mees/calvin_env and run `{SETUP_HINT}` with that folder"
        ) from e
    return play_table_env


def checkout_path() -> Path:
    """The source checkout the importable calvin_env comes from (its conf/ and data/ live there)."""
    import_calvin_env()
    import calvin_env

    root = Path(calvin_env.__file__).resolve().parents[1]
    if not (root / "conf").is_dir() or not (root / "data").is_dir():
        raise SimError(
            f"{root}: calvin_env is installed but not from a source checkout (no conf/ or data/ next to it); "
            f"reinstall it with `{SETUP_HINT}`"
        )
    return root


def simulator_commit() -> str:
    """The git commit of the calvin_env in use ('+dirty' when tracked files are modified); record it
    next to every number, since the reference evaluation pins an older commit."""
    commit, dirty = git_commit(checkout_path())
    return commit + ("+dirty" if dirty else "")


def compose_config(checkout: Path, config: SimulatorConfig) -> Any:
    """The robot, scene and camera configs of `PlayTableSimEnv`, resolved (an OmegaConf DictConfig)."""
    from omegaconf import OmegaConf

    conf = checkout / "conf"
    unknown = [c for c in config.cameras if c not in CAMERA_FILES]
    if unknown:
        raise SimError(f"cameras {unknown} are not supported; choose from {sorted(CAMERA_FILES)}")
    sizes = {"static": config.static_size, "gripper": config.gripper_size}
    cameras = {}
    for name in config.cameras:
        camera = _load(conf / "cameras" / "cameras" / CAMERA_FILES[name])
        camera.width = camera.height = sizes[name]
        cameras[name] = camera
    root = OmegaConf.create(
        {
            "data_path": str(checkout / "data"),
            "robot": _load(conf / "robot" / f"{config.robot}.yaml"),
            "scene": _load(conf / "scene" / f"{config.scene}.yaml"),
            "cameras": cameras,
        }
    )
    OmegaConf.resolve(root)  # scene and robot refer to each other (${robot.euler_obs}, ${scene.robot_base_...})
    return root


def _load(path: Path) -> Any:
    """A conf file with hydra's same-group `defaults:` list applied (its entries first, the file on top)."""
    from omegaconf import OmegaConf

    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SimError(f"{path}: no such calvin_env config; available here: {', '.join(choices)}")
    cfg = OmegaConf.load(path)
    defaults = cfg.pop("defaults", [])
    parts = []
    for entry in defaults:
        if not isinstance(entry, str):  # group@package entries (cameras) are composed by hand above
            raise SimError(f"{path}: unsupported defaults entry {entry!r}")
        parts.append(_load(path.parent / f"{entry}.yaml"))
    return OmegaConf.merge(*parts, cfg)


class CalvinSimulator:
    """`CalvinBackend` on calvin_env's `PlayTableSimEnv` (headless; info includes the scene)."""

    def __init__(self, config: SimulatorConfig | None = None):
        self.config = config or SimulatorConfig()
        if self.config.renderer not in ("egl", "tiny"):
            raise SimError(f"unknown CALVIN renderer {self.config.renderer!r}; choose 'egl' or 'tiny'")
        if min(self.config.static_size, self.config.gripper_size) < 1:
            raise SimError(f"CALVIN camera sizes must be positive: {self.config}")
        module = import_calvin_env()
        self.checkout = checkout_path()
        self.commit = simulator_commit()
        cfg = compose_config(self.checkout, self.config)
        start = time.perf_counter()
        try:
            # calvin_env prints/logs chatter (and exits on a failed EGL plugin); keep stdout clean
            with contextlib.redirect_stdout(io.StringIO()):
                self._env = module.PlayTableSimEnv(
                    robot_cfg=cfg.robot,
                    seed=self.config.seed,
                    use_vr=False,
                    bullet_time_step=240.0,
                    cameras=cfg.cameras,
                    show_gui=False,
                    scene_cfg=cfg.scene,
                    use_scene_info=True,
                    use_egl=self.config.renderer == "egl",
                    control_freq=30,
                )
        except SystemExit as e:
            raise SimError(
                "pybullet's EGL renderer plugin failed to load (no usable EGL/OpenGL driver?); "
                "build the simulator with SimulatorConfig(renderer='tiny') for CPU rendering"
            ) from e
        self.build_seconds = time.perf_counter() - start
        if not self._env.p.isNumpyEnabled():
            log.warning(
                "pybullet was built without numpy support: camera images are converted from Python lists "
                "(slow); rebuild it with `pip install --no-build-isolation --force-reinstall --no-deps pybullet`"
            )
        self._info: dict[str, Any] | None = None  # the info of the last step, until the state moves

    # ---- CalvinBackend ----
    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, Any]:
        robot_obs = _vector(robot_obs, ROBOT_OBS_DIM, "robot_obs")
        scene_obs = _vector(scene_obs, SCENE_OBS_DIM, "scene_obs")
        # calvin_env's robot reset reads only the 7 arm joints and the gripper width of robot_obs;
        # one physics step, no settling, exactly as the reference evaluation.
        self._info = None
        return _trim(self._env.reset(robot_obs=robot_obs, scene_obs=scene_obs))

    def step(self, action: np.ndarray) -> dict[str, Any]:
        action = _vector(action, ACTION_DIM, "action").copy()  # old calvin_env commits scale it in place
        action[6] = 1.0 if action[6] > 0 else -1.0  # calvin_env accepts exactly +1 (open) / -1 (close)
        obs, _, _, self._info = self._env.step(action)
        return _trim(obs)

    def get_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._env.get_info()
        return self._info

    def get_state(self) -> np.ndarray:
        obs = self._env.get_state_obs()
        return np.concatenate([obs["robot_obs"], obs["scene_obs"]]).astype(np.float64)

    def render_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Images of `state` under the observation's keys (rgb_static, rgb_gripper). The simulator is
        put back where it was (physics snapshot plus calvin_env's Python-side state), so this may be
        called mid-rollout: the following steps are unchanged. One visible difference: pybullet's
        cached link poses (the tcp in robot_obs, the gripper camera) lag one 1/240 s substep after a
        step, but are exact after a reset, so a re-rendered gripper image and the tcp read before the
        next step differ from the step's by under a millimetre."""
        state = _vector(state, ROBOT_OBS_DIM + SCENE_OBS_DIM, "state")
        env, p, cid = self._env, self._env.p, self._env.cid
        saved = p.saveState(physicsClientId=cid)
        python_side = _python_state(env)
        try:
            env.scene.reset(state[ROBOT_OBS_DIM:])
            env.robot.reset(state[:ROBOT_OBS_DIM])
            rgb, _ = env.get_camera_obs()
        finally:
            p.restoreState(stateId=saved, physicsClientId=cid)
            p.removeState(saved, physicsClientId=cid)
            _restore_python_state(env, python_side)
        return _images(rgb)

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is None:
            return
        with contextlib.redirect_stdout(io.StringIO()):
            env.close()
        env.close = _no_op  # calvin_env's __del__ closes again and would fail on the closed client
        self._env = None


def _vector(value: np.ndarray, dim: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (dim,):
        raise SimError(f"CALVIN {what} must have shape ({dim},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise SimError(f"CALVIN {what} contains NaN or infinite values: {array}")
    return array


def _trim(obs: dict[str, Any]) -> dict[str, Any]:
    """The Protocol's observation: cameras, robot_obs, scene_obs (depth images are dropped)."""
    return {"rgb_obs": _images(obs["rgb_obs"]), "robot_obs": obs["robot_obs"], "scene_obs": obs["scene_obs"]}


def _images(rgb: dict[str, Any]) -> dict[str, np.ndarray]:
    # uint8 even from a pybullet built without numpy, whose pixels arrive as Python ints
    return {name: np.ascontiguousarray(image, dtype=np.uint8) for name, image in rgb.items()}


def _python_state(env: Any) -> dict[str, Any]:
    """What `robot.reset`/`scene.reset` change outside pybullet (a physics snapshot does not hold it)."""
    scene, robot = env.scene, env.robot
    return {
        "robot": (np.copy(robot.target_pos), np.copy(robot.target_orn), robot.gripper_action),
        "lights": [light.state for light in scene.lights],
        "buttons": [(button.state, button.prev_is_pressed) for button in scene.buttons],
        "switches": [switch.state for switch in scene.switches],
    }


def _restore_python_state(env: Any, saved: dict[str, Any]) -> None:
    scene, robot = env.scene, env.robot
    robot.target_pos, robot.target_orn, robot.gripper_action = saved["robot"]
    for light, state in zip(scene.lights, saved["lights"], strict=True):
        light.reset(state.value)  # also puts the light's colour back
    for button, (state, pressed) in zip(scene.buttons, saved["buttons"], strict=True):
        button.state, button.prev_is_pressed = state, pressed
    for switch, state in zip(scene.switches, saved["switches"], strict=True):
        switch.state = state


def _no_op() -> None:
    return None
