"""Config of MoDE, the mixture-of-denoising-experts diffusion transformer policy.

Defaults are the MoDE paper's values where the paper states them; the details only the authors'
code shows (see docs/fidelity.md) are switches whose defaults keep this project's original choices,
so checkpoints trained before the switches existed load and behave as they did.
`from_preset("paper")` is the defaults plus `AUTHORS` (those switches set as the authors' code has
them); `from_preset("calvin")` adds their CALVIN evaluation settings; `from_preset("cpu")` is a small
model for tests and laptops. `use_moe=False` gives the dense diffusion-transformer baseline from the
same code (each sparse MoE FFN replaced by one SwiGLU FFN of the same per-expert width).

Mixture of Horizons (vla.policies.modules.horizons): `horizons=(3, 6, ..., 30)` predicts every
horizon in one pass of the shared denoiser and fuses the denoiser outputs at every sampling step; it
needs `action_attention="full"` (with causal attention a step's output would not depend on the
horizon) and `chunk_size == max(horizons)`. `dynamic_ratio` turns on dynamic inference (the policy picks how
many steps of each chunk to execute, `predict_plan`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from vla.errors import PolicyError
from vla.policies.config import ConditioningFields, ExpertCompressionFields, HorizonFields, PolicyConfig
from vla.policies.modules.diffusion import SIGMA_SCHEDULES, EDMSettings
from vla.policies.modules.horizons import ACTION_ATTENTION

GOAL_TYPES = ("language", "image")
ROUTE_SAMPLING = ("sequence", "token")
FFN_NORMS = ("pre", "residual")
NOISE_EMBEDDINGS = ("mlp", "linear")
GOAL_DROPOUT_MODES = ("sequence", "element")


@dataclasses.dataclass(frozen=True)
class MoDEConfig(ExpertCompressionFields, HorizonFields, ConditioningFields, PolicyConfig):
    name: ClassVar[str] = "mode"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below
    # with causal attention among the action tokens every horizon would predict a step alike
    moh_fixed: ClassVar[dict[str, Any]] = {"action_attention": "full"}

    # --- transformer ---
    width: int = 1024
    n_heads: int = 8
    n_layers: int = 12
    attn_dropout: float = 0.3
    resid_dropout: float = 0.0
    qk_norm: bool = True  # RMSNorm on queries and keys, as the authors' attention
    # among action tokens: causal (the paper: the whole sequence is causal) | full (context tokens
    # stay causal among themselves and never see action tokens; action tokens see all context)
    action_attention: str = "causal"
    # --- mixture of experts ---
    use_moe: bool = True  # False: dense baseline, one SwiGLU FFN per layer
    n_experts: int = 4
    top_k: int = 2
    ffn_mult: int = 4  # per-expert SwiGLU hidden = ffn_mult * width (1024 -> 2x4096 -> 1024)
    router_hidden_mult: int = 2  # router MLP width -> router_hidden_mult * width -> n_experts
    router_renormalize: bool = True  # top-k gate weights renormalised to sum to 1
    balance_weight: float = 0.01  # load-balancing loss weight: 0.01 from scratch; set 0 to fine-tune (the authors)
    expert_bias: bool = False  # biases in the experts' projections
    expert_out_bias: bool | None = None  # output projection bias (None: as expert_bias; the authors: input only)
    expert_dropout: float = 0.0  # dropout on the experts' gated hidden activation (the authors: 0.1)
    # training-time top-k sampling: "sequence" (one draw per sequence) | "token" (one draw per token, the
    # authors). Inference is deterministic and the same for every token either way.
    route_sampling: str = "sequence"
    # where the FFN's normalisation sits: "pre" (x + FFN(Norm(x))) | "residual" (the authors: x = Norm(x);
    # x + FFN(x), the residual stream itself is normalised before the MoE)
    ffn_norm: str = "pre"
    # noise embedding of log(sigma)/4: "mlp" (Linear(1,d) SiLU Linear(d,d)) | "linear" (the authors:
    # Linear(1,d) then a bias-free Linear(d,d), no nonlinearity)
    noise_embedding: str = "mlp"
    # --- goal and observations ---
    goal_type: str = "language"  # language | image
    goal_dropout: float = 0.1  # probability of dropping the goal in training (see goal_dropout_mode)
    # "sequence": per sample the whole goal becomes the "no goal" zero vector, FiLM included | "element":
    # that fraction of the goal embedding's elements is zeroed for the goal token only, FiLM sees the full
    # goal (the authors)
    goal_dropout_mode: str = "sequence"
    goal_image_key: str = "observation.goal_image"  # (B, 3, H, W) uint8, when goal_type == "image"
    # language and vision encoder settings (vision_backbone, vision_weights...): ConditioningFields
    # --- diffusion (EDM) ---
    sigma_data: float = 0.5
    sigma_min: float = 0.001
    sigma_max: float = 80.0
    # the lowest noise level of the sampling schedule (None: sigma_min); training still draws from
    # [sigma_min, sigma_max]. The authors' CALVIN evaluation samples 80 ... 1.0.
    sampling_sigma_min: float | None = None
    sigma_schedule: str = "exponential"  # exponential | karras (sampling)
    rho: float = 7.0
    train_noise_scale: float = 0.5  # log-logistic scale of training log-sigmas (location log(sigma_data))
    num_sampling_steps: int = 10
    # --- exported expert plan (`vla export --expert-plan`; None: the full model, routed as trained) ---
    # per sampling step, per layer: the experts the noise router picks (ascending) and their gate weights,
    # at the noise levels `expert_plan_sigmas`; the model then holds only the experts the plan uses, no routers
    expert_plan: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    expert_plan_gates: tuple[tuple[tuple[float, ...], ...], ...] | None = None
    expert_plan_sigmas: tuple[float, ...] | None = None
    # mixture of horizons and dynamic inference: HorizonFields
    # --- optimiser (read by the trainer; the authors' LIBERO settings) ---
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_weight_decay: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.width % self.n_heads:
            problems.append(f"width {self.width} is not divisible by n_heads {self.n_heads}")
        if self.use_moe and not 1 <= self.top_k <= self.n_experts:
            problems.append(f"top_k {self.top_k} must be in [1, n_experts={self.n_experts}]")
        if self.goal_type not in GOAL_TYPES:
            problems.append(f"goal_type {self.goal_type!r} not in {GOAL_TYPES}")
        problems += self.language_problems()
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            problems.append(f"sigma_schedule {self.sigma_schedule!r} not in {SIGMA_SCHEDULES}")
        problems += self.vision_problems()
        if not self.camera_keys and self.state_dim is None:
            problems.append("the policy needs at least one camera or a state")
        for name, value, choices in (
            ("route_sampling", self.route_sampling, ROUTE_SAMPLING),
            ("ffn_norm", self.ffn_norm, FFN_NORMS),
            ("noise_embedding", self.noise_embedding, NOISE_EMBEDDINGS),
            ("goal_dropout_mode", self.goal_dropout_mode, GOAL_DROPOUT_MODES),
        ):
            if value not in choices:
                problems.append(f"{name} {value!r} not in {choices}")
        if not 0 <= self.expert_dropout < 1 or not 0 <= self.goal_dropout < 1:
            problems.append("expert_dropout and goal_dropout must be in [0, 1)")
        if self.sampling_sigma_min is not None and not 0 < self.sampling_sigma_min < self.sigma_max:
            problems.append(f"sampling_sigma_min must be in (0, sigma_max={self.sigma_max})")
        if self.num_sampling_steps < 1:
            problems.append("num_sampling_steps must be >= 1")
        if self.action_attention not in ACTION_ATTENTION:
            problems.append(f"action_attention {self.action_attention!r} not in {ACTION_ATTENTION}")
        problems += self.horizon_problems() + self._plan_problems() + self.compression_problems()
        if self.horizons is not None and len(self.horizons) > 1 and self.action_attention != "full":
            problems.append(
                "a mixture of horizons needs action_attention='full' (with causal attention every "
                "horizon predicts the same step alike)"
            )
        if problems:
            raise PolicyError("invalid MoDE config: " + "; ".join(problems))

    def _plan_problems(self) -> list[str]:
        plan, gates, sigmas = self.expert_plan, self.expert_plan_gates, self.expert_plan_sigmas
        if plan is None and gates is None and sigmas is None:
            return []
        if plan is None or gates is None or sigmas is None:
            return ["expert_plan, expert_plan_gates and expert_plan_sigmas go together (all set or none)"]
        if not self.use_moe:
            return ["an expert plan needs use_moe=True"]
        if not len(plan) == len(gates) == len(sigmas) == self.num_sampling_steps:
            return [f"the expert plan should have num_sampling_steps={self.num_sampling_steps} steps"]
        for step, (experts, weights) in enumerate(zip(plan, gates, strict=True)):
            shapes_ok = len(experts) == len(weights) == self.n_layers and all(
                len(e) == len(w) == self.top_k for e, w in zip(experts, weights, strict=True)
            )
            ids_ok = shapes_ok and all(
                list(e) == sorted(set(e)) and e[0] >= 0 and e[-1] < self.n_experts for e in experts
            )
            if not shapes_ok or not ids_ok:
                return [
                    f"expert_plan step {step}: needs n_layers={self.n_layers} entries of top_k={self.top_k} distinct "
                    f"ascending expert ids in 0..{self.n_experts - 1}, each with a gate weight"
                ]
        return []

    @property
    def planned_experts(self) -> tuple[tuple[int, ...], ...] | None:
        """Per layer, the experts an exported expert plan uses at some step (None: no plan, all experts)."""
        if self.expert_plan is None:
            return None
        return tuple(
            tuple(sorted({e for step in self.expert_plan for e in step[layer]})) for layer in range(self.n_layers)
        )

    @property
    def edm(self) -> EDMSettings:
        return EDMSettings(
            sigma_data=self.sigma_data,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            sampling_sigma_min=self.sampling_sigma_min,
            schedule=self.sigma_schedule,
            rho=self.rho,
            train_scale=self.train_noise_scale,
        )

    @property
    def n_context_tokens(self) -> int:
        """noise token + goal token + observation tokens: what precedes the action tokens."""
        return 2 + self.n_obs_tokens

    @property
    def n_obs_tokens(self) -> int:
        return self.n_obs * (len(self.camera_keys) + (1 if self.state_dim is not None else 0))

    @property
    def seq_len(self) -> int:
        """noise token + goal token + observation tokens + action tokens."""
        return 2 + self.n_obs_tokens + self.chunk_size

    def required_features(self) -> dict[str, tuple[int, ...] | None]:
        out = super().required_features()
        if self.goal_type == "image":
            out[self.goal_image_key] = None
        return out


# What the authors' code does where this project first chose otherwise (docs/fidelity.md): the `paper`
# and `calvin` presets follow the authors; the cpu presets keep the original choices.
AUTHORS: dict[str, Any] = {
    "route_sampling": "token",
    "ffn_norm": "residual",
    "noise_embedding": "linear",
    "goal_dropout_mode": "element",
    "expert_bias": True,
    "expert_out_bias": False,
    "expert_dropout": 0.1,
    "moh_balance": "segments",
}
MoDEConfig.presets.update(
    {
        "paper": dict(AUTHORS),
        "cpu": {
            "width": 128,
            "n_heads": 4,
            "n_layers": 4,
            "attn_dropout": 0.1,
            "vision_widths": (16, 32, 64),
            "vision_blocks": (1, 1, 1),
            "image_size": (64, 64),
        },
    }
)
# CALVIN (the paper's CALVIN runs): chunks of 10, all executed, and 5 sampling steps; the cameras
# (static + gripper in a CALVIN store) come from the store. `calvin_cpu`: the same at the cpu size.
_CALVIN = {
    "chunk_size": 10,
    "n_action_steps": 10,
    "num_sampling_steps": 5,
}
# The authors' CALVIN evaluation samples 5 steps on sigma 80, 26.7, 8.94, 2.99, 1.0 (their evaluation
# config sets sigma_min = 1.0 at inference only).
MoDEConfig.presets.update(
    {
        "calvin": {**AUTHORS, **_CALVIN, "sampling_sigma_min": 1.0},
        "calvin_cpu": {**MoDEConfig.presets["cpu"], **_CALVIN},
    }
)
# Mixture of Horizons at the cpu size. The paper's ten horizons 3..30 make every training step ~10x the
# fixed-chunk model's on a CPU (165 action tokens instead of 10); three horizons 5/10/15 (30 tokens) train at
# ~2x and still let dynamic inference execute up to 15 steps of a chunk, 3x the openpi protocol's 5.
MOH_CPU_HORIZONS = (5, 10, 15)
# Dynamic inference stops where `dynamic_stop_cover` or fewer horizons cover a step. The default 5 suits ten
# horizons; with three, every step after the first five is covered by 2 or fewer, so 5 would always execute
# exactly `dynamic_min_steps`. With 0, steps 5-9 (covered by the 10- and 15-step horizons) are judged by
# their disagreement, and a chunk whose two long horizons agree there runs to its end (15 steps): at r = 1.3
# the demo policy executes 10.8 steps per plan on training windows (2.2x the fixed 5). Inference only.
MOH_CPU_STOP_COVER = 0
MoDEConfig.presets["moh_cpu"] = {
    **MoDEConfig.presets["cpu"],
    **MoDEConfig.moh_overrides(MOH_CPU_HORIZONS),
    "dynamic_stop_cover": MOH_CPU_STOP_COVER,
}
