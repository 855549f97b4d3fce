"""`CalvinEnv`: a CALVIN evaluation chain as a multi-stage `SimEnv` over any `CalvinBackend`.

`reset(k)` places the scene of chain k (the shipped reference chains) with one backend reset; each
stage is one subtask of the chain: `task_language` is its instruction, `step` reports whether the
oracle saw that subtask happen since the stage began, and `next_stage()` moves on to the next
subtask WITHOUT resetting the scene (the harness ends a chain at its first failure).
Observations use the store vocabulary of converted CALVIN data (vla.datasets.conventions.calvin),
so a checkpoint trained on a CALVIN store runs here unchanged.

The backend comes from a picklable factory (worker processes build their own); the default builds
the real PyBullet simulator, imported only then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.datasets.conventions.calvin import CAMERAS, IMAGE_SIZES, calvin_spec, env_action, store_observation
from vla.datasets.spec import SourceInfo, StoreSpec
from vla.keys import camera_key
from vla.sim.base import Obs, SimEnv, SimError, StepResult
from vla.sim.calvin.backend import CalvinBackend
from vla.sim.calvin.chains import Chain, evaluation_chains
from vla.sim.calvin.instructions import instruction
from vla.sim.calvin.oracle import subtask_done
from vla.sim.calvin.scene import reset_arrays

EP_LEN = 360  # steps per subtask in the reference evaluation
BackendFactory = Callable[[], CalvinBackend]
SETUP_HINT = "run `vla sim calvin-setup PATH` to install the CALVIN simulator (calvin_env) from a git checkout"
CALVIN_CAMERAS = {name: key for key, name in CAMERAS.items()}  # store camera name -> CALVIN image key


@dataclass(frozen=True)
class SimulatorFactory:
    """Builds the real simulator (`vla.sim.calvin.simulator.CalvinSimulator`); picklable."""

    cameras: tuple[str, ...] = ("static", "gripper")
    static_size: int = IMAGE_SIZES["rgb_static"]
    gripper_size: int = IMAGE_SIZES["rgb_gripper"]
    renderer: str = "egl"

    def __call__(self) -> CalvinBackend:
        try:
            from vla.sim.calvin.simulator import CalvinSimulator, SimulatorConfig
        except ImportError as e:
            raise SimError(f"the CALVIN simulator backend is not available ({e}); {SETUP_HINT}") from None
        config = SimulatorConfig(
            cameras=self.cameras,
            static_size=self.static_size,
            gripper_size=self.gripper_size,
            renderer=self.renderer,  # type: ignore[arg-type]
        )
        return CalvinSimulator(config)

    def check(self) -> None:
        """Fail early (before a results folder is touched) when calvin_env cannot be imported."""
        try:
            from vla.sim.calvin.simulator import import_calvin_env
        except ImportError as e:
            raise SimError(f"the CALVIN simulator backend is not available ({e}); {SETUP_HINT}") from None
        import_calvin_env()  # raises its own SimError naming the setup command

    def describe(self) -> dict[str, Any]:
        """The simulator's identity for summary.json (its git commit decides comparability)."""
        try:
            from vla.sim.calvin.simulator import simulator_commit

            return {"backend": "calvin_env", "commit": simulator_commit(), "renderer": self.renderer}
        except Exception as e:  # not installed yet: the run itself will say so
            return {"backend": "calvin_env", "commit": None, "error": f"{type(e).__name__}: {e}"}


class CalvinEnv(SimEnv):
    """CALVIN chains (`chains`, default the reference's 1000) on a backend; see the module docstring.

    `cameras`: store camera names to observe ("static", "gripper"); `image_sizes`: their square size
    as the backend renders them (checked on reset)."""

    def __init__(
        self,
        backend_factory: BackendFactory | None = None,
        *,
        chains: Sequence[Chain] | None = None,
        cameras: Sequence[str] = ("static", "gripper"),
        image_sizes: dict[str, int] | None = None,
        max_steps: int = EP_LEN,
    ):
        unknown = [c for c in cameras if c not in CALVIN_CAMERAS]
        if unknown:
            raise SimError(f"unknown CALVIN camera(s) {unknown}; cameras: {', '.join(CALVIN_CAMERAS)}")
        self.cameras = tuple(cameras)
        sizes = {**{CAMERAS[k]: v for k, v in IMAGE_SIZES.items()}, **(image_sizes or {})}
        self.image_sizes = {c: int(sizes[c]) for c in self.cameras}
        self.chains = list(chains) if chains is not None else evaluation_chains()
        self._max_steps = int(max_steps)
        self._backend: CalvinBackend = (backend_factory or SimulatorFactory(self.cameras))()
        self._chain: Chain | None = None
        self._stage = 0
        self._start_info: dict[str, Any] | None = None
        self._obs: Obs | None = None

    # --- SimEnv -----------------------------------------------------------------------------------
    @property
    def spec(self) -> StoreSpec:
        shapes = {CALVIN_CAMERAS[c]: (self.image_sizes[c], self.image_sizes[c], 3) for c in self.cameras}
        return calvin_spec(shapes, source=SourceInfo("sim", path="calvin"))

    @property
    def task_language(self) -> str:
        return instruction(self.subtask)

    @property
    def max_steps(self) -> int:
        return self._max_steps

    @property
    def num_init_states(self) -> int:
        return len(self.chains)

    def reset(self, init_state_id: int) -> Obs:
        """Start chain `init_state_id` at its first subtask (one backend reset, as the reference)."""
        if not 0 <= init_state_id < len(self.chains):
            raise SimError(f"chain {init_state_id} out of range: this env has {len(self.chains)} chains")
        self._chain = self.chains[init_state_id]
        robot, scene = reset_arrays(self._chain.state_dict)
        self._obs = self._observe(self._backend.reset(robot, scene), check=True)
        self._stage = 0
        self._start_info = self._backend.get_info()
        return self._obs

    def step(self, action: np.ndarray) -> StepResult:
        if self._chain is None or self._start_info is None:
            raise SimError("CalvinEnv.step before reset")
        try:
            calvin_action = env_action(action)
        except ValueError as e:
            raise SimError(str(e)) from None
        self._obs = self._observe(self._backend.step(calvin_action))
        info = self._backend.get_info()
        success = subtask_done(self.subtask, self._start_info, info)
        return StepResult(self._obs, success, {"subtask": self.subtask, "stage": self._stage})

    def close(self) -> None:
        self._backend.close()

    def sim_state(self) -> np.ndarray | None:
        return np.asarray(self._backend.get_state(), np.float64)

    # --- stages (the harness's multi-stage protocol) --------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self._chain.subtasks) if self._chain is not None else 0

    @property
    def stage(self) -> int:
        return self._stage

    @property
    def subtask(self) -> str:
        if self._chain is None:
            raise SimError("CalvinEnv: no chain started (call reset first)")
        return self._chain.subtasks[self._stage]

    def next_stage(self) -> Obs:
        """Move on to the chain's next subtask without touching the scene; the current observation."""
        if self._chain is None or self._obs is None or self._stage + 1 >= self.num_stages:
            raise SimError("CalvinEnv.next_stage: no further subtask in this chain")
        self._stage += 1
        self._start_info = self._backend.get_info()  # the oracle compares against the scene as it is now
        return self._obs

    # --- videos ---------------------------------------------------------------------------------------
    def render_states(self, states: np.ndarray, camera: str = "static") -> np.ndarray:
        """(T, H, W, 3) frames of one camera for recorded `sim_state`s (the backend is left as it was)."""
        key = CALVIN_CAMERAS[camera]
        return np.stack([np.asarray(self._backend.render_state(s)[key], np.uint8) for s in states])

    def _observe(self, raw: dict[str, Any], check: bool = False) -> Obs:
        keys = tuple(CALVIN_CAMERAS[c] for c in self.cameras)
        try:
            obs = store_observation(raw, keys)
        except KeyError as e:
            raise SimError(f"the CALVIN backend's observation lacks {e}; it has {sorted(raw)}") from None
        if check:
            for cam in self.cameras:
                shape = obs[camera_key(cam)].shape
                want = (self.image_sizes[cam], self.image_sizes[cam], 3)
                if shape != want:
                    raise SimError(f"CALVIN camera {cam!r}: the backend renders {shape}, expected {want}")
        return obs
