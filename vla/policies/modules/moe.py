"""Sparse mixture-of-experts feed-forward layers: SwiGLU experts, routers, top-k gating, expert fusion.

Pieces, each with one job:
- `SwiGLU`: one expert (or a dense FFN): d -> 2*hidden (value and gate halves) -> SiLU-gated -> d.
- Routers map a *routing input* to expert logits. What the router sees is the whole design choice:
  `NoiseRouter` sees only a noise-level embedding (MoDE), `TokenRouter` sees each token (classic MoE).
  A router given a per-sequence input (B, D) routes every token of that sequence the same way;
  one given a per-token input (B, T, D) routes tokens independently. An action-space router (HiMoE:
  a linear map from a slot mask) is another per-sequence `Router` subclass.
- `select_experts`: top-k from the router's softmax: sampled without replacement in training
  (exploration), deterministic top-k in eval; chosen weights optionally renormalised to sum to 1.
- `load_balancing_loss`: Switch/GShard auxiliary loss, E * sum_e f_e * P_e (1 when balanced).
- `MoELayer`: router + experts + dispatch (gather the tokens of each expert, scatter-add back). A layer
  may hold only some of its router's experts (`held`) and have no router at all (routing given from
  outside, e.g. a precomputed per-step plan): what `vla export` makes of a router-decoupled layer whose
  routing input can only take a few values (vla/policies/specialise.py).
- `FusedSwiGLU`: several experts stacked into one dense FFN so one matmul pair replaces router +
  dispatch + k experts, for routing that is known ahead of time (see vla/policies/mode/caching.py).
  The fused weights can be kept in float32, bfloat16 or int8, because at batch 1 on a CPU the
  matmuls are skinny (one row per token) and reading weights dominates.
- Merged and compressed experts (`vla compress`, vla/analysis/compress.py): a layer may hold fewer
  experts than its router has outputs; `expert_map` (router output -> stored expert) then sends each
  choice to the expert it was merged into, and `LowRankSparseLinear` (U V + a sparse residual) may
  stand in for the experts' projections. `restructure_experts` builds that shape from the config,
  so a compressed checkpoint loads like any other.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vla.errors import PolicyError

FUSED_DTYPES = ("float32", "bfloat16", "int8", "int8_dynamic", "int8_residual")


class SwiGLU(nn.Module):
    """SiLU-gated feed-forward: w_out(value * silu(gate)), with [value; gate] = w_in(x)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0, out_bias: bool | None = None):
        """`bias`: biases in the projections; `out_bias`: the output projection's alone (None: as `bias`)."""
        super().__init__()
        self.hidden = hidden
        self.w_in = nn.Linear(dim, 2 * hidden, bias=bias)  # rows [0, hidden) value, [hidden, 2*hidden) gate
        self.w_out = nn.Linear(hidden, dim, bias=bias if out_bias is None else out_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(self.dropout(value * F.silu(gate)))


# --- routers -------------------------------------------------------------------------------------


class Router(nn.Module):
    """Maps a routing input (B, D) per sequence or (B, T, D) per token to expert logits (..., E)."""

    n_experts: int


class NoiseRouter(Router):
    """MoDE's router: an MLP over the noise-level embedding only (dim -> hidden -> E).

    Because it never sees the tokens, the expert choice is a function of the noise level alone,
    which is what makes expert caching possible.
    """

    def __init__(self, dim: int, n_experts: int, hidden: int | None = None):
        super().__init__()
        self.n_experts = n_experts
        hidden = hidden or 2 * dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n_experts))
        # Small last layer: near-uniform routing at the start so every expert gets gradient early.
        nn.init.normal_(self.mlp[-1].weight, std=0.02)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, route_input: torch.Tensor) -> torch.Tensor:
        return self.mlp(route_input)


class TokenRouter(Router):
    """Classic token-choice router: a bias-free linear map from each token."""

    def __init__(self, dim: int, n_experts: int):
        super().__init__()
        self.n_experts = n_experts
        self.proj = nn.Linear(dim, n_experts, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)

    def forward(self, route_input: torch.Tensor) -> torch.Tensor:
        return self.proj(route_input)


# --- gating --------------------------------------------------------------------------------------


@dataclass
class Routing:
    """The routing decision for N routing units (sequences or tokens)."""

    indices: torch.Tensor  # (..., k) chosen experts
    weights: torch.Tensor  # (..., k) gate weights used to combine the chosen experts
    probs: torch.Tensor  # (..., E) full softmax, for the balance loss and inspection


def select_experts(
    logits: torch.Tensor,
    top_k: int,
    sample: bool,
    renormalize: bool = True,
    generator: torch.Generator | None = None,
) -> Routing:
    """Top-k experts from logits (..., E); sampled in proportion to the softmax when `sample`."""
    probs = logits.float().softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if sample:
        idx = torch.multinomial(flat.detach(), top_k, replacement=False, generator=generator)
    else:
        idx = flat.topk(top_k, dim=-1).indices
    idx = idx.reshape(*probs.shape[:-1], top_k)
    weights = probs.gather(-1, idx)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(idx, weights.to(logits.dtype), probs)


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    """E * sum_e f_e * P_e: f_e the fraction of choices that went to expert e (no gradient), P_e its mean
    router probability. Equals 1 when routing is uniform and E when one expert takes everything."""
    n_experts = routing.probs.shape[-1]
    probs = routing.probs.reshape(-1, n_experts)
    counts = F.one_hot(routing.indices.reshape(-1), n_experts).sum(0).to(probs.dtype)
    frac = counts / counts.sum()
    return n_experts * (frac * probs.mean(0)).sum()


def dense_routing_weights(routing: Routing) -> torch.Tensor:
    """(..., E) combine weight per expert (zero where not chosen): the routing as inspection shows it."""
    n_experts = routing.probs.shape[-1]
    dense = torch.zeros(
        *routing.indices.shape[:-1], n_experts, dtype=routing.weights.dtype, device=routing.weights.device
    )
    return dense.scatter_add(-1, routing.indices, routing.weights)


# --- the layer -----------------------------------------------------------------------------------


class MoELayer(nn.Module):
    """Sparse MoE FFN: `forward(x (B, T, d), route_input) -> (y, Routing)`."""

    # Data-parallel training (see `keep_idle_experts`): idle experts still run, on zero rows, and
    # `experts_used` ORs which experts got tokens since the trainer last reset it.
    keep_idle_experts: bool = False
    experts_used: torch.Tensor | None = None

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int,
        top_k: int,
        router: Router | None,
        renormalize: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
        out_bias: bool | None = None,
        token_sampling: bool = False,
        held: Sequence[int] | None = None,
    ):
        """`token_sampling`: in training, a per-sequence routing input still draws its top-k once per token
        (the MoDE authors' router); off: once per sequence. Inference routing is deterministic either way.

        `held`: the experts (ids among the router's `n_experts`) this layer keeps weights for; None: all.
        `router=None`: the routing always comes from outside (`run_experts`)."""
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        if router is not None and router.n_experts != n_experts:
            raise ValueError(f"router has {router.n_experts} outputs but the layer has {n_experts} experts")
        self._n_routed = n_experts
        self.expert_ids = _expert_ids(held, n_experts)
        self.top_k = top_k
        self.renormalize = renormalize
        self.token_sampling = token_sampling
        self.router = router
        self.experts = nn.ModuleList(SwiGLU(dim, hidden, bias, dropout, out_bias) for _ in self.expert_ids)
        # Router output -> stored expert, when experts were merged (`restructure_experts`); None: one expert per
        # output. Not saved with the weights: the config holds it. A merged layer's `expert_ids` are its stored
        # experts 0..K-1 (what the map points to).
        self.expert_map: torch.Tensor | None
        self.register_buffer("expert_map", None, persistent=False)

    @property
    def n_experts(self) -> int:
        """The experts the router chooses among (the layer may hold fewer: `expert_ids`, `expert_map`)."""
        return self._n_routed

    @property
    def n_stored(self) -> int:
        """Experts held: `n_experts`, or fewer after merging or specialising."""
        return len(self.experts)

    @property
    def holds_all(self) -> bool:
        """Every router output reaches an expert this layer holds (merged layers map each output to one)."""
        return self.expert_map is not None or len(self.experts) == self._n_routed

    def expert(self, e: int) -> SwiGLU:
        """Expert `e` (an id among the router's outputs; for a merged layer, a stored expert 0..K-1)."""
        if e not in self.expert_ids:
            raise PolicyError(f"expert {e} is not held by this layer (it keeps {list(self.expert_ids)})")
        return self.experts[self.expert_ids.index(e)]  # type: ignore[return-value]

    def keep_experts(self, keep: Sequence[int]) -> None:
        """Drop every expert but `keep` (ids among the router's outputs), in place; the router is unchanged,
        so the kept experts' gate weights stay exactly what the full layer computes."""
        if self.expert_map is not None:
            raise PolicyError("a layer with merged experts (vla compress) cannot also drop experts (vla export)")
        ids = _expert_ids(keep, self._n_routed)
        self.experts = nn.ModuleList(self.expert(e) for e in ids)
        self.expert_ids = ids

    def stored_choice(self, indices: torch.Tensor, weights: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor]:
        """One routing unit's (k,) chosen router outputs and gate weights -> the stored experts they run
        (sorted) and each one's summed gate (two outputs merged into one expert run it once, weights added)."""
        idx = indices if self.expert_map is None else self.expert_map[indices]
        experts, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        gates = torch.zeros(len(experts), dtype=weights.dtype, device=weights.device).index_add_(0, inverse, weights)
        return tuple(int(e) for e in experts), gates

    def route(self, route_input: torch.Tensor, generator: torch.Generator | None = None) -> Routing:
        """Sampled top-k in training, deterministic top-k in eval."""
        if self.router is None:
            raise PolicyError(
                "this MoE layer has no router: its checkpoint was exported with a fixed expert plan (vla export "
                "--expert-plan) and runs only that plan; use the full checkpoint to route other inputs"
            )
        return select_experts(self.router(route_input), self.top_k, self.training, self.renormalize, generator)

    def forward(self, x: torch.Tensor, route_input: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        if self.token_sampling and self.training and route_input.dim() == x.dim() - 1 and self.router is not None:
            # the router runs once per sequence; every token then draws its own experts from those logits
            logits = self.router(route_input).unsqueeze(-2).expand(*x.shape[:-1], self.n_experts)
            routing = select_experts(logits, self.top_k, True, self.renormalize)
        else:
            routing = self.route(route_input)
        return self.dispatch(x, routing), routing

    def dispatch(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Run each expert on the tokens routed to it and add the gate-weighted results."""
        idx, w = routing.indices, routing.weights
        if self.expert_map is not None:  # merged experts: a choice runs the expert its output was merged into
            idx = self.expert_map[idx]
        return self.run_experts(x, idx, w)

    def run_experts(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, held_only: bool = False) -> torch.Tensor:
        """`dispatch` for chosen experts `idx` (held expert ids: router outputs, or stored experts of a merged
        layer) and gate weights `w`, both (B, k) per sequence or (B, T, k) per token. `held_only`: the caller
        guarantees every id is held (a plan made from this layer's experts), so the check for dropped experts
        is skipped."""
        if idx.dim() == x.dim() - 1:  # per-sequence routing: every token of a sequence shares it
            idx = idx.unsqueeze(-2).expand(*x.shape[:-1], self.top_k)
            w = w.unsqueeze(-2).expand(*x.shape[:-1], self.top_k)
        flat_x = x.reshape(-1, x.shape[-1])
        flat_idx, flat_w = idx.reshape(-1, self.top_k), w.reshape(-1, self.top_k)
        if not self.holds_all and not held_only:
            self._check_held(flat_idx)
        out = torch.zeros_like(flat_x)
        keep_idle = self.keep_idle_experts and torch.is_grad_enabled()
        used = torch.zeros(self.n_stored, dtype=torch.bool) if keep_idle else None
        # held experts in ascending id order: the same additions in the same order as the full layer
        for slot, (e, expert) in enumerate(zip(self.expert_ids, self.experts, strict=True)):
            chosen = flat_idx == e  # (N, k)
            rows = chosen.any(-1).nonzero().squeeze(-1)
            if used is not None:
                used[slot] = rows.numel() > 0
            elif rows.numel() == 0:
                continue
            gate = (flat_w * chosen).sum(-1)[rows].unsqueeze(-1).to(x.dtype)
            out.index_add_(0, rows, gate * expert(flat_x[rows]))  # an idle expert adds nothing, bit for bit
        if used is not None:
            self.experts_used = used if self.experts_used is None else self.experts_used | used
        return out.reshape(x.shape)

    def _check_held(self, flat_idx: torch.Tensor) -> None:
        held = torch.zeros(self.n_experts, dtype=torch.bool, device=flat_idx.device)
        held[list(self.expert_ids)] = True
        chosen_held = held[flat_idx]
        if not bool(chosen_held.all()):
            missing = flat_idx[~chosen_held]
            raise PolicyError(
                f"the routing chose expert(s) {sorted(set(missing.tolist()))}, which this specialised checkpoint "
                f"dropped (it keeps {list(self.expert_ids)}): it runs only the embodiment or schedule it was "
                "exported for (vla export); use the full checkpoint for other inputs"
            )


def _expert_ids(held: Sequence[int] | None, n_experts: int) -> tuple[int, ...]:
    ids = tuple(range(n_experts)) if held is None else tuple(sorted({int(e) for e in held}))
    if not ids or ids[0] < 0 or ids[-1] >= n_experts:
        raise ValueError(f"held experts {held} must be a non-empty subset of 0..{n_experts - 1}")
    return ids


def keep_idle_experts(module: nn.Module, keep: bool = True) -> list[MoELayer]:
    """Make every MoE layer in `module` run its idle experts on zero rows while gradients are recorded.

    Why: an expert that gets no token on one data-parallel rank would otherwise be missing from that rank's
    graph, and DDP, which reduces the same parameters on every rank, stops with "Expected to have finished
    reduction in the prior iteration". On zero rows the expert adds nothing to the output (bit-identical),
    and its parameters get a zero gradient. An expert idle on every rank must then get no gradient at all,
    as in a single process (AdamW would otherwise still move it by its momentum and weight decay): see
    `drop_idle_expert_grads`. Off by default, so single-process numbers are those of skipping idle experts.
    Returns the MoE layers, in a fixed order."""
    layers = [m for m in module.modules() if isinstance(m, MoELayer)]
    for m in layers:
        m.keep_idle_experts, m.experts_used = keep, None
    return layers


def experts_used(layers: Sequence[MoELayer]) -> torch.Tensor:
    """(sum of n_stored,) 1 where an expert got a token since the last `drop_idle_expert_grads`, else 0."""
    parts = [
        m.experts_used if m.experts_used is not None else torch.zeros(m.n_stored, dtype=torch.bool) for m in layers
    ]
    return torch.cat(parts).float() if parts else torch.zeros(0)


def drop_idle_expert_grads(layers: Sequence[MoELayer], used: torch.Tensor) -> int:
    """Set the gradients of experts with `used` == 0 (a count summed over ranks) to None, as if they had
    not run, and restart the usage record; returns how many experts that was."""
    dropped = start = 0
    for m in layers:
        for slot, expert in enumerate(m.experts):  # `used` is indexed by held expert, in the layer's order
            if float(used[start + slot]) == 0:
                dropped += 1
                for p in expert.parameters():
                    p.grad = None
        start += m.n_stored
        m.experts_used = None
    return dropped


# --- merged and compressed experts ---------------------------------------------------------------------


class LowRankSparseLinear(nn.Module):
    """A linear map whose weight is stored as a rank-r product plus a sparse residual: W = U V + S.

    `u` (out, r) and `v` (r, in) hold the leading singular directions (singular values folded into `u`);
    `values` (nnz,) and the buffer `index` (nnz,) hold S's largest entries at flat positions row * in + col,
    in ascending order (so they form the rows of a CSR matrix). The shapes follow from (in, out, rank, nnz),
    which the config fixes, so the module loads through `load_state_dict` like any other. `weight` gives the
    dense W (what expert caching fuses)."""

    def __init__(self, in_features: int, out_features: int, rank: int, nnz: int, bias: bool = False):
        super().__init__()
        if rank < 0 or nnz < 0 or (rank == 0 and nnz == 0):
            raise ValueError(f"need rank > 0 or nnz > 0, got rank={rank}, nnz={nnz}")
        self.in_features, self.out_features, self.rank, self.nnz = in_features, out_features, rank, nnz
        self.u = nn.Parameter(torch.zeros(out_features, rank))
        self.v = nn.Parameter(torch.zeros(rank, in_features))
        self.values = nn.Parameter(torch.zeros(nnz))
        # int32 halves the index bytes; a flat position must fit (checked in `compressed_size`)
        self.register_buffer("index", torch.arange(nnz, dtype=torch.int32))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._csr_of: tuple | None = None  # the (index, values) state `_csr` was built from
        self._csr = torch.zeros(0)

    @torch.no_grad()
    def set_dense(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Fit U V to `weight` by a truncated SVD, and keep the `nnz` largest-magnitude entries of what is left."""
        w = weight.detach().float()
        approx = torch.zeros_like(w)
        if self.rank:
            left, sv, right = torch.linalg.svd(w, full_matrices=False)
            self.u.copy_(left[:, : self.rank] * sv[: self.rank])
            self.v.copy_(right[: self.rank])
            approx = self.u @ self.v
        if self.nnz:
            residual = (w - approx).flatten()
            keep = residual.abs().topk(self.nnz).indices.sort().values
            self.index.copy_(keep.to(torch.int32))
            self.values.copy_(residual[keep])
        if self.bias is not None:
            assert bias is not None, "this projection has a bias"
            self.bias.copy_(bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense (out, in) weight U V + S."""
        w = self.u @ self.v
        flat = w.reshape(-1).index_add(0, self.index.long(), self.values)
        return flat.reshape(self.out_features, self.in_features)

    def _sparse(self) -> torch.Tensor:
        """S as a CSR matrix, built once per (index, values) state: compressed experts are for inference, so S
        carries no gradient."""
        key = tuple((t.data_ptr(), t._version, t.device) for t in (self.index, self.values))
        if self._csr_of != key:
            flat = self.index.long()
            rows = torch.div(flat, self.in_features, rounding_mode="floor")
            crow = torch.cat([flat.new_zeros(1), torch.bincount(rows, minlength=self.out_features).cumsum(0)])
            size = (self.out_features, self.in_features)
            with warnings.catch_warnings():  # torch's notes that CSR support is "beta": nothing to act on
                warnings.simplefilter("ignore", UserWarning)
                self._csr = torch.sparse_csr_tensor(crow, flat % self.in_features, self.values.detach(), size,
                                                    check_invariants=True)  # fmt: skip
            self._csr_of = key
        return self._csr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(F.linear(x, self.v), self.u, self.bias)
        if self.nnz:
            flat = x.reshape(-1, self.in_features)
            sparse = torch.sparse.mm(self._sparse(), flat.T.contiguous()).T  # (N, out)
            y = y + sparse.reshape(*x.shape[:-1], self.out_features)
        return y


def compressed_size(in_features: int, out_features: int, rank: int, sparsity: float) -> tuple[int, int]:
    """(nnz, parameters) of an (out, in) weight kept as rank `rank` plus a `sparsity` share of its entries."""
    numel = in_features * out_features
    if numel >= 2**31:
        raise ValueError(f"a {out_features}x{in_features} weight is too large for int32 sparse positions")
    nnz = round(sparsity * numel)
    return nnz, rank * (in_features + out_features) + nnz


def moe_layers(module: nn.Module) -> list[MoELayer]:
    """The MoE layers inside `module`, in module order: the order `expert_map` entries refer to."""
    return [m for m in module.modules() if isinstance(m, MoELayer)]


def restructure_experts(
    module: nn.Module,
    expert_map: Sequence[Sequence[int]] | None,
    rank: int | None = None,
    sparsity: float = 0.0,
) -> None:
    """Give the MoE layers of `module` the shape a merged (and compressed) checkpoint has.

    `expert_map`: one entry per MoE layer in module order; an empty entry leaves that layer as built, otherwise
    it maps each router output to one of K stored experts (0..K-1, each used): the layer then holds K experts,
    whose projections are `LowRankSparseLinear` when `rank` or `sparsity` is set. None: nothing changes. The
    weights are whatever is loaded next (`vla compress` writes them)."""
    if expert_map is None:
        return
    layers = moe_layers(module)
    if len(expert_map) != len(layers):
        raise PolicyError(f"config expert_map has {len(expert_map)} entries for {len(layers)} MoE layers")
    for i, (layer, entry) in enumerate(zip(layers, expert_map, strict=True)):
        if not entry:
            continue
        k = max(entry) + 1
        if len(entry) != layer.n_experts or min(entry) < 0 or sorted(set(entry)) != list(range(k)):
            raise PolicyError(
                f"config expert_map[{i}] {list(entry)}: needs one entry per router output ({layer.n_experts}), "
                "each in 0..K-1, every one of them used"
            )
        first: SwiGLU = layer.experts[0]  # type: ignore[assignment]
        dim, hidden = first.w_in.in_features, first.hidden
        bias, out_bias = first.w_in.bias is not None, first.w_out.bias is not None
        experts = [SwiGLU(dim, hidden, bias, first.dropout.p, out_bias) for _ in range(k)]
        if rank or sparsity:
            for e in experts:
                e.w_in = _compressed(dim, 2 * hidden, rank or 0, sparsity, bias)
                e.w_out = _compressed(hidden, dim, rank or 0, sparsity, out_bias)
        if not layer.holds_all:
            raise PolicyError(f"MoE layer {i} was specialised (vla export): merge the full checkpoint instead")
        layer.experts = nn.ModuleList(experts)
        layer.expert_ids = tuple(range(k))
        layer.expert_map = torch.tensor(list(entry), dtype=torch.long, device=first.w_in.weight.device)


def _compressed(in_features: int, out_features: int, rank: int, sparsity: float, bias: bool) -> LowRankSparseLinear:
    nnz, _ = compressed_size(in_features, out_features, rank, sparsity)
    return LowRankSparseLinear(in_features, out_features, rank, nnz, bias)


@dataclass(frozen=True)
class ExpertParameters:
    """Parameter counts of the MoE layers inside a module."""

    experts: int  # every expert of every layer (that the layer holds)
    active: int  # the experts one routing unit (token or sequence) runs: top_k per layer
    routers: int


def expert_parameters(module: nn.Module) -> ExpertParameters:
    experts = active = routers = 0
    for m in module.modules():
        if isinstance(m, MoELayer):
            per_expert = sum(p.numel() for p in m.experts[0].parameters())
            experts += per_expert * m.n_stored
            active += per_expert * m.top_k
            routers += sum(p.numel() for p in m.router.parameters()) if m.router is not None else 0
    return ExpertParameters(experts, active, routers)


# --- fusion --------------------------------------------------------------------------------------


class _Linear:
    """A bias-free `x @ W.T` whose weight is held in float32, bfloat16 or int8, with an optional
    per-output-row scale (how fused experts apply their gate weights).

    - float32: F.linear.
    - bfloat16: bf16 weights; input cast to bf16, result back to float32 (half the bytes).
    - int8: weight-only int8 (symmetric, per output row) through `aten._weight_int8pack_mm` with
      bf16 activations; the row scale is folded into the dequantisation scales, so it is free.
    - int8_dynamic: torch.ao-style dynamic quantisation (`quantized::linear_dynamic`, the kernel of
      torch.ao's dynamic Linear): activations are quantised per call to 7-bit unsigned per tensor
      (reduced range avoids int16 saturation on AVX2). Fastest on x86, least accurate.
    - int8_residual: the same int8 kernel run twice, on x and on its quantisation residual
      x - dequant(quant(x)), so activations get ~14 bits: the accuracy of weight-only int8 at about
      twice the cost of int8_dynamic (still integer arithmetic, much faster than float on AVX2).
    """

    def __init__(self, weight: torch.Tensor, dtype: str):
        if dtype not in FUSED_DTYPES:
            raise ValueError(f"unknown fused dtype {dtype!r}; choose one of {FUSED_DTYPES}")
        self.dtype = dtype
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float().contiguous()
        self.scales: torch.Tensor | None = None
        if dtype == "float32":
            self.weight = w
        elif dtype == "bfloat16":
            self.weight = w.to(torch.bfloat16)
        else:
            if w.device.type != "cpu":
                raise ValueError(f"dtype={dtype!r} uses a CPU kernel; keep the policy on the CPU or use bfloat16")
            scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
            if dtype == "int8":
                self.weight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
                self.scales = scale.to(torch.bfloat16)
            else:
                zero = torch.zeros(w.shape[0], dtype=torch.long)
                q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
                self.weight = torch.ops.quantized.linear_prepack(q, None)

    @property
    def free_row_scale(self) -> bool:
        """Whether a per-row scale costs nothing (folded into the kernel's dequantisation scales)."""
        return self.dtype == "int8"

    def kernel_row_scale(self, row_scale: torch.Tensor) -> torch.Tensor:
        """The scales argument to pass to __call__ for a (out_features,) row scale."""
        if self.free_row_scale:
            assert self.scales is not None
            return (self.scales.float() * row_scale.float()).to(torch.bfloat16)
        return row_scale.float()

    def __call__(self, x: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """`row_scale`: from `kernel_row_scale`, or None for no scaling."""
        if self.dtype == "float32":
            y = F.linear(x, self.weight)
        elif self.dtype == "bfloat16":
            y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        elif self.dtype == "int8":
            scales = self.scales if row_scale is None else row_scale
            flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, scales)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        else:
            flat = x.reshape(-1, x.shape[-1]).float().contiguous()
            y = torch.ops.quantized.linear_dynamic(flat, self.weight, True)
            if self.dtype == "int8_residual":
                q = torch.quantize_per_tensor_dynamic(flat, torch.quint8, True)  # what the kernel did to x
                y = y + torch.ops.quantized.linear_dynamic(flat - q.dequantize(), self.weight, True)
            y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if row_scale is None else y * row_scale

    @property
    def nbytes(self) -> int:
        per = {"float32": 4, "bfloat16": 2}.get(self.dtype, 1)
        return self.out_features * self.in_features * per


@dataclass
class FusedStep:
    """One step's gate weights, prepared for a FusedSwiGLU (see `FusedSwiGLU.prepare`)."""

    in_scale: torch.Tensor | None  # row scale for w_in (the gates over the value rows), kernel form
    value_scale: torch.Tensor | None  # or, when the kernel cannot scale rows for free, a (k*h,) product
    out_bias: torch.Tensor | None  # sum_i p_i * b_out_i, when the experts have output biases


class FusedSwiGLU:
    """k SwiGLU experts stacked into one FFN of hidden width k*h: one matmul pair for all of them.

    w_in = [v_1; ...; v_k; g_1; ...; g_k] (2kh x d), w_out = [o_1 ... o_k] (d x kh), so
    w_out(value * silu(gate)) = sum_i o_i(v_i x * silu(g_i x)). The gate weight p_i of expert i scales
    its value rows, (p_i v_i) x = p_i (v_i x). Two ways to apply it, both exact:
    - `gates=None` at build time: the weights stay unscaled and each call gets a `FusedStep` from
      `prepare(gates)`: a row scale folded into int8 dequantisation scales (free), or a product over
      the value half of the (T, kh) hidden activation (negligible next to the matmuls). One fused copy
      then serves every sampling step that picks the same experts;
    - `gates` given: folded into the value rows of w_in once (and into the output bias): a copy
      specific to one gate vector (what the MoDE authors do, one copy per (step, layer)).
    Not an nn.Module on purpose: an inference-only cache, never trained or saved.
    """

    def __init__(self, experts: Sequence[SwiGLU], gates: Sequence[float] | None = None, dtype: str = "float32"):
        if not experts:
            raise ValueError("need at least one expert to fuse")
        self.k = len(experts)
        self.hidden = experts[0].hidden
        self.dtype = dtype
        with torch.no_grad():
            values, gate_rows, b_values, b_gates = [], [], [], []
            for i, e in enumerate(experts):
                v, g = e.w_in.weight.chunk(2, dim=0)
                scale = 1.0 if gates is None else float(gates[i])
                values.append(v * scale)
                gate_rows.append(g)
                if e.w_in.bias is not None:
                    bv, bg = e.w_in.bias.chunk(2)
                    b_values.append(bv * scale)
                    b_gates.append(bg)
            self.w_in = _Linear(torch.cat([*values, *gate_rows], 0), dtype)
            self.w_out = _Linear(torch.cat([e.w_out.weight for e in experts], 1), dtype)
            self.b_in = torch.cat([*b_values, *b_gates]).detach().float() if b_values else None
            # Output biases stay per expert: each step weights them by its own gates.
            out_b = [e.w_out.bias for e in experts]
            self.b_out = torch.stack(out_b).detach().float() if out_b[0] is not None else None
        self.folded = None if gates is None else self.prepare(torch.tensor(list(gates)), _folded=True)

    def prepare(self, gates: torch.Tensor, _folded: bool = False) -> FusedStep:
        """Per-step parameters for gate weights (k,), computed once per (step, layer) by the cache."""
        gates = gates.detach().float().to(self.b_out.device if self.b_out is not None else gates.device)
        out_bias = gates @ self.b_out if self.b_out is not None else None
        if _folded:
            return FusedStep(None, None, out_bias)
        value = gates.repeat_interleave(self.hidden)
        if self.w_in.free_row_scale:
            row = torch.cat([value, torch.ones_like(value)])
            return FusedStep(self.w_in.kernel_row_scale(row), None, out_bias)
        return FusedStep(None, value, out_bias)

    def __call__(self, x: torch.Tensor, step: FusedStep | None = None) -> torch.Tensor:
        """`step`: from `prepare(gates)`; None only when the gates were folded in at build time."""
        step = step or self.folded
        if step is None:
            raise ValueError("these experts were fused without gates: pass prepare(gates)")
        h = self.w_in(x, step.in_scale)
        if self.b_in is not None:
            h = h + self.b_in.to(h)
        value, gate = h.chunk(2, dim=-1)
        if step.value_scale is not None:
            value = value * step.value_scale.to(value)
        y = self.w_out(value * F.silu(gate))
        if step.out_bias is not None:
            y = y + step.out_bias.to(y)
        return y

    @property
    def nbytes(self) -> int:
        return self.w_in.nbytes + self.w_out.nbytes

    @property
    def num_params(self) -> int:
        return self.w_in.out_features * self.w_in.in_features + self.w_out.out_features * self.w_out.in_features
