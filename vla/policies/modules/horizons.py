"""Mixture of Horizons (MoH): one action transformer predicts chunks of several lengths at once.

The wrapper is objective-agnostic: it turns the action part of any policy whose action tokens go
through a transformer (MoDE's denoiser, a flow-matching head, a one-step regression head) into a
mixture of horizons:

- `HorizonLayout`: horizons {3, 6, ..., 30} by default. All horizons go through the shared
  transformer in ONE pass as one long sequence: [context tokens, segment of horizon h_1 (h_1
  action tokens), segment of h_2, ...]. Every segment's tokens carry the positions 0..h-1 of the
  action chunk (the same position ids for every horizon, no horizon embedding), and a block
  attention mask makes the segments independent: an action token sees every context token and the
  tokens of its own segment only (full attention, or causal within the segment), never another
  horizon's tokens; context tokens see only context tokens (causally), so the context is computed
  once and is the same for every horizon.
  Why one long sequence rather than one batch row per horizon (the authors' way): the rows layout
  pads every horizon to max(h) tokens and repeats the context in every row, n_h * (C + H) tokens per
  sample (10 * (C + 30) with the defaults) against C + sum(h) (C + 165) here. The FFNs (MoE experts)
  dominate the cost and scale with the token count, so this is ~2x cheaper at small C and far
  cheaper for long contexts (the context is not repeated); the price is a dense (T, T) mask, so no
  flash kernel, which matters little at these lengths.
- `MixtureOfHorizons`: runs the backbone on the layout, a linear gate per action token (logits
  plus, in training, Gaussian noise of a learned per-token std softplus(.) + 0.01), a softmax over
  the horizons that cover each step, and the fused output. Per-horizon outputs and gate weights are
  returned (`HorizonOutput`) so they stay inspectable.
- `mixture_loss`: loss on the fused output + sum of per-horizon losses + balance weight * squared
  coefficient of variation of the horizons' mean gate weight ("global"), or, as the authors, that
  quantity per segment between horizon boundaries over the horizons active there, with the unbiased
  variance, averaged over the segments ("segments", `segment_balance_loss`).
- Dynamic inference: `disagreement` (gate-weighted L1 distance of each horizon's output to the fused
  one, per step; summed over denoising steps by the caller) and `dynamic_horizon` (how many steps
  of the fused chunk to execute, per batch row).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vla.policies.modules.objective import masked_mean

ACTION_ATTENTION = ("causal", "full")
BALANCE_MODES = ("global", "segments")
DEFAULT_HORIZONS: tuple[int, ...] = tuple(range(3, 31, 3))

# backbone(action_inputs (B, L, A), positions (L,), attn_mask (T, T) bool) -> (hidden (B, L, d), out (B, L, A))
Backbone = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def parse_horizons(text: str) -> tuple[int, ...]:
    """'3-30:3' (start-stop:step, inclusive) or '3,6,9' -> sorted distinct horizons."""
    text = text.strip()
    try:
        if "-" in text:
            span, _, step = text.partition(":")
            lo, _, hi = span.partition("-")
            out = tuple(range(int(lo), int(hi) + 1, int(step or 1)))
        else:
            out = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"cannot read horizons from {text!r}; write them like '3-30:3' or '3,6,9'") from None
    check_horizons(out)
    return tuple(sorted(out))


def check_horizons(horizons: tuple[int, ...]) -> None:
    if not horizons:
        raise ValueError("need at least one horizon")
    if any(int(h) < 1 for h in horizons) or len(set(horizons)) != len(horizons):
        raise ValueError(f"horizons must be distinct positive integers, got {horizons}")


def horizon_config_problems(config: Any) -> list[str]:
    """What is wrong with a policy config's mixture-of-horizons and dynamic-inference fields
    (`horizons`, `chunk_size`, `dynamic_ratio/window/min_steps/stop_cover`); empty: fine or off."""
    out = _dynamic_problems(config)
    if getattr(config, "moh_balance", "global") not in BALANCE_MODES:
        out.append(f"moh_balance {config.moh_balance!r} not in {BALANCE_MODES}")
    horizons, chunk_size = config.horizons, config.chunk_size
    if horizons is None:
        return out
    return out + _horizon_problems(tuple(horizons), chunk_size)


def _dynamic_problems(config: Any) -> list[str]:
    out = []
    if config.dynamic_ratio is not None:
        if config.horizons is None:
            out.append("dynamic_ratio needs a mixture of horizons (set horizons)")
        if config.dynamic_ratio <= 0:
            out.append(f"dynamic_ratio must be > 0, got {config.dynamic_ratio}")
    if min(config.dynamic_window, config.dynamic_min_steps) < 1 or config.dynamic_stop_cover < 0:
        out.append("dynamic_window and dynamic_min_steps must be >= 1, dynamic_stop_cover >= 0")
    return out


def _horizon_problems(horizons: tuple[int, ...], chunk_size: int) -> list[str]:
    try:
        check_horizons(horizons)
    except ValueError as e:
        return [str(e)]
    problems = []
    if tuple(sorted(horizons)) != tuple(horizons):
        problems.append(f"horizons must be in increasing order, got {horizons}")
    if max(horizons) != chunk_size:
        problems.append(
            f"with a mixture of horizons chunk_size must be max(horizons) = {max(horizons)}, got {chunk_size}"
        )
    return problems


@dataclass(frozen=True)
class HorizonLayout:
    """Where each horizon's action tokens sit in the one long sequence, and who may attend to whom."""

    horizons: tuple[int, ...]
    n_context: int  # tokens before the action tokens (shared by all horizons)
    action_attention: str = "full"  # among the action tokens of one segment: full | causal
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_horizons(self.horizons)
        object.__setattr__(self, "horizons", tuple(sorted(int(h) for h in self.horizons)))
        if self.action_attention not in ACTION_ATTENTION:
            raise ValueError(f"action_attention {self.action_attention!r} not in {ACTION_ATTENTION}")
        if self.n_context < 0:
            raise ValueError("n_context must be >= 0")

    @property
    def n_horizons(self) -> int:
        return len(self.horizons)

    @property
    def max_horizon(self) -> int:
        return self.horizons[-1]

    @property
    def n_action_tokens(self) -> int:
        return sum(self.horizons)

    @property
    def positions(self) -> torch.Tensor:
        """(L,) the chunk step of every action token: 0..h-1 per segment."""
        return torch.cat([torch.arange(h) for h in self.horizons])

    @property
    def segments(self) -> torch.Tensor:
        """(L,) the horizon index of every action token."""
        return torch.cat([torch.full((h,), i) for i, h in enumerate(self.horizons)])

    @property
    def cover(self) -> torch.Tensor:
        """(n_h, H) True where horizon i predicts step t (t < h_i)."""
        return torch.arange(self.max_horizon)[None, :] < torch.tensor(self.horizons)[:, None]

    @property
    def cover_count(self) -> torch.Tensor:
        """(H,) how many horizons cover each step."""
        return self.cover.sum(0)

    def attention_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(T, T) bool, True = may attend; T = n_context + sum(horizons)."""
        key = str(device)
        if key not in self._cache:
            c, n = self.n_context, self.n_action_tokens
            mask = torch.zeros(c + n, c + n, dtype=torch.bool)
            mask[:c, :c] = torch.ones(c, c, dtype=torch.bool).tril()
            mask[c:, :c] = True
            seg, pos = self.segments, self.positions
            block = seg[:, None] == seg[None, :]
            if self.action_attention == "causal":
                block &= pos[:, None] >= pos[None, :]
            mask[c:, c:] = block
            self._cache[key] = mask.to(device)
        return self._cache[key]

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, ...) a chunk -> (B, L, ...) every horizon's prefix of it, segment after segment."""
        if x.shape[1] != self.max_horizon:
            raise ValueError(f"expected a chunk of {self.max_horizon} steps, got {tuple(x.shape)}")
        return x[:, self.positions.to(x.device)]

    def split(self, y: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(B, L, ...) per action token -> (B, n_h, H, ...), `fill` where a horizon does not reach."""
        b, rest = y.shape[0], y.shape[2:]
        flat = (self.segments * self.max_horizon + self.positions).to(y.device)
        out = y.new_full((b, self.n_horizons * self.max_horizon, *rest), fill)
        out = out.index_copy(1, flat, y)
        return out.view(b, self.n_horizons, self.max_horizon, *rest)


@dataclass
class HorizonOutput:
    fused: torch.Tensor  # (B, H, A) the gate-weighted mixture per step
    per_horizon: torch.Tensor  # (B, n_h, H, A), zeros where a horizon does not reach
    weights: torch.Tensor  # (B, n_h, H) fusion weights, summing to 1 over the covering horizons
    cover: torch.Tensor  # (n_h, H) bool
    logits: torch.Tensor  # (B, n_h, H) gate logits (with training noise), -inf where not covering


class MixtureOfHorizons(nn.Module):
    """The gate and the fusion around a shared action transformer (see the module docstring)."""

    def __init__(
        self,
        width: int,
        horizons: tuple[int, ...] = DEFAULT_HORIZONS,
        n_context: int = 0,
        action_attention: str = "full",
        gate_noise: bool = True,
        noise_floor: float = 0.01,
    ):
        super().__init__()
        self.layout = HorizonLayout(tuple(horizons), n_context, action_attention)
        self.gate = nn.Linear(width, 1)
        self.gate_noise = nn.Linear(width, 1) if gate_noise else None
        self.noise_floor = noise_floor
        for m in (self.gate, self.gate_noise):
            if m is not None:
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def horizons(self) -> tuple[int, ...]:
        return self.layout.horizons

    def forward(self, backbone: Backbone, x: torch.Tensor) -> HorizonOutput:
        """`x` (B, H_max, A): the action-token input (e.g. the scaled noisy chunk) for the longest
        horizon; every horizon reads its prefix. One backbone call for all horizons."""
        lay = self.layout
        positions = lay.positions.to(x.device)
        hidden, out = backbone(lay.expand(x), positions, lay.attention_mask(x.device))
        logits = self.gate(hidden).squeeze(-1)  # (B, L)
        if self.training and self.gate_noise is not None:
            std = F.softplus(self.gate_noise(hidden).squeeze(-1)) + self.noise_floor
            logits = logits + torch.randn_like(logits) * std
        cover = lay.cover.to(x.device)
        logits = lay.split(logits, float("-inf"))
        weights = logits.softmax(dim=1)  # every step is covered by the longest horizon
        per_horizon = lay.split(out)
        fused = (weights.unsqueeze(-1).to(per_horizon) * per_horizon).sum(1)
        return HorizonOutput(fused, per_horizon, weights, cover, logits)


def balance_loss(weights: torch.Tensor, cover: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Squared coefficient of variation of the horizons' usage: the mean fusion weight of each horizon
    over the steps it covers (and the valid steps of the batch). 0 when every horizon is used alike."""
    mask = cover.unsqueeze(0).expand_as(weights)
    if valid is not None:
        mask = mask & valid.unsqueeze(1)
    usage = masked_mean(weights, mask, (0, 2))  # (n_h,)
    if usage.numel() < 2:
        return usage.sum() * 0
    return usage.var(unbiased=False) / usage.mean().pow(2).clamp_min(1e-12)


def segment_balance_loss(weights: torch.Tensor, cover: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' balance term: the steps split into segments at the horizon boundaries (0, h_1, h_2, ...);
    in each segment covered by two horizons or more, the mean fusion weight of each covering horizon (over
    the batch and the segment's valid steps), then its squared coefficient of variation with the unbiased
    variance; the mean over those segments. 0 when there is none (a single horizon)."""
    horizons = cover.sum(1).tolist()  # horizon i covers steps [0, h_i)
    bounds = sorted({0, *horizons})
    terms = []
    for start, end in itertools.pairwise(bounds):
        active = cover[:, start]  # the horizons that reach this segment
        if int(active.sum()) < 2:
            continue
        seg = weights[:, active, start:end]  # (B, n_active, steps)
        mask = torch.ones_like(seg, dtype=torch.bool)
        if valid is not None:
            mask = mask & valid[:, None, start:end]
        usage = masked_mean(seg, mask, (0, 2))  # (n_active,)
        terms.append(usage.var(unbiased=True) / (usage.mean().pow(2) + 1e-10))
    return torch.stack(terms).mean() if terms else weights.sum() * 0


BALANCE_LOSSES = {"global": balance_loss, "segments": segment_balance_loss}


def mixture_loss(
    out: HorizonOutput,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    horizon_weight: float = 1.0,
    balance_weight: float = 1e-3,
    balance: str = "global",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Fused loss + horizon_weight * sum of per-horizon losses + balance_weight * balance.

    `target` (B, H, A) in the output space; `valid` (B, H) marks real (not padded) steps, or (B, H, A)
    real elements (e.g. padded action slots excluded too). Each loss is a mean of squared errors over
    the valid entries it covers."""
    b, h = target.shape[:2]
    valid_steps = torch.ones(b, h, dtype=torch.bool, device=target.device) if valid is None else valid.bool()
    valid_elems = valid_steps if valid_steps.dim() == 3 else valid_steps.unsqueeze(-1)  # (B, H, A or 1)
    valid_steps = valid_elems.any(-1)
    fused = masked_mean((out.fused - target).pow(2), valid_elems, (0, 1, 2))
    mask = out.cover[None, :, :, None] & valid_elems.unsqueeze(1)  # (B, n_h, H, A or 1)
    per = masked_mean((out.per_horizon - target.unsqueeze(1)).pow(2), mask, (0, 2, 3))  # (n_h,)
    balance_term = BALANCE_LOSSES[balance](out.weights, out.cover, valid_steps)
    loss = fused + horizon_weight * per.sum() + balance_weight * balance_term
    info = {"fused_loss": float(fused.detach()), "horizon_loss": float(per.sum().detach())}
    info["horizon_balance"] = float(balance_term.detach())
    return loss, info


def disagreement(out: HorizonOutput) -> torch.Tensor:
    """(B, H): per step, sum over covering horizons of weight * L1(horizon output - fused output)."""
    dist = (out.per_horizon - out.fused.unsqueeze(1)).abs().sum(-1)  # (B, n_h, H)
    return (out.weights * dist * out.cover.unsqueeze(0)).sum(1)


@dataclass
class HorizonTrace:
    """One mixture-of-horizons sampling run, kept for inspection (`policy.last_horizons`): per sampling step
    the fusion weights (B, n_h, H) and the per-horizon outputs (B, n_h, H, A); the disagreement summed
    over the steps (B, H); and the executed steps per row when dynamic inference chose them."""

    weights: list[torch.Tensor] = field(default_factory=list)
    per_horizon: list[torch.Tensor] = field(default_factory=list)
    disagreement: torch.Tensor | None = None
    n_exec: torch.Tensor | None = None

    def __len__(self) -> int:
        """The sampling steps recorded."""
        return len(self.weights)

    def add(self, out: HorizonOutput) -> None:
        self.weights.append(out.weights.detach())
        self.per_horizon.append(out.per_horizon.detach())
        d = disagreement(out).detach()
        self.disagreement = d if self.disagreement is None else self.disagreement + d


def dynamic_horizon(
    score: torch.Tensor,
    cover_count: torch.Tensor,
    ratio: float,
    window: int = 5,
    min_steps: int = 5,
    stop_cover: int = 5,
) -> torch.Tensor:
    """How many steps of each row's fused chunk to execute (B,) long.

    `score` (B, H): the accumulated disagreement per step. Threshold = mean of the first `window`
    steps' disagreement * `ratio`; the first `min_steps` steps always run, later ones while the
    disagreement is strictly below the threshold and more than `stop_cover` horizons cover the step."""
    if ratio <= 0:
        raise ValueError(f"the dynamic-horizon ratio must be > 0, got {ratio}")
    h = score.shape[1]
    threshold = score[:, : max(1, min(window, h))].mean(1, keepdim=True) * ratio
    ok = (score < threshold) & (cover_count.to(score.device) > stop_cover).unsqueeze(0)
    ok[:, : min(min_steps, h)] = True  # the first steps always run (they set the threshold)
    return ok.long().cumprod(1).sum(1)  # the leading run of steps that pass


class DynamicHorizonPolicy:
    """Dynamic inference for a policy with a mixture of horizons (`self.moh`) whose config carries
    `dynamic_ratio/window/min_steps/stop_cover` and whose `predict_chunk` leaves the run's `HorizonTrace`
    in `self.last_horizons` (None without a mixture): `predict_plan`, `n_exec` from the horizons'
    accumulated disagreement, `set_dynamic_horizon`, and `select_action` queueing the chosen number of
    steps. Mixed into the policy class before `Policy`."""

    last_horizons: HorizonTrace | None = None

    @torch.no_grad()
    def predict_plan(
        self,
        batch: Mapping[str, Any],
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chunk (B, H, A), n_exec (B,)): how many actions of each row's chunk to execute.

        With a mixture of horizons and `dynamic_ratio` set, n_exec comes from the horizons' disagreement
        summed over the sampling steps (dynamic inference); otherwise it is `n_action_steps` for every row."""
        chunk = self.predict_chunk(batch, num_steps, generator, noise)  # type: ignore[attr-defined]
        trace = self.last_horizons
        n_exec = self.dynamic_n_exec(None if trace is None else trace.disagreement, chunk.shape[0])
        if trace is not None and self.config.dynamic_ratio is not None:  # type: ignore[attr-defined]
            trace.n_exec = n_exec
        return chunk, n_exec

    def dynamic_n_exec(self, score: torch.Tensor | None, rows: int) -> torch.Tensor:
        """(B,) steps to execute: the consensus when dynamic inference is on, else n_action_steps."""
        cfg = self.config  # type: ignore[attr-defined]
        if score is None or cfg.dynamic_ratio is None or self.moh is None:  # type: ignore[attr-defined]
            return torch.full((rows,), cfg.n_action_steps, dtype=torch.long)
        layout = self.moh.layout  # type: ignore[attr-defined]
        n = dynamic_horizon(score, layout.cover_count, cfg.dynamic_ratio, cfg.dynamic_window,
                            cfg.dynamic_min_steps, cfg.dynamic_stop_cover)  # fmt: skip
        return n.cpu()

    @property
    def decides_horizon(self) -> bool:
        """Whether `predict_plan` picks the number of executed steps: MoH with dynamic inference on, or a
        subclass with its own `predict_plan`."""
        if type(self).predict_plan is not DynamicHorizonPolicy.predict_plan:
            return True
        return self.moh is not None and self.config.dynamic_ratio is not None  # type: ignore[attr-defined]

    def set_dynamic_horizon(self, ratio: float | None) -> None:
        """Turn dynamic inference on with threshold ratio `ratio` (None: off)."""
        from vla.errors import PolicyError

        if ratio is not None and self.moh is None:  # type: ignore[attr-defined]
            raise PolicyError("dynamic horizons need a mixture-of-horizons policy (trained with horizons set, --moh)")
        self.config = self.config.replace(dynamic_ratio=ratio)  # type: ignore[attr-defined]

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """As `Policy.select_action`; with dynamic horizons each plan queues its chosen number of steps
        (the fewest over the batch's rows: they share one queue)."""
        if not self.decides_horizon:
            return super().select_action(obs)  # type: ignore[misc]
        batch = self._with_history(obs)  # type: ignore[attr-defined]
        queue = self._action_queue  # type: ignore[attr-defined]
        if not queue:
            chunk, n_exec = self.predict_plan(batch)  # type: ignore[attr-defined]
            queue.extend(chunk[:, : int(n_exec.min())].transpose(0, 1))
        return queue.popleft()
