"""Config of HiMoE, the hierarchical mixture-of-experts flow-matching action head.

Defaults are the HiMoE paper's action module: 18 layers, layers 0-1 and 16-17 Action-Space MoE (3
SwiGLU experts of hidden 4096, top-1, router from the slot mask, supervised-contrastive routing loss
0.002 at temperature 0.1), layers 2-5 and 12-15 Heterogeneity-Balancing MoE (32 experts of hidden
1024, top-4 renormalised, + a shared expert, per-sequence balance loss 0.001), layers 6-11 dense GELU
MLPs of hidden 4096; width 1024 with 8 heads (pi0's action expert); chunk 10; flow matching with
Beta(1.5, 1) times and 10 Euler steps. `from_preset("paper")` is the defaults plus `AUTHORS` (details of
the authors' code kept as switches whose defaults are this project's original choices, so older
checkpoints load unchanged: the bias-free GeGLU dense layers, the per-segment MoH balance);
`from_preset("cpu")` keeps one layer of each kind at a width that trains in seconds on two cores.

`layer_pattern` spells the depth layout, one letter per layer: "a" AS-MoE, "h" HB-MoE, "d" dense.
Conditioning (`backbone`): "default" = a FiLM ResNet per camera + the offline MiniLM language
encoder (as MoDE); "hf_vlm" = `vla.policies.modules.vlm.VisionLanguageBackbone` from the local
directory `backbone_path`. Mixture of Horizons: `horizons` as MoDE's (chunk_size = max(horizons)).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from vla.errors import PolicyError
from vla.policies.config import ConditioningFields, ExpertCompressionFields, HorizonFields, PolicyConfig
from vla.policies.modules.flow import TIME_SAMPLERS
from vla.policies.modules.hier_moe import ACTION_SPACE_INPUTS

BACKBONES = ("default", "hf_vlm")
DENSE_KINDS = ("gelu", "geglu")
LAYER_KINDS = {"a": "action_space", "h": "hb", "d": "dense"}
PAPER_PATTERN = "aa" + "hhhh" + "dddddd" + "hhhh" + "aa"  # 18 layers


@dataclasses.dataclass(frozen=True)
class HiMoEConfig(ExpertCompressionFields, HorizonFields, ConditioningFields, PolicyConfig):
    name: ClassVar[str] = "himoe"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # filled below
    moh_n_action_steps: ClassVar[int | None] = 10  # the mixture version executes at most 10 steps per chunk

    # --- action transformer ---
    width: int = 1024
    n_heads: int = 8
    layer_pattern: str = PAPER_PATTERN
    attn_dropout: float = 0.0
    # --- Action-Space MoE ---
    as_experts: int = 3
    as_hidden: int = 4096
    as_top_k: int = 1
    as_router_input: str = "mask"  # mask (the paper) | mask_id (mask + one-hot embodiment id)
    max_embodiments: int = 16  # one-hot size of the mask_id router input
    supcon_weight: float = 0.002
    supcon_temperature: float = 0.1
    supcon_max_tokens: int = 1024  # tokens per supcon term (a random subset beyond that)
    # `vla export --embodiment` (None: the full model): per AS-MoE layer, the experts kept (those the one
    # embodiment's action-space identity can select), and that embodiment (None: a single-embodiment policy)
    as_kept_experts: tuple[tuple[int, ...], ...] | None = None
    specialised_embodiment: str | None = None
    # --- Heterogeneity-Balancing MoE ---
    hb_experts: int = 32
    hb_hidden: int = 1024
    hb_top_k: int = 4
    hb_shared_expert: bool = True
    hb_shared_hidden: int = 1024
    balance_weight: float = 0.001
    router_sample: bool = False  # sample the top-k in training (MoDE does); the paper routes greedily
    # --- dense layers ---
    dense_hidden: int = 4096
    # "gelu": GELU MLP with biases | "geglu": gated GELU-tanh without biases (the authors' Gemma MLP)
    dense_kind: str = "gelu"
    # --- flow matching ---
    time_sampler: str = "beta"  # beta (exact Beta(1.5, 1)) | pi0_approx (the authors', mean ~0.56) | uniform
    beta_alpha: float = 1.5
    num_steps: int = 10  # Euler steps at inference
    # --- conditioning ---
    backbone: str = "default"  # default | hf_vlm
    backbone_path: str | None = None  # local model directory (hf_vlm)
    backbone_freeze: bool = True
    backbone_max_text_tokens: int = 48
    cond_dim: int = 512  # token size of the default backbone (language and vision settings: ConditioningFields)
    # mixture of horizons and dynamic inference: HorizonFields
    # --- optimiser (read by the trainer; openpi's pi0 settings) ---
    optimizer_lr: float = 2.5e-5
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_weight_decay: float = 1e-10

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.width % self.n_heads:
            problems.append(f"width {self.width} is not divisible by n_heads {self.n_heads}")
        bad = sorted(set(self.layer_pattern) - set(LAYER_KINDS))
        if not self.layer_pattern or bad:
            problems.append(f"layer_pattern {self.layer_pattern!r}: use letters a (AS-MoE), h (HB-MoE), d (dense)")
        if not 1 <= self.as_top_k <= self.as_experts:
            problems.append(f"as_top_k {self.as_top_k} must be in [1, as_experts={self.as_experts}]")
        if not 1 <= self.hb_top_k <= self.hb_experts:
            problems.append(f"hb_top_k {self.hb_top_k} must be in [1, hb_experts={self.hb_experts}]")
        problems += self._specialisation_problems()
        if self.as_router_input not in ACTION_SPACE_INPUTS:
            problems.append(f"as_router_input {self.as_router_input!r} not in {ACTION_SPACE_INPUTS}")
        if self.time_sampler not in TIME_SAMPLERS:
            problems.append(f"time_sampler {self.time_sampler!r} not in {TIME_SAMPLERS}")
        if self.dense_kind not in DENSE_KINDS:
            problems.append(f"dense_kind {self.dense_kind!r} not in {DENSE_KINDS}")
        if self.num_steps < 1:
            problems.append("num_steps must be >= 1")
        if self.supcon_temperature <= 0:
            problems.append("supcon_temperature must be > 0")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone {self.backbone!r} not in {BACKBONES}")
        elif self.backbone == "hf_vlm":
            if not self.backbone_path:
                problems.append(
                    "backbone='hf_vlm' needs backbone_path: the local directory of a PaliGemma checkpoint "
                    "(e.g. --set backbone_path=/models/paligemma); nothing is downloaded"
                )
            if not self.camera_keys:
                problems.append("backbone='hf_vlm' needs at least one camera")
        problems += self.language_problems() + self.vision_problems() + self.horizon_problems()
        problems += self.compression_problems()
        if problems:
            raise PolicyError("invalid HiMoE config: " + "; ".join(problems))

    def _specialisation_problems(self) -> list[str]:
        kept = self.as_kept_experts
        if kept is None:
            return ["specialised_embodiment needs as_kept_experts"] if self.specialised_embodiment is not None else []
        n_as = self.layer_pattern.count("a")
        ok = len(kept) == n_as and all(
            len(k) >= self.as_top_k and list(k) == sorted(set(k)) and k[0] >= 0 and k[-1] < self.as_experts
            for k in kept
        )
        if not ok:
            return [
                f"as_kept_experts: needs one entry per AS-MoE layer ({n_as}), each at least as_top_k={self.as_top_k} "
                f"distinct ascending expert ids in 0..{self.as_experts - 1}"
            ]
        return []

    @property
    def n_layers(self) -> int:
        return len(self.layer_pattern)

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        return tuple(LAYER_KINDS[c] for c in self.layer_pattern)


# What the authors' code does where this project first chose otherwise (docs/fidelity.md): the paper preset
# follows the authors; the cpu preset keeps the original choices.
AUTHORS: dict[str, Any] = {"dense_kind": "geglu", "moh_balance": "segments"}
HiMoEConfig.presets.update(
    {
        "paper": dict(AUTHORS),
        "cpu": {
            "width": 64,
            "n_heads": 4,
            "layer_pattern": "ahda",  # one of each kind, AS-MoE at both ends as in the paper
            "as_hidden": 128,
            "hb_experts": 8,
            "hb_hidden": 32,
            "hb_top_k": 2,
            "hb_shared_hidden": 32,
            "dense_hidden": 128,
            "cond_dim": 64,
            "vision_widths": (16, 32, 64),
            "vision_blocks": (1, 1, 1),
            "image_size": (64, 64),
            "optimizer_lr": 1e-4,
            "optimizer_weight_decay": 0.01,
        },
    }
)
