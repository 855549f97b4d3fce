"""Expert caching for MoDE: routing depends only on the noise level, and the sampler's noise levels
are fixed, so every layer's expert choice at every sampling step is known before any observation.

`build_expert_cache` runs each layer's router once per sampling step (deterministic top-k) and fuses
the chosen experts into one dense SwiGLU per (layer, expert set) (`FusedSwiGLU`): at inference one
matmul pair replaces router + gather/scatter + k experts, and neither the router nor the unused
experts run. Compared with the authors' version:
- fused copies are deduplicated by (layer, expert set[, gate weights when folded]) instead of one
  copy per (step, layer); by default (`fold="scale"`) the gate weights are applied as a per-row
  scale of the fused value half, which is the same product as folding them into the weights but
  lets every step with the same expert set share one copy;
- the cache is keyed by sampling-step index, not by float equality of the noise embedding (which
  misses at batch > 1), and by a schedule key (step count, schedule, sigma range): a different
  schedule means a rebuild, never a silent miss;
- it is rebuilt when the weights change (parameter versions / storage are fingerprinted), so a
  cache never outlives an optimizer step or a checkpoint load.

`step_routes` is the routing itself (experts and gates per step and layer): the cache fuses it, and
`vla export --expert-plan` stores it with a checkpoint (vla/policies/specialise.py), which then runs
without routers and holds only the experts its plan uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from vla.policies.modules.diffusion import EDM, EDMSettings
from vla.policies.modules.moe import FUSED_DTYPES, FusedStep, FusedSwiGLU, MoELayer, select_experts

FOLDS = ("scale", "weights")


Route = tuple[tuple[int, ...], tuple[float, ...]]  # one (step, layer): experts ascending, their gate weights


@dataclass(frozen=True)
class ScheduleKey:
    num_steps: int
    settings: EDMSettings


def schedule_key(settings: EDMSettings, num_steps: int) -> ScheduleKey:
    return ScheduleKey(num_steps, settings)


@dataclass
class CachedFFN:
    """One (step, layer): a shared fused FFN and this step's prepared gate weights for it."""

    fused: FusedSwiGLU
    step: FusedStep | None  # None when the gates are folded into the fused weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x, self.step)


@dataclass
class PlannedFFN:
    """One (step, layer) of an exported expert plan: the layer's own experts, run by `MoELayer.run_experts`
    with the planned choice and gate weights, so the result is bit for bit the routed layer's (no router runs,
    no fusion). Every sequence of the batch uses the same experts, as the noise router would choose."""

    layer: MoELayer
    experts: torch.Tensor  # (1, k) expert ids
    gates: torch.Tensor  # (1, k) gate weights

    @classmethod
    def of(cls, layer: MoELayer, route: Route, device: torch.device) -> PlannedFFN:
        experts, gates = route
        return cls(
            layer,
            torch.tensor([experts], dtype=torch.long, device=device),
            torch.tensor([gates], dtype=torch.float32, device=device),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.layer.run_experts(x, self.experts.expand(b, -1), self.gates.expand(b, -1), held_only=True)


@dataclass
class ExpertCache:
    key: ScheduleKey
    dtype: str
    fold: str
    plan: list[list[CachedFFN]]  # plan[step][layer]
    routes: list[list[Route]]  # (experts, gates) per step, layer
    fused: dict[tuple, FusedSwiGLU] = field(default_factory=dict)
    fingerprint: tuple = ()

    def ffns(self, step: int) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return self.plan[step]  # type: ignore[return-value]

    def matches(self, transformer: nn.Module) -> bool:
        return self.fingerprint == _fingerprint(transformer)

    @property
    def num_fused(self) -> int:
        return len(self.fused)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.fused.values())

    def distinct_per_layer(self) -> list[int]:
        n_layers = len(self.plan[0]) if self.plan else 0
        return [len({k for k in self.fused if k[0] == layer}) for layer in range(n_layers)]

    def summary(self) -> dict[str, object]:
        return {
            "steps": self.key.num_steps,
            "dtype": self.dtype,
            "fold": self.fold,
            "fused_ffns": self.num_fused,
            "per_step_layer_entries": sum(len(p) for p in self.plan),
            "distinct_per_layer": self.distinct_per_layer(),
            "fused_mbytes": self.nbytes / 2**20,
        }


def _fingerprint(transformer: nn.Module) -> tuple:
    """Changes whenever a parameter is modified in place (optimizer step, load_state_dict) or replaced."""
    return tuple((p.data_ptr(), p._version) for p in transformer.parameters())


def moe_layers(transformer: nn.Module) -> list[MoELayer]:
    layers: list[MoELayer] = [b.ffn for b in transformer.blocks]  # type: ignore[attr-defined]
    if not all(isinstance(m, MoELayer) for m in layers):
        raise ValueError("expert caching needs every block's FFN to be a MoELayer")
    return layers


@torch.no_grad()
def step_routes(transformer: nn.Module, edm: EDM, num_steps: int) -> list[list[Route]]:
    """routes[step][layer]: the experts (ascending) and gate weights each layer's router picks at each of the
    `num_steps` noise levels of `edm`'s schedule (deterministic top-k, as in eval)."""
    layers = moe_layers(transformer)
    device = next(transformer.parameters()).device
    sigmas = edm.sigmas(num_steps)[:-1].to(device)  # the levels the network is evaluated at
    routes = []
    for sigma in sigmas:
        c = transformer.noise_emb(edm.noise_cond(sigma.reshape(1)))  # (1, d): the same for every sample
        step = []
        for layer in layers:
            if layer.router is None:
                raise ValueError("a layer without a router (an exported expert plan) cannot be routed again")
            r = select_experts(layer.router(c), layer.top_k, sample=False, renormalize=layer.renormalize)
            # stored experts in canonical (sorted) order, so {a, b} and {b, a} share a copy; merged outputs add
            experts, gates = layer.stored_choice(r.indices[0], r.weights[0])
            step.append((experts, tuple(gates.float().tolist())))
        routes.append(step)
    return routes


@torch.no_grad()
def build_expert_cache(
    transformer: nn.Module,
    edm: EDM,
    num_steps: int,
    dtype: str = "float32",
    fold: str = "scale",
    routes: list[list[Route]] | None = None,
) -> ExpertCache:
    """Fuse each (step, layer)'s chosen experts for the `num_steps` schedule of `edm`; `routes`: a plan for
    that schedule given ahead (an exported checkpoint's) instead of running the routers."""
    if dtype not in FUSED_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {FUSED_DTYPES}")
    if fold not in FOLDS:
        raise ValueError(f"unknown fold {fold!r}; choose one of {FOLDS}")
    layers = moe_layers(transformer)
    routes = step_routes(transformer, edm, num_steps) if routes is None else routes
    device = next(transformer.parameters()).device
    fused: dict[tuple, FusedSwiGLU] = {}
    plan: list[list[CachedFFN]] = []
    for step in routes:
        step_plan = []
        for li, (layer, (experts, gate_list)) in enumerate(zip(layers, step, strict=True)):
            gates = torch.tensor(gate_list, dtype=torch.float32, device=device)
            key = (li, experts) if fold == "scale" else (li, experts, gate_list)
            if key not in fused:
                folded = None if fold == "scale" else list(gate_list)
                fused[key] = FusedSwiGLU([layer.expert(e) for e in experts], folded, dtype)
            f = fused[key]
            step_plan.append(CachedFFN(f, f.prepare(gates) if fold == "scale" else None))
        plan.append(step_plan)
    return ExpertCache(
        schedule_key(edm.settings, num_steps), dtype, fold, plan, routes, fused, _fingerprint(transformer)
    )
