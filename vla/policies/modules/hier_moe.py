"""HiMoE's layer kinds: Action-Space MoE, Heterogeneity-Balancing MoE, dense GELU MLP, and their losses.

Built from moe.py's pieces (SwiGLU experts, `select_experts`, `MoELayer.dispatch`), so the gating and
dispatch are the ones MoDE uses.

- `ActionSpaceRouter`: a bias-free linear map from the robot's action-space identity to expert
  logits. `kind="mask"` (the paper): the identity is the 24-bit slot mask. `kind="mask_id"`: the mask
  concatenated with a one-hot of the embodiment id, which also tells apart robots with the same
  slots but different action semantics (absolute vs delta, other units), which the mask cannot.
  The input is given per token (B, T, D) so every token has its own routing record (all tokens of a
  sequence share the input, hence the choice).
- `ActionSpaceMoE`: few SwiGLU experts, top-1, the gate weight NOT renormalised (so the router's
  confidence scales the expert output and the router gets gradient from the task loss).
- `supcon_loss`: supervised-contrastive regulariser (temperature 0.1); HiMoE applies it to each
  token's AS-MoE router probabilities (L2-normalised): tokens with the identical action-space label
  are positives, all others negatives, which pulls robots with one action space onto one routing and
  pushes different ones apart. Probabilities rather than logits: they are non-negative, so two
  routings can only become dissimilar by putting their mass on different experts; logit vectors
  satisfy the loss at temperature 0.1 already at a cosine of ~0.6, often with the same top expert
  (measured: on the two-robot test mixture the logit version left one AS layer unseparated).
- `HBMoE`: many small SwiGLU experts routed per token (top-k, renormalised) plus one always-on shared
  expert, with `sequence_balance_loss` (load balance measured within each sequence, then averaged), so
  no sequence (robot) leaves most experts idle.
- `DenseMLP`: the shared dense layers' GELU MLP, or the authors' bias-free GeGLU (`gated`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vla.policies.modules.moe import MoELayer, Router, Routing, SwiGLU, TokenRouter, select_experts

ACTION_SPACE_INPUTS = ("mask", "mask_id")


class ActionSpaceRouter(Router):
    """Bias-free linear map: action-space identity (..., in_dim) -> expert logits (..., E)."""

    def __init__(self, in_dim: int, n_experts: int, init_std: float = 0.02):
        super().__init__()
        self.n_experts = n_experts
        self.proj = nn.Linear(in_dim, n_experts, bias=False)
        nn.init.normal_(self.proj.weight, std=init_std)

    def forward(self, route_input: torch.Tensor) -> torch.Tensor:
        return self.proj(route_input.to(self.proj.weight.dtype))


def action_space_input(
    mask: torch.Tensor, embodiment_id: torch.Tensor | None, kind: str = "mask", n_ids: int = 0
) -> torch.Tensor:
    """The router input per sequence (B, D): the slot mask as floats, optionally + one-hot embodiment id."""
    x = mask.float()
    if kind == "mask":
        return x
    if kind != "mask_id":
        raise ValueError(f"action-space router input {kind!r} not in {ACTION_SPACE_INPUTS}")
    if embodiment_id is None:
        raise ValueError("the 'mask_id' action-space router needs embodiment ids")
    ids = embodiment_id.long().to(x.device)
    if ids.numel() and (int(ids.max()) >= n_ids or int(ids.min()) < 0):
        raise ValueError(f"embodiment id {int(ids.max())} outside 0..{n_ids - 1}; raise max_embodiments")
    return torch.cat([x, F.one_hot(ids, n_ids).float()], dim=-1)


def action_space_labels(route_input: torch.Tensor) -> torch.Tensor:
    """(B,) integer label per sequence: equal exactly when the action-space identities are equal."""
    return torch.unique(route_input.detach(), dim=0, return_inverse=True)[1]


class ActionSpaceMoE(nn.Module):
    """`forward(x (B, T, d), route_input (B, T, D)) -> (y, Routing)`: top-1, weight not renormalised."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int,
        route_dim: int,
        top_k: int = 1,
        sample: bool = False,
        held: Sequence[int] | None = None,
    ):
        """`held`: the experts kept by a specialised export (the router keeps all its outputs, so the kept
        experts' gate weights are the full layer's)."""
        super().__init__()
        self.sample = sample
        router = ActionSpaceRouter(route_dim, n_experts)
        self.moe = MoELayer(dim, hidden, n_experts, top_k, router, renormalize=False, held=held)

    @property
    def router(self) -> ActionSpaceRouter:
        return self.moe.router  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, route_input: torch.Tensor) -> tuple[torch.Tensor, Routing, torch.Tensor]:
        """Returns the output, the routing and the raw router logits (for the contrastive loss)."""
        logits = self.router(route_input)
        routing = select_routing(logits, self.moe, self.sample and self.training)
        return self.moe.dispatch(x, routing), routing, logits


def select_routing(logits: torch.Tensor, moe: MoELayer, sample: bool) -> Routing:
    """Top-k of `moe`'s width from router logits (sampled only when asked, in training)."""
    return select_experts(logits, moe.top_k, sample, moe.renormalize)


class HBMoE(nn.Module):
    """Fine-grained token-routed experts (top-k, renormalised) + one shared expert."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int,
        top_k: int,
        shared_hidden: int | None = None,
        shared: bool = True,
        sample: bool = False,
    ):
        super().__init__()
        self.sample = sample
        self.moe = MoELayer(dim, hidden, n_experts, top_k, TokenRouter(dim, n_experts), renormalize=True)
        self.shared = SwiGLU(dim, shared_hidden or hidden) if shared else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        routing = select_routing(self.moe.router(x), self.moe, self.sample and self.training)
        y = self.moe.dispatch(x, routing)
        if self.shared is not None:
            y = y + self.shared(x)
        return y, routing


class DenseMLP(nn.Module):
    """The shared dense layers: a GELU MLP d -> hidden -> d with biases, or (`gated`, the HiMoE authors' Gemma
    MLP) GeGLU without biases: w_out(value * gelu_tanh(gate)), [value; gate] = w_in(x), d -> 2*hidden -> d."""

    def __init__(self, dim: int, hidden: int, gated: bool = False):
        super().__init__()
        self.gated = gated
        self.w_in = nn.Linear(dim, 2 * hidden if gated else hidden, bias=not gated)
        self.w_out = nn.Linear(hidden, dim, bias=not gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            value, gate = self.w_in(x).chunk(2, dim=-1)
            return self.w_out(value * F.gelu(gate, approximate="tanh"))
        return self.w_out(F.gelu(self.w_in(x), approximate="tanh"))


# --- losses ------------------------------------------------------------------------------------------


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    max_items: int | None = 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over N items: features (N, F), labels (N,).

    Features are L2-normalised; for each anchor with at least one positive, the mean over its
    positives of -log softmax over all other items. 0 (with a graph) when no anchor has a positive.
    `max_items`: a random subset of that many items bounds the O(N^2) similarity matrix."""
    n = features.shape[0]
    if max_items is not None and n > max_items:
        keep = torch.randperm(n, generator=generator)[:max_items].to(features.device)
        features, labels = features[keep], labels[keep]
        n = max_items
    z = F.normalize(features.float(), dim=-1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - sim.logsumexp(dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return features.sum() * 0.0
    per_anchor = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp_min(1)
    return per_anchor[has].mean()


def sequence_balance_loss(routing: Routing, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence load balance: for each sequence b, E * sum_e f_be * P_be over its (valid) tokens
    (f: fraction of its top-k choices per expert, no gradient; P: mean router probability), averaged
    over sequences. 1 when each sequence spreads its tokens evenly, E when one expert takes all."""
    probs = routing.probs  # (B, T, E)
    b, t, e = probs.shape
    w = torch.ones(b, t, device=probs.device) if valid is None else valid.float().to(probs.device)
    counts = F.one_hot(routing.indices, e).sum(-2).float()  # (B, T, E)
    per_token_k = routing.indices.shape[-1]
    frac = (counts * w[..., None]).sum(1) / (w.sum(1, keepdim=True) * per_token_k).clamp_min(1)
    mean_p = (probs * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
    return (e * (frac.detach() * mean_p).sum(-1)).mean()
