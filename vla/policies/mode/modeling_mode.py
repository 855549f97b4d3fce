"""MoDE: a diffusion transformer over action chunks whose FFNs are noise-routed mixtures of experts.

Token sequence (causal attention, learned positions):
  [noise token, goal token, camera tokens (per obs frame, per camera), state token (per frame), action tokens]
- noise token: the embedding c of the EDM noise conditioning log(sigma)/4; c is also added to the
  normalised input of every attention block, x + Attn(Norm(x) + c), and is the only input of every
  layer's router;
- goal token: a projected language embedding (frozen encoder, cached per instruction) or an encoded
  goal image; it also FiLM-conditions every camera encoder;
- camera tokens: one FiLM ResNet per camera, one token per image;
- action tokens: the noisy, EDM-scaled action chunk; their outputs are the denoiser's output.
Observation frames before an episode start are copies of its first frame (that is how the sampler
pads), so `observation_is_pad` needs no attention mask.
`action_attention="full"` keeps the context causal and lets every action token see all action tokens
(a block mask). With `horizons` set (Mixture of Horizons, vla.policies.modules.horizons), every
horizon's segment of action tokens goes through the denoiser in the same pass, and the denoiser
outputs of the horizons are fused by the gate at every sampling step; `predict_plan` adds dynamic
inference (how many steps of each chunk to execute) when `dynamic_ratio` is set.
Each block: x = x + Attn(Norm(x) + c); x = x + FFN(Norm(x)), with FFN a sparse MoE of SwiGLU experts
(top-k of n, sampled in training, deterministic in eval, load-balancing loss) or, with
`use_moe=False`, one dense SwiGLU (the baseline).
An exported expert plan (`expert_plan` in the config, `vla export --expert-plan`): the routing of every
sampling step is a table lookup, the blocks hold only the experts the plan uses and no routers, and the
actions are those of the full model for that schedule (see vla/policies/specialise.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vla.errors import PolicyError
from vla.keys import STATE_KEY
from vla.policies.mode.caching import ExpertCache, PlannedFFN, Route, build_expert_cache, schedule_key, step_routes
from vla.policies.mode.configuration_mode import MoDEConfig
from vla.policies.modules.attention import Attention
from vla.policies.modules.conditioning import ObservationEncoder, camera_frames, embed_instructions
from vla.policies.modules.diffusion import EDM
from vla.policies.modules.horizons import (
    DynamicHorizonPolicy,
    HorizonLayout,
    HorizonOutput,
    HorizonTrace,
    MixtureOfHorizons,
    mixture_loss,
)
from vla.policies.modules.init import init_linear_weights
from vla.policies.modules.moe import (
    MoELayer,
    NoiseRouter,
    Routing,
    SwiGLU,
    dense_routing_weights,
    load_balancing_loss,
    restructure_experts,
)
from vla.policies.modules.vision import to_float_images
from vla.policies.policy import Policy
from vla.policies.routing import LayerRouting

FFNOverride = Callable[[torch.Tensor], torch.Tensor]


class NoiseEmbedding(nn.Module):
    """Scalar noise conditioning (B,) -> (B, d). kind "mlp": Linear(1, d), SiLU, Linear(d, d); "linear" (the
    authors): Linear(1, d) then a bias-free Linear(d, d), no nonlinearity. Same weight names either way."""

    def __init__(self, dim: int, kind: str = "mlp"):
        super().__init__()
        if kind == "linear":
            self.mlp = nn.Sequential(nn.Linear(1, dim), nn.Identity(), nn.Linear(dim, dim, bias=False))
        else:
            self.mlp = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, noise_cond: torch.Tensor) -> torch.Tensor:
        return self.mlp(noise_cond.reshape(-1, 1).to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """x = x + Attn(Norm(x) + c); then x = x + FFN(Norm(x)) (ffn_norm "pre") or, as the authors,
    x = Norm(x); x = x + FFN(x) (ffn_norm "residual"); FFN: a noise-routed MoE or a dense SwiGLU."""

    def __init__(self, config: MoDEConfig, held: Sequence[int] | None = None):
        """`held`: the experts this block keeps (an exported expert plan's; it then has no router)."""
        super().__init__()
        d = config.width
        self.norm1 = nn.RMSNorm(d, eps=1e-6)
        self.attn = Attention(
            d, config.n_heads, config.attn_dropout, config.qk_norm, config.resid_dropout, fused_qkv=True
        )
        self.norm2 = nn.RMSNorm(d, eps=1e-6)
        self.residual_norm = config.ffn_norm == "residual"
        hidden = config.ffn_mult * d
        self.ffn: MoELayer | SwiGLU
        bias, dropout, out_bias = config.expert_bias, config.expert_dropout, config.expert_out_bias
        if config.use_moe:
            planned = config.expert_plan is not None
            router = None if planned else NoiseRouter(d, config.n_experts, config.router_hidden_mult * d)
            self.ffn = MoELayer(
                d,
                hidden,
                config.n_experts,
                config.top_k,
                router,
                config.router_renormalize,
                bias,
                dropout,
                out_bias,
                token_sampling=config.route_sampling == "token",
                held=held,
            )
        else:
            self.ffn = SwiGLU(d, hidden, bias, dropout, out_bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, ffn: FFNOverride | None = None, attn_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Routing | None]:
        x = x + self.attn(self.norm1(x) + c.unsqueeze(1), mask=attn_mask, causal=attn_mask is None)
        h = self.norm2(x)
        if self.residual_norm:  # the residual stream itself continues normalised
            x = h
        if ffn is not None:  # a cached fused expert: no router, no dispatch
            return x + ffn(h), None
        if isinstance(self.ffn, MoELayer):
            y, routing = self.ffn(h, c)
            return x + y, routing
        return x + self.ffn(h), None


class MoDETransformer(nn.Module):
    """The denoiser network: (scaled noisy chunk, noise conditioning, context tokens) -> raw EDM output."""

    def __init__(self, config: MoDEConfig):
        super().__init__()
        d = config.width
        self.chunk_size = config.chunk_size
        self.noise_emb = NoiseEmbedding(d, config.noise_embedding)
        self.action_in = nn.Linear(config.action_dim, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.seq_len, d))
        held = config.planned_experts or (None,) * config.n_layers
        self.blocks = nn.ModuleList(DiTBlock(config, held[i]) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.action_out = nn.Linear(d, config.action_dim)
        init_linear_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)

    def forward(
        self,
        x_in: torch.Tensor,
        noise_cond: torch.Tensor,
        context: torch.Tensor,
        ffns: list[FFNOverride] | None = None,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[Routing]]:
        hidden, routings = self.hidden(x_in, noise_cond, context, ffns, positions, attn_mask)
        return self.action_out(hidden), routings

    def hidden(
        self,
        x_in: torch.Tensor,
        noise_cond: torch.Tensor,
        context: torch.Tensor,
        ffns: list[FFNOverride] | None = None,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[Routing]]:
        """The normalised final features of the action tokens (B, L, d), before the output projection.

        `positions` (L,): the chunk step of each action token (default 0..L-1; several horizons'
        segments repeat them); `attn_mask` (T, T) bool over [noise, context, actions] (None: causal)."""
        c = self.noise_emb(noise_cond).to(context.dtype)
        x = torch.cat([c.unsqueeze(1), context, self.action_in(x_in.to(context.dtype))], dim=1)
        n_ctx = 1 + context.shape[1]
        if positions is None:
            x = x + self.pos_emb[:, : x.shape[1]]
        else:
            x = x + torch.cat([self.pos_emb[:, :n_ctx], self.pos_emb[:, n_ctx + positions]], dim=1)
        routings = []
        for i, block in enumerate(self.blocks):
            x, routing = block(x, c, None if ffns is None else ffns[i], attn_mask)
            if routing is not None:
                routings.append(routing)
        return self.norm(x[:, n_ctx:]), routings


class MoDEPolicy(DynamicHorizonPolicy, Policy):
    config_class = MoDEConfig
    config: MoDEConfig

    def __init__(self, config: MoDEConfig, dataset_stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__(config, dataset_stats)
        goal_dim = config.language_dim if config.goal_type == "language" else None
        self.obs_encoder = ObservationEncoder(
            config.width,
            config.camera_keys,
            config.vision_widths,
            config.vision_blocks,
            config.vision_norm,
            goal_dim,
            config.state_dim,
            config.vision_weights,
            config.vision_backbone,
        )
        self.transformer = MoDETransformer(config)
        # merged/compressed experts (`vla compress`): the layers take the checkpoint's shape before it loads
        restructure_experts(self.transformer, config.expert_map, config.expert_rank, config.expert_sparsity)
        # Mixture of Horizons: the gate (its only weights) and the layout of the horizons' segments.
        self.moh = (
            MixtureOfHorizons(
                config.width, config.horizons, config.n_context_tokens, config.action_attention, config.moh_gate_noise
            )
            if config.horizons is not None
            else None
        )
        # Plain MoDE with full attention among the action tokens: the one-horizon layout's block mask.
        self._single_layout = HorizonLayout((config.chunk_size,), config.n_context_tokens, config.action_attention)
        self.last_horizons: HorizonTrace | None = None  # what the last MoH sampling run saw (inspectable)
        self._edm: EDM | None = None
        self._cache_request: dict[str, Any] | None = None  # what cache_experts() asked for
        self._expert_cache: ExpertCache | None = None
        self.cache_builds = 0  # how many times the expert cache was (re)built
        self._plan_ffns: list[list[PlannedFFN]] | None = None  # an exported expert plan, ready to run

    # --- pieces -------------------------------------------------------------------------------------
    @property
    def edm(self) -> EDM:
        settings = self.config.edm
        if self._edm is None or self._edm.settings != settings:  # the config may be replaced
            self._edm = EDM(settings)
        return self._edm

    def _goal_input(self, batch: Mapping[str, Any]) -> torch.Tensor:
        cfg = self.config
        if cfg.goal_type == "image":
            if cfg.goal_image_key not in batch:
                raise PolicyError(f"goal_type='image' needs {cfg.goal_image_key!r} in the batch")
            return to_float_images(batch[cfg.goal_image_key], cfg.image_size).to(self.device)
        return embed_instructions(self._tasks(batch), cfg, self.device)

    def encode_observations(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Goal and observation tokens (B, 1 + n_obs_tokens, width): computed once per chunk."""
        batch = self._to_device(batch)
        cfg = self.config
        keep, element_dropout = None, 0.0
        if self.training and cfg.goal_dropout > 0:
            if cfg.goal_dropout_mode == "sequence":
                keep = torch.rand(self._batch_size(batch), device=self.device) >= cfg.goal_dropout
            else:
                element_dropout = cfg.goal_dropout
        state = None
        if cfg.state_dim is not None:
            state = batch.get(STATE_KEY)
            if state is None or state.dim() != 3 or state.shape[1:] != (cfg.n_obs, cfg.state_dim):
                got = None if state is None else tuple(state.shape)
                raise PolicyError(f"observation.state should be (B, n_obs={cfg.n_obs}, {cfg.state_dim}), got {got}")
            state = self.normalize(STATE_KEY, state.float(), batch.get("embodiment_id"))
        images = camera_frames(batch, cfg.camera_keys, cfg.n_obs, cfg.image_size)
        context, _ = self.obs_encoder(images, self._goal_input(batch), state, keep, element_dropout)
        return context

    # --- training -----------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self._to_device(batch)
        cfg = self.config
        if cfg.expert_plan is not None:
            raise PolicyError(
                "this checkpoint was exported with a fixed expert plan (no routers, only the planned experts): "
                "it runs inference only; train or fine-tune the full checkpoint it came from"
            )
        actions = self.normalize("action", self._action_chunk(batch), batch.get("embodiment_id"))
        mask = ~batch["action_is_pad"] if "action_is_pad" in batch else None
        context = self.encode_observations(batch)
        routings: list[Routing] = []
        if self.moh is not None:
            diffusion_loss, info = self._moh_loss(actions, mask, context, routings)
        else:

            def net(x_in: torch.Tensor, noise_cond: torch.Tensor, step: int | None) -> torch.Tensor:
                out, r = self.transformer(x_in, noise_cond, context, attn_mask=self._plain_mask())
                routings.extend(r)
                return out

            diffusion_loss, info = self.edm.network_loss(net, actions, mask)
        loss = diffusion_loss
        info = {"diffusion_loss": float(diffusion_loss.detach()), **info}
        if routings:
            balance = torch.stack([load_balancing_loss(r) for r in routings]).mean()
            loss = loss + cfg.balance_weight * balance
            info["balance_loss"] = float(balance.detach())
            info.update(_usage(routings))
        info["loss"] = float(loss.detach())
        return loss, info

    def _plain_mask(self) -> torch.Tensor | None:
        """None (the causal fast path) unless the action tokens attend to each other fully."""
        if self.config.action_attention == "causal":
            return None
        return self._single_layout.attention_mask(self.device)

    def _horizon_outputs(
        self,
        x_in: torch.Tensor,
        noise_cond: torch.Tensor,
        context: torch.Tensor,
        ffns: list[FFNOverride] | None = None,
        routings: list[Routing] | None = None,
    ) -> HorizonOutput:
        """All horizons in one denoiser pass, fused by the gate."""
        assert self.moh is not None

        def backbone(seq: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor):
            hidden, r = self.transformer.hidden(seq, noise_cond, context, ffns, positions, attn_mask)
            if routings is not None:
                routings.extend(r)
            return hidden, self.transformer.action_out(hidden)

        return self.moh(backbone, x_in)

    def _moh_loss(
        self, actions: torch.Tensor, mask: torch.Tensor | None, context: torch.Tensor, routings: list[Routing]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM's denoising loss on the fused output, plus the per-horizon losses and the horizon balance
        term (`mixture_loss`)."""
        cfg = self.config
        inputs = self.edm.training_inputs(actions)
        # c_in as a division, as this loss has always computed it: `inputs.x_in` (diffusers) multiplies by
        # the reciprocal, which differs in the last bit and would change trained MoH weights.
        s = inputs.level.reshape(-1, 1, 1)
        x_in = inputs.noised / (s**2 + cfg.sigma_data**2).sqrt()
        out = self._horizon_outputs(x_in, inputs.noise_cond, context, routings=routings)
        loss, info = mixture_loss(
            out, inputs.target, mask, cfg.moh_horizon_loss_weight, cfg.moh_balance_weight, cfg.moh_balance
        )
        return loss, {**inputs.info, **info}

    # --- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(
        self,
        batch: Mapping[str, Any],
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, chunk_size, action_dim) actions in raw units. `noise` (B, H, A) fixes the initial noise; a
        mixture of horizons leaves its `HorizonTrace` in `last_horizons`."""
        cfg = self.config
        steps = num_steps or cfg.num_sampling_steps
        context = self.encode_observations(batch)
        cache = self._active_cache(steps)
        planned = self._planned_ffns(steps) if cache is None else None
        trace = HorizonTrace() if self.moh is not None else None

        def net(x_in: torch.Tensor, noise_cond: torch.Tensor, step: int | None) -> torch.Tensor:
            ffns: list[FFNOverride] | None = None
            if step is not None and cache is not None:
                ffns = cache.ffns(step)
            elif step is not None and planned is not None:
                ffns = planned[step]  # type: ignore[assignment]  # the plan's experts: a table lookup, no router
            if trace is None:
                return self.transformer(x_in, noise_cond, context, ffns, attn_mask=self._plain_mask())[0]
            out = self._horizon_outputs(x_in, noise_cond, context, ffns)
            trace.add(out)
            return out.fused

        shape = (context.shape[0], cfg.chunk_size, cfg.action_dim)
        x = self.edm.sample(net, shape, steps, self.device, generator, noise)
        self.last_horizons = trace
        return self.unnormalize("action", x, self._to_device(batch).get("embodiment_id"))

    # --- expert caching -------------------------------------------------------------------------------
    def cache_experts(self, dtype: str = "float32", fold: str = "scale", num_steps: int | None = None) -> ExpertCache:
        """Precompute each layer's experts and gates per sampling step and fuse them (see caching.py).

        Used by predict_chunk in eval mode from now on; rebuilt automatically when the step count,
        the noise schedule or the weights change. `dtype`: float32 | bfloat16 | int8 fused weights."""
        if not self.config.use_moe:
            raise PolicyError("cache_experts() needs a MoE model (use_moe=True); the dense baseline has no experts")
        self._cache_request = {"dtype": dtype, "fold": fold}
        self._expert_cache = None
        cache = self._active_cache(num_steps or self.config.num_sampling_steps, force=True)
        assert cache is not None
        return cache

    def use_expert_cache(self, cache: ExpertCache) -> None:
        """Switch to a cache built earlier (e.g. another dtype) if it still matches the weights."""
        if not cache.matches(self.transformer):
            raise PolicyError("this expert cache was built from other weights; call cache_experts() again")
        self._cache_request = {"dtype": cache.dtype, "fold": cache.fold}
        self._expert_cache = cache

    def clear_expert_cache(self) -> None:
        self._cache_request = None
        self._expert_cache = None

    @property
    def expert_cache(self) -> ExpertCache | None:
        return self._expert_cache

    def _active_cache(self, num_steps: int, force: bool = False) -> ExpertCache | None:
        if self._cache_request is None or (self.training and not force):
            return None
        key = schedule_key(self.edm.settings, num_steps)
        cache = self._expert_cache
        if cache is None or cache.key != key or not cache.matches(self.transformer):
            routes = self.plan_routes(num_steps)
            self._expert_cache = build_expert_cache(
                self.transformer, self.edm, num_steps, routes=routes, **self._cache_request
            )
            self.cache_builds += 1
        return self._expert_cache

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(): fused copies would be stale
        self._expert_cache = None
        self._plan_ffns = None
        return super()._apply(fn, recurse)

    # --- exported expert plan (vla export --expert-plan) ---------------------------------------------------
    def plan_routes(self, num_steps: int) -> list[list[Route]] | None:
        """The exported expert plan as routes[step][layer] (None without a plan); a plan made for another
        schedule is refused, never silently misapplied."""
        cfg = self.config
        if cfg.expert_plan is None or cfg.expert_plan_gates is None or cfg.expert_plan_sigmas is None:
            return None
        sigmas = self.edm.sigmas(num_steps)[:-1]
        planned = torch.tensor(cfg.expert_plan_sigmas, dtype=sigmas.dtype)
        if sigmas.shape != planned.shape or not torch.equal(sigmas, planned):
            raise PolicyError(
                f"this checkpoint's expert plan was exported for {len(planned)} sampling steps at sigmas "
                f"{[round(float(s), 4) for s in planned]}; asked for {num_steps} steps at "
                f"{[round(float(s), 4) for s in sigmas]}: sample with the exported schedule, or export a plan for "
                "this one from the full checkpoint"
            )
        return [list(zip(e, g, strict=True)) for e, g in zip(cfg.expert_plan, cfg.expert_plan_gates, strict=True)]

    def _planned_ffns(self, num_steps: int) -> list[list[PlannedFFN]] | None:
        routes = self.plan_routes(num_steps)
        if routes is None:
            return None
        if self._plan_ffns is None:  # built once per device: the plan's expert ids and gates as tensors
            layers = [b.ffn for b in self.transformer.blocks]
            self._plan_ffns = [
                [PlannedFFN.of(layer, route, self.device) for layer, route in zip(layers, step, strict=True)]
                for step in routes
            ]
        return self._plan_ffns

    @torch.no_grad()
    def specialise(self, embodiment: str | None = None, expert_plan: bool = False) -> dict[str, Any]:
        """Make this model its expert plan for the config's sampling schedule, in place: the router of every
        layer is consulted once per step now, its choices and gate weights go into the config, and the
        routers and every expert no step uses are dropped. The actions for that schedule do not change."""
        cfg = self.config
        if embodiment is not None:
            raise PolicyError("--embodiment: MoDE's routers see only the noise level; export it with --expert-plan")
        if not expert_plan:
            raise PolicyError("a MoDE checkpoint is exported with --expert-plan (its per-step experts)")
        if not cfg.use_moe:
            raise PolicyError("the dense MoDE baseline (use_moe=False) has no experts to plan")
        if cfg.expert_plan is not None:
            raise PolicyError("this checkpoint already runs an exported expert plan; export from the full checkpoint")
        steps = cfg.num_sampling_steps
        routes = step_routes(self.transformer, self.edm, steps)
        sigmas = tuple(float(s) for s in self.edm.sigmas(steps)[:-1])
        self.config = cfg.replace(
            expert_plan=tuple(tuple(r[0] for r in step) for step in routes),
            expert_plan_gates=tuple(tuple(r[1] for r in step) for step in routes),
            expert_plan_sigmas=sigmas,
        )
        kept = self.config.planned_experts
        assert kept is not None
        for block, held in zip(self.transformer.blocks, kept, strict=True):
            block.ffn.keep_experts(held)
            block.ffn.router = None
        self.clear_expert_cache()
        self._plan_ffns = None
        return self.specialisation() or {}

    def specialisation(self) -> dict[str, Any] | None:
        cfg = self.config
        if cfg.expert_plan is None:
            return None
        kept = cfg.planned_experts or ()
        return {
            "kind": "expert_plan",
            "steps": len(cfg.expert_plan),
            "experts_per_layer": [list(k) for k in kept],
            "experts_kept": sum(len(k) for k in kept),
            "experts_total": cfg.n_experts * cfg.n_layers,
        }

    # --- routing inspection ---------------------------------------------------------------------------
    def routing_levels(self) -> tuple[torch.Tensor, str]:
        """The sampler's noise levels (without the final 0): where the noise router is consulted."""
        return self.edm.sigmas(self.config.num_sampling_steps)[:-1], "sigma"

    @torch.no_grad()
    def inspect_routing(self, batch: Mapping[str, Any], level: torch.Tensor) -> list[LayerRouting]:
        """Each MoE block's (deterministic) routing at noise level sigma = `level` (B,): the noise
        router reads only the noise embedding, so one record per sequence (T = 1)."""
        if not self.config.use_moe:
            raise PolicyError("the dense MoDE baseline (use_moe=False) has no experts to inspect")
        if self.config.expert_plan is not None:
            raise PolicyError(
                "this checkpoint runs an exported expert plan (no routers): its routing is the plan in config.json; "
                "inspect the full checkpoint it came from"
            )
        was_training = self.training
        self.eval()
        try:
            batch = self._to_device(batch)
            actions = self.normalize("action", batch["action"].float(), batch.get("embodiment_id"))
            context = self.encode_observations(batch)
            # the noise router reads only the noise level: the noisy chunk does not change the routing
            inputs = self.edm.training_inputs(actions, level=level, noise=torch.randn_like(actions))
            x_in, noise_cond = inputs.x_in, inputs.noise_cond
            if self.moh is not None:
                routings: list[Routing] = []
                self._horizon_outputs(x_in, noise_cond, context, routings=routings)
            else:
                routings = self.transformer(x_in, noise_cond, context, attn_mask=self._plain_mask())[1]
        finally:
            self.train(was_training)
        return [
            LayerRouting(f"block{i}.ffn", "noise", dense_routing_weights(r).unsqueeze(1), r.probs.unsqueeze(1))
            for i, r in enumerate(routings)
        ]

    # --- accounting ---------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """As `Policy.parameter_counts`, plus "active_cached": per denoiser call with expert caching, where
        no router runs."""
        counts = super().parameter_counts()
        return {**counts, "active_cached": counts["active"] - counts["routers"]}


def _usage(routings: list[Routing]) -> dict[str, float]:
    """Fraction of expert choices per expert, over all layers (for logs)."""
    n = routings[0].probs.shape[-1]
    counts = torch.zeros(n)
    for r in routings:
        counts += torch.bincount(r.indices.reshape(-1).cpu(), minlength=n).float()
    frac = counts / counts.sum()
    return {f"expert_{e}_frac": float(frac[e]) for e in range(n)}
