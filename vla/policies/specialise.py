"""Router-decoupled specialisation (`vla export`): a checkpoint holding only the experts that can fire.

Two of our routers never see the tokens, so which experts they pick is known before any observation:
- HiMoE's action-space routers read only the robot's action-space identity (its slot mask). For one
  embodiment that input is a constant, so each AS-MoE layer always picks the same top-k experts; the
  export keeps those (`HiMoEPolicy.specialise`) and the checkpoint refuses other embodiments.
- MoDE's routers read only the noise level. For the checkpoint's sampling schedule every step's experts
  and gate weights are fixed; the export stores them as a per-step plan in config.json, drops the routers
  and every expert no step uses (`MoDEPolicy.specialise`), and each step's routing becomes a table lookup.

Either way the result is a normal checkpoint (config.json + model.safetensors + the rest) that
`from_pretrained`, `PolicyPlanner`, `vla eval`, `vla deploy` and `vla serve` load as any other; only the
kept experts are built and loaded, and its actions equal the full model's for the embodiment / schedule it
was exported for (docs/specialise.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla.errors import PolicyError
from vla.policies.pretrained import load_pretrained, resolve_checkpoint, save_derived_checkpoint

# files of a checkpoint the export copies as they are: what evaluation reads about the training data


@dataclass(frozen=True)
class ExportSummary:
    source: Path  # the checkpoint exported (a run folder resolves to its newest)
    out: Path
    policy: str  # the policy type
    before: dict[str, int]  # parameter counts of the full model (Policy.parameter_counts)
    after: dict[str, int]
    specialisation: dict[str, Any]  # Policy.specialisation() of the exported model


def export_specialised(
    checkpoint: str | Path, out: str | Path, embodiment: str | None = None, expert_plan: bool = False
) -> ExportSummary:
    """Write a specialised copy of `checkpoint` (a checkpoint or a run folder) to the new folder `out`."""
    source = resolve_checkpoint(checkpoint)
    out = Path(out)
    if out.exists():
        raise PolicyError(f"{out}: already exists; give --out a new folder (nothing was written)")
    policy = load_pretrained(source).eval()
    before = policy.parameter_counts()
    spec = policy.specialise(embodiment=embodiment, expert_plan=expert_plan)
    after = policy.parameter_counts()
    save_derived_checkpoint(policy, source, out)
    return ExportSummary(source, out, policy.config.name, before, after, spec)
