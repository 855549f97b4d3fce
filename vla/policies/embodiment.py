"""The robots a multi-embodiment (24-slot) policy was trained on (`EmbodimentTable`, the policy's
`embodiments`, saved with its checkpoint) and where one robot's native vectors sit (`EmbodimentLayout`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from vla.datasets import slots as slotlib
from vla.errors import PolicyError
from vla.keys import ACTION_KEY, STATE_KEY

if TYPE_CHECKING:
    from vla.policies.policy import Policy


@dataclasses.dataclass(frozen=True)
class EmbodimentTable:
    """The robots a multi-embodiment policy was trained on: their names (index = embodiment id) and, per
    slot-layout key, each robot's native -> slot indices."""

    names: tuple[str, ...]
    slots: Mapping[str, tuple[tuple[int, ...], ...]]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EmbodimentTable:
        """From `to_json()` output (or a mixture normaliser's saved `names` and `slots`)."""
        names = tuple(str(n) for n in d["names"])
        slots = {str(k): tuple(tuple(int(i) for i in s) for s in v) for k, v in d["slots"].items()}
        for key, per_embodiment in slots.items():
            if len(per_embodiment) != len(names):
                raise ValueError(f"slots[{key!r}] has {len(per_embodiment)} entries for {len(names)} embodiments")
        return cls(names, slots)

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "slots": {k: [list(s) for s in v] for k, v in self.slots.items()}}

    def layout(self, embodiment: str | None) -> EmbodimentLayout:
        if embodiment not in self.names:
            raise PolicyError(
                f"this policy was trained on several embodiments ({', '.join(self.names)}); "
                f"{'the robot/environment is ' + repr(embodiment) if embodiment else 'none was named'}: "
                "run it on one of those (or train with this robot's data)"
            )
        e = self.names.index(embodiment)
        state = self.slots.get(STATE_KEY, ((),) * len(self.names))[e]
        return EmbodimentLayout(embodiment, e, tuple(state), tuple(self.slots[ACTION_KEY][e]))

    def slot_mask(self, key: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """(embodiments, 24) bool: the slots each robot uses for `key` (ACTION_KEY or STATE_KEY)."""
        mask = torch.zeros(len(self.names), slotlib.NUM_SLOTS, dtype=torch.bool)
        for e, idx in enumerate(self.slots[key]):
            mask[e, list(idx)] = True
        return mask.to(device)


@dataclasses.dataclass(frozen=True)
class EmbodimentLayout:
    """Where one robot's native vectors sit in a multi-embodiment (24-slot) policy's layout, so a
    closed-loop caller (evaluation, deployment) can hand it native observations and get native actions.
    """

    name: str
    embodiment_id: int
    state_slots: tuple[int, ...]
    action_slots: tuple[int, ...]

    @classmethod
    def of(cls, policy: Policy, embodiment: str | None) -> EmbodimentLayout | None:
        """The layout of `embodiment` in `policy` (None for single-embodiment policies). A checkpoint exported
        for one embodiment (`vla export --embodiment`) runs as that one by default and refuses any other."""
        table = policy.embodiments
        if table is None:
            return None
        only = getattr(policy.config, "specialised_embodiment", None)
        if only is not None and embodiment is None:
            embodiment = only
        elif only is not None and embodiment != only:
            raise PolicyError(
                f"this checkpoint was exported for embodiment {only!r} only (vla export --embodiment); the "
                f"robot/environment is {embodiment!r}: use the full checkpoint, or export one for {embodiment!r}"
            )
        return table.layout(embodiment)

    @property
    def state_dim(self) -> int | None:
        """The robot's native state size (None: it has no state)."""
        return len(self.state_slots) or None

    @property
    def action_dim(self) -> int:
        return len(self.action_slots)

    def to_policy(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Native state (B, n_obs, D) -> slots; every row is this embodiment."""
        state = batch.get(STATE_KEY)
        if state is not None and state.shape[-1] != slotlib.NUM_SLOTS:
            batch[STATE_KEY] = self.state_to_slots(state)
        rows = len(batch["task"])
        batch["embodiment_id"] = torch.full((rows,), self.embodiment_id, dtype=torch.long)
        return batch

    def state_to_slots(self, state: torch.Tensor) -> torch.Tensor:
        """(..., D) native state -> (..., 24) in this robot's slots, zeros elsewhere."""
        out = state.new_zeros((*state.shape[:-1], slotlib.NUM_SLOTS))
        out[..., list(self.state_slots)] = state
        return out

    def to_native(self, chunk: torch.Tensor) -> torch.Tensor:
        """(B, H, 24) slot-layout actions -> (B, H, D) in the robot's own layout."""
        return chunk[..., list(self.action_slots)]
