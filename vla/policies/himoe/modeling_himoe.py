"""HiMoE: a flow-matching action transformer whose FFNs form a hierarchy of mixtures of experts.

Sequence of the action transformer (the "suffix"): [state token, action tokens of the noisy chunk].
- state token: the state slots (masked) and the state slot mask, concatenated and projected (48
  numbers -> one token in the 24-slot layout);
- action tokens: x_t projected, fused with a sinusoidal embedding of the flow time t by an MLP (pi0's
  action-time MLP); learned positions (state = 0, chunk step s = 1 + s);
- conditioning: the backbone's tokens (conditioning.py), projected to the width once per chunk, plus
  one learned always-valid "null" token (a sample whose backbone tokens are all invalid still has
  something to attend to).
Each block: x += SelfAttn(Norm x); x += CrossAttn(Norm x, cond); x += FFN(Norm x), the FFN by depth
(`layer_pattern`): AS-MoE (routed by the action-space identity), HB-MoE (routed per token, + shared
expert) or a dense GELU MLP (`dense_kind="geglu"`: the authors' bias-free gated GELU-tanh).

Why cross-attention to the conditioning rather than joint attention over [cond, state, actions]: the
backbone gives final-layer tokens (not per-layer keys/values as pi0's VLM does), so in joint
attention the prefix would have to run through every action layer again at each of the 10 Euler
steps (or need a KV cache), and it would be routed through the action-space experts that exist
for action tokens. With cross-attention the conditioning is encoded once per chunk, every Euler
step costs only 1 + H suffix tokens, and padded conditioning tokens are masked per key.
Within the suffix the state token sees only itself and the action tokens see the state token and
each other (full attention): HorizonLayout's mask with one context token, so the Mixture of
Horizons wrapper (same mask, one horizon) equals the plain head exactly.

Multi-embodiment data (action_dim == 24, the slot layout): the action-space identity and the loss
mask come from the batch's `action_slot_mask` (training) or from the policy's embodiment table
(`policy.embodiments`, each robot's slots) and `embodiment_id` (inference); padded slots and padded
chunk steps are excluded from the flow loss, and predictions there are zeroed. `predict_native`
returns each row in its robot's own layout and units. With native (single-embodiment) data every dimension is real.

Specialised export (`vla export --embodiment NAME`, `specialise`): the AS-MoE router reads only the
action-space identity, so one embodiment can only ever select the same top-k experts of each AS-MoE layer;
the export keeps those (`as_kept_experts`) and the full router (so the gate weights are unchanged), and
refuses rows of any other embodiment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vla.datasets import slots as slotlib
from vla.errors import PolicyError
from vla.keys import STATE_KEY
from vla.policies.himoe.conditioning import build_backbone
from vla.policies.himoe.configuration_himoe import HiMoEConfig
from vla.policies.modules.attention import Attention
from vla.policies.modules.conditioning import camera_frames
from vla.policies.modules.flow import FlowMatching, FlowSettings, euler_times
from vla.policies.modules.hier_moe import (
    ActionSpaceMoE,
    DenseMLP,
    HBMoE,
    action_space_input,
    action_space_labels,
    sequence_balance_loss,
    supcon_loss,
)
from vla.policies.modules.horizons import (
    DynamicHorizonPolicy,
    HorizonLayout,
    HorizonOutput,
    HorizonTrace,
    MixtureOfHorizons,
    mixture_loss,
)
from vla.policies.modules.init import init_linear_weights
from vla.policies.modules.moe import Routing, dense_routing_weights, restructure_experts, select_experts
from vla.policies.policy import Policy
from vla.policies.routing import LayerRouting


@dataclass
class LayerRecord:
    """What one MoE layer did in a forward pass (for the losses and inspection)."""

    index: int
    kind: str  # action_space | hb
    routing: Routing
    logits: torch.Tensor | None = None  # AS-MoE router logits (B, T, E)


class HiMoEBlock(nn.Module):
    def __init__(self, config: HiMoEConfig, kind: str, route_dim: int, held: Sequence[int] | None = None):
        """`held`: an AS-MoE layer's kept experts (a specialised export's; None: all)."""
        super().__init__()
        d = config.width
        self.kind = kind
        self.norm1, self.norm2, self.norm3 = (nn.RMSNorm(d, eps=1e-6) for _ in range(3))
        self.attn = Attention(d, config.n_heads, config.attn_dropout)
        self.cross = Attention(d, config.n_heads, config.attn_dropout)
        self.ffn: nn.Module
        if kind == "action_space":
            self.ffn = ActionSpaceMoE(d, config.as_hidden, config.as_experts, route_dim, config.as_top_k, False, held)
        elif kind == "hb":
            self.ffn = HBMoE(
                d,
                config.hb_hidden,
                config.hb_experts,
                config.hb_top_k,
                config.hb_shared_hidden,
                config.hb_shared_expert,
                config.router_sample,
            )
        else:
            self.ffn = DenseMLP(d, config.dense_hidden, config.dense_kind == "geglu")

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        route_input: torch.Tensor,
        attn_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, Routing | None, torch.Tensor | None]:
        h = self.norm1(x)
        x = x + self.attn(h, mask=attn_mask)
        x = x + self.cross(self.norm2(x), cond, cond_mask)
        h = self.norm3(x)
        if isinstance(self.ffn, ActionSpaceMoE):
            y, routing, logits = self.ffn(h, route_input)
            return x + y, routing, logits
        if isinstance(self.ffn, HBMoE):
            y, routing = self.ffn(h)
            return x + y, routing, None
        return x + self.ffn(h), None, None


def time_embedding(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times t (B,) in [0, 1] (pi0's periods), (B, dim)."""
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** frac
    angle = t.float()[:, None] * (2 * math.pi / period)[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ActionTransformer(nn.Module):
    """(x_t, t, state token, conditioning, action-space input) -> velocity of the action chunk."""

    def __init__(self, config: HiMoEConfig, route_dim: int):
        super().__init__()
        d = config.width
        self.width = d
        self.action_in = nn.Linear(config.action_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.pos_emb = nn.Parameter(torch.zeros(1, 1 + config.chunk_size, d))
        kept = iter(config.as_kept_experts or ())  # one entry per AS-MoE layer, in depth order
        self.blocks = nn.ModuleList(
            HiMoEBlock(config, kind, route_dim, next(kept, None) if kind == "action_space" else None)
            for kind in config.layer_kinds
        )
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.action_out = nn.Linear(d, config.action_dim)
        init_linear_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)

    def hidden(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        state_token: torch.Tensor,
        cond: torch.Tensor,
        cond_valid: torch.Tensor,
        route_input: torch.Tensor,
        positions: torch.Tensor,
        attn_mask: torch.Tensor,
        records: list[LayerRecord] | None = None,
    ) -> torch.Tensor:
        """Normalised features of the action tokens (B, L, d); `positions` (L,) chunk steps."""
        a = self.action_in(x_t.to(cond.dtype))
        te = time_embedding(t, self.width).to(a).unsqueeze(1).expand_as(a)
        a = self.time_mlp(torch.cat([a, te], dim=-1))
        x = torch.cat([state_token, a], dim=1)
        x = x + torch.cat([self.pos_emb[:, :1], self.pos_emb[:, 1 + positions]], dim=1)
        route = route_input.unsqueeze(1).expand(-1, x.shape[1], -1)  # per token, shared by the sequence
        cond_mask = cond_valid[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x, routing, logits = block(x, cond, cond_mask, route, attn_mask)
            if routing is not None and records is not None:
                records.append(LayerRecord(i, block.kind, routing, logits))
        return self.norm(x[:, 1:])


@dataclass
class Encoded:
    """Per-chunk inputs of the action transformer, computed once and reused at every Euler step."""

    state_token: torch.Tensor  # (B, 1, d)
    cond: torch.Tensor  # (B, N + 1, d)
    cond_valid: torch.Tensor  # (B, N + 1)
    route_input: torch.Tensor  # (B, D) action-space identity
    action_mask: torch.Tensor  # (B, A) bool: real action dimensions
    embodiment_id: torch.Tensor  # (B,)


class HiMoEPolicy(DynamicHorizonPolicy, Policy):
    config_class = HiMoEConfig
    config: HiMoEConfig

    def __init__(self, config: HiMoEConfig, dataset_stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__(config, dataset_stats)
        d = config.width
        self.backbone = build_backbone(config)
        self.cond_proj = nn.Linear(self.backbone.out_dim, d)
        self.null_cond = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        s = config.state_dim
        self.state_in = nn.Linear(2 * s, d) if s is not None else None
        self.state_token = nn.Parameter(torch.randn(1, 1, d) * 0.02) if s is None else None
        self.route_dim = self._route_dim()
        self.transformer = ActionTransformer(config, self.route_dim)
        # merged/compressed experts (`vla compress`): the layers take the checkpoint's shape before it loads
        restructure_experts(self.transformer, config.expert_map, config.expert_rank, config.expert_sparsity)
        self.moh = (
            MixtureOfHorizons(d, config.horizons, 1, "full", config.moh_gate_noise)
            if config.horizons is not None
            else None
        )
        self._single_layout = HorizonLayout((config.chunk_size,), 1, "full")
        self.last_horizons: HorizonTrace | None = None  # what the last MoH sampling run saw (inspectable)

    # --- pieces -------------------------------------------------------------------------------------
    @property
    def uses_slots(self) -> bool:
        """Whether actions come in the 24-slot multi-embodiment layout."""
        return self.config.action_dim == slotlib.NUM_SLOTS

    def _route_dim(self) -> int:
        cfg = self.config
        base = cfg.action_dim
        return base + (cfg.max_embodiments if cfg.as_router_input == "mask_id" else 0)

    @property
    def flow(self) -> FlowMatching:
        cfg = self.config
        return FlowMatching(FlowSettings(cfg.time_sampler, cfg.beta_alpha, cfg.num_steps))

    def _embodiment_ids(self, batch: Mapping[str, Any], b: int) -> torch.Tensor:
        ids = batch.get("embodiment_id")
        if ids is None:
            return torch.zeros(b, dtype=torch.long, device=self.device)
        return torch.as_tensor(ids, device=self.device).long().reshape(b)

    def slot_mask(self, key: str, batch: Mapping[str, Any], ids: torch.Tensor, dim: int) -> torch.Tensor:
        """(B, dim) bool: which dimensions of `key` ("action" / state) are real for each row."""
        b = ids.shape[0]
        if dim != slotlib.NUM_SLOTS or not self.uses_slots:
            return torch.ones(b, dim, dtype=torch.bool, device=self.device)
        batch_key = "action_slot_mask" if key == "action" else "state_slot_mask"
        if batch_key in batch:
            return torch.as_tensor(batch[batch_key], device=self.device).bool().reshape(b, dim)
        table = self.embodiments
        if table is not None and key in table.slots:
            return table.slot_mask(key, self.device)[ids]
        return torch.ones(b, dim, dtype=torch.bool, device=self.device)

    def _state_slots(self, state: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """A native-layout state (from a robot or simulator) -> the slot layout, by embodiment."""
        if state.shape[-1] == slotlib.NUM_SLOTS or not self.uses_slots:
            return state
        table = self.embodiments
        if table is None or STATE_KEY not in table.slots:
            raise PolicyError(
                f"observation.state has {state.shape[-1]} values but this policy reads the "
                f"{slotlib.NUM_SLOTS}-slot layout and has no per-embodiment slots to place it"
            )
        out = state.new_zeros(*state.shape[:-1], slotlib.NUM_SLOTS)
        for e in ids.unique().tolist():
            layout = table.layout(table.names[e])
            if layout.state_dim != state.shape[-1]:
                n = len(layout.state_slots)
                raise PolicyError(f"{layout.name}: observation.state has {state.shape[-1]} values, expected {n}")
            rows = (ids == e).nonzero().squeeze(-1)
            out[rows] = layout.state_to_slots(state[rows])
        return out

    def encode(self, batch: Mapping[str, Any]) -> Encoded:
        """Conditioning, state token and action-space identity: once per chunk."""
        cfg = self.config
        b = self._batch_size(batch)
        ids = self._embodiment_ids(batch, b)
        self._check_specialised(ids)
        size = cfg.image_size if cfg.backbone == "default" else None  # a VLM resizes to its own size
        images = {k: x.to(self.device) for k, x in camera_frames(batch, cfg.camera_keys, cfg.n_obs, size).items()}
        tokens, valid = self.backbone(images, self._tasks(batch))
        cond = self.cond_proj(tokens.to(self.cond_proj.weight.dtype))
        cond = torch.cat([self.null_cond.expand(b, -1, -1), cond], dim=1)
        valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=cond.device), valid.to(cond.device)], dim=1)
        if self.state_in is not None:
            state = batch.get(STATE_KEY)
            if state is None or state.dim() != 3 or state.shape[1] != cfg.n_obs:
                got = None if state is None else tuple(state.shape)
                raise PolicyError(f"observation.state should be (B, n_obs={cfg.n_obs}, {cfg.state_dim}), got {got}")
            state = self._state_slots(state.float(), ids)
            if state.shape[-1] != cfg.state_dim:
                raise PolicyError(f"observation.state has {state.shape[-1]} values, the config {cfg.state_dim}")
            state = self.normalize(STATE_KEY, state, ids)[:, -1]  # the current frame
            smask = self.slot_mask(STATE_KEY, batch, ids, cfg.state_dim)
            state = torch.where(smask, state, torch.zeros_like(state))
            state_token = self.state_in(torch.cat([state, smask.to(state)], dim=-1)).unsqueeze(1)
        else:
            assert self.state_token is not None
            state_token = self.state_token.expand(b, -1, -1)
        amask = self.slot_mask("action", batch, ids, cfg.action_dim)
        route = action_space_input(amask, ids, cfg.as_router_input, cfg.max_embodiments)
        return Encoded(state_token.to(cond), cond, valid, route.to(cond), amask, ids)

    # --- specialised export (vla export --embodiment) -------------------------------------------------------
    def _specialised_id(self) -> int | None:
        name = self.config.specialised_embodiment
        table = self.embodiments
        if name is None or table is None:
            return None
        return table.layout(name).embodiment_id

    def _check_specialised(self, ids: torch.Tensor) -> None:
        """A checkpoint exported for one embodiment refuses rows of any other (their experts were dropped)."""
        only = self._specialised_id()
        if only is None or bool((ids == only).all()):
            return
        table = self.embodiments
        assert table is not None
        others = sorted(
            {table.names[i] if 0 <= i < len(table.names) else str(i) for i in ids.tolist()} - {table.names[only]}
        )
        raise PolicyError(
            f"this checkpoint was exported for embodiment {table.names[only]!r} only (vla export --embodiment); "
            f"the batch has {', '.join(map(repr, others))}: use the full checkpoint, or export one per embodiment"
        )

    @torch.no_grad()
    def specialise(self, embodiment: str | None = None, expert_plan: bool = False) -> dict[str, Any]:
        """Keep, in every AS-MoE layer, only the experts `embodiment`'s action-space identity selects, in place.

        The router input is a constant per embodiment (its slot mask, with `mask_id` its one-hot id too), so the
        deterministic top-k of each AS-MoE router is one fixed set: evaluating the router on that input is the
        whole analysis. The routers stay whole, so the kept experts' gate weights are the full model's."""
        cfg = self.config
        if expert_plan:
            raise PolicyError(
                "--expert-plan is for MoDE (noise-routed); a HiMoE checkpoint is exported per --embodiment"
            )
        if cfg.as_kept_experts is not None:
            raise PolicyError("this checkpoint is already specialised; export from the full checkpoint")
        table = self.embodiments
        if table is None and embodiment is not None:
            raise PolicyError(
                f"--embodiment {embodiment}: this HiMoE policy was trained on one robot (it has no embodiment "
                "table); export it without --embodiment"
            )
        if table is not None:
            if embodiment is None:
                raise PolicyError(f"--embodiment: name the robot to export for, one of {', '.join(table.names)}")
            eid = table.layout(embodiment).embodiment_id
        else:
            eid = 0
        ids = torch.full((1,), eid, dtype=torch.long, device=self.device)
        amask = self.slot_mask("action", {}, ids, cfg.action_dim)  # what `encode` builds at inference
        route = action_space_input(amask, ids, cfg.as_router_input, cfg.max_embodiments)
        kept = []
        for block in self.transformer.blocks:
            if isinstance(block.ffn, ActionSpaceMoE):
                moe = block.ffn.moe
                logits = block.ffn.router(route.to(block.ffn.router.proj.weight))
                chosen = select_experts(logits, moe.top_k, sample=False, renormalize=moe.renormalize).indices[0]
                held = tuple(sorted(int(e) for e in chosen))
                moe.keep_experts(held)
                kept.append(held)
        self.config = cfg.replace(as_kept_experts=tuple(kept), specialised_embodiment=embodiment)
        return self.specialisation() or {}

    def specialisation(self) -> dict[str, Any] | None:
        cfg = self.config
        if cfg.as_kept_experts is None:
            return None
        return {
            "kind": "embodiment",
            "embodiment": cfg.specialised_embodiment,
            "experts_per_layer": [list(k) for k in cfg.as_kept_experts],
            "experts_kept": sum(len(k) for k in cfg.as_kept_experts),
            "experts_total": cfg.as_experts * len(cfg.as_kept_experts),
        }

    # --- the velocity network -----------------------------------------------------------------------
    def _hidden_fn(self, enc: Encoded, t: torch.Tensor, records: list[LayerRecord] | None):
        def backbone(seq: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor):
            hidden = self.transformer.hidden(
                seq, t, enc.state_token, enc.cond, enc.cond_valid, enc.route_input, positions, attn_mask, records
            )
            return hidden, self.transformer.action_out(hidden)

        return backbone

    def velocity(
        self, enc: Encoded, x_t: torch.Tensor, t: torch.Tensor, records: list[LayerRecord] | None = None
    ) -> torch.Tensor | HorizonOutput:
        """The predicted velocity (B, H, A); with a mixture of horizons the HorizonOutput (fused in .fused)."""
        fn = self._hidden_fn(enc, t, records)
        if self.moh is not None:
            return self.moh(fn, x_t)
        lay = self._single_layout
        return fn(x_t, lay.positions.to(x_t.device), lay.attention_mask(x_t.device))[1]

    # --- training -----------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self._to_device(batch)
        cfg = self.config
        actions = self._action_chunk(batch)
        enc = self.encode(batch)
        actions = self.normalize("action", actions, enc.embodiment_id)
        mask = enc.action_mask[:, None, :].expand(-1, cfg.chunk_size, -1)
        if "action_is_pad" in batch:
            mask = mask & ~batch["action_is_pad"].bool()[:, :, None]
        records: list[LayerRecord] = []
        info: dict[str, float] = {}
        if self.moh is not None:
            inputs = self.flow.training_inputs(actions)
            out = self.velocity(enc, inputs.x_in, inputs.noise_cond, records)
            assert isinstance(out, HorizonOutput)
            flow_loss, info = mixture_loss(
                out, inputs.target, mask, cfg.moh_horizon_loss_weight, cfg.moh_balance_weight, cfg.moh_balance
            )
            info.update(inputs.info)
        else:

            def net(x_t: torch.Tensor, t: torch.Tensor, step: int | None) -> torch.Tensor:
                v = self.velocity(enc, x_t, t, records)
                assert isinstance(v, torch.Tensor)
                return v

            flow_loss, info = self.flow.network_loss(net, actions, mask)
        supcon, balance = self.routing_losses(records, enc)
        loss = flow_loss + cfg.supcon_weight * supcon + cfg.balance_weight * balance
        info = {
            "flow_loss": float(flow_loss.detach()),
            "supcon_loss": float(supcon.detach()),
            "balance_loss": float(balance.detach()),
            **info,
            "loss": float(loss.detach()),
        }
        return loss, info

    def routing_losses(self, records: list[LayerRecord], enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """(supervised-contrastive loss over the AS-MoE layers, per-sequence balance over the HB-MoE layers)."""
        cfg = self.config
        zero = enc.cond.sum() * 0.0
        labels = action_space_labels(enc.route_input)  # (B,)
        sup, bal = [], []
        for r in records:
            if r.kind == "action_space" and cfg.supcon_weight > 0:
                b, t, e = r.routing.probs.shape
                token_labels = labels[:, None].expand(b, t).reshape(-1)
                feats = r.routing.probs.reshape(-1, e)
                sup.append(supcon_loss(feats, token_labels, cfg.supcon_temperature, cfg.supcon_max_tokens))
            elif r.kind == "hb":
                bal.append(sequence_balance_loss(r.routing))
        supcon = torch.stack(sup).mean() if sup else zero
        balance = torch.stack(bal).mean() if bal else zero
        return supcon, balance

    # --- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(
        self,
        batch: Mapping[str, Any],
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, chunk_size, action_dim) actions in raw units; padded slots are exactly 0. A mixture of
        horizons leaves its `HorizonTrace` in `last_horizons`."""
        cfg = self.config
        batch = self._to_device(batch)
        enc = self.encode(batch)
        trace = HorizonTrace() if self.moh is not None else None

        def net(x_t: torch.Tensor, t: torch.Tensor, step: int | None) -> torch.Tensor:
            v = self.velocity(enc, x_t, t)
            if isinstance(v, HorizonOutput):
                assert trace is not None
                trace.add(v)
                return v.fused
            return v

        shape = (enc.cond.shape[0], cfg.chunk_size, cfg.action_dim)
        x = self.flow.sample(net, shape, num_steps, self.device, generator, noise)
        self.last_horizons = trace
        x = self.unnormalize("action", x, enc.embodiment_id)
        return torch.where(enc.action_mask[:, None, :], x, torch.zeros_like(x))

    @torch.no_grad()
    def predict_native(self, batch: Mapping[str, Any], **kwargs: Any) -> list[np.ndarray]:
        """Per row, the chunk (H, D_e) in its robot's native layout and units (the slots it uses)."""
        chunk = self.predict_chunk(batch, **kwargs).cpu()
        b = chunk.shape[0]
        ids = self._embodiment_ids(self._to_device(batch), b).cpu().tolist()
        table = self.embodiments
        if not self.uses_slots or table is None:
            return [chunk[i].numpy() for i in range(b)]
        return [table.layout(table.names[e]).to_native(chunk[i]).numpy() for i, e in enumerate(ids)]

    # --- routing inspection ---------------------------------------------------------------------------
    def routing_levels(self) -> tuple[torch.Tensor, str]:
        """The flow times the Euler sampler evaluates the velocity at."""
        return euler_times(self.config.num_steps), "t"

    @torch.no_grad()
    def inspect_routing(self, batch: Mapping[str, Any], level: torch.Tensor) -> list[LayerRouting]:
        """Every MoE layer's (deterministic) routing at flow time t = `level` (B,), per suffix token
        (state token first, then the action tokens): AS-MoE layers as "action_space", HB-MoE as "token"."""
        was_training = self.training
        self.eval()
        try:
            batch = self._to_device(batch)
            enc = self.encode(batch)
            actions = self.normalize("action", batch["action"].float(), enc.embodiment_id)
            t = torch.as_tensor(level, device=self.device).float().reshape(-1).expand(actions.shape[0])
            x_t = self.flow.training_inputs(actions, level=t, noise=torch.randn_like(actions)).x_in
            records: list[LayerRecord] = []
            self.velocity(enc, x_t, t, records)
        finally:
            self.train(was_training)
        kinds = {"action_space": "action_space", "hb": "token"}
        return [
            LayerRouting(f"block{r.index}.{r.kind}", kinds[r.kind], dense_routing_weights(r.routing), r.routing.probs)
            for r in records
        ]

    # --- accounting -------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """As `Policy.parameter_counts` (per token of the action network), plus the conditioning backbone's
        share and the action network's ("action_network", "action_network_active")."""
        counts = super().parameter_counts()
        backbone = sum(p.numel() for p in self.backbone.parameters())
        return {
            **counts,
            "action_network": counts["total"] - backbone,
            "action_network_active": counts["active"] - backbone,
            "backbone": backbone,
        }
