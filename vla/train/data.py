"""Stores -> the training mixture for one policy config, and the config's data contract filled in.

`vla train --policy mode --data STORE` should just work: the fields of the policy config that
describe the data (cameras, state size, action size) default to what the stores hold, and anything
the user set explicitly is checked against them, so a mismatch fails before the first step with
the store, the key and the problem named.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vla.datasets import slots as slotlib
from vla.datasets.normalize import MultiNormalizer, Normalizer, merge_stats
from vla.datasets.sampler import MixtureDataset, WindowConfig, WindowDataset
from vla.datasets.spec import StoreSpec
from vla.datasets.store import Store
from vla.errors import PolicyError
from vla.keys import STATE_KEY
from vla.policies.config import PolicyConfig
from vla.train.config import TrainError

# Data-contract fields of PolicyConfig that are derived from the stores unless given.
DATA_FIELDS = ("camera_keys", "state_dim", "action_dim")


@dataclass
class TrainingData:
    mixture: MixtureDataset
    config: PolicyConfig  # with the data contract filled in from the stores
    normalizer: Normalizer | MultiNormalizer
    specs: list[StoreSpec]


def open_stores(paths: Sequence[str]) -> list[Store]:
    return [Store(p) for p in paths]


def infer_data_fields(stores: Sequence[Store], slots: bool) -> dict[str, Any]:
    """Camera keys every store has, the state size (if every store has state) and the action size."""
    cams = set.intersection(*(set(s.camera_keys) for s in stores))
    if slots:
        return {"camera_keys": tuple(sorted(cams)), "state_dim": slotlib.NUM_SLOTS, "action_dim": slotlib.NUM_SLOTS}
    with_state = all(STATE_KEY in s.keys for s in stores)
    return {
        "camera_keys": tuple(sorted(cams)),
        "state_dim": stores[0].keys[STATE_KEY].shape[0] if with_state else None,
        "action_dim": stores[0].keys["action"].shape[0],
    }


def needs_slots(stores: Sequence[Store]) -> bool:
    """Whether the stores' action (or state) sizes differ, so they only mix through slots."""
    action = {s.keys["action"].shape for s in stores}
    state = {s.keys[STATE_KEY].shape if STATE_KEY in s.keys else None for s in stores}
    return len(action) > 1 or len(state) > 1


def resolve_config(
    config_cls: type[PolicyConfig],
    base: Mapping[str, Any],
    stores: Sequence[Store],
    slots: bool,
    derive: Collection[str] = DATA_FIELDS,
) -> PolicyConfig:
    """The policy config with the `derive` data-contract fields taken from the stores."""
    derived = infer_data_fields(stores, slots)
    fields = {**base, **{k: derived[k] for k in derive}}
    if not fields["camera_keys"] and fields["state_dim"] is None:
        raise TrainError("the stores share no camera and not all have observation.state: nothing to observe")
    return config_cls(**fields)


def check_stores(config: PolicyConfig, stores: Sequence[Store], slots: bool) -> None:
    """Every store must hold what the config reads, with the right sizes (slots: any native size)."""
    for store in stores:
        features = dict(store.keys)
        if slots:  # native sizes differ by design; the loader places them into 24 slots
            features = {k: v for k, v in features.items() if k not in ("action", STATE_KEY)}
            features["action"] = (config.action_dim,)
            if config.state_dim is not None:
                features[STATE_KEY] = (config.state_dim,)
        try:
            config.check_features(features)
        except PolicyError as e:
            raise TrainError(f"{store.path}: {e}") from None


def build_training_data(
    config_cls: type[PolicyConfig],
    base: Mapping[str, Any],
    paths: Sequence[str],
    *,
    derive: Collection[str] = DATA_FIELDS,
    image_size: tuple[int, int] | None = None,
    language: str = "episode",
) -> TrainingData:
    stores = open_stores(paths)
    slots = needs_slots(stores)
    config = resolve_config(config_cls, base, stores, slots, derive)
    check_stores(config, stores, slots)
    obs_keys = (*config.camera_keys, *((STATE_KEY,) if config.state_dim is not None else ()))
    window = WindowConfig(n_obs=config.n_obs, horizons=(config.chunk_size,), obs_keys=obs_keys, language=language)
    datasets = [WindowDataset(s, window) for s in stores]
    mixture = MixtureDataset(datasets, slots=slots, image_size=image_size)
    modes = {k: m for k, m in config.normalization.items() if k == "action" or k in obs_keys}
    if slots:
        normalizer: Normalizer | MultiNormalizer = MultiNormalizer.from_mixture(mixture, modes)
    else:
        stats = {k: merge_stats([s.stats[k] for s in stores]) for k in modes}
        normalizer = Normalizer.from_stats(stats, modes)
    return TrainingData(mixture, config, normalizer, [s.spec for s in stores])
