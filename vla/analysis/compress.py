"""Merge, then compress (MC-SMoE) the experts of a trained mixture-of-experts policy.

1. Measure routing on a store's windows (`collect_routing`, as `vla inspect routing`): per MoE layer, how
   often each expert is selected and how alike the router treats two experts (cosine similarity of their
   router-probability columns over every routing unit seen).
2. Group each layer's N experts into K: the K most used are the dominant experts; every other expert joins
   the dominant one the router treats most alike.
3. Merge each group: permute each member's hidden units onto the dominant expert's (weight matching, an
   assignment problem over the SwiGLU units: value row, gate row and output column together), then average
   the aligned weights in proportion to routing frequency.
4. Optionally compress the merged experts: each projection becomes a rank-R product (truncated SVD) plus the
   largest-magnitude share S of what that leaves (`LowRankSparseLinear`).

The router keeps its N outputs; `expert_map` in the config sends each output to its group's merged expert,
so routing, top-k and gate weights are as trained and the result is an ordinary checkpoint.
HiMoE's action-space layers are left as they are: each of their experts serves the robots whose slot mask
selects it, and a store of one robot would see the others' experts as unused and fold them away.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.analysis.routing import RoutingError, RoutingStats, collect_routing
from vla.errors import VlaError
from vla.policies.config import ExpertCompressionFields
from vla.policies.modules.moe import MoELayer, SwiGLU, compressed_size, moe_layers
from vla.policies.policy import Policy
from vla.policies.pretrained import save_derived_checkpoint
from vla.progress import progress_bar

REPORT_FILE = "compress.json"
# routing kinds whose experts can be merged: the router picks by noise level (MoDE) or by token (HiMoE HB-MoE)
MERGEABLE = ("noise", "token")
SKIP_REASONS = {
    "action_space": "action-space experts serve different robots (slot masks); merging would mix their actions",
}


class CompressError(VlaError):
    """A checkpoint or request that cannot be merged and compressed: says what to change."""


@dataclass(frozen=True)
class CompressSettings:
    merge: int  # K: experts kept per mergeable layer
    rank: int | None = None  # R: rank of each merged projection (None: keep them dense)
    sparsity: float = 0.0  # S: share of each projection's entries kept as a sparse residual
    windows: int = 256  # calibration windows drawn from the stores
    batch_size: int = 32
    seed: int = 0

    @property
    def compresses(self) -> bool:
        return bool(self.rank) or self.sparsity > 0


@dataclass
class LayerPlan:
    """One MoE layer: what was measured and what it became."""

    name: str
    kind: str
    n_experts: int
    frequency: list[float]  # share of routing units that selected each expert
    similarity: list[list[float]]  # (N, N) cosine similarity of the router-probability columns
    groups: list[list[int]] = field(default_factory=list)  # per merged expert: its members, dominant first
    skipped: str | None = None  # why the layer was left as trained
    params_before: int = 0
    params_after: int = 0

    @property
    def expert_map(self) -> tuple[int, ...]:
        """Router output -> merged expert (() when skipped)."""
        if self.skipped:
            return ()
        out = [0] * self.n_experts
        for j, members in enumerate(self.groups):
            for e in members:
                out[e] = j
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "n_experts": self.n_experts,
            "frequency": [round(f, 6) for f in self.frequency],
            "similarity": [[round(v, 6) for v in row] for row in self.similarity],
            "groups": self.groups,
            "expert_map": list(self.expert_map),
            "skipped": self.skipped,
            "params_before": self.params_before,
            "params_after": self.params_after,
        }


@dataclass
class CompressReport:
    source: str
    stores: list[str]
    settings: CompressSettings
    windows: int  # windows actually routed (at most settings.windows)
    levels: list[float]
    level_name: str
    layers: list[LayerPlan]

    @property
    def params_before(self) -> int:
        return sum(p.params_before for p in self.layers)

    @property
    def params_after(self) -> int:
        return sum(p.params_after for p in self.layers)

    @property
    def reduction(self) -> float:
        """Share of expert parameters removed (0..1)."""
        return 1.0 - self.params_after / max(self.params_before, 1)

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "source": self.source,
            "stores": self.stores,
            "settings": dataclasses.asdict(s),
            "calibration": {"windows": self.windows, "levels": self.levels, "level_name": self.level_name},
            "expert_params_before": self.params_before,
            "expert_params_after": self.params_after,
            "expert_param_reduction": round(self.reduction, 6),
            "layers": [p.to_json() for p in self.layers],
        }


# --- grouping ---------------------------------------------------------------------------------------------


def group_experts(frequency: np.ndarray, similarity: np.ndarray, k: int) -> list[list[int]]:
    """K groups, ordered by their dominant expert's index (so K = N keeps every expert where it was): the K
    most used experts lead (ties: the lower index), each other expert joins the dominant expert it is most
    similar to (ties: the more used one)."""
    n = len(frequency)
    by_use = sorted(range(n), key=lambda e: (-frequency[e], e))
    dominant = sorted(by_use[:k])
    groups = {d: [d] for d in dominant}
    for e in by_use[k:]:
        best = max(dominant, key=lambda d: (similarity[e, d], frequency[d], -d))
        groups[best].append(e)
    return [groups[d] for d in dominant]


# --- alignment and merging ----------------------------------------------------------------------------------


def _unit_features(expert: SwiGLU) -> torch.Tensor:
    """(hidden, F): what defines each hidden unit: its value and gate rows (with biases) and its output column."""
    value, gate = expert.w_in.weight.detach().float().chunk(2, dim=0)
    parts = [value, gate, expert.w_out.weight.detach().float().T]
    if expert.w_in.bias is not None:
        bv, bg = expert.w_in.bias.detach().float().chunk(2)
        parts += [bv[:, None], bg[:, None]]
    return torch.cat(parts, dim=1)


def align_units(reference: SwiGLU, other: SwiGLU) -> torch.Tensor:
    """The permutation `perm` of `other`'s hidden units that best matches `reference`'s (unit i of the
    reference pairs with unit perm[i] of `other`): maximum total inner product of the unit features."""
    from scipy.optimize import linear_sum_assignment

    score = (_unit_features(reference) @ _unit_features(other).T).double().cpu().numpy()
    rows, cols = linear_sum_assignment(score, maximize=True)
    return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long, device=other.w_in.weight.device)


def permuted_weights(expert: SwiGLU, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """The expert's state with hidden units reordered by `perm`: the same function of its input."""
    h = expert.hidden
    rows = torch.cat([perm, perm + h])  # value rows, then gate rows
    out = {"w_in.weight": expert.w_in.weight.detach()[rows], "w_out.weight": expert.w_out.weight.detach()[:, perm]}
    if expert.w_in.bias is not None:
        out["w_in.bias"] = expert.w_in.bias.detach()[rows]
    if expert.w_out.bias is not None:
        out["w_out.bias"] = expert.w_out.bias.detach()  # per output, untouched by the hidden order
    return out


def merge_group(experts: Sequence[SwiGLU], frequency: Sequence[float]) -> dict[str, torch.Tensor]:
    """One expert's state for a group (dominant first): the members aligned to the dominant one and averaged
    in proportion to `frequency` (equal weights when none of them was used). One member: its weights as they are."""
    if len(experts) == 1:
        return {k: v.detach().clone() for k, v in experts[0].state_dict().items()}
    total = float(sum(frequency))
    weights = [f / total for f in frequency] if total > 0 else [1.0 / len(experts)] * len(experts)
    reference = experts[0]
    merged: dict[str, torch.Tensor] = {}
    for expert, w in zip(experts, weights, strict=True):
        perm = torch.arange(expert.hidden, device=expert.w_in.weight.device)
        if expert is not reference:
            perm = align_units(reference, expert)
        for name, value in permuted_weights(expert, perm).items():
            merged[name] = merged.get(name, 0) + w * value.float()
    dtype = reference.w_in.weight.dtype
    return {k: v.to(dtype) for k, v in merged.items()}


# --- the whole policy ------------------------------------------------------------------------------------------


def compress_policy(
    policy: Policy, stores: Sequence[str | Path], settings: CompressSettings, source: str = "", progress: bool = True
) -> tuple[Policy, CompressReport]:
    """The merged (and compressed) copy of `policy`, and what was measured and done. `policy` is left as it is."""
    layers = _check_policy(policy, source)
    _check_settings(settings, layers)
    stats = collect_routing(policy, stores, windows=settings.windows, batch_size=settings.batch_size,
                            seed=settings.seed)  # fmt: skip
    plans = plan_layers(stats, layers, settings.merge)
    cfg = policy.config
    config = cfg.replace(
        expert_map=tuple(p.expert_map for p in plans), expert_rank=settings.rank, expert_sparsity=settings.sparsity
    )
    model_cls = type(policy)
    initial = getattr(config, "vision_weights", None)  # the loaded weights replace them: do not read the file
    merged = model_cls(config.replace(vision_weights=None) if initial is not None else config)
    merged.config = config
    merged.set_normalization(policy.normalizer, policy.embodiments)
    new_layers = moe_layers(merged)
    restructured = {i for i, p in enumerate(plans) if not p.skipped}
    skip_prefixes = tuple(_expert_prefix(merged, new_layers[i]) for i in restructured)
    state = {k: v for k, v in policy.state_dict().items() if not k.startswith(skip_prefixes)}
    missing, unexpected = merged.load_state_dict(state, strict=False)
    leftover = [k for k in missing if not k.startswith(skip_prefixes)]
    if leftover or unexpected:
        raise CompressError(f"the merged model does not fit {source or 'the checkpoint'}: {leftover or unexpected}")
    work = sum(len(plans[i].groups) for i in restructured)
    bar = progress_bar(work, "merging experts", unit="expert", disable=not progress)
    with torch.no_grad():
        for i in sorted(restructured):
            old, new, plan = layers[i], new_layers[i], plans[i]
            for j, members in enumerate(plan.groups):
                experts = [old.experts[e] for e in members]
                state = merge_group(experts, [plan.frequency[e] for e in members])  # type: ignore[arg-type]
                _set_expert(new.experts[j], state, settings.compresses)  # type: ignore[arg-type]
                bar.update(1)
    bar.close()
    for plan, old, new in zip(plans, layers, new_layers, strict=True):
        plan.params_before, plan.params_after = _expert_params(old), _expert_params(new)
    merged.to(policy.device).train(policy.training)
    report = CompressReport(source, [str(s) for s in stores], settings, stats.windows, stats.levels,
                            stats.level_name, plans)  # fmt: skip
    return merged, report


def plan_layers(stats: RoutingStats, layers: Sequence[MoELayer], k: int) -> list[LayerPlan]:
    """Each layer's measured routing and its groups (or why it is skipped); routing records and MoE layers are
    paired in order (`inspect_routing` lists the layers in module order)."""
    if len(stats.layers) != len(layers):
        raise CompressError(
            f"routing measured {len(stats.layers)} MoE layers but the model has {len(layers)}; "
            "the policy's inspect_routing must report every MoE layer"
        )
    plans = []
    for (name, lc), layer in zip(stats.layers.items(), layers, strict=True):
        if lc.n_experts != layer.n_experts:
            raise CompressError(f"{name}: routing has {lc.n_experts} experts, the layer {layer.n_experts}")
        freq = lc.overall_frequency()
        try:
            sim = lc.similarity()
        except RoutingError as e:
            raise CompressError(f"{name}: {e}") from None
        plan = LayerPlan(name, lc.kind, lc.n_experts, [float(f) for f in freq], sim.tolist())
        if lc.kind not in MERGEABLE:
            plan.skipped = SKIP_REASONS.get(lc.kind, f"experts routed by {lc.kind!r} are not merged")
        elif k > lc.n_experts:
            raise CompressError(f"--merge {k}: {name} has only {lc.n_experts} experts; choose K <= {lc.n_experts}")
        else:
            plan.groups = group_experts(freq, sim, k)
        plans.append(plan)
    return plans


def _check_policy(policy: Policy, source: str) -> list[MoELayer]:
    where = source or type(policy).__name__
    layers = moe_layers(policy)
    if not layers:
        raise CompressError(f"{where}: this {policy.config.name} policy has no mixture-of-experts layers to merge")
    if not isinstance(policy.config, ExpertCompressionFields):
        raise CompressError(f"{where}: {policy.config.name} policies cannot hold merged experts")
    if policy.config.expert_map is not None:
        raise CompressError(f"{where}: its experts are merged already; compress the original checkpoint instead")
    return layers


def _check_settings(settings: CompressSettings, layers: Sequence[MoELayer]) -> None:
    k, rank, sparsity = settings.merge, settings.rank, settings.sparsity
    if k < 1:
        raise CompressError(f"--merge {k}: keep at least 1 expert per layer")
    if rank is not None and rank < 1:
        raise CompressError(f"--rank {rank}: must be >= 1 (leave it out to keep the merged experts dense)")
    if not 0.0 <= sparsity < 1.0:
        raise CompressError(f"--sparsity {sparsity}: must be in [0, 1)")
    if settings.windows < 1:
        raise CompressError(f"--windows {settings.windows}: must be >= 1")
    most = max(layer.n_experts for layer in layers)
    if k > most:
        raise CompressError(f"--merge {k}: the layers have at most {most} experts; choose K in 1..{most}")
    if settings.compresses:
        expert: SwiGLU = layers[0].experts[0]  # type: ignore[assignment]
        d, h = expert.w_in.in_features, expert.hidden
        for shape in ((d, 2 * h), (h, d)):
            _, size = compressed_size(*shape, rank or 0, sparsity)
            if size >= shape[0] * shape[1]:
                raise CompressError(
                    f"--rank {rank} --sparsity {sparsity}: a {shape[1]}x{shape[0]} expert projection would keep "
                    f"{size} numbers, not fewer than its {shape[0] * shape[1]}; lower the rank or the sparsity"
                )


def _expert_prefix(model: torch.nn.Module, layer: MoELayer) -> str:
    name = next(n for n, m in model.named_modules() if m is layer)
    return f"{name}.experts."


def _set_expert(expert: SwiGLU, state: dict[str, torch.Tensor], compressed: bool) -> None:
    if not compressed:
        expert.load_state_dict(state)
        return
    expert.w_in.set_dense(state["w_in.weight"], state.get("w_in.bias"))  # type: ignore[operator]
    expert.w_out.set_dense(state["w_out.weight"], state.get("w_out.bias"))  # type: ignore[operator]


def _expert_params(layer: MoELayer) -> int:
    return sum(p.numel() for p in layer.experts.parameters())


# --- writing ------------------------------------------------------------------------------------------------------


def write_compressed(policy: Policy, report: CompressReport, source: str | Path, out: str | Path) -> Path:
    """`out` as a checkpoint folder: the policy (config.json, model.safetensors, normalisation), the source's
    training-data specs (what evaluation checks a benchmark against) and compress.json; written beside it as
    `<out>.partial` and renamed into place, so `out` is complete or absent."""
    out, source = Path(out), Path(source)
    if out.exists():
        raise CompressError(f"{out} exists; choose another --out or remove it")
    return save_derived_checkpoint(policy, source, out, {REPORT_FILE: json.dumps(report.to_json(), indent=2)})
